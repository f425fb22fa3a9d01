"""FLASH at the predicted alpha against the MAP alpha on the 2D experiment's held-out pairs
(benchmarks/flash_regpred_2d_register.py)."""

from __future__ import annotations

import json

import pytest
import torch

import benchmarks.flash_regpred_2d_register as experiment
from benchmarks.flash_bullseye import prior_ddf
from benchmarks.flash_regpred_2d import pair, true_alpha
from monai_diffreg.functional import warp


def test_the_true_displacement_is_the_one_that_made_the_pair():
    target, source = pair(7)
    torch.testing.assert_close(warp(source, prior_ddf((100, 100), true_alpha(7), 7)), target)


def test_pairs_registered_at_both_alphas(tmp_path, capsys):
    held = [{"index": 3, "map_alpha": 5.0, "symmetric": 5.0}, {"index": 0, "map_alpha": 11.09, "symmetric": 3.0},
            {"index": 9, "map_alpha": 2.0, "symmetric": 2.2}]
    (tmp_path / "symmetric.json").write_text(json.dumps({"held_out": held}))
    summary = experiment.run(tmp_path, pairs=2)  # the first and the last by index
    rows = summary["rows"]
    assert [r["index"] for r in rows] == [0, 9] and summary["pairs"] == 2
    assert (rows[0]["predicted"]["alpha"], rows[0]["map"]["alpha"]) == (3.0, 11.09)
    for row in rows:
        for name in experiment.ALPHAS:
            # registration moves the field towards the truth, from no registration's error
            assert 0 < row[name]["endpoint_error_voxels"] < row["true_displacement_mean_voxels"]
            assert row[name]["folding_percent"] == 0.0 and row[name]["rmse"] > 0
    assert rows[0]["field_difference_mean_voxels"] > 0  # a quarter of the alpha: another field
    assert json.loads((tmp_path / "registration.json").read_text())["mean"]["map"]["alpha"] == pytest.approx(6.545)
    assert (tmp_path / "registration.png").read_bytes()[:4] == b"\x89PNG"
    same = experiment.register_pair(3, {"predicted": 5.0, "map": 5.0})
    assert same["field_difference_max_voxels"] == 0.0
    assert same["predicted"]["endpoint_error_voxels"] == same["map"]["endpoint_error_voxels"]


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit, match="no .*symmetric.json: run flash_regpred_2d train --folds and symmetric first"):
        experiment.run(tmp_path, pairs=2)
    for text in ("{", json.dumps({"rows": []}), json.dumps({"held_out": [{"index": 1}]})):
        (tmp_path / "symmetric.json").write_text(text)
        with pytest.raises(SystemExit, match="symmetric.json is not a symmetric step's output"):
            experiment.run(tmp_path, pairs=2)
    (tmp_path / "symmetric.json").write_text(json.dumps({"held_out": []}))
    with pytest.raises(SystemExit, match="holds no held-out pairs"):
        experiment.run(tmp_path, pairs=2)
    (tmp_path / "symmetric.json").write_text(json.dumps({"held_out": [{"index": 1, "map_alpha": 2, "symmetric": 2}]}))
    monkeypatch.setattr(experiment.os, "access", lambda path, mode: False)  # read-only (root writes anywhere)
    with pytest.raises(SystemExit, match="cannot write registration.json into"):
        experiment.run(tmp_path, pairs=2)
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        experiment.main(["--output", str(tmp_path), "--pairs", "0"])
    assert "--pairs and --threads must be at least 1" in capsys.readouterr().err
