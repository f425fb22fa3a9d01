"""Gaussian smoothing: normalised kernel, agreement with scipy, constants preserved."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_diffreg.functional import gaussian_kernel1d, gaussian_smooth


def test_kernel_is_normalised_and_symmetric():
    k = gaussian_kernel1d(1.732, kernel_size=3, dtype=torch.float64)
    assert k.shape == (3,)
    torch.testing.assert_close(k.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(k, k.flip(0))
    assert gaussian_kernel1d(2.0).numel() == 2 * 6 + 1


@pytest.mark.parametrize("shape", [(20, 22), (12, 13, 14)])
def test_matches_scipy_gaussian_filter_in_the_interior(shape):
    x = torch.rand(1, 1, *shape, dtype=torch.float64)
    ours = gaussian_smooth(x, 1.5)[0, 0].numpy()
    reference = ndimage.gaussian_filter(x[0, 0].numpy(), 1.5, truncate=3.0, mode="nearest")
    np.testing.assert_allclose(ours, reference, atol=1e-12)


def test_constant_is_preserved_and_channels_independent():
    x = torch.stack([torch.full((25, 25), 3.0), torch.zeros(25, 25)]).unsqueeze(0)
    x[0, 1, 12, 12] = 1.0  # the kernels (half-widths 3 and 6) stay inside the grid: mass is kept
    y = gaussian_smooth(x, [1.0, 2.0])
    torch.testing.assert_close(y[0, 0], x[0, 0])
    torch.testing.assert_close(y[0, 1].sum(), torch.tensor(1.0))


def test_bad_input():
    with pytest.raises(ValueError, match=r"gaussian_kernel1d\(\): 'sigma' must be a finite number > 0"):
        gaussian_smooth(torch.zeros(1, 1, 4, 4), 0.0)
    with pytest.raises(ValueError, match=r"gaussian_kernel1d\(\): 'kernel_size' must be an odd integer"):
        gaussian_kernel1d(1.0, kernel_size=4)
    with pytest.raises(ValueError, match=r"gaussian_smooth\(\): 'sigma' must be one number or 2 numbers"):
        gaussian_smooth(torch.zeros(1, 1, 4, 4), [1.0, 1.0, 1.0])
