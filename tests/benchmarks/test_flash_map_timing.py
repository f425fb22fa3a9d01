"""The timing of FLASH's alpha estimate on a 128^3 brain pair (benchmarks/flash_map_timing.py)."""

from __future__ import annotations

import json

import pytest
import torch

import benchmarks.flash_map_timing as experiment
from monai_diffreg.engines._optim_common import downsample
from monai_diffreg.sample import load_sample


def test_the_pair_is_the_sample_at_the_papers_grid():
    """1.25 mm (area-downsampled from 1 mm) and the centre 128^3 of the 128 x 154 x 128 grid, scaled to a maximum of 1."""
    fixed, moving = experiment.brain_pair()
    assert fixed.shape == moving.shape == (1, 1, 128, 128, 128)
    full = load_sample(with_fields=False)["fixed"].as_tensor()[None].float()
    expected = downsample(full / full.max(), [128, 154, 128])[:, :, :, 13:141]
    assert torch.equal(fixed, expected) and float(moving.max()) <= 1.0


def test_a_small_run_reports_its_time_stages_and_estimate(tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "run", lambda *args, **kwargs: _small_run(*args, **kwargs))
    experiment.main(["--output", str(tmp_path / "out"), "--iterations", "3", "--threads", "1", "--repeats", "2"])
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["grid"] == [24, 24, 24] and result["estimation_iterations"] == 3 and result["seconds"] > 0
    assert set(result["one_evaluation_stages"]) == {"shooting", "map_on_grid", "warp_and_image_term", "backward",
                                                   "max_displacement_voxels"}
    assert result["ratio_to_target"] == pytest.approx(result["seconds"] / 30.0)
    assert set(result["prediction"]) == set(experiment.PREDICTORS) and result["prediction_repeats"] == 2
    for name, timing in result["prediction"].items():
        assert timing["fastest"] <= timing["seconds"] <= timing["slowest"] and timing["peak_mb"] >= 0
        assert timing["ratio_to_estimate"] == pytest.approx(timing["seconds"] / result["seconds"])
        assert timing["ratio_to_target"] == pytest.approx(timing["seconds"] / 0.5)
    assert result["prediction"]["early_fusion_kernel_3"]["kernel_size"] == 3


def test_prediction_timing_runs_each_setting_once_to_warm_up_then_repeats(monkeypatch):
    calls = []
    real = experiment.RegularizationPredictor.forward
    monkeypatch.setattr(experiment.RegularizationPredictor, "forward",
                        lambda net, fixed, moving: calls.append(net.early) or real(net, fixed, moving))
    pair = torch.rand(2, 1, 1, 16, 16, 16)
    timings = experiment.prediction_timing(pair[0], pair[1], repeats=3)
    assert list(timings) == list(experiment.PREDICTORS)
    assert calls == [False] * 4 + [True] * 8  # per setting: the warm-up and three timed predictions


_run = experiment.run


def _small_run(integrator, iterations, estimate_scale, repeats):
    return _run(integrator, iterations, estimate_scale, size=24, repeats=repeats)


@pytest.mark.parametrize("option", [["--iterations", "0"], ["--threads", "0"], ["--repeats", "0"],
                                    ["--integrator", "midpoint"]])
def test_bad_options_are_one_line_before_any_work(tmp_path, option, capsys, monkeypatch):
    monkeypatch.setattr(experiment, "run", lambda *args, **kwargs: pytest.fail("ran with a bad option"))
    with pytest.raises(SystemExit):
        experiment.main(["--output", str(tmp_path / "out"), *option])
    err = capsys.readouterr().err
    assert "must be at least 1" in err or "invalid choice" in err
