"""evaluate_pairs / monai-diffreg evaluate: one CSV row of metrics per pair, failures recorded."""

import csv
import json

import numpy as np
import pytest
import torch

from monai_diffreg import methods
from monai_diffreg.cli import main
from monai_diffreg.evaluation import evaluate_pairs, read_pairs
from monai_diffreg.io import save_image


class ShiftMethod:
    """A stand-in method returning a known constant displacement of one voxel along axis 0."""

    def __call__(self, fixed, moving):
        ddf = torch.zeros(1, fixed.ndim - 2, *fixed.shape[2:])
        ddf[:, 0] = 1.0
        return {"ddf": ddf}


@pytest.fixture
def shift_method():
    methods.register_method("shift", lambda **_: ShiftMethod(), "test: 1-voxel shift")
    yield
    methods.unregister_method("shift")


@pytest.fixture
def pairs_file(tmp_path):
    """A fixed box and a moving box one voxel further along axis 0, with labels; pairs CSV beside them."""
    fixed = np.zeros((16, 16, 16), np.float32)
    fixed[4:10, 5:11, 5:11] = 1.0
    moving = np.roll(fixed, 1, axis=0)
    for name, data in {"f.nii.gz": fixed, "m.nii.gz": moving}.items():
        save_image(data + 0.1 * np.random.default_rng(0).random(data.shape, np.float32), np.eye(4), tmp_path / name)
    save_image(fixed.astype(np.uint8), np.eye(4), tmp_path / "fl.nii.gz", label=True)
    save_image(moving.astype(np.uint8), np.eye(4), tmp_path / "ml.nii.gz", label=True)
    path = tmp_path / "pairs.csv"
    path.write_text("fixed,moving,fixed_labels,moving_labels\nf.nii.gz,m.nii.gz,fl.nii.gz,ml.nii.gz\n"
                    "f.nii.gz,missing.nii.gz,,\n")
    return path


def test_rows_hold_metrics_and_errors(shift_method, pairs_file, tmp_path):
    rows = evaluate_pairs(pairs_file, "shift", tmp_path / "out" / "metrics.csv", qc=False, progress=False)
    good, bad = rows
    assert good["dice_before"] < 0.9 and good["dice_after"] == pytest.approx(1.0)  # the shift undoes the offset
    assert good["hd95_after_mm"] == pytest.approx(0.0) and good["folding_percent"] == 0.0
    assert "missing.nii.gz" in bad["error"] and "dice_after" not in bad
    with open(tmp_path / "out" / "metrics.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 2 and float(written[0]["dice_label_1"]) == pytest.approx(1.0)


def test_cli_exit_status_and_pairs_errors(shift_method, pairs_file, tmp_path, capsys):
    assert main(["evaluate", "--bundle", "shift", "--pairs", str(pairs_file), "--output-csv",
                 str(tmp_path / "m.csv"), "--option", "qc=false"]) == 1  # one pair failed
    assert "1/2 pairs evaluated" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps([{"fixed": "a.nii.gz"}]))
    with pytest.raises(ValueError, match=r"read_pairs\(\): row 0 of .* needs 'fixed' and 'moving'"):
        read_pairs(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match=r"read_pairs\(\): 'path' not found"):
        read_pairs(tmp_path / "none.csv")
