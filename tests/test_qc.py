"""Tests for monai_diffreg.qc: the QC picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from monai_diffreg.qc import _orient, checkerboard, save_qc_figure


def _pair(shape):
    gen = torch.Generator().manual_seed(0)
    fixed = torch.rand(1, 1, *shape, generator=gen)
    ddf = torch.nn.functional.interpolate(torch.randn(1, len(shape), *([3] * len(shape)), generator=gen),
                                          size=shape, mode="trilinear" if len(shape) == 3 else "bilinear",
                                          align_corners=True)
    return fixed, ddf


@pytest.mark.parametrize("shape, rows", [((12, 14, 10), 3), ((20, 16), 1)])
def test_qc_figure_written(tmp_path, shape, rows):
    fixed, ddf = _pair(shape)
    affine = np.diag([-2.0, 1.0, 1.5, 1.0]) if len(shape) == 3 else None
    out = save_qc_figure(fixed, fixed.flip(2), fixed, ddf, tmp_path / "qc.png", title="pair 1", affine=affine)
    assert out == tmp_path / "qc.png"
    picture = imread(out)
    height, width = picture.shape[:2]
    assert width == 1800  # six 3-inch columns at 100 dpi
    assert height == int(round(100 * (3.2 * rows + 0.8)))
    assert picture[..., :3].std() > 0.1  # not blank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qc.png"]


def test_checkerboard_alternates():
    a, b = np.zeros((4, 4)), np.ones((4, 4))
    expected = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(checkerboard(a, b, tiles=2), expected)


def test_orientation_to_ras():
    """LAS volume: voxel 0 of axis 0 is the patient's right-most column, shown last along R; u_0 flips sign."""
    vol = np.zeros((3, 2, 2))
    vol[0] = 1.0
    ddf = np.zeros((3, 3, 2, 2))
    ddf[0] = 1.0  # one voxel towards the patient's left
    ddf[2] = 2.0
    (out,), u, spacing, anatomical = _orient([vol], ddf, np.diag([-2.0, 1.0, 3.0, 1.0]))
    assert anatomical
    np.testing.assert_array_equal(out[:, 0, 0], [0, 0, 1])
    np.testing.assert_array_equal(u[0], -1.0)
    np.testing.assert_array_equal(u[2], 2.0)
    np.testing.assert_allclose(spacing, [2.0, 1.0, 3.0])


def test_qc_bad_input(tmp_path):
    fixed, ddf = _pair((8, 8, 8))
    with pytest.raises(ValueError, match=r"save_qc_figure\(\): 'ddf' must have shape"):
        save_qc_figure(fixed, fixed, fixed, ddf[:, :2], tmp_path / "qc.png")
    with pytest.raises(ValueError, match=r"save_qc_figure\(\): 'warped' must have spatial shape \(8, 8, 8\)"):
        save_qc_figure(fixed, fixed, fixed[..., :4], ddf, tmp_path / "qc.png")
    with pytest.raises(TypeError, match=r"save_qc_figure\(\): 'moving' must be a numpy array or torch tensor"):
        save_qc_figure(fixed, [1, 2], fixed, ddf, tmp_path / "qc.png")
    assert list(tmp_path.iterdir()) == []
