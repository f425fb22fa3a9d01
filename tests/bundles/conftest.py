"""Shared pieces of the bundle tests: real ``monai.bundle run`` invocations, parsed bundle configs and a small real-data pair."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from monai_diffreg.methods import read_bundle_config
from monai_diffreg.sample import sample_paths

REPO = Path(__file__).resolve().parents[2]


def _bundle_run(bundle: str, config: str | list[str], *overrides: str, timeout: int = 300,
               launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``python [launcher] -m monai.bundle run --config_file <configs> <overrides>`` from the repository root."""
    configs = REPO / "bundles" / bundle / "configs"
    files = [str(configs / c) for c in ([config] if isinstance(config, str) else config)]
    config_file = files[0] if len(files) == 1 else str(files)
    cmd = [sys.executable, *launcher, "-m", "monai.bundle", "run", "--config_file", config_file, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def bundle_run():
    """``bundle_run(bundle, config(s), *overrides, timeout=, launcher=)``: a real ``monai.bundle run`` process."""
    return _bundle_run


def _bundle_config(bundle: str, config: str) -> ConfigParser:
    """A ``ConfigParser`` holding ``bundles/<bundle>/configs/<config>.json``."""
    return read_bundle_config(REPO / "bundles" / bundle, config)


@pytest.fixture(scope="session")
def bundle_config():
    """``bundle_config(bundle, "train")``: a parser of that bundle config (a fresh one per call)."""
    return _bundle_config


def _recipe_config(bundle: str, config: str = "train.json") -> ConfigParser:
    """A ``ConfigParser`` of one config file of ``bundles/<bundle>/configs/`` alone (a bundle still in training
    has no ``inference.json``, which :func:`read_bundle_config` needs)."""
    parser = ConfigParser()
    parser.read_config(REPO / "bundles" / bundle / "configs" / config)
    return parser


@pytest.fixture(scope="session")
def recipe_config():
    """``recipe_config(bundle, "train.json")``: a parser of that one config file (a fresh one per call)."""
    return _recipe_config


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared data folder with the real label maps and the template, or a skip saying it is absent."""
    from monai_diffreg.engines.training_data import TEMPLATE_FOLDER, shared_data_folder

    folder = Path(shared_data_folder(None))
    if not ((folder / "synthseg_label_maps").is_dir() and (folder / TEMPLATE_FOLDER).is_dir()):
        pytest.skip(f"the shared data folder ({folder}) with synthseg_label_maps/ and {TEMPLATE_FOLDER}/ is not on "
                    f"this machine")
    return folder


@pytest.fixture(scope="session")
def cropped_pair(tmp_path_factory):
    """A 96^3 crop of the built-in sample (fixed, moving, labels), the moving one on a shifted LPS grid."""
    folder = tmp_path_factory.mktemp("pair")
    paths = sample_paths()
    crop = (slice(32, 128), slice(48, 144), slice(32, 128))
    files = {}
    for name in ("fixed", "moving", "fixed_labels", "moving_labels"):
        img = nib.load(paths[name])
        data = np.asarray(img.dataobj)[crop]
        affine = img.affine.copy()
        affine[:3, 3] += affine[:3, :3] @ np.array([s.start for s in crop])
        if name.startswith("moving"):  # same world positions, stored flipped to LPS: the bundle must resample
            flip = np.diag([-1.0, -1.0, 1.0, 1.0])
            flip[:3, 3] = [data.shape[0] - 1, data.shape[1] - 1, 0]
            data, affine = data[::-1, ::-1].copy(), affine @ flip
        files[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), files[name])
    return files
