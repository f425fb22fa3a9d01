"""Tests for voxel-space affine matrices and their displacement fields."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from monai_diffreg.functional import jacobian_determinant, resize_field, warp
from monai_diffreg.functional.affine import (
    affine_from_params,
    affine_to_ddf,
    identity_affine,
    num_affine_params,
    rescale_affine,
)


def _random_affine(ndim: int, batch: int = 2, dtype=torch.float64) -> torch.Tensor:
    linear = torch.eye(ndim, dtype=dtype) + 0.15 * torch.randn(batch, ndim, ndim, dtype=dtype)
    return torch.cat([linear, 2.0 * torch.randn(batch, ndim, 1, dtype=dtype)], dim=2)


def _to_affine_grid_theta(matrix: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Our voxel-index matrix -> torch ``affine_grid`` theta (normalised, align_corners=True, axes reversed)."""
    ndim = len(shape)
    half = torch.tensor([(n - 1) / 2 for n in shape], dtype=matrix.dtype)
    linear, shift = matrix[:, :, :ndim], matrix[:, :, ndim]
    # x = H x_n + h, y_n = H^-1 (y - h) with H = diag(half), h = half
    lin_n = linear * half.view(1, 1, ndim) / half.view(1, ndim, 1)
    shift_n = (torch.einsum("bij,j->bi", linear, half) + shift - half) / half
    theta = torch.cat([lin_n, shift_n.unsqueeze(-1)], dim=2)
    rev = list(range(ndim - 1, -1, -1))
    return torch.cat([theta[:, rev][:, :, rev], theta[:, rev, ndim:]], dim=2)


def test_identity_gives_zero_field():
    for ndim, shape in ((2, (5, 7)), (3, (4, 5, 6))):
        eye = identity_affine(3, ndim)
        assert eye.shape == (3, ndim, ndim + 1)
        ddf = affine_to_ddf(eye, shape)
        assert ddf.shape == (3, ndim, *shape)
        assert torch.count_nonzero(ddf) == 0


def test_translation_gives_constant_field():
    matrix = identity_affine(1, 3, dtype=torch.float64)
    matrix[0, :, 3] = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    ddf = affine_to_ddf(matrix, (6, 7, 8))
    for i, value in enumerate((1.5, -2.0, 0.25)):
        assert torch.allclose(ddf[0, i], torch.full((6, 7, 8), value, dtype=torch.float64))


def test_field_values_are_a_x_plus_t_minus_x():
    matrix = _random_affine(2, batch=1)
    ddf = affine_to_ddf(matrix, (4, 5))
    x = torch.tensor([3.0, 2.0], dtype=torch.float64)
    expected = matrix[0, :, :2] @ x + matrix[0, :, 2] - x
    assert torch.allclose(ddf[0, :, 3, 2], expected)


@pytest.mark.parametrize("ndim", [2, 3])
def test_jacobian_determinant_equals_det_a(ndim):
    matrix = _random_affine(ndim)
    shape = (9, 10, 11)[:ndim]
    det = jacobian_determinant(affine_to_ddf(matrix, shape))
    expected = torch.linalg.det(matrix[:, :, :ndim])
    for b in range(matrix.shape[0]):
        assert torch.allclose(det[b], torch.full_like(det[b], float(expected[b])), atol=1e-10)


@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_matches_torch_affine_grid(ndim):
    shape = (12, 13, 14)[:ndim]
    image = torch.rand(2, 1, *shape, dtype=torch.float64)
    matrix = _random_affine(ndim)
    ours = warp(image, affine_to_ddf(matrix, shape), padding_mode="zeros")
    grid = F.affine_grid(_to_affine_grid_theta(matrix, shape), [2, 1, *shape], align_corners=True)
    theirs = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    assert torch.allclose(ours, theirs, atol=1e-10)


