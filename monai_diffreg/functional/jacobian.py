"""Spatial derivatives and Jacobians of displacement fields (central differences)."""

from __future__ import annotations

import torch

from ..validation import check_field, check_spatial_tensor

__all__ = ["spatial_gradient", "jacobian_matrix", "jacobian_determinant"]


def _central_differences(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.gradient`` along one axis (``edge_order=1``), the same values about three times faster on CPU:
    written into one output through slices (differentiable: autograd records the slice copies)."""
    n = x.shape[dim]
    out = torch.empty_like(x)
    out.narrow(dim, 1, n - 2).copy_(x.narrow(dim, 2, n - 2)).sub_(x.narrow(dim, 0, n - 2)).mul_(0.5)
    out.narrow(dim, 0, 1).copy_(x.narrow(dim, 1, 1)).sub_(x.narrow(dim, 0, 1))
    out.narrow(dim, n - 1, 1).copy_(x.narrow(dim, n - 1, 1)).sub_(x.narrow(dim, n - 2, 1))
    return out


def spatial_gradient(x: torch.Tensor) -> torch.Tensor:
    """Derivatives of every channel along every spatial axis, per voxel.

    Central differences ``(x[i+1] - x[i-1]) / 2`` inside, one-sided differences on the border.

    Args:
        x: ``(B, C, *spatial)``.

    Returns:
        ``(B, C, D, *spatial)`` where index ``[:, c, j]`` is ``d x_c / d axis_j`` (per voxel).
    """
    ndim = check_spatial_tensor(x, "x", "spatial_gradient")
    if min(x.shape[2:]) < 2:
        raise ValueError(f"spatial_gradient(): every spatial axis needs >= 2 voxels, got shape {tuple(x.shape)}")
    return torch.stack([_central_differences(x, dim) for dim in range(2, ndim + 2)], dim=2)


def jacobian_matrix(ddf: torch.Tensor) -> torch.Tensor:
    """Jacobian of ``phi(x) = x + u(x)``: ``J = I + grad u``.

    Args:
        ddf: ``(B, D, *spatial)`` displacement in voxels.

    Returns:
        ``(B, D, D, *spatial)``; ``J[:, i, j] = d phi_i / d x_j``.
    """
    ndim = check_field(ddf, "ddf", "jacobian_matrix")
    eye = torch.eye(ndim, dtype=ddf.dtype, device=ddf.device).view(1, ndim, ndim, *([1] * ndim))
    return spatial_gradient(ddf) + eye


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``phi(x) = x + u(x)`` at every voxel.

    The value is the same in voxel and physical units (the voxel scaling cancels), so no
    spacing is needed. ``det J <= 0`` marks folding.

    Args:
        ddf: ``(B, D, *spatial)`` displacement in voxels.

    Returns:
        ``(B, 1, *spatial)`` determinant map.
    """
    ndim = check_field(ddf, "ddf", "jacobian_determinant")
    if min(ddf.shape[2:]) < 2:
        raise ValueError(f"jacobian_determinant(): every spatial axis needs >= 2 voxels, got shape {tuple(ddf.shape)}")
    # d[j][:, i] = d u_i / d x_j; the closed forms on these views avoid building (and permuting) J
    d = [_central_differences(ddf, dim) for dim in range(2, ndim + 2)]

    def entry(i: int, j: int) -> torch.Tensor:
        return d[j][:, i] + 1.0 if i == j else d[j][:, i]

    if ndim == 2:
        det = entry(0, 0) * entry(1, 1) - entry(0, 1) * entry(1, 0)
    else:
        det = (
            entry(0, 0) * (entry(1, 1) * entry(2, 2) - entry(1, 2) * entry(2, 1))
            - entry(0, 1) * (entry(1, 0) * entry(2, 2) - entry(1, 2) * entry(2, 0))
            + entry(0, 2) * (entry(1, 0) * entry(2, 1) - entry(1, 1) * entry(2, 0))
        )
    return det.unsqueeze(1)
