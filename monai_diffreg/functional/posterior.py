"""Sampling the approximate posterior over stationary velocity fields (probabilistic VoxelMorph).

The network outputs the mean ``mu`` and log variance ``log_var`` of a Gaussian
``q(z | x, y)`` over the velocity field ``z``. Two covariance models:

* ``"diagonal"`` (Dalca et al., MICCAI 2018): ``Sigma = D D^T`` with ``D = diag(exp(log_var / 2))``,
  sampled as ``z = mu + D r``, ``r ~ N(0, I)`` (independent noise at every voxel).
* ``"smoothed"`` (Dalca et al., "Improved probabilistic diffeomorphic registration with CNNs",
  eq. 1): ``Sigma = C D D^T C^T`` with ``C`` a fixed Gaussian smoothing, sampled with the
  reparametrisation ``z = mu + C (D r)``: the perturbation added to the mean is smooth.

The paper ties the Gaussian scale to the prior precision ``lambda L`` by a formula that the
text garbles (``1 / sqrt(2 pi sigma^{3/2}) = (6 lambda)^-1``). We read it as: the peak of the
normalised ``n``-D Gaussian kernel, ``(2 pi sigma^2)^{-n/2}`` (``(2 pi sigma^2)^{3/2}`` being the
"2 pi", "sigma" and "3/2" of the garbled text), equals the inverse of the prior precision's
diagonal, ``(lambda * 2n)^-1`` (``2n`` = number of grid neighbours, 6 in 3D):

    sigma_c = (2 n lambda)^{1/n} / sqrt(2 pi)        (3D: (6 lambda)^{1/3} / sqrt(2 pi))

This is the only reading that yields kernel widths of a few voxels for the lambdas VoxelMorph
uses (lambda = 10 -> 1.56 voxels, 25 -> 2.12); the literal ``sqrt(2 pi) sigma^{3/2} = 6 lambda``
gives 8.3 and 12.4 voxels, which would blur the perturbation over most of a half-resolution
brain. ``sigma_c`` is in voxels of the velocity grid.
"""

from __future__ import annotations

import math

import torch

from ..validation import check_choice, check_field, check_positive
from .smoothing import gaussian_kernel1d, gaussian_smooth

__all__ = [
    "POSTERIORS", "posterior_smoothing_sigma", "smoothed_posterior_degree", "posterior_degree", "optimal_log_variance",
    "sample_velocity",
]

POSTERIORS = ("diagonal", "smoothed")


