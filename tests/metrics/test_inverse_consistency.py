"""Tests for monai_diffreg.metrics.inverse_consistency: translations, affine order, exp(v) o exp(-v)."""

from __future__ import annotations

import math

import pytest
import torch

from monai_diffreg.functional import gaussian_smooth, identity_grid, integrate_velocity
from monai_diffreg.metrics import InverseConsistencyMetric, inverse_consistency_error


def translation(shift, shape):
    shift = torch.as_tensor(shift, dtype=torch.float64)
    return shift.view(1, -1, *([1] * len(shape))).expand(1, len(shape), *shape).clone()


@pytest.mark.parametrize("shift, shape", [((1.5, -2.25), (10, 12)), ((0.5, 3.0, -1.0), (8, 9, 10))])
def test_translation_and_its_negative_give_zero(shift, shape):
    fwd, inv = translation(shift, shape), translation([-s for s in shift], shape)
    assert inverse_consistency_error(fwd, inv).item() == pytest.approx(0.0, abs=1e-12)
    assert inverse_consistency_error(fwd, inv, spacing=2.0, symmetric=True).item() == pytest.approx(0.0, abs=1e-12)
    # composing a translation with itself leaves twice the shift: |S 2t|
    spacing = (2.0, 0.5, 1.0)[: len(shape)]
    expected = math.sqrt(sum((2 * s * sp) ** 2 for s, sp in zip(shift, spacing)))
    assert inverse_consistency_error(fwd, fwd, spacing=spacing).item() == pytest.approx(expected)


def affine_ddf(matrix, offset, shape):
    x = identity_grid(shape, dtype=torch.float64).reshape(len(shape), -1)
    return ((matrix - torch.eye(len(shape), dtype=torch.float64)) @ x + offset[:, None]).reshape(1, len(shape), *shape)


def test_composition_order_is_forward_after_inverse():
    shape = (20, 20)
    a = torch.tensor([[1.05, 0.02], [-0.03, 0.97]], dtype=torch.float64)
    b = torch.tensor([[0.96, 0.01], [0.04, 1.02]], dtype=torch.float64)
    ta, tb = torch.tensor([0.4, -0.3], dtype=torch.float64), torch.tensor([-0.2, 0.5], dtype=torch.float64)
    fwd, inv = affine_ddf(a, ta, shape), affine_ddf(b, tb, shape)
    crop = 3  # psi keeps the cropped region inside the grid, where linear interpolation of u is exact
    x = identity_grid(shape, dtype=torch.float64).reshape(2, -1)
    phi_psi = (a @ (b @ x + tb[:, None]) + ta[:, None] - x).reshape(1, 2, *shape)[..., crop:-crop, crop:-crop]
    psi_phi = (b @ (a @ x + ta[:, None]) + tb[:, None] - x).reshape(1, 2, *shape)[..., crop:-crop, crop:-crop]
    expected = phi_psi.norm(dim=1).mean().item()
    other = psi_phi.norm(dim=1).mean().item()
    assert abs(expected - other) > 1e-3  # the two orders differ for this pair
    assert inverse_consistency_error(fwd, inv, crop=crop).item() == pytest.approx(expected, rel=1e-10)
    both = inverse_consistency_error(fwd, inv, crop=crop, symmetric=True).item()
    assert both == pytest.approx((expected + other) / 2, rel=1e-10)
    # the exact inverse affine gives zero inside the crop
    a_inv = torch.linalg.inv(a)
    exact = affine_ddf(a_inv, -a_inv @ ta, shape)
    assert inverse_consistency_error(fwd, exact, crop=crop).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("shape", [(32, 32), (20, 20, 20)])
def test_exp_v_and_exp_minus_v(shape):
    # smooth velocity, max |v| = 2 voxels (max |u| ~2.2, mean |u| ~0.4). Measured with seed 0: error 0.0076 (2D)
    # and 0.011 (3D) voxel, 0.0035 / 0.0033 with crop=2; the field with itself gives 0.67 / 0.82
    v = gaussian_smooth(torch.randn(1, len(shape), *shape, dtype=torch.float64), 3.0)
    v = v / v.abs().max() * 2.0
    fwd, inv = integrate_velocity(v), integrate_velocity(-v)
    error = inverse_consistency_error(fwd, inv).item()
    assert error < 0.02
    assert inverse_consistency_error(fwd, fwd).item() > 25 * error
    assert inverse_consistency_error(fwd, inv, crop=2).item() < error  # extrapolation errors sit at the border


def test_mask_and_batch():
    fwd = torch.cat([translation((1.0, 0.0), (8, 8)), translation((0.0, 2.0), (8, 8))])
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    err = inverse_consistency_error(fwd, fwd, mask=mask, crop=1)
    assert err.shape == (2,) and err.tolist() == pytest.approx([2.0, 4.0])


@pytest.mark.parametrize(
    "inv, kwargs, match",
    [
        (torch.zeros(1, 2, 8, 9), {}, "inverse_consistency_error\\(\\): 'ddf_inverse' must have shape \\(1, 2, 8, 8\\)"),
        (torch.zeros(1, 2, 8, 8), {"crop": 4}, "'crop'=4 leaves no voxel"),
        (torch.zeros(1, 2, 8, 8), {"spacing": (1.0,)}, "'spacing' must be a number or 2 numbers"),
        (torch.zeros(1, 2, 8, 8), {"mask": torch.ones(1, 2, 8, 8)}, "'mask' must have 1 channel"),
    ],
)
def test_bad_input(inv, kwargs, match):
    with pytest.raises(ValueError, match=match):
        inverse_consistency_error(torch.zeros(1, 2, 8, 8), inv, **kwargs)


def test_metric():
    fwd = translation((1.0, 2.0), (6, 6)).float()
    metric = InverseConsistencyMetric(spacing=(1.0, 0.5), crop=1, symmetric=True)
    metric(y_pred=fwd, y=-fwd)
    metric(y_pred=fwd, y=fwd, spacing=1.0)
    torch.testing.assert_close(metric.get_buffer(), torch.tensor([[0.0], [math.sqrt(20)]]))
    with pytest.raises(ValueError, match="'y' \\(the inverse displacement field\\) is required"):
        metric(y_pred=fwd)
    with pytest.raises(ValueError, match="InverseConsistencyMetric\\(\\): 'crop'"):
        InverseConsistencyMetric(crop=-2)
