"""Packaging: an installed (non-editable) copy of the package carries every bundle, with no list to keep.

``monai_diffreg/bundles`` links to the repository's ``bundles/``, and ``setup.cfg`` ships it as
package data (``bundles/**/*``), where ``monai_diffreg.methods.bundle_search_paths`` looks. The test
builds the wheel users would install and checks that it holds every file of every bundle folder
(the bundles come from ``bundles/*``, so a new bundle is covered without editing anything).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_package_links_to_the_bundles():
    link = REPO / "monai_diffreg" / "bundles"
    assert link.is_symlink() and link.resolve() == (REPO / "bundles").resolve()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_holds_every_bundle_file(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info into the source tree
    shutil.copytree(REPO, source, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "outputs", "build", "*.egg-info", "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("monai_diffreg-*.whl")
    packaged = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("monai_diffreg/bundles/")}
    bundles = [p for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.json").is_file()]
    files = {"monai_diffreg/" + p.relative_to(REPO).as_posix() for b in bundles for p in b.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    assert len(bundles) >= 2 and files and not files - packaged, sorted(files - packaged)