def posterior_smoothing_sigma(prior_lambda: float, spatial_dims: int = 3) -> float:
    """Gaussian scale ``sigma_c`` of the smoothed posterior, from the prior's ``lambda``.

    Solves ``(2 pi sigma_c^2)^{-n/2} = (2 n lambda)^{-1}`` (see the module docstring).

    Args:
        prior_lambda: prior precision scale ``lambda`` (> 0).
        spatial_dims: ``n``, 2 or 3.

    Returns:
        ``sigma_c`` in voxels of the velocity grid.
    """
    check_positive(prior_lambda, "prior_lambda", "posterior_smoothing_sigma")
    if spatial_dims not in (2, 3):
        raise ValueError(f"posterior_smoothing_sigma(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
    return (2 * spatial_dims * prior_lambda) ** (1.0 / spatial_dims) / math.sqrt(2 * math.pi)


def smoothed_posterior_degree(smoothing_sigma: float, spatial_dims: int = 3) -> float:
    """Diagonal ``(C^T L C)_jj`` of the graph Laplacian seen through the smoothing ``C`` (interior voxel).

    With ``Sigma = C D D^T C^T`` the exact KL from the prior ``N(0, (lambda L)^-1)`` is, up to
    constants, ``0.5 sum_j (lambda c D_j^2 - log D_j^2) + 0.5 lambda mu^T L mu`` with
    ``c = (C^T L C)_jj`` (``tr(L C D^2 C^T) = sum_j D_j^2 (C^T L C)_jj``, ``log det Sigma =
    2 log det C + sum_j log D_j^2``): the diagonal posterior's KL with the neighbour count ``2n``
    replaced by ``c``, the Dirichlet energy of the smoothing kernel ``k`` (sum over grid edges of
    squared differences). For the separable kernel ``k(x) = prod_i k1(x_i)``,
    ``c = n * sum_t (k1(t + 1) - k1(t))^2 * (sum_t k1(t)^2)^(n - 1)``. ``c = 2n`` without smoothing.

    Args:
        smoothing_sigma: ``sigma_c`` in voxels (> 0).
        spatial_dims: ``n``, 2 or 3.
    """
    check_positive(smoothing_sigma, "smoothing_sigma", "smoothed_posterior_degree")
    if spatial_dims not in (2, 3):
        raise ValueError(f"smoothed_posterior_degree(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
    k1 = torch.nn.functional.pad(gaussian_kernel1d(smoothing_sigma, dtype=torch.float64), (1, 1))
    energy = float(((k1[1:] - k1[:-1]) ** 2).sum())
    return spatial_dims * energy * float((k1**2).sum()) ** (spatial_dims - 1)


def posterior_degree(posterior: str, prior_lambda: float, spatial_dims: int = 3) -> float:
    """Weight ``c`` of an interior voxel's variance in the KL: ``0.5 (lambda c D_j^2 - log D_j^2)``.

    ``2n`` (the neighbour count) for ``"diagonal"``; for ``"smoothed"`` the Dirichlet energy of
    the smoothing kernel whose scale ``lambda`` sets (:func:`smoothed_posterior_degree`).
    """
    check_choice(posterior, "posterior", "posterior_degree", POSTERIORS)
    if posterior == "diagonal":
        return 2.0 * spatial_dims
    return smoothed_posterior_degree(posterior_smoothing_sigma(prior_lambda, spatial_dims), spatial_dims)


def optimal_log_variance(posterior: str, prior_lambda: float, spatial_dims: int = 3) -> float:
    """``log D^2`` minimising the KL at an interior voxel: ``-log(lambda c)``, ``c`` = :func:`posterior_degree`.

    3D, ``lambda = 10``: -4.09 (diagonal), 3.37 (smoothed: the smoothing ``C`` shrinks the
    perturbation, so ``D`` itself is large).
    """
    return -math.log(prior_lambda * posterior_degree(posterior, prior_lambda, spatial_dims))


def sample_velocity(mean: torch.Tensor, log_var: torch.Tensor, posterior: str = "diagonal",
                    smoothing_sigma: float | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Draw one velocity field from the approximate posterior (reparametrisation trick).

    ``z = mu + exp(log_var / 2) * r`` (diagonal) or ``z = mu + C(exp(log_var / 2) * r)``
    (smoothed), with ``C`` a Gaussian smoothing of standard deviation ``smoothing_sigma``
    (zero padding, so the perturbation fades at the border instead of repeating it).
    Differentiable with respect to ``mean`` and ``log_var``.

    Args:
        mean: ``(B, D, *spatial)`` posterior mean ``mu`` in voxels of the velocity grid.
        log_var: ``(B, D, *spatial)`` log of the diagonal of ``D D^T``.
        posterior: ``"diagonal"`` or ``"smoothed"``.
        smoothing_sigma: ``sigma_c`` in voxels, required for ``"smoothed"``
            (see :func:`posterior_smoothing_sigma`).
        noise: ``r``, same shape as ``mean``; drawn from ``N(0, I)`` when omitted.

    Returns:
        ``(B, D, *spatial)`` sample ``z``.
    """
    check_field(mean, "mean", "sample_velocity")
    check_choice(posterior, "posterior", "sample_velocity", POSTERIORS)
    for name, value in (("log_var", log_var), ("noise", noise)):
        if value is not None and tuple(value.shape) != tuple(mean.shape):
            raise ValueError(
                f"sample_velocity(): '{name}' must have the shape of 'mean' {tuple(mean.shape)}, got {tuple(value.shape)}"
            )
    if noise is None:
        noise = torch.randn_like(mean)
    perturbation = torch.exp(0.5 * log_var) * noise
    if posterior == "smoothed":
        if smoothing_sigma is None:
            raise ValueError("sample_velocity(): the 'smoothed' posterior needs 'smoothing_sigma', got None")
        check_positive(smoothing_sigma, "smoothing_sigma", "sample_velocity")
        perturbation = gaussian_smooth(perturbation, smoothing_sigma, padding_mode="zeros")
    return mean + perturbation
