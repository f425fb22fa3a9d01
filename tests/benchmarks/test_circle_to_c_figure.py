"""The circle-to-C picture: written atomically, and the printed Dice of the warped disk beats no registration."""

from __future__ import annotations

import ast

import pytest

from benchmarks.cases import circle_and_c
from benchmarks.circle_to_c_figure import dice, main


def test_dice_of_masks():
    disk, c_shape = circle_and_c(size=32, outer_mm=8.0, inner_mm=4.0)
    assert dice(disk, disk) == 1.0
    assert 0.0 < dice(disk, c_shape) < 1.0


def test_figure_of_lddmm(tmp_path, capsys):
    out = tmp_path / "circle_to_c.png"
    main(["--methods", "lddmm", "--output", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])
    disk, c_shape = circle_and_c()
    assert set(scores) == {"lddmm"} and scores["lddmm"]["dice"] > dice(disk, c_shape) + 0.02  # moved towards the C
    assert scores["lddmm"]["folding_percent"] == 0
    assert list(tmp_path.iterdir()) == [out]


def test_a_malformed_option_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="--option must look like KEY=VALUE"):
        main(["--methods", "lddmm", "--option", "image_loss", "--output", str(tmp_path / "x.png")])
    assert not list(tmp_path.iterdir())
