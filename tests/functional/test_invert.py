"""invert_ddf: exact for translations, inverse of an affine field, compose(u, inverse) ~ 0 for smooth fields, gradcheck."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.functional import affine_to_ddf, compose_ddf, gaussian_smooth
from monai_diffreg.functional.invert import invert_ddf


def _smooth_field(shape, max_gradient, sigma=3.0, seed=0):
    """A smooth random field scaled so that its largest central difference is ``max_gradient``."""
    generator = torch.Generator().manual_seed(seed)
    u = gaussian_smooth(torch.randn(1, len(shape), *shape, generator=generator, dtype=torch.float64), sigma)
    slope = max((torch.diff(u, dim=axis).abs().max() for axis in range(2, 2 + len(shape))))
    return u * (max_gradient / slope)


@pytest.mark.parametrize("shape", [(9, 11), (6, 7, 5)])
def test_a_constant_translation_is_inverted_exactly(shape):
    t = torch.tensor([1.7, -2.4, 0.6][: len(shape)], dtype=torch.float64).view(1, -1, *[1] * len(shape))
    u = t.expand(2, len(shape), *shape).clone()
    for iterations in (1, 5):  # exact up to the rounding of the interpolation weights
        torch.testing.assert_close(invert_ddf(u, iterations=iterations), -u, atol=1e-12, rtol=0)
    assert torch.equal(invert_ddf(u, iterations=0), -u)


def test_inverse_of_an_affine_field():
    """u(x) = (A - I) x + t: the inverse is (A^-1 - I) x - A^-1 t; the iteration contracts by ||A - I|| = 0.3."""
    shape = (24, 24)
    matrix = torch.tensor([[[1.2, 0.1, -1.0], [-0.15, 0.9, 2.0]]], dtype=torch.float64)
    inverse_linear = torch.linalg.inv(matrix[:, :, :2])
    inverse_matrix = torch.cat([inverse_linear, -(inverse_linear @ matrix[:, :, 2:])], dim=2)
    u = affine_to_ddf(matrix, shape)
    interior = (..., slice(6, -6), slice(6, -6))  # where x + v(x) stays inside the grid
    errors = [(invert_ddf(u, n) - affine_to_ddf(inverse_matrix, shape))[interior].abs().max() for n in (2, 10, 40)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-9


@pytest.mark.parametrize("shape", [(32, 32), (20, 20, 20)])
def test_composes_to_the_identity_for_a_smooth_field(shape):
    u = _smooth_field(shape, max_gradient=0.4)
    assert u.abs().max() > 1.0  # displacements of several voxels
    inverse = invert_ddf(u, iterations=20)
    interior = (..., *[slice(4, n - 4) for n in shape])
    residual = compose_ddf(u, inverse)[interior].abs().max()
    assert residual < 1e-5  # phi o phi^-1 = id (the fixed point)
    assert compose_ddf(inverse, u)[interior].abs().max() < 0.05  # phi^-1 o phi ~ id up to interpolation
    assert compose_ddf(u, invert_ddf(u, iterations=0))[interior].abs().max() > 100 * residual  # -u is no inverse


def test_gradcheck_float64():
    u = (_smooth_field((6, 5), max_gradient=0.3, sigma=1.0) + 0.013).requires_grad_()
    assert torch.autograd.gradcheck(lambda d: invert_ddf(d, iterations=3), (u,))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"invert_ddf\(\): 'iterations' must be an integer >= 0, got -1"):
        invert_ddf(torch.zeros(1, 2, 4, 4), iterations=-1)
    with pytest.raises(ValueError, match=r"invert_ddf\(\): 'ddf' must have 2 channels"):
        invert_ddf(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"invert_ddf\(\): 'padding_mode' must be one of"):
        invert_ddf(torch.zeros(1, 2, 4, 4), padding_mode="wrap")
