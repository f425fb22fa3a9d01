"""Multi-Gaussian kernels in Fourier space: equal to the spatial (circular) convolution, normalised, and the OMT penalty."""

from __future__ import annotations

import math

import pytest
import torch

from monai_diffreg.mermaid import apply_kernel, gaussian_multiplier, kernel_energy, kernel_multiplier, omt_penalty


def _circular_gaussian(x: torch.Tensor, sigma: float, spacing: tuple[float, ...]) -> torch.Tensor:
    """Reference: separable circular convolution with the sampled, normalised Gaussian (periodised), by rolls."""
    out = x
    for axis, h in enumerate(spacing):
        n = x.shape[axis + 2]
        offsets = torch.arange(n, dtype=torch.float64)
        distance = torch.minimum(offsets, n - offsets) * h  # periodic distance to voxel 0
        weights = sum(torch.exp(-0.5 * ((distance + p * n * h) / sigma) ** 2) for p in (-2, -1, 0, 1, 2))
        weights = weights / weights.sum()
        out = sum(w * torch.roll(out, shifts=int(j), dims=axis + 2) for j, w in enumerate(weights))
    return out


@pytest.mark.parametrize("shape, sigma, spacing, tolerance", [
    ((24, 20), 2.0, (1.0, 1.0), 1e-7), ((16, 18, 14), 3.0, (1.5, 1.0, 1.5), 1e-7), ((20, 21), 2.0, (1.0, 0.8), 1e-7),
    ((20, 21), 1.0, (1.0, 1.0), 1e-2)])  # sigma = one voxel: aliasing of order exp(-pi^2 / 2) at the Nyquist frequency
def test_fourier_gaussian_equals_spatial_circular_convolution(shape, sigma, spacing, tolerance):
    x = torch.randn(1, len(shape), *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    multiplier = gaussian_multiplier(shape, sigma, spacing, dtype=torch.float64)
    torch.testing.assert_close(apply_kernel(x, multiplier), _circular_gaussian(x, sigma, spacing), rtol=0,
                               atol=tolerance)


def test_several_kernels_in_one_transform_equal_one_at_a_time():
    shape, sigmas = (12, 10, 9), (1.5, 3.0, 6.0)
    multipliers = torch.stack([gaussian_multiplier(shape, s, (1.0, 1.5, 1.0), dtype=torch.float64) for s in sigmas])
    fields = torch.randn(2, len(sigmas), 3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    together = apply_kernel(fields, multipliers[:, None], ndim=3)
    for i in range(len(sigmas)):
        torch.testing.assert_close(together[:, i], apply_kernel(fields[:, i], multipliers[i]), rtol=0, atol=1e-12)


def test_kernel_is_normalised_and_a_weighted_sum():
    shape, spacing = (12, 10, 8), (1.0, 2.0, 1.5)
    multiplier = kernel_multiplier(shape, (1.0, 4.0), (0.25, 0.75), spacing, dtype=torch.float64)
    assert multiplier[0, 0, 0] == pytest.approx(1.0)  # K * constant = constant
    expected = 0.25 * gaussian_multiplier(shape, 1.0, spacing, dtype=torch.float64) + \
        0.75 * gaussian_multiplier(shape, 4.0, spacing, dtype=torch.float64)
    torch.testing.assert_close(multiplier, expected)
    constant = torch.full((1, 3, *shape), 2.5, dtype=torch.float64)
    torch.testing.assert_close(apply_kernel(constant, multiplier), constant)
    assert torch.equal(kernel_multiplier(shape, (2.0, 3.0), None, spacing),
                       kernel_multiplier(shape, (2.0, 3.0), (0.5, 0.5), spacing))


def test_kernel_energy_is_a_positive_mean_and_grid_independent():
    """<m, K m> >= 0 (K is positive definite); the same smooth field on a finer grid gives the same value."""
    coarse = torch.zeros(1, 2, 32, 32, dtype=torch.float64)
    fine = torch.zeros(1, 2, 64, 64, dtype=torch.float64)
    for field, h in ((coarse, 2.0), (fine, 1.0)):
        y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) * h for n in field.shape[2:]), indexing="ij")
        field[0, 0] = torch.sin(2 * math.pi * x / 64.0)
        field[0, 1] = torch.cos(2 * math.pi * y / 64.0)
    values = []
    for field, h in ((coarse, 2.0), (fine, 1.0)):
        velocity = apply_kernel(field, kernel_multiplier(field.shape[2:], (4.0,), None, (h, h), dtype=torch.float64))
        values.append(float(kernel_energy(field, velocity)))
    assert values[0] > 0
    assert values[0] == pytest.approx(values[1], rel=1e-6)


def test_omt_penalty():
    sigmas = (1.0, 2.0, 8.0)
    assert float(omt_penalty(torch.tensor([0.0, 0.0, 1.0]), sigmas)) == pytest.approx(0.0)
    assert float(omt_penalty(torch.tensor([1.0, 0.0, 0.0]), sigmas)) == pytest.approx(1.0)
    expected = 0.5 * math.log(4.0) / math.log(8.0)  # half the weight at sigma 2
    assert float(omt_penalty(torch.tensor([0.0, 0.5, 0.5]), sigmas)) == pytest.approx(expected)
    assert float(omt_penalty(torch.tensor([0.0, 0.5, 0.5]), sigmas, power=2.0)) == pytest.approx(
        0.5 * math.log(4.0) ** 2 / math.log(8.0) ** 2)


@pytest.mark.parametrize("sigmas, weights, match", [((), None, "'sigmas' must be a non-empty"),
                                                    ((1.0, -2.0), None, "'sigmas' must be a finite number > 0"),
                                                    ((1.0, 2.0), (0.5, 0.6), "'weights' must be 2 numbers >= 0 summing to 1"),
                                                    ((1.0, 2.0), (1.5, -0.5), "'weights' must be 2 numbers")])
def test_bad_kernels(sigmas, weights, match):
    with pytest.raises(ValueError, match=match):
        kernel_multiplier((8, 8), sigmas, weights)
