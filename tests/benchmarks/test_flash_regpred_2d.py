"""The 2D alpha-predictor experiment (benchmarks/flash_regpred_2d.py): resumable labelling and the training report."""

from __future__ import annotations

import json
import math

import pytest
import torch

import benchmarks.flash_regpred_2d as experiment


def test_true_alphas_are_log_uniform_in_range_and_reproducible():
    alphas = [experiment.true_alpha(i) for i in range(200)]
    low, high = experiment.ALPHA_RANGE
    assert all(low <= a <= high for a in alphas) and alphas == [experiment.true_alpha(i) for i in range(200)]
    logs = torch.tensor(alphas).log()
    assert float(logs.mean()) == pytest.approx(0.5 * (math.log(low) + math.log(high)), abs=0.25)
    target, source = experiment.pair(3)
    assert target.shape == source.shape == (1, 1, 100, 100) and not torch.equal(target, source)


def test_labelling_resumes_where_it_stopped(tmp_path, monkeypatch):
    calls = []

    def fake_estimate(target, source, **kwargs):
        calls.append(kwargs)
        return {"alpha": 2.0, "curvature": "full", "history": [{}] * 3}

    monkeypatch.setattr(experiment, "estimate_regularization", fake_estimate)
    experiment.make_labels(tmp_path, 3)
    experiment.make_labels(tmp_path, 5)  # only pairs 3 and 4 are new
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4] and len(calls) == 5
    assert all(r["map_alpha"] == 2.0 and r["true_alpha"] == experiment.true_alpha(r["index"]) for r in rows)


def test_training_reports_held_out_predictions(tmp_path):
    with pytest.raises(SystemExit, match="run the data step first"):
        experiment.train(tmp_path, test=2, epochs=1)
    with (tmp_path / "labels.jsonl").open("w") as f:
        for index in range(6):
            f.write(json.dumps({"index": index, "true_alpha": experiment.true_alpha(index),
                                "map_alpha": experiment.true_alpha(index), "seconds": 1.0}) + "\n")
    result = experiment.train(tmp_path, test=2, epochs=2)
    assert result["train_pairs"] == 4 and len(result["held_out"]) == 2
    assert all(math.isfinite(r["predicted_alpha"]) and r["predicted_alpha"] > 0 for r in result["held_out"])
    assert json.loads((tmp_path / "results.json").read_text())["test_pairs"] == 2
    assert (tmp_path / "predictions.png").stat().st_size > 0 and (tmp_path / "predictor_2d.pt").is_file()
    with pytest.raises(SystemExit, match="need more than --test 6"):
        experiment.train(tmp_path, test=6, epochs=1)
