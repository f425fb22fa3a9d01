"""vxm_prob bundle inference and evaluation: real ``monai.bundle run`` invocations with the shipped weights,
and a verify_net_in_out-style check of the network against metadata.json."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from monai_diffreg.io import load_displacement_field
from monai_diffreg.sample import sample_paths

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "vxm_prob"
CONFIGS = BUNDLE / "configs"
ENV = {**os.environ, "OMP_NUM_THREADS": "2"}


def bundle_run(config: str, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / config), *overrides]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
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


def test_network_matches_metadata_inputs_and_outputs():
    """verify_net_in_out-style: build network_def, feed inputs as metadata declares them, check the outputs."""
    meta = json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]
    parser = ConfigParser()
    parser.read_config(CONFIGS / "inference.json")
    network = parser.get_parsed_content("network_def").eval()
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", weights_only=True))  # strict
    shape = (1, 1, 40, 48, 36)  # any size: padded internally
    inputs = {key: torch.rand(shape) for key in ("moving", "fixed")}
    assert all(meta["inputs"][key]["num_channels"] == 1 for key in inputs)
    with torch.no_grad():
        out = network.sample(inputs["moving"], inputs["fixed"], num_samples=2)
    for key, spec in meta["outputs"].items():
        # the velocity lives on the network's own (2 mm) grid, every other output on the input grid
        spatial = network.velocity_size(shape[2:]) if key == "velocity" else shape[2:]
        assert out[key].shape == (1, spec["num_channels"], *spatial), key
        assert bool(torch.isfinite(out[key]).all()), key


def test_weights_are_small():
    assert (BUNDLE / "models" / "model.pt").stat().st_size < 25 * 2**20


@pytest.mark.slow
def test_inference_on_a_pair_of_files(cropped_pair, tmp_path):
    out = tmp_path / "out"
    result = bundle_run("inference.json", "--fixed", str(cropped_pair["fixed"]), "--moving", str(cropped_pair["moving"]),
                        "--moving_labels", str(cropped_pair["moving_labels"]), "--fixed_labels",
                        str(cropped_pair["fixed_labels"]), "--num_samples", "2", "--output_dir", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = {"warped.nii.gz", "ddf.nii.gz", "inverse_ddf.nii.gz", "uncertainty.nii.gz", "warped_labels.nii.gz",
                "summary.json", "qc.png"}
    assert expected <= {p.name for p in out.iterdir()}
    fixed = nib.load(cropped_pair["fixed"])
    for name in ("warped.nii.gz", "warped_labels.nii.gz", "uncertainty.nii.gz"):
        img = nib.load(out / name)
        assert img.shape[:3] == fixed.shape and np.allclose(img.affine, fixed.affine), name
    ddf, affine = load_displacement_field(out / "ddf.nii.gz")
    assert ddf.shape == (1, 3, *fixed.shape) and np.allclose(affine, fixed.affine)
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["folding_percent"] < 0.01
    assert metrics["dice_after"]["mean"] >= metrics["dice_before"]["mean"] - 0.01


@pytest.mark.slow
def test_missing_input_fails_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = bundle_run("inference.json", "--fixed", str(tmp_path / "none.nii.gz"), "--moving",
                        str(tmp_path / "none.nii.gz"), "--output_dir", str(out))
    assert result.returncode != 0
    assert "none.nii.gz" in result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_evaluate_writes_a_csv(cropped_pair, tmp_path):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{k: str(v) for k, v in cropped_pair.items()}]))
    result = bundle_run("evaluate.json", "--pairs", str(pairs), "--output_csv", str(tmp_path / "m.csv"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "m.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["folding_percent"]) < 0.01 and 0.0 < float(row["dice_after"]) <= 1.0
    assert float(row["hd95_after_mm"]) >= 0.0
