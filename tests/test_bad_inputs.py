"""Bad input through every interface users call: register(), the CLI and ``monai.bundle run`` of every bundle.

Each case gives one clear line naming the argument (a one-line exception message for the API), a
non-zero exit, and leaves no output folder behind; output problems are found before any work.
The bundle runs are real ``python -m monai.bundle run`` processes (slow).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import monai_diffreg
from monai_diffreg.cli import main

REPO = Path(__file__).resolve().parents[1]
BUNDLES = tuple(sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.json").is_file()))

#: case -> (moving file, extra (API keyword, value) or None, the fragment every interface must print)
CASES = {
    "missing file": ("none.nii.gz", None, "'moving' file not found"),
    "a folder": ("adir", None, "'moving' is a folder, not an image file"),
    "NaN voxel": ("nan.nii.gz", None, "'moving' contains 1 NaN/Inf value(s)"),
    "constant image": ("const.nii.gz", None, "'moving' is constant"),
    "2D against 3D": ("flat2d.nii.gz", None, "'moving' is 2D"),
    "corrupt file": ("corrupt.nii.gz", None, "could not read 'moving'"),
    "output is a file": ("ok.nii.gz", ("output_dir", "afile"), "'output_dir' is an existing file"),
    "bad option value": ("ok.nii.gz", ("cascade", 0), "'cascade' must be an integer >= 1, got 0"),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The bad files beside a good 32^3 image."""
    root = tmp_path_factory.mktemp("bad")
    image = np.random.default_rng(0).random((32, 32, 32)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), root / "ok.nii.gz")
    nan = image.copy()
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), root / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.ones_like(image), np.eye(4)), root / "const.nii.gz")
    nib.save(nib.Nifti1Image(image[:, :, 0], np.eye(4)), root / "flat2d.nii.gz")
    (root / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not a NIfTI file")
    (root / "adir").mkdir()
    (root / "afile").write_text("an existing file")
    return root


def _paths(folder, case):
    moving, extra, fragment = CASES[case]
    output = folder / "out" if extra is None or extra[0] != "output_dir" else folder / extra[1]
    option = extra if extra is not None and extra[0] != "output_dir" else None
    return folder / "ok.nii.gz", folder / moving, output, option, fragment


def _nothing_written(folder, output):
    assert not (folder / "out").exists()
    if output.name == "afile":
        assert output.read_text() == "an existing file"


@pytest.mark.parametrize("case", CASES)
def test_api(folder, case):
    fixed, moving, output, option, fragment = _paths(folder, case)
    options = dict([option]) if option else {}
    with pytest.raises((ValueError, TypeError, FileNotFoundError)) as error:
        monai_diffreg.register(str(fixed), str(moving), "vxm_prob", output_dir=str(output), **options)
    message = str(error.value)
    assert fragment in message and "\n" not in message
    _nothing_written(folder, output)


@pytest.mark.parametrize("case", CASES)
def test_cli(folder, case, capsys):
    fixed, moving, output, option, fragment = _paths(folder, case)
    args = ["register", "--fixed", str(fixed), "--moving", str(moving), "--bundle", "vxm_prob", "--output-dir", str(output)]
    if option:
        args += ["--option", f"{option[0]}={option[1]}"]
    assert main(args) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and fragment in errors[0], errors
    _nothing_written(folder, output)


#: the bundle runs' bad option: one every inference.json has (each bundle's own settings are tested with its recipe)
BUNDLE_BAD_OPTION = (("inverse", "maybe"), "--inverse must be true or false, got 'maybe'")


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("case", CASES)
def test_bundle_run(folder, case, bundle):
    fixed, moving, output, option, fragment = _paths(folder, case)
    if case == "bad option value":
        option, fragment = BUNDLE_BAD_OPTION
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "bundles" / bundle / "configs" / "inference.json"),
           "--fixed", str(fixed), "--moving", str(moving), "--output_dir", str(output)]
    if option:
        cmd += [f"--{option[0]}", str(option[1])]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in done.stderr, done.stderr[-2000:]
    _nothing_written(folder, output)
