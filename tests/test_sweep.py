"""monai-diffreg sweep / sweep_option: one registration per value, CSV and plot, bad input before any work."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from monai_diffreg.cli import main
from monai_diffreg.sweep import sweep_option


def write_pair(folder):
    """A smooth 3D image with a two-label map, and a shifted copy of both (NIfTI)."""
    grids = np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij")
    image = sum(np.sin(g / 3.0 + k) for k, g in enumerate(grids)) + 3.0
    labels = (grids[0] > 9).astype(np.int16) + (grids[1] > 12).astype(np.int16)
    paths = {}
    for name, array in (("fixed", image), ("moving", np.roll(image, 2, axis=0)),
                        ("fixed_labels", labels), ("moving_labels", np.roll(labels, 2, axis=0))):
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array.astype(np.int16 if "labels" in name else np.float32), np.eye(4)), paths[name])
    return paths


def test_sweep_writes_one_row_per_value_and_a_plot(tmp_path):
    paths = write_pair(tmp_path)
    rows = sweep_option("svf_optim", "regularization_weight", [0.1, 10.0], paths["fixed"], paths["moving"],
                        tmp_path / "out", fixed_labels=paths["fixed_labels"], moving_labels=paths["moving_labels"],
                        levels=[2, 1], iterations=[15, 5])
    assert [row["regularization_weight"] for row in rows] == [0.1, 10.0]
    assert all(row["dice_after"] > row["dice_before"] for row in rows)
    assert rows[1]["sd_log_jacobian"] < rows[0]["sd_log_jacobian"]  # stiffer: smoother
    with open(tmp_path / "out" / "sweep.csv", newline="") as handle:
        assert [float(r["regularization_weight"]) for r in csv.DictReader(handle)] == [0.1, 10.0]
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 1000


def test_cli_sweep_and_its_errors(tmp_path, capsys):
    paths = write_pair(tmp_path)
    status = main(["sweep", "--bundle", "flash", "--name", "alpha", "--values", "1", "30", "--fixed", str(paths["fixed"]),
                   "--moving", str(paths["moving"]), "--output-dir", str(tmp_path / "s"), "--option", "truncation=5",
                   "--option", "iterations=[5, 5]"])
    assert status == 0
    assert "alpha=1:" in capsys.readouterr().out and (tmp_path / "s" / "sweep.png").exists()
    # a bad value fails before any registration, with one line
    assert main(["sweep", "--bundle", "flash", "--name", "alpha", "--values", "1", "-3", "--fixed", str(paths["fixed"]),
                 "--moving", str(paths["moving"]), "--output-dir", str(tmp_path / "t")]) == 1
    assert not (tmp_path / "t").exists()
    with pytest.raises(ValueError, match="swept option"):
        sweep_option("flash", "alpha", [1.0], paths["fixed"], paths["moving"], tmp_path / "u", alpha=2.0)
    with pytest.raises(ValueError, match="non-empty sequence"):
        sweep_option("flash", "alpha", [], paths["fixed"], paths["moving"], tmp_path / "u")
