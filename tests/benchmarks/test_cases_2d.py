"""The 2D ``circle_to_c`` case (benchmarks.cases): a disk to a "C", the classic large-deformation pair."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

import benchmarks.cases as cases
from benchmarks.evaluate import evaluate


def test_shapes_have_the_stated_areas_and_the_c_is_simply_connected():
    disk, c_shape = cases.circle_and_c()
    assert disk.shape == c_shape.shape == (1, 1, 128, 128)
    assert disk.sum().item() == pytest.approx(math.pi * 32 ** 2, rel=0.02)
    assert c_shape.sum().item() == pytest.approx(math.pi * (32 ** 2 - 16 ** 2) * 300 / 360, rel=0.03)
    assert bool((c_shape <= disk).all())  # the C lies inside the disk: hollowed out, not moved
    mask = c_shape[0, 0].numpy().astype(bool)
    assert ndimage.label(mask)[1] == 1  # one piece
    assert ndimage.label(~mask)[1] == 1  # no hole: its inside is reached through the gap
    gap_pixel = (64 + 24, 64)  # on the +x axis (axis 0), between the radii: in the gap
    assert not mask[gap_pixel] and mask[64 - 24, 64]


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_case_is_built_and_scored(tmp_path, scale):
    assert ("pairs_2d", "circle_to_c") in cases.case_names(["pairs_2d"], [0])
    case = torch.load(cases.get_case(tmp_path, "pairs_2d", "circle_to_c", scale, tmp_path), weights_only=True)
    size = round(128 * scale)
    assert case["fixed"].shape == case["moving"].shape == (1, 1, size, size)
    assert case["spacing"] == [1.0 / scale] * 2 and case["labels"] == [1] and case["true_ddf"] is None
    assert 0.0 <= float(case["fixed"].min()) and float(case["moving"].max()) <= 1.0
    dice = evaluate(case, torch.zeros(1, 2, size, size), hd95=False)["dice"]
    expected = 2 * (32 ** 2 - 16 ** 2) * 300 / 360 / ((32 ** 2 - 16 ** 2) * 300 / 360 + 32 ** 2)
    assert dice == pytest.approx(expected, abs=0.03)  # identity: the C over the disk
    assert np.isfinite(case["fixed"].numpy()).all()
