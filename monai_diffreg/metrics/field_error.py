"""End-point error between an estimated and a true displacement field (synthetic benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..validation import check_field
from ._base import SpacingMetric
from ._common import check_region_mask, check_spacing, mean_vector_norm

__all__ = ["endpoint_error", "EndPointErrorMetric"]


def endpoint_error(
    ddf: torch.Tensor,
    true_ddf: torch.Tensor,
    spacing: float | Sequence[float] | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean end-point error ``mean_x || S (u(x) - u_true(x)) ||``, ``S = diag(spacing)``.

    Both fields live on the same grid and map it the same way (package convention: ``x + u(x)``
    is where fixed voxel ``x`` lands in the moving image), so the difference of the displacements
    is the distance between the two end points of ``x``.

    Args:
        ddf: ``(B, D, *spatial)`` estimated displacement in voxels (2D or 3D).
        true_ddf: ``(B, D, *spatial)`` ground-truth displacement in voxels, same shape.
        spacing: voxel size in mm per spatial axis (tensor axis order) or one number; ``None``:
            the error is in voxels.
        mask: optional ``(B or 1, 1, *spatial)`` 0/1 or bool region to average over.

    Returns:
        ``(B,)`` mean error in mm (voxels without ``spacing``), ``ddf``'s dtype; NaN where the
        mask is empty.
    """
    ndim = check_field(ddf, "ddf", "endpoint_error")
    check_field(true_ddf, "true_ddf", "endpoint_error", like=ddf)
    spacing = check_spacing(spacing, ndim, "endpoint_error")
    keep = check_region_mask(mask, ddf, "endpoint_error")
    return mean_vector_norm(ddf - true_ddf.to(ddf), spacing, keep)


class EndPointErrorMetric(SpacingMetric):
    """MONAI metric accumulating :func:`endpoint_error`.

    Call it as ``metric(y_pred=ddf, y=true_ddf, mask=None, spacing=None)`` (``spacing`` per call
    overrides the one given here), then :meth:`aggregate`.

    Args:
        spacing: default voxel size in mm, or ``None`` for voxels.
        reduction: MONAI reduction over cases (see :class:`~monai_diffreg.metrics._base.ReducedMetric`).
        get_not_nans: return the count of non-NaN values as well.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """Per-case mean end-point error ``(B, 1)``."""
        true_ddf = self._require_y(y, "the true displacement field")
        return endpoint_error(y_pred, true_ddf, self._spacing(kwargs), kwargs.get("mask")).unsqueeze(1)
