"""The 2D alpha-predictor experiment (benchmarks/flash_regpred_2d.py): resumable labelling and the training report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import benchmarks.flash_regpred_2d as experiment

#: the training labels of the 2D experiment (its data step, 1020 pairs)
RUN5 = Path(experiment.__file__).parent / "results" / "2026-12-07-flash-regpred-2d-run5"


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


def test_labelling_in_worker_processes_reproduces_the_committed_labels(tmp_path):
    committed = {}
    for line in (RUN5 / "labels.jsonl").read_text().splitlines()[:2]:
        committed[json.loads(line)["index"]] = json.loads(line)
    (tmp_path / "labels.jsonl").write_text(json.dumps(committed[0]) + "\n")  # pair 0 done: pair 1 is labelled
    experiment.make_labels(tmp_path, 2, workers=2)  # in spawned processes of one thread each, the real estimator
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and rows[0] == committed[0]
    assert rows[1]["map_alpha"] == pytest.approx(committed[1]["map_alpha"], rel=1e-4)
    assert rows[1]["iterations"] == committed[1]["iterations"]


def test_labels_from_another_start_go_to_their_own_file_and_report_their_distance(tmp_path, monkeypatch, capsys):
    def fake_estimate(target, source, alpha, **kwargs):  # an estimate that depends on the start
        return {"alpha": 2.0 if alpha == 1.0 else 2.0 * alpha ** 0.1, "curvature": "full", "history": [{}]}

    monkeypatch.setattr(experiment, "estimate_regularization", fake_estimate)
    experiment.make_labels(tmp_path, 4)
    experiment.main(["data", "--output", str(tmp_path), "--pairs", "3", "--start", "3"])
    rows = [json.loads(line) for line in (tmp_path / "labels_start3.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and all(r["start"] == 3.0 for r in rows)
    assert len((tmp_path / "labels.jsonl").read_text().splitlines()) == 4  # the training labels untouched
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["pairs"] == 3 and report["mean_abs_relative_difference"] == pytest.approx(3 ** 0.1 - 1)
    (tmp_path / "labels_start10.jsonl").write_text("")
    with pytest.raises(SystemExit, match="no pair labelled from both starts 1 and 10"):
        experiment.label_repeatability(tmp_path, 10.0)


def _write_labels(folder, count):
    """``count`` labelled pairs whose MAP label is their true alpha."""
    with (folder / "labels.jsonl").open("w") as f:
        for index in range(count):
            f.write(json.dumps({"index": index, "true_alpha": experiment.true_alpha(index),
                                "map_alpha": experiment.true_alpha(index), "seconds": 1.0}) + "\n")


def test_training_reports_held_out_predictions_of_the_validation_chosen_epoch(tmp_path):
    with pytest.raises(SystemExit, match="run the data step first"):
        experiment.train(tmp_path, test=2, epochs=1, validation=2)
    _write_labels(tmp_path, 8)
    result = experiment.train(tmp_path, test=2, epochs=7, validation=2)
    assert (result["train_pairs"], result["validation_pairs"], len(result["held_out"])) == (4, 2, 2)
    assert [h["epoch"] for h in result["history"]] == [0, 5, 6]
    assert result["chosen_epoch"] == min(result["history"], key=lambda h: h["validation"])["epoch"]
    assert all(math.isfinite(r["predicted_alpha"]) and r["predicted_alpha"] > 0 for r in result["held_out"])
    assert [r["index"] for r in result["held_out"]] == [6, 7]
    assert json.loads((tmp_path / "results.json").read_text())["test_pairs"] == 2
    assert (tmp_path / "predictions.png").stat().st_size > 0 and (tmp_path / "predictor_2d.pt").is_file()
    assert experiment.train(tmp_path, test=2, epochs=1, validation=2, norm="group")["norm"] == "group"
    early = experiment.train(tmp_path, test=2, epochs=1, validation=2, fusion="early")
    assert early["fusion"] == "early" and "pair_stream.0.conv.weight" in torch.load(tmp_path / "predictor_2d.pt")
    with pytest.raises(SystemExit, match="need more than --test 6 \\+ --validation 2"):
        experiment.train(tmp_path, test=6, epochs=1, validation=2)


def test_the_balanced_difference_gain_is_taken_from_the_training_pairs_and_saved(tmp_path):
    _write_labels(tmp_path, 8)
    experiment.main(["train", "--output", str(tmp_path), "--test", "2", "--validation", "2", "--epochs", "1",
                     "--difference-gain", "balanced"])
    result = json.loads((tmp_path / "results.json").read_text())
    rows = experiment._load(tmp_path)
    fixed, moving, _ = experiment._pair_tensors(rows[:4])  # the training pairs
    gain = experiment.balanced_difference_gain(fixed, moving)
    assert result["difference_gain"] == "balanced" and result["difference_gain_value"] == pytest.approx(gain)
    assert gain > 10  # the pairs differ by small deformations
    assert float(torch.load(tmp_path / "predictor_2d.pt")["difference_gain"]) == pytest.approx(gain)
    fixed_gain = experiment.train(tmp_path, test=2, epochs=1, validation=2, difference_gain=3.0)
    assert (fixed_gain["difference_gain"], fixed_gain["difference_gain_value"]) == (3.0, 3.0)


def test_training_batches_have_the_batch_size_asked(tmp_path, monkeypatch):
    _write_labels(tmp_path, 9)  # 5 training pairs
    sizes = []
    real_loss = experiment.log_alpha_loss
    monkeypatch.setattr(experiment, "log_alpha_loss", lambda predicted, alpha: sizes.append(len(alpha))
                        or real_loss(predicted, alpha))
    result = experiment.train(tmp_path, test=2, epochs=1, validation=2, batch_size=3)
    assert result["batch_size"] == 3
    assert sizes == [3, 2, 5, 2]  # two training batches, then the training and validation losses
    sizes.clear()
    experiment.train(tmp_path, test=2, epochs=1, validation=2, batch_size=4)
    assert sizes == [5, 5, 2]  # a last batch of one pair joins the one before (batch norm needs two)


def test_folds_hold_out_every_pair_once_and_never_train_on_it():
    count, folds, validation = 23, 4, 3
    held = []
    for fold in range(folds):
        train, chosen, out = experiment.fold_split(count, folds, fold, validation)
        assert sorted(train + chosen + out) == list(range(count)) and len(chosen) == validation
        assert out == list(range(out[0], out[-1] + 1)) and len(out) in (5, 6)  # contiguous, near-equal blocks
        assert chosen == [(out[0] - k) % count for k in range(validation, 0, -1)]  # just before it, cyclically
        held += out
    assert sorted(held) == list(range(count))
    with pytest.raises(SystemExit, match="too few for 2 folds with --validation 5"):
        experiment.fold_split(9, 2, 0, 5)


def test_cross_validation_pools_each_folds_held_out_predictions(tmp_path, capsys):
    _write_labels(tmp_path, 9)
    summary = experiment.cross_validate(tmp_path, folds=3, epochs=2, validation=2)
    assert sorted(r["index"] for r in summary["held_out"]) == list(range(9))
    assert [r["fold"] for r in summary["held_out"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    errors = [abs(r["predicted_alpha"] / r["map_alpha"] - 1) for r in summary["held_out"]]
    assert summary["mean_abs_relative_error_vs_map"] == pytest.approx(sum(errors) / 9)
    assert summary["within_15_percent"] == pytest.approx(sum(e <= 0.15 for e in errors) / 9)
    assert [f["train_pairs"] for f in summary["per_fold"]] == [4, 4, 4]
    for fold in range(3):
        result = json.loads((tmp_path / f"fold_{fold}" / "results.json").read_text())
        assert [r["index"] for r in result["held_out"]] == [3 * fold, 3 * fold + 1, 3 * fold + 2]
    assert json.loads((tmp_path / "cross_validation.json").read_text())["folds"] == 3
    experiment.main(["train", "--output", str(tmp_path), "--folds", "3", "--validation", "2", "--epochs", "1"])
    assert "cross-validated (3 folds)" in capsys.readouterr().out
    symmetric = experiment.evaluate_symmetric(tmp_path, folds=3, validation=2)
    assert sorted(r["index"] for r in symmetric["held_out"]) == list(range(9))
    assert len(symmetric["validation"]["plain"]) == 3 and symmetric["symmetric"]["validation_l2"] > 0
    assert (tmp_path / "symmetric.png").read_bytes()[:4] == b"\x89PNG"
    for row in symmetric["held_out"]:  # the plain predictions are the fold's own
        fold = json.loads((tmp_path / f"fold_{row['fold']}" / "results.json").read_text())
        own = next(r["predicted_alpha"] for r in fold["held_out"] if r["index"] == row["index"])
        assert row["plain"] == pytest.approx(own, rel=1e-5)
    experiment.main(["symmetric", "--output", str(tmp_path), "--folds", "3", "--validation", "2"])
    assert "symmetric: validation L2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        experiment.main(["symmetric", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="no trained fold in .*fold_3: run train --folds 4 first"):
        experiment.evaluate_symmetric(tmp_path, folds=4, validation=2)


def test_cross_validation_cut_short_resumes_with_the_folds_it_finished(tmp_path, monkeypatch):
    _write_labels(tmp_path, 9)
    first = experiment.cross_validate(tmp_path, folds=3, epochs=1, validation=2)
    (tmp_path / "fold_2" / "results.json").unlink()  # as if killed while training fold 2
    trained = []
    real_fit = experiment.fit
    monkeypatch.setattr(experiment, "fit", lambda rows, tensors, split, folder, *a: trained.append(folder.name)
                        or real_fit(rows, tensors, split, folder, *a))
    again = experiment.cross_validate(tmp_path, folds=3, epochs=1, validation=2)
    assert trained == ["fold_2"]
    assert [r["predicted_alpha"] for r in again["held_out"][:6]] == [r["predicted_alpha"] for r in first["held_out"][:6]]
    experiment.cross_validate(tmp_path, folds=3, epochs=2, validation=2)  # other settings: every fold again
    assert trained == ["fold_2", "fold_0", "fold_1", "fold_2"]
    experiment.cross_validate(tmp_path, folds=3, epochs=2, validation=2, difference_gain="balanced")
    experiment.cross_validate(tmp_path, folds=3, epochs=2, validation=2)
    assert trained[4:] == ["fold_0", "fold_1", "fold_2"] * 2
    del trained[4:]
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    rows[4]["map_alpha"] *= 2  # one pair relabelled: every fold saw it
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    experiment.cross_validate(tmp_path, folds=3, epochs=2, validation=2)
    assert trained[4:] == ["fold_0", "fold_1", "fold_2"]


def test_symmetric_average_is_invariant_under_the_symmetries():
    torch.manual_seed(0)
    net = experiment.RegularizationPredictor(2, stream_channels=(4, 4, 4, 4), fusion_channels=(4,)).eval()
    torch.nn.init.normal_(net.head.weight)
    fixed, moving = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        reference = experiment.symmetric_log_alpha(net, fixed, moving)
        for k in (1, 5):
            turned = experiment.symmetric_log_alpha(net, *(experiment.square_symmetry(x, k) for x in (fixed, moving)))
            torch.testing.assert_close(turned, reference)
        assert not torch.allclose(net(fixed, moving), reference)


def test_symmetric_average_recalibrates_batch_statistics_in_each_symmetry():
    torch.manual_seed(0)
    net = experiment.RegularizationPredictor(2, stream_channels=(4, 4, 4, 4), fusion_channels=(4,))
    torch.nn.init.normal_(net.head.weight)
    train = torch.rand(6, 1, 16, 16), torch.rand(6, 1, 16, 16)
    train[0][:, :, :8] += 1.0  # not symmetric: its statistics depend on the orientation
    fixed, moving = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    expected = []
    with torch.no_grad():
        for k in range(8):
            experiment.recalibrate_batch_norm(net, *(experiment.square_symmetry(x, k) for x in train))
            expected.append(net(experiment.square_symmetry(fixed, k), experiment.square_symmetry(moving, k)))
        averaged = experiment.symmetric_log_alpha(net, fixed, moving, calibration=train)
    torch.testing.assert_close(averaged, torch.stack(expected).mean(0))
    experiment.recalibrate_batch_norm(net, *train)
    with torch.no_grad():
        assert not torch.allclose(experiment.symmetric_log_alpha(net, fixed, moving), averaged)


def test_frozen_batch_norms_are_recalibrated_once_and_then_kept(tmp_path, monkeypatch):
    """With freeze_norm_after the statistics are recomputed at that epoch and no more: training and every later
    evaluation use them, and the batch norms stay in evaluation mode while training (their statistics unchanged)."""
    _write_labels(tmp_path, 8)
    calls, original = [], experiment.recalibrate_batch_norm

    def counted(net, *args, **kwargs):
        original(net, *args, **kwargs)
        calls.append({k: v.clone() for k, v in net.state_dict().items() if "running" in k})

    monkeypatch.setattr(experiment, "recalibrate_batch_norm", counted)
    experiment.train(tmp_path, test=2, epochs=7, validation=2)
    assert len(calls) == 3  # evaluations at epochs 0, 5, 6
    calls.clear()
    result = experiment.train(tmp_path, test=2, epochs=7, validation=2, freeze_norm_after=2)
    assert len(calls) == 2 and result["freeze_norm_after"] == 2  # the evaluation at 0, the freeze at 2
    saved = torch.load(tmp_path / "predictor_2d.pt")
    chosen = calls[1] if result["chosen_epoch"] >= 2 else calls[0]  # the statistics the chosen weights were evaluated with
    assert all(torch.equal(saved[k], v) for k, v in chosen.items())


def test_square_symmetries_are_the_eight_distinct_ones():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    copies = [experiment.square_symmetry(image, k) for k in range(8)]
    assert torch.equal(copies[0], image) and len({tuple(c.flatten().tolist()) for c in copies}) == 8
    assert all(torch.equal(experiment.square_symmetry(copies[k], k if k >= 4 else (4 - k) % 4), image) for k in range(8))


@pytest.mark.parametrize("argv, message", [
    (["data", "--workers", "0"], "--workers must be at least 1"),
    (["train", "--lr", "-1"], "--lr must be positive"),
    (["train", "--norm", "instance"], "invalid choice"),
    (["train", "--folds", "1"], "--folds must be at least 2"),
    (["data", "--start", "0"], "--start must be positive"),
    (["train", "--fusion", "middle"], "invalid choice"),
    (["train", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["train", "--difference-gain", "0"], "--difference-gain must be a positive number or 'balanced', got '0'"),
    (["train", "--difference-gain", "auto"], "--difference-gain must be a positive number or 'balanced', got 'auto'"),
    (["train", "--batch-size", "1"], "--batch-size must be at least 2 with --norm batch"),
    (["train", "--epochs", "10", "--freeze-norm-after", "10"], "--freeze-norm-after must be an epoch in [0, --epochs)"),
])
def test_bad_options_are_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        experiment.main([*argv, "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_an_output_path_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    with pytest.raises(SystemExit):
        experiment.main(["data", "--output", str(tmp_path / "taken" / "out")])
    assert "is not a usable folder" in capsys.readouterr().err
