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
    monkeypatch.setattr(experiment, "run", lambda *args: _small_run(*args))
    experiment.main(["--output", str(tmp_path / "out"), "--iterations", "3", "--threads", "1"])
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["grid"] == [24, 24, 24] and result["estimation_iterations"] == 3 and result["seconds"] > 0
    assert set(result["one_evaluation_stages"]) == {"shooting", "map_on_grid", "warp_and_image_term", "backward",
                                                   "max_displacement_voxels"}
    assert result["ratio_to_target"] == pytest.approx(result["seconds"] / 30.0)


_run = experiment.run


def _small_run(integrator, iterations, estimate_scale):
    return _run(integrator, iterations, estimate_scale, size=24)


@pytest.mark.parametrize("option", [["--iterations", "0"], ["--threads", "0"], ["--integrator", "midpoint"]])
def test_bad_options_are_one_line_before_any_work(tmp_path, option, capsys, monkeypatch):
    monkeypatch.setattr(experiment, "run", lambda *args: pytest.fail("ran with a bad option"))
    with pytest.raises(SystemExit):
        experiment.main(["--output", str(tmp_path / "out"), *option])
    err = capsys.readouterr().err
    assert "must be at least 1" in err or "invalid choice" in err
