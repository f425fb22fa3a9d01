"""Normalised affine parameters: identity at zero, round trip, resolution independence, rotations about the centre."""

from __future__ import annotations

import math

import pytest
import torch

from monai_diffreg.functional import affine_to_ddf, identity_affine, jacobian_determinant, rescale_affine
from monai_diffreg.functional.affine import affine_from_normalized, affine_to_normalized


@pytest.mark.parametrize("shape", [(8, 9), (5, 6, 7)])
@pytest.mark.parametrize("exponential", [False, True])
def test_zero_is_the_identity_and_round_trip(shape, exponential):
    ndim = len(shape)
    zero = torch.zeros(2, ndim * ndim + ndim, dtype=torch.float64)
    torch.testing.assert_close(affine_from_normalized(zero, shape, exponential), identity_affine(2, ndim, torch.float64))
    params = 0.2 * torch.randn(3, ndim * ndim + ndim, dtype=torch.float64)
    matrix = affine_from_normalized(params, shape, exponential)
    normalized = affine_to_normalized(matrix, shape)
    linear = params[:, : ndim * ndim].view(-1, ndim, ndim)
    expected_linear = torch.linalg.matrix_exp(linear) if exponential else torch.eye(ndim, dtype=torch.float64) + linear
    torch.testing.assert_close(normalized[:, :, :ndim], expected_linear)
    torch.testing.assert_close(normalized[:, :, ndim], params[:, ndim * ndim:])


def test_the_same_transform_on_every_resolution():
    params = 0.3 * torch.randn(2, 12, dtype=torch.float64)
    fine, coarse = (32, 24, 16), (8, 6, 4)
    torch.testing.assert_close(rescale_affine(affine_from_normalized(params, fine), fine, coarse),
                               affine_from_normalized(params, coarse))


def test_rotation_about_the_centre_and_translation_in_half_extents():
    angle = math.radians(20)
    shape = (9, 13)  # odd: the centre (4, 6) is a voxel
    params = torch.tensor([[math.cos(angle) - 1, -math.sin(angle), math.sin(angle), math.cos(angle) - 1, 0.0, 0.0]],
                          dtype=torch.float64)
    ddf = affine_to_ddf(affine_from_normalized(params, shape), shape)
    assert ddf[0, :, 4, 6].abs().max() < 1e-12  # the centre does not move
    params = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.5, -0.25]], dtype=torch.float64)
    ddf = affine_to_ddf(affine_from_normalized(params, shape), shape)
    torch.testing.assert_close(ddf[0, :, 0, 0], torch.tensor([0.5 * 9 / 2, -0.25 * 13 / 2], dtype=torch.float64))


def test_exponential_linear_part_keeps_orientation():
    """expm(L) has det exp(trace L) > 0 even where I + L would reflect."""
    params = torch.tensor([[-2.5, 0.3, 0.1, 0.2, 0.0, 0.0]], dtype=torch.float64)
    shape = (10, 10)
    assert jacobian_determinant(affine_to_ddf(affine_from_normalized(params, shape, exponential=True), shape)).min() > 0
    assert jacobian_determinant(affine_to_ddf(affine_from_normalized(params, shape), shape)).max() < 0


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"affine_from_normalized\(\): 'params' must have shape \(B, 12\) for a 3D grid"):
        affine_from_normalized(torch.zeros(1, 6), (4, 4, 4))
    with pytest.raises(ValueError, match=r"affine_from_normalized\(\): 'exponential' must be True or False"):
        affine_from_normalized(torch.zeros(1, 6), (4, 4), exponential="yes")
    with pytest.raises(ValueError, match=r"affine_to_normalized\(\): 'matrix' must have shape"):
        affine_to_normalized(torch.zeros(1, 2, 3), (4, 4, 4))
    with pytest.raises(ValueError, match=r"affine_to_normalized\(\): 'spatial_shape'"):
        affine_to_normalized(torch.zeros(1, 2, 3), (4,))
