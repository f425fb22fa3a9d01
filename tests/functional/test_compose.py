"""Composition: translations add, and warping twice equals warping by the composition."""

import torch

from monai_diffreg.functional import compose_ddf, gaussian_smooth, identity_grid, warp


def test_translations_add():
    a = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1, 1).expand(1, 3, 6, 6, 6)
    b = torch.tensor([0.25, 1.0, -1.5]).view(1, 3, 1, 1, 1).expand(1, 3, 6, 6, 6)
    torch.testing.assert_close(compose_ddf(a, b), a + b)


def test_warp_twice_equals_warp_by_composition_exactly():
    """With a linear image and an affine outer field, linear interpolation is exact, so
    ``warp(warp(img, a), b) == warp(img, compose_ddf(a, b))`` to rounding, for any inner ``b``
    that stays inside the grid; the reversed composition ``compose_ddf(b, a)`` does not match."""
    shape = (20, 20, 20)
    x = identity_grid(shape, dtype=torch.float64)
    image = (0.3 * x[0] - 0.7 * x[1] + 1.1 * x[2]).view(1, 1, *shape)
    a_matrix = torch.tensor([[0.05, 0.02, 0.0], [-0.03, 0.04, 0.01], [0.0, 0.02, -0.05]], dtype=torch.float64)
    a = torch.einsum("ij,j...->i...", a_matrix, x - 9.5).unsqueeze(0)  # affine about the centre, |a| < 1 voxel
    b = gaussian_smooth(torch.randn(1, 3, *shape, dtype=torch.float64), 3.0)
    b = b * (2.0 / b.abs().max())
    interior = (..., slice(5, -5), slice(5, -5), slice(5, -5))
    twice = warp(warp(image, a), b)
    once = warp(image, compose_ddf(a, b))
    torch.testing.assert_close(twice[interior], once[interior], atol=1e-10, rtol=0)
    assert (twice - warp(image, compose_ddf(b, a)))[interior].abs().max() > 1e-3
