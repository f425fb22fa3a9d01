"""FLASH's alpha estimate on the sample brain (benchmarks/flash_map_sample.py): its options."""

from __future__ import annotations

import pytest

import benchmarks.flash_map_sample as experiment


@pytest.mark.parametrize("option", [["--factor", "0.5"], ["--iterations", "0"], ["--threads", "0"]])
def test_bad_options_are_one_line_before_any_work(tmp_path, option, capsys, monkeypatch):
    monkeypatch.setattr(experiment, "run", lambda *args: pytest.fail("ran with a bad option"))
    with pytest.raises(SystemExit):
        experiment.main(["--output", str(tmp_path / "out"), *option])
    assert "must be at least 1" in capsys.readouterr().err


def test_an_unusable_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiment, "run", lambda *args: pytest.fail("ran without an output folder"))
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        experiment.main(["--output", str(tmp_path / "file" / "out")])
    assert "--output" in capsys.readouterr().err
