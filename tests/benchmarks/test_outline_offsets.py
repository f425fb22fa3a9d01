"""The outline-offset diagnostic (benchmarks/outline_offsets.py): signed outline distances of known shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

import benchmarks.outline_offsets as outline


def _disk(radius: float, size: int = 96, centre: float = 47.5) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return (y - centre) ** 2 + (x - centre) ** 2 <= radius ** 2


def test_signed_distance_of_concentric_disks_is_the_difference_of_radii():
    assert outline.mean_outline_offset(_disk(20), _disk(20)) == 0.0
    assert outline.mean_outline_offset(_disk(23), _disk(20)) == pytest.approx(3.0, abs=0.05)
    assert outline.mean_outline_offset(_disk(20), _disk(23)) == pytest.approx(-3.0, abs=0.05)
    # a shift moves the outline out on one side and in on the other: the mean offset measures bias, not scatter
    assert outline.mean_outline_offset(_disk(23, centre=49.5), _disk(20)) == pytest.approx(3.0, abs=0.05)
    with pytest.raises(ValueError, match="neither may be empty"):
        outline.mean_outline_offset(np.zeros((8, 8), bool), _disk(2, 8, 3.5))


def test_outline_length_of_shapes():
    assert outline.outline_length(_disk(30)) == pytest.approx(2 * np.pi * 30, rel=0.02)
    square = np.zeros((40, 40), bool)
    square[10:30, 10:30] = True  # 4 directions only: an axis-aligned edge comes out ~6 % long
    assert outline.outline_length(square) == pytest.approx(80, rel=0.08)


def test_outline_regions_follow_a_blurred_disk():
    image = ndimage.gaussian_filter(_disk(20).astype(float), 1.0)
    image[5:8, 5:8] = 1.0  # a bright speck apart from the disk: not the largest region
    half = outline.outline_region(image, 0.5, _disk(20))
    assert outline.mean_outline_offset(half, _disk(20)) == pytest.approx(0.0, abs=0.25) and not half[6, 6]
    low, high = (outline.mean_outline_offset(outline.outline_region(image, c, _disk(20)), _disk(20)) for c in (0.1, 0.9))
    assert low > 0.8 and high < -0.8  # the blur's ramp: low levels outside the disk, high ones inside


def test_identity_of_a_larger_disk_is_off_by_the_radius_difference_at_every_level():
    fixed, moving = (torch.as_tensor(ndimage.gaussian_filter(_disk(r).astype(np.float32), 1.0))[None, None] for r in (20, 23))
    case = {"name": "disks", "fixed": fixed, "moving": moving,
            "fixed_labels": torch.as_tensor(_disk(20))[None, None].long(),
            "moving_labels": torch.as_tensor(_disk(23))[None, None].long()}
    result = outline.measure(case, ["identity"])
    row = result["methods"]["identity"]
    assert list(result["methods"]) == ["identity"] and len(row["outline_errors"]) == len(outline.LEVELS)
    assert all(e == pytest.approx(3.0, abs=0.15) for e in row["outline_errors"])
    assert row["mask_offset"] == pytest.approx(3.0, abs=0.05) and row["dice"] == pytest.approx(2 * 400 / (400 + 529), abs=0.01)
    with pytest.raises(SystemExit, match="a 2D case is needed"):
        outline.measure({**case, "fixed": fixed[..., None]}, [])


def test_the_script_writes_its_numbers_and_plot(tmp_path):
    out = tmp_path / "out"
    outline.main(["--case", "circle_to_c", "--methods", "identity", "--output", str(out), "--data-dir", str(tmp_path),
                  "--cache-dir", str(tmp_path / "cache")])
    result = json.loads((out / "outline_offsets.json").read_text())
    assert result["case"] == "circle_to_c" and list(result["methods"]) == ["identity"]
    assert result["methods"]["identity"]["dice"] == pytest.approx(0.768, abs=0.002)  # the benchmark's identity Dice
    assert (out / "outline_offsets.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        outline.main(["--case", "no_such_case", "--output", str(out), "--data-dir", str(tmp_path)])
