"""Keypoints from feature maps and the affine transform that best matches two keypoint sets.

The affine stage of SynthMorph 2024 (Hoffmann et al., "Anatomy-aware and acquisition-agnostic
joint registration with SynthMorph", Imaging Neuroscience 2024) and KeyMorph (Wang et al.,
"A robust and interpretable deep learning framework for multi-modal registration via keypoints",
MedIA 2023): a network turns each image into ``K`` non-negative feature maps, the centre of mass
of map ``k`` is keypoint ``k`` of that image (:func:`feature_centroids`), and the affine transform
is the weighted least-squares fit between the fixed and the moving keypoints (:func:`fit_affine`).
Points are voxel indices ``(..., D)`` in tensor axis order (the order of a ddf's components);
matrices follow :mod:`monai_diffreg.functional.affine` (fixed-grid voxel index -> moving-grid voxel index).
"""

from __future__ import annotations

import torch

from ..validation import check_positive, check_spatial_tensor
from .grid import identity_grid

__all__ = ["feature_centroids", "fit_affine", "MASS_EPS"]

MASS_EPS = 1e-12
"""Smallest mass divided by: a channel (or a set of weights) summing to less gives centroids ``sum / MASS_EPS``
(0 for an all-zero channel) instead of NaN; its mass, hence its weight in :func:`fit_affine`, is ~0 anyway."""


def feature_centroids(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre of mass of every channel of non-negative feature maps.

    Args:
        features: ``(B, K, *S)`` non-negative, 2D or 3D.

    Returns:
        ``points`` ``(B, K, D)``: the feature-weighted mean voxel index of each channel (tensor axis
        order; masses below :data:`MASS_EPS` are divided by :data:`MASS_EPS`), and ``masses``
        ``(B, K)``: the sum of each channel. Both differentiable, in the features' dtype.
    """
    check_spatial_tensor(features, "features", "feature_centroids")
    grid = identity_grid(features.shape[2:], features.device, features.dtype).flatten(1)  # (D, N)
    flat = features.flatten(2)  # (B, K, N)
    masses = flat.sum(dim=2)
    points = flat @ grid.T / masses.clamp_min(MASS_EPS).unsqueeze(-1)
    return points, masses


def fit_affine(fixed_points: torch.Tensor, moving_points: torch.Tensor, weights: torch.Tensor | None = None,
               ridge: float = 1e-9) -> torch.Tensor:
    """Weighted least-squares affine ``moving ~ A fixed + t`` between matched point sets.

    Minimises ``sum_k w_k |A f_k + t - m_k|^2 + lambda |A - I|^2`` (weights normalised to sum 1).
    The translation is free, so the fit is centred: with ``f~``, ``m~`` the points minus their weighted
    means and ``C_ff = sum_k w_k f~_k f~_k^T``, ``C_mf = sum_k w_k m~_k f~_k^T``, the normal equations give
    ``A = (C_mf + lambda I)(C_ff + lambda I)^-1`` and ``t = mean(m) - A mean(f)``, solved in float64.
    The ridge ``lambda = ridge * (tr(C_ff) / D + 1 voxel^2)`` is relative to the spread of the fixed
    points. It makes the system invertible when the points are degenerate (fewer than ``D + 1``
    points with weight, or all on a plane or a line: ``A`` is the identity along the directions they
    do not span; all weights zero: the identity) and acts where they are flatter than ~``sqrt(ridge)``
    of their spread (3e-5 by default, about the resolution of float32 keypoints). Elsewhere it
    changes ``A`` by ~``ridge * cond(C_ff) * |A - I|``: below 1e-6 for points spread in every
    direction (``cond(C_ff) < 1e3``); ``ridge=0`` for exact fits of nearly flat point sets.

    Args:
        fixed_points: ``(B, N, D)`` voxel indices on the fixed grid, ``D`` = 2 or 3.
        moving_points: ``(B, N, D)`` the matching voxel indices on the moving grid.
        weights: ``(B, N)`` non-negative (normalised here); None: all equal.
        ridge: relative ridge, ``>= 0`` (0: plain least squares, singular when the points are degenerate).

    Returns:
        ``(B, D, D + 1)`` matrix ``[A | t]`` in the points' dtype, differentiable with respect to the
        points and the weights.
    """
    caller = "fit_affine"
    if not isinstance(fixed_points, torch.Tensor) or fixed_points.ndim != 3 or fixed_points.shape[2] not in (2, 3) \
            or fixed_points.shape[1] < 1:
        got = tuple(fixed_points.shape) if isinstance(fixed_points, torch.Tensor) else type(fixed_points).__name__
        raise ValueError(f"{caller}(): 'fixed_points' must have shape (B, N, D) with N >= 1 and D = 2 or 3, got {got}")
    if not isinstance(moving_points, torch.Tensor) or moving_points.shape != fixed_points.shape:
        got = tuple(moving_points.shape) if isinstance(moving_points, torch.Tensor) else type(moving_points).__name__
        raise ValueError(f"{caller}(): 'moving_points' must have the shape of 'fixed_points' "
                         f"{tuple(fixed_points.shape)}, got {got}")
    if weights is not None and (not isinstance(weights, torch.Tensor) or weights.shape != fixed_points.shape[:2]):
        got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"{caller}(): 'weights' must have shape {tuple(fixed_points.shape[:2])} (B, N), got {got}")
    check_positive(ridge, "ridge", caller, allow_zero=True)
    fixed, moving = fixed_points.double(), moving_points.double()
    w = torch.ones_like(fixed[..., 0]) if weights is None else weights.double()
    w = w / w.sum(dim=1, keepdim=True).clamp_min(MASS_EPS)
    fixed_mean, moving_mean = torch.einsum("bn,bnd->bd", w, fixed), torch.einsum("bn,bnd->bd", w, moving)
    fixed_c, moving_c = fixed - fixed_mean.unsqueeze(1), moving - moving_mean.unsqueeze(1)
    cov_ff = torch.einsum("bn,bni,bnj->bij", w, fixed_c, fixed_c)
    cov_mf = torch.einsum("bn,bni,bnj->bij", w, moving_c, fixed_c)
    ndim = fixed.shape[2]
    lam = ridge * (cov_ff.diagonal(dim1=1, dim2=2).mean(dim=1) + 1.0)
    eye = torch.eye(ndim, dtype=fixed.dtype, device=fixed.device) * lam.view(-1, 1, 1)
    # A (C_ff + lam I) = C_mf + lam I, C_ff symmetric
    linear = torch.linalg.solve(cov_ff + eye, (cov_mf + eye).transpose(1, 2)).transpose(1, 2)
    shift = moving_mean - torch.einsum("bij,bj->bi", linear, fixed_mean)
    return torch.cat([linear, shift.unsqueeze(-1)], dim=2).to(fixed_points.dtype)
