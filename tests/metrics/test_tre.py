"""Tests for monai_diffreg.metrics.tre: exact translations, affine fields at non-integer landmarks, scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_diffreg.functional import identity_grid
from monai_diffreg.metrics import TREMetric, target_registration_error


def test_exact_translation_3d():
    ddf = torch.zeros(1, 3, 8, 9, 10)
    shift = torch.tensor([1.5, -2.0, 0.25])
    ddf += shift.view(1, 3, 1, 1, 1)
    fixed = torch.tensor([[1.0, 2.0, 3.0], [6.5, 7.2, 0.0], [7.0, 8.0, 9.0]])
    assert target_registration_error(fixed, fixed + shift, ddf).abs().max().item() < 1e-6
    # moving landmarks off by (1, 1, 1) voxels: TRE = sqrt(sum spacing^2)
    tre = target_registration_error(fixed, fixed + shift + 1.0, ddf, spacing=(2.0, 3.0, 6.0))
    torch.testing.assert_close(tre, torch.full((1, 3), 7.0))
    # the identity field: TRE is the plain landmark distance
    assert target_registration_error(fixed, fixed + shift, torch.zeros_like(ddf)).tolist()[0] == pytest.approx(
        [shift.norm().item()] * 3
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_field_at_non_integer_landmarks(ndim):
    shape = (9, 10, 11)[:ndim]
    a = torch.eye(ndim, dtype=torch.float64) + 0.1 * torch.randn(ndim, ndim, dtype=torch.float64)
    t = torch.randn(ndim, dtype=torch.float64)
    x = identity_grid(shape, dtype=torch.float64).reshape(ndim, -1)
    ddf = ((a - torch.eye(ndim, dtype=torch.float64)) @ x + t[:, None]).reshape(1, ndim, *shape)
    fixed = torch.rand(20, ndim, dtype=torch.float64) * (torch.tensor(shape, dtype=torch.float64) - 1)
    moving = fixed @ a.T + t  # the exact image of each landmark: linear interpolation is exact
    tre = target_registration_error(fixed, moving, ddf, spacing=0.7)
    assert tre.shape == (1, 20) and tre.dtype == torch.float64
    assert tre.abs().max().item() < 1e-12
    # perturb the moving landmarks by a known physical distance
    moved = target_registration_error(fixed, moving + torch.tensor([0.0] * (ndim - 1) + [2.0]), ddf, spacing=0.7)
    torch.testing.assert_close(moved, torch.full((1, 20), 1.4, dtype=torch.float64))


def test_cross_check_scipy_linear_interpolation_batch():
    ddf = torch.randn(2, 3, 7, 8, 9, dtype=torch.float64)
    fixed = torch.rand(2, 15, 3, dtype=torch.float64) * torch.tensor([6.0, 7.0, 8.0], dtype=torch.float64)
    moving = torch.rand(2, 15, 3, dtype=torch.float64) * 8
    spacing = (1.2, 0.9, 2.5)
    tre = target_registration_error(fixed, moving, ddf, spacing)
    for b in range(2):
        u = np.stack([ndimage.map_coordinates(ddf[b, c].numpy(), fixed[b].numpy().T, order=1) for c in range(3)], 1)
        expected = np.linalg.norm((fixed[b].numpy() + u - moving[b].numpy()) * np.array(spacing), axis=1)
        np.testing.assert_allclose(tre[b].numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize(
    "fixed, moving, match",
    [
        (torch.zeros(4, 2), torch.zeros(4, 3), "'fixed_points' must have shape \\(N, 3\\) or \\(1, N, 3\\)"),
        (torch.zeros(4, 3), torch.zeros(5, 3), "must pair up"),
        (torch.tensor([[0.0, 0.0, 7.5]]), torch.zeros(1, 3), "1 of the 'fixed_points' lie outside the grid"),
        (torch.tensor([[0.0, float("nan"), 0.0]]), torch.zeros(1, 3), "'fixed_points' contains NaN"),
        (torch.zeros(0, 3), torch.zeros(0, 3), "N >= 1"),
    ],
)
def test_bad_input(fixed, moving, match):
    with pytest.raises(ValueError, match=match):
        target_registration_error(fixed, moving, torch.zeros(1, 3, 8, 8, 8))
    with pytest.raises(TypeError, match="'fixed_points' must be a torch.Tensor or numpy array, got list"):
        target_registration_error([[0.0, 0.0, 0.0]], moving, torch.zeros(1, 3, 8, 8, 8))


def test_metric_with_numpy_landmarks():
    ddf = torch.zeros(1, 2, 10, 10)
    fixed = np.array([[1.0, 1.0], [2.0, 5.0]])
    metric = TREMetric(spacing=(1.0, 2.0))
    metric(y_pred=ddf, fixed_points=fixed, moving_points=fixed + np.array([3.0, 2.0]))
    metric(y_pred=ddf, fixed_points=fixed[:1], moving_points=fixed[:1], spacing=1.0)
    torch.testing.assert_close(metric.get_buffer(), torch.tensor([[5.0], [0.0]]))
    assert metric.aggregate().item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="TREMetric\\(\\): keyword argument\\(s\\) \\['moving_points'\\] are required"):
        metric(y_pred=ddf, fixed_points=fixed)
    assert math.isclose(TREMetric()(ddf, fixed_points=fixed, moving_points=fixed).sum().item(), 0.0)
