"""Jacobian determinant: affine fields give det(A); folding is detected; matches numpy.gradient."""

import numpy as np
import pytest
import torch

from monai_diffreg.functional import identity_grid, jacobian_determinant, jacobian_matrix, spatial_gradient


def affine_ddf(matrix, translation, shape, dtype=torch.float64):
    """Displacement of x -> A x + t on a grid: u(x) = (A - I) x + t."""
    ndim = len(shape)
    x = identity_grid(shape, dtype=dtype)
    a = torch.as_tensor(matrix, dtype=dtype)
    t = torch.as_tensor(translation, dtype=dtype).view(ndim, *([1] * ndim))
    return (torch.einsum("ij,j...->i...", a - torch.eye(ndim, dtype=dtype), x) + t).unsqueeze(0)


@pytest.mark.parametrize(
    "matrix",
    [
        [[1.1, 0.2, 0.0], [-0.1, 0.9, 0.3], [0.05, 0.0, 1.2]],
        [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],  # a reflection: det = -1
    ],
)
def test_affine_field_has_det_a_everywhere(matrix):
    ddf = affine_ddf(matrix, [1.0, -2.0, 0.5], (7, 8, 9))
    det = jacobian_determinant(ddf)
    assert det.shape == (1, 1, 7, 8, 9)
    torch.testing.assert_close(det, torch.full_like(det, float(np.linalg.det(matrix))), atol=1e-12, rtol=0)
    torch.testing.assert_close(jacobian_matrix(ddf)[0, :, :, 3, 4, 5], torch.tensor(matrix, dtype=torch.float64))


def test_2d_affine_and_folding():
    det = jacobian_determinant(affine_ddf([[2.0, 0.5], [0.0, 1.5]], [0.0, 0.0], (6, 6)))
    torch.testing.assert_close(det, torch.full_like(det, 3.0))
    folded = torch.zeros(1, 2, 9, 9, dtype=torch.float64)
    folded[0, 0, 4, :] = -3.0  # row 4 is pulled back past row 3: phi_0(3) = 3 > phi_0(4) = 1
    det = jacobian_determinant(folded)[0, 0]
    # central differences: row 3 sees (-3 - 0) / 2 -> 1 - 1.5, row 4 sees 0, row 5 sees (0 + 3) / 2
    for row, value in [(2, 1.0), (3, -0.5), (4, 1.0), (5, 2.5), (6, 1.0)]:
        torch.testing.assert_close(det[row], torch.full_like(det[row], value))


def test_spatial_gradient_matches_numpy():
    x = torch.rand(1, 2, 5, 6, 7, dtype=torch.float64)
    grads = spatial_gradient(x)
    for c in range(2):
        for axis, g in enumerate(np.gradient(x[0, c].numpy())):
            np.testing.assert_allclose(grads[0, c, axis].numpy(), g, atol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match=r"jacobian_determinant\(\): 'ddf' must have 3 channels"):
        jacobian_determinant(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match=r"jacobian_determinant\(\): every spatial axis needs >= 2 voxels"):
        jacobian_determinant(torch.zeros(1, 3, 1, 4, 4))
    with pytest.raises(ValueError, match=r"spatial_gradient\(\): every spatial axis needs >= 2 voxels"):
        spatial_gradient(torch.zeros(1, 1, 1, 4))


@pytest.mark.parametrize("ndim", [2, 3])
def test_determinant_equals_the_determinant_of_the_jacobian_matrix(ndim):
    """The closed form on the derivatives (no matrix built) agrees with LU on the full Jacobian."""
    ddf = torch.randn(2, ndim, *([9] * ndim), dtype=torch.float64)
    expected = torch.linalg.det(jacobian_matrix(ddf).permute(0, *range(3, ndim + 3), 1, 2))
    torch.testing.assert_close(jacobian_determinant(ddf)[:, 0], expected, rtol=0, atol=1e-12)


def test_derivatives_match_torch_gradient_on_short_axes_and_are_differentiable():
    """Two-voxel axes (one-sided differences only) as torch.gradient; float64 gradcheck of det J."""
    x = torch.rand(1, 2, 2, 3, 5, dtype=torch.float64)
    expected = torch.stack(torch.gradient(x, dim=(2, 3, 4)), dim=2)
    torch.testing.assert_close(spatial_gradient(x), expected, rtol=0, atol=0)
    ddf = (0.3 * torch.randn(1, 3, 3, 4, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(jacobian_determinant, (ddf,))
