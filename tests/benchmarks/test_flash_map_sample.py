"""FLASH's alpha estimate on the sample brain (benchmarks/flash_map_sample.py): its options; the output check of
it and of benchmarks/flash_map_timing.py."""

from __future__ import annotations

import pytest

import benchmarks.flash_map_sample as experiment
import benchmarks.flash_map_timing as timing


@pytest.mark.parametrize("option", [["--factor", "0.5"], ["--iterations", "0"], ["--threads", "0"]])
def test_bad_options_are_one_line_before_any_work(tmp_path, option, capsys, monkeypatch):
    monkeypatch.setattr(experiment, "run", lambda *args: pytest.fail("ran with a bad option"))
    with pytest.raises(SystemExit):
        experiment.main(["--output", str(tmp_path / "out"), *option])
    assert "must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("script", [experiment, timing], ids=["flash_map_sample", "flash_map_timing"])
def test_an_unusable_output_folder_is_one_line(tmp_path, capsys, monkeypatch, script):
    monkeypatch.setattr(script, "run", lambda *args: pytest.fail("ran without an output folder"))
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        script.main(["--output", str(tmp_path / "file" / "out")])
    assert "--output" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "voxel"])
def test_a_bad_prior_scale_is_one_line_before_any_work(tmp_path, value, capsys, monkeypatch):
    monkeypatch.setattr(experiment, "run", lambda *args: pytest.fail("ran with a bad prior scale"))
    with pytest.raises(SystemExit):
        experiment.main(["--output", str(tmp_path / "out"), "--prior-scale", value])
    assert "--prior-scale must be a positive number or 'mean'" in capsys.readouterr().err


def test_the_prior_scale_reaches_the_estimate(monkeypatch):
    """``mean`` is one over the estimate grid's voxel count; a number is passed as it is."""
    seen = []

    def fake_estimate(fixed, moving, **options):
        seen.append((tuple(fixed.shape[2:]), options["prior_scale"], options["estimate_scale"]))
        raise RuntimeError("stop here")

    monkeypatch.setattr(experiment, "estimate_regularization", fake_estimate)
    for scale in ("mean", 0.5):
        with pytest.raises(RuntimeError, match="stop here"):
            experiment.run(4.0, 3, False, scale)
    assert seen == [((40, 48, 40), 1 / (40 * 48 * 40), False), ((40, 48, 40), 0.5, False)]
