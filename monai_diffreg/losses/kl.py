"""KL term of probabilistic diffeomorphic VoxelMorph: diagonal Gaussian posterior vs. Laplacian prior.

Model (Dalca et al. 2018/2019): velocity ``z`` (``D`` components on a grid of ``N`` voxels) with
prior ``p(z) = N(0, (lambda L)^-1)`` per component, ``L = Dg - A`` the graph Laplacian of the
grid (``A`` the adjacency of the ``2 D``-neighbourhood, ``Dg`` the degree matrix), and posterior
``q(z) = N(mu, diag(sigma^2))``. Up to constants (``log det(lambda L)`` is infinite: ``L`` is
singular, so the prior is improper)::

    KL = 0.5 sum_{c,i} (lambda Dg_i sigma_ci^2 - log sigma_ci^2) + 0.5 lambda sum_c mu_c^T L mu_c,
    mu_c^T L mu_c = sum over grid edges (i, j) of (mu_ci - mu_cj)^2.

The reference code (``vxm.losses.KL``, TensorFlow) normalises this per voxel with means:
``0.5 D (mean(lambda Dg exp(log_var) - log_var) + lambda prec)``, ``prec = 0.5 * mean over axes of
mean(neighbour differences of mu squared)``. Its first term is exactly ``KL_sigma / N``; its
precision term is ``1 / (2 D)`` of ``KL_mu / N`` (up to the edge counts at the border), i.e. the
reference effectively uses ``lambda / (2 D)`` on the mean. :func:`kl_svf_laplacian` reproduces
the reference code, so weights tuned with it carry over.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.modules.loss import _Loss

from ..validation import check_field, check_positive
from ._utils import check_reduction, check_same_shape, promote_float, reduce_loss
from .regularization import gradient_loss

__all__ = ["degree_matrix", "kl_svf_laplacian", "ProbabilisticSVFKLLoss"]


def degree_matrix(
    shape: Sequence[int], dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Number of grid neighbours of every voxel (the diagonal of the degree matrix ``Dg``).

    ``2 D`` for an interior voxel, one less for each grid face the voxel touches (a 2D corner has
    2, a 3D corner 3); an axis of length 1 contributes none. This is what the reference code
    builds by convolving a volume of ones with the neighbour filter under zero padding ("SAME"),
    so it is the true per-voxel degree, not a constant ``2 D``.

    Args:
        shape: spatial shape ``(*spatial)``, any number of axes of length >= 1.
        dtype, device: of the returned tensor.

    Returns:
        ``(*spatial)`` tensor of degrees.
    """
    shape = [int(s) for s in shape]
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"degree_matrix(): 'shape' must be a non-empty sequence of lengths >= 1, got {shape}")
    degree = torch.zeros(shape, dtype=dtype, device=device)
    for axis, size in enumerate(shape):
        per_axis = torch.full((size,), 2.0, dtype=dtype, device=device)
        per_axis[0] -= 1
        per_axis[-1] -= 1  # a single voxel (size 1) is both first and last: 0 neighbours
        view = [1] * len(shape)
        view[axis] = size
        degree = degree + per_axis.view(view)
    return degree


def kl_svf_laplacian(
    velocity_mean: torch.Tensor,
    velocity_log_var: torch.Tensor,
    prior_lambda: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL of the diagonal SVF posterior from the graph-Laplacian prior, as the VoxelMorph code computes it.

    Per sample ``b`` (means over the ``D`` components and all voxels)::

        sigma_term = mean(lambda * Dg * exp(log_var) - log_var)
        prec_term  = lambda * 0.5 * (1 / D) sum_a mean((mu[x + e_a] - mu[x])^2)
        KL_b       = 0.5 * D * (sigma_term + prec_term)

    with ``Dg`` the per-voxel neighbour count (:func:`degree_matrix`). ``prec_term`` is
    ``0.5 * lambda *`` :func:`~monai_diffreg.losses.gradient_loss` ``(mu, "l2")``, the reference's
    ``prec_loss`` including its factor 0.5 ("needs 0.5 twice"). For ``mu = 0`` and a constant
    ``log_var = c`` the value is ``0.5 D mean(lambda Dg e^c - c)``; for each voxel it is minimised
    at ``exp(log_var) = 1 / (lambda Dg)``. See the module docstring for how this relates to the
    exact KL (the precision term is ``1 / (2 D)`` of it).

    Args:
        velocity_mean: ``(B, D, *spatial)`` posterior mean ``mu`` of the velocity, in voxels,
            2 or 3 spatial axes of at least 2 voxels each.
        velocity_log_var: ``(B, D, *spatial)`` posterior log variance ``log sigma^2`` (the
            reference code calls it ``log_sigma``, but samples with ``exp(log_sigma / 2)``).
        prior_lambda: prior precision scale ``lambda`` (> 0), in 1 / voxel^2 of the velocity grid.
        reduction: ``"mean"`` / ``"sum"`` over the batch, or ``"none"`` for ``(B,)`` values. The
            reference averages over the batch (``"mean"``).

    Returns:
        a scalar, or a ``(B,)`` tensor for ``"none"``.
    """
    caller = "kl_svf_laplacian"
    ndim = check_field(velocity_mean, "velocity_mean", caller)
    check_field(velocity_log_var, "velocity_log_var", caller)
    check_same_shape(velocity_mean, velocity_log_var, "velocity_mean", "velocity_log_var", caller)
    if min(velocity_mean.shape[2:]) < 2:
        raise ValueError(
            f"{caller}(): every spatial axis of 'velocity_mean' needs >= 2 voxels, "
            f"got shape {tuple(velocity_mean.shape)}"
        )
    prior_lambda = check_positive(prior_lambda, "prior_lambda", caller)
    reduction = check_reduction(reduction, caller)

    mu, log_var = promote_float(velocity_mean), promote_float(velocity_log_var)
    degree = degree_matrix(log_var.shape[2:], dtype=log_var.dtype, device=log_var.device)
    sigma_term = (prior_lambda * degree * log_var.exp() - log_var).flatten(1).mean(dim=1)
    prec_term = prior_lambda * 0.5 * gradient_loss(mu, "l2", reduction="none")
    return reduce_loss(0.5 * ndim * (sigma_term + prec_term), reduction)


class ProbabilisticSVFKLLoss(_Loss):
    """KL term of probabilistic VoxelMorph as a MONAI-style loss: ``loss(velocity_mean, velocity_log_var)``.

    See :func:`kl_svf_laplacian` (reference-code normalisation, per-voxel degree).

    Args:
        prior_lambda: prior precision scale ``lambda`` (> 0).
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for ``(B,)`` values.
    """

    def __init__(self, prior_lambda: float, reduction: str = "mean") -> None:
        super().__init__(reduction=check_reduction(reduction, "ProbabilisticSVFKLLoss"))
        self.prior_lambda = check_positive(prior_lambda, "prior_lambda", "ProbabilisticSVFKLLoss")

    def forward(self, velocity_mean: torch.Tensor, velocity_log_var: torch.Tensor) -> torch.Tensor:
        """Args: ``velocity_mean``, ``velocity_log_var``: ``(B, D, *spatial)`` network outputs."""
        return kl_svf_laplacian(velocity_mean, velocity_log_var, self.prior_lambda, self.reduction)

    def extra_repr(self) -> str:
        return f"prior_lambda={self.prior_lambda}, reduction={self.reduction!r}"