@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_matches_scipy_affine_transform(ndim):
    shape = (12, 13, 14)[:ndim]
    image = torch.rand(1, 1, *shape, dtype=torch.float64)
    matrix = _random_affine(ndim, batch=1)
    ours = warp(image, affine_to_ddf(matrix, shape), padding_mode="border")[0, 0].numpy()
    m = matrix[0].numpy()
    theirs = ndimage.affine_transform(image[0, 0].numpy(), m[:, :ndim], offset=m[:, ndim], order=1, mode="nearest")
    np.testing.assert_allclose(ours, theirs, atol=1e-10)


def test_affine_from_params_identity_and_centre():
    assert num_affine_params(3) == 12 and num_affine_params(2) == 6
    centre = torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64)
    assert torch.equal(affine_from_params(torch.zeros(2, 12, dtype=torch.float64), centre),
                       identity_affine(2, 3, dtype=torch.float64))
    params = torch.zeros(1, 12, dtype=torch.float64)
    angle = math.radians(20)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]],
                            dtype=torch.float64)
    params[0, :9] = (1.1 * rotation - torch.eye(3, dtype=torch.float64)).flatten()
    params[0, 9:] = torch.tensor([1.0, -2.0, 0.5])
    matrix = affine_from_params(params, centre)
    assert torch.allclose(matrix[0, :, :3], 1.1 * rotation)
    # the centre moves by exactly t
    assert torch.allclose(matrix[0, :, :3] @ centre + matrix[0, :, 3], centre + params[0, 9:])
    # a point one voxel off-centre moves by the linear part only (relative to the centre)
    offset = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    moved = matrix[0, :, :3] @ (centre + offset) + matrix[0, :, 3]
    assert torch.allclose(moved - (centre + params[0, 9:]), 1.1 * rotation @ offset)


def test_affine_from_params_2d_per_batch_centre():
    params = torch.zeros(2, 6)
    params[:, 4:] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    params[:, 0] = 0.5  # A[0, 0] = 1.5
    centre = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    matrix = affine_from_params(params, centre)
    assert torch.allclose(matrix[:, 0, 2], torch.tensor([1.0, 3.0 + 2.0 - 3.0]))


def test_rescale_affine_matches_resized_field():
    matrix = _random_affine(3, batch=1)
    coarse, fine = (8, 10, 12), (16, 20, 24)
    upsampled = resize_field(affine_to_ddf(matrix, coarse), size=fine)
    direct = affine_to_ddf(rescale_affine(matrix, coarse, fine), fine)
    # linear interpolation of an affine field is exact away from the clamped border voxel
    assert torch.allclose(upsampled[..., 2:-2, 2:-2, 2:-2], direct[..., 2:-2, 2:-2, 2:-2], atol=1e-10)


def test_rescale_affine_translation_and_round_trip():
    matrix = identity_affine(1, 2, dtype=torch.float64)
    matrix[0, :, 2] = torch.tensor([1.0, -0.5], dtype=torch.float64)
    fine = rescale_affine(matrix, (8, 8), (32, 16))
    assert torch.allclose(fine, torch.tensor([[[1.0, 0, 4.0], [0, 1.0, -1.0]]], dtype=torch.float64))
    general = _random_affine(2)
    back = rescale_affine(rescale_affine(general, (7, 9), (20, 31)), (20, 31), (7, 9))
    assert torch.allclose(back, general, atol=1e-12)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"affine_to_ddf\(\): 'matrix' must have shape \(B, 3, 3\+1\)"):
        affine_to_ddf(torch.zeros(1, 2, 3), (4, 4, 4))
    with pytest.raises(ValueError, match=r"affine_to_ddf\(\): 'spatial_shape'"):
        affine_to_ddf(torch.zeros(1, 2, 3), (4,))
    with pytest.raises(TypeError, match=r"affine_to_ddf\(\): 'matrix' must be a torch.Tensor"):
        affine_to_ddf(np.zeros((1, 2, 3)), (4, 4))
    with pytest.raises(ValueError, match=r"affine_from_params\(\): 'params'"):
        affine_from_params(torch.zeros(1, 7), [0.0, 0.0])
    with pytest.raises(ValueError, match=r"affine_from_params\(\): 'centre' must have shape \(3,\)"):
        affine_from_params(torch.zeros(1, 12), [0.0, 0.0])
    with pytest.raises(ValueError, match=r"identity_affine\(\): 'ndim'"):
        identity_affine(1, 4)
    with pytest.raises(ValueError, match=r"rescale_affine\(\): 'to_shape'"):
        rescale_affine(torch.zeros(1, 2, 3), (4, 4), (4, 4, 4))


