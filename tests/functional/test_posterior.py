"""Posterior sampling: reparametrisation, the sigma-lambda relation, the smoothed KL degree, smoothness."""

from __future__ import annotations

import math

import pytest
import torch

from monai_diffreg.functional import gaussian_smooth
from monai_diffreg.functional.posterior import posterior_smoothing_sigma, sample_velocity
from monai_diffreg.functional.posterior import smoothed_posterior_degree


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("prior_lambda", [0.5, 2.0, 10.0, 25.0])
def test_sigma_from_lambda_matches_the_papers_relation(spatial_dims, prior_lambda):
    """Peak of the normalised n-D Gaussian (2 pi sigma^2)^(-n/2) equals (2 n lambda)^-1 (6 lambda in 3D)."""
    sigma = posterior_smoothing_sigma(prior_lambda, spatial_dims)
    peak = (2 * math.pi * sigma**2) ** (-spatial_dims / 2)
    assert peak == pytest.approx(1.0 / (2 * spatial_dims * prior_lambda), rel=1e-12)


def test_sigma_values_3d():
    assert posterior_smoothing_sigma(10.0) == pytest.approx(1.5618, abs=1e-4)
    assert posterior_smoothing_sigma(25.0) == pytest.approx(2.1196, abs=1e-4)
    assert posterior_smoothing_sigma(20.0) > posterior_smoothing_sigma(10.0)  # stronger prior, smoother


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("sigma", [0.7, 1.5])
def test_smoothed_degree_is_dirichlet_energy_of_the_kernel(spatial_dims, sigma):
    """c = e^T C^T L C e: sum over grid edges of squared differences of the smoothed delta (brute force)."""
    size = 41
    delta = torch.zeros((1, 1, *[size] * spatial_dims), dtype=torch.float64)
    delta[(0, 0, *[size // 2] * spatial_dims)] = 1.0
    kernel = gaussian_smooth(delta, sigma, padding_mode="zeros")
    energy = sum(float((torch.diff(kernel, dim=axis) ** 2).sum()) for axis in range(2, spatial_dims + 2))
    assert smoothed_posterior_degree(sigma, spatial_dims) == pytest.approx(energy, rel=1e-9)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_smoothed_degree_without_smoothing_is_the_neighbour_count(spatial_dims):
    assert smoothed_posterior_degree(1e-3, spatial_dims) == pytest.approx(2 * spatial_dims, rel=1e-9)


def test_diagonal_sample_is_mean_plus_scaled_noise():
    mean, log_var, noise = torch.randn(2, 3, 6, 7, 8), torch.randn(2, 3, 6, 7, 8), torch.randn(2, 3, 6, 7, 8)
    z = sample_velocity(mean, log_var, "diagonal", noise=noise)
    torch.testing.assert_close(z, mean + torch.exp(log_var / 2) * noise)
    smoothed = sample_velocity(mean, log_var, "smoothed", smoothing_sigma=1.2, noise=noise)
    torch.testing.assert_close(smoothed, mean + gaussian_smooth(torch.exp(log_var / 2) * noise, 1.2, padding_mode="zeros"))


def _gradient_energy(field):
    return sum(float((torch.diff(field, dim=axis) ** 2).mean()) for axis in range(2, field.ndim))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_smoothed_samples_are_smoother_than_diagonal_ones(spatial_dims):
    """Same mean, same D, same r: z = mu + C(D r) has far less gradient energy than z = mu + D r."""
    shape = (1, spatial_dims, *[24] * spatial_dims)
    mean = torch.zeros(shape)
    log_var = torch.full(shape, math.log(0.5))
    noise = torch.randn(shape)
    sigma = posterior_smoothing_sigma(10.0, spatial_dims)
    diagonal = sample_velocity(mean, log_var, "diagonal", noise=noise)
    smoothed = sample_velocity(mean, log_var, "smoothed", smoothing_sigma=sigma, noise=noise)
    assert _gradient_energy(smoothed) < 0.1 * _gradient_energy(diagonal)


def test_sampling_is_differentiable():
    mean = torch.zeros(1, 2, 8, 8, requires_grad=True)
    log_var = torch.zeros(1, 2, 8, 8, requires_grad=True)
    sample_velocity(mean, log_var, "smoothed", smoothing_sigma=1.0).pow(2).sum().backward()
    assert mean.grad is not None and log_var.grad is not None and log_var.grad.abs().sum() > 0


def test_bad_arguments():
    mean = torch.zeros(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"sample_velocity\(\): 'posterior' must be one of"):
        sample_velocity(mean, mean, "full")
    with pytest.raises(ValueError, match=r"'smoothed' posterior needs 'smoothing_sigma'"):
        sample_velocity(mean, mean, "smoothed")
    with pytest.raises(ValueError, match=r"'log_var' must have the shape of 'mean' \(1, 2, 8, 8\), got \(1, 2, 8, 9\)"):
        sample_velocity(mean, torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match=r"'prior_lambda' must be a finite number > 0"):
        posterior_smoothing_sigma(0.0)
    with pytest.raises(ValueError, match=r"'spatial_dims' must be 2 or 3"):
        posterior_smoothing_sigma(1.0, 4)
