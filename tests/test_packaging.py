"""Packaging: an installed (non-editable) copy of the package finds every bundle file.

``setup.cfg``'s ``[options.data_files]`` installs the bundles under ``share/monai_diffreg/bundles``
(``monai_diffreg.methods.bundle_search_paths``). Every file of every bundle folder must be matched
by one of its patterns, into the folder of the same relative path; the bundle list comes from
``bundles/*``, so a new bundle without its lines here fails.
"""

from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIX = Path("share/monai_diffreg")


def _installed_files() -> set[Path]:
    """Repository-relative paths that ``data_files`` installs, each checked to land at the same relative place."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    installed = set()
    for target, sources in config["options.data_files"].items():
        for pattern in (p.strip() for p in sources.split(",") if p.strip()):
            for path in REPO.glob(pattern):
                relative = path.relative_to(REPO)
                assert PREFIX / relative.parent == Path(target), f"{relative} is installed into {target}"
                installed.add(relative)
    return installed


def test_every_bundle_file_is_installed():
    bundles = [p for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.json").is_file()]
    assert len(bundles) >= 2
    files = {p.relative_to(REPO) for b in bundles for p in b.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")}
    missing = sorted(str(p) for p in files - _installed_files())
    assert not missing, f"add these to setup.cfg [options.data_files]: {missing}"