@pytest.mark.parametrize("ndim", [2, 3])
def test_compose_affine_is_the_matrix_of_the_composed_fields(ndim):
    """affine_to_ddf(outer o inner) == compose_ddf(outer's field, inner's field) inside the grid, and o inverse = id."""
    from monai_diffreg.functional import compose_affine, compose_ddf, invert_affine

    shape = (12, 10, 11)[:ndim]
    outer, inner = _random_affine(ndim, batch=1) * 0.5, _random_affine(ndim, batch=1) * 0.5
    outer[:, :, :ndim] += 0.5 * torch.eye(ndim, dtype=outer.dtype)
    inner[:, :, :ndim] += 0.5 * torch.eye(ndim, dtype=inner.dtype)
    expected = compose_ddf(affine_to_ddf(outer, shape), affine_to_ddf(inner, shape))
    found = affine_to_ddf(compose_affine(outer, inner), shape)
    points = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij"))
    inner_points = points + affine_to_ddf(inner, shape)[0]  # compose_ddf interpolates the outer field there:
    inside = torch.stack([(inner_points[d] >= 0) & (inner_points[d] <= s - 1) for d, s in enumerate(shape)]).all(0)
    assert inside.float().mean() > 0.3
    torch.testing.assert_close(found[0][:, inside], expected[0][:, inside], atol=1e-9, rtol=0)  # affine fields: exact
    torch.testing.assert_close(compose_affine(outer, invert_affine(outer)), identity_affine(1, ndim, torch.float64))
    with pytest.raises(ValueError, match=r"compose_affine\(\)"):
        compose_affine(outer, _random_affine(5 - ndim, batch=1))


@pytest.mark.parametrize("ndim", [2, 3])
def test_compose_affine_ddf_is_compose_ddf_in_closed_form(ndim):
    """Equal to compose_ddf(affine_to_ddf(M), u) where x + u(x) stays in the grid, exact where compose_ddf clamps."""
    from monai_diffreg.functional import compose_affine_ddf, compose_ddf

    shape = (14, 12, 10)[:ndim]
    matrix = _random_affine(ndim, batch=2)
    inner = 2.0 * torch.randn(2, ndim, *shape, dtype=torch.float64)
    found = compose_affine_ddf(matrix, inner)
    expected = compose_ddf(affine_to_ddf(matrix, shape), inner)
    points = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij"))
    moved = points + inner  # (B, D, *S)
    inside = torch.stack([(moved[:, d] >= 0) & (moved[:, d] <= s - 1) for d, s in enumerate(shape)], 1).all(1)
    inside = inside.unsqueeze(1).expand_as(found)
    torch.testing.assert_close(found[inside], expected[inside], atol=1e-9, rtol=0)
    # everywhere: the affine applied to the displaced point, A (x + u) + t - x
    linear, shift = matrix[:, :, :ndim], matrix[:, :, ndim:]
    direct = torch.einsum("bij,bj...->bi...", linear, moved) + shift.view(2, ndim, *([1] * ndim)) - points
    torch.testing.assert_close(found, direct)
    torch.autograd.gradcheck(compose_affine_ddf, (matrix[:1, :, :].clone().requires_grad_(),
                                                  inner[:1, :, :3, :3].clone().requires_grad_()))
    with pytest.raises(ValueError, match=r"compose_affine_ddf\(\)"):
        compose_affine_ddf(matrix[:1], inner)
