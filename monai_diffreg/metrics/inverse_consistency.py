"""Inverse consistency of a transform and its claimed inverse: mean ``|| phi o psi - id ||``.

With ``phi(x) = x + u(x)`` (forward) and ``psi(x) = x + w(x)`` (the inverse, e.g. ``exp(-v)``
for ``phi = exp(v)``), the residual displacement of ``phi o psi`` is
:func:`monai_diffreg.functional.compose_ddf` ``(u, w)``: ``r(x) = w(x) + u(x + w(x))``, zero
everywhere exactly when ``psi`` is a right inverse of ``phi``. ``u`` is interpolated linearly
and extended beyond the grid by its border values, so points that ``psi`` sends outside the
grid carry an extrapolation error; ``crop`` leaves a border band out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..functional import compose_ddf
from ..validation import check_field
from ._base import SpacingMetric
from ._common import check_crop, check_region_mask, check_spacing, crop_border, mean_vector_norm

__all__ = ["inverse_consistency_error", "InverseConsistencyMetric"]


def inverse_consistency_error(
    ddf_forward: torch.Tensor,
    ddf_inverse: torch.Tensor,
    spacing: float | Sequence[float] | None = None,
    mask: torch.Tensor | None = None,
    crop: int = 0,
    symmetric: bool = False,
) -> torch.Tensor:
    """Mean length of the residual displacement of ``phi_forward o phi_inverse`` (see the module docstring).

    Args:
        ddf_forward: ``(B, D, *spatial)`` displacement of ``phi`` in voxels (2D or 3D).
        ddf_inverse: ``(B, D, *spatial)`` displacement of the claimed inverse ``psi``, same shape.
        spacing: voxel size in mm per spatial axis (tensor axis order) or one number;
            ``None``: the error is in voxels.
        mask: optional ``(B or 1, 1, *spatial)`` 0/1 or bool region (where the residual is
            evaluated, i.e. the domain of ``psi``) to average over.
        crop: voxels left out at both ends of every spatial axis (default 0).
        symmetric: if True, also evaluate ``psi o phi`` (residual ``compose_ddf(w, u)``) and
            return the mean of the two orders.

    Returns:
        ``(B,)`` mean error in mm (voxels without ``spacing``), ``ddf_forward``'s dtype; NaN
        where no voxel is kept.
    """
    caller = "inverse_consistency_error"
    ndim = check_field(ddf_forward, "ddf_forward", caller)
    check_field(ddf_inverse, "ddf_inverse", caller, like=ddf_forward)
    spacing = check_spacing(spacing, ndim, caller)
    check_crop(crop, ddf_forward.shape[2:], caller)
    keep = check_region_mask(mask, ddf_forward, caller)
    keep = None if keep is None else crop_border(keep, crop)
    ddf_inverse = ddf_inverse.to(ddf_forward)
    pairs = [(ddf_forward, ddf_inverse), (ddf_inverse, ddf_forward)] if symmetric else [(ddf_forward, ddf_inverse)]
    errors = [mean_vector_norm(crop_border(compose_ddf(outer, inner), crop), spacing, keep) for outer, inner in pairs]
    return torch.stack(errors).mean(0)


class InverseConsistencyMetric(SpacingMetric):
    """MONAI metric accumulating :func:`inverse_consistency_error`.

    Call it as ``metric(y_pred=ddf_forward, y=ddf_inverse, mask=None, spacing=None)``
    (``spacing`` per call overrides the default given here), then :meth:`aggregate`.

    Args:
        spacing: default voxel size in mm, or ``None`` for voxels.
        crop: voxels left out at both ends of every spatial axis.
        symmetric: average the errors of ``phi o psi`` and ``psi o phi``.
        reduction: MONAI reduction over cases (see :class:`~monai_diffreg.metrics._base.ReducedMetric`).
        get_not_nans: return the count of non-NaN values as well.
    """

    def __init__(
        self,
        spacing: float | Sequence[float] | None = None,
        crop: int = 0,
        symmetric: bool = False,
        reduction: str = "mean",
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(spacing=spacing, reduction=reduction, get_not_nans=get_not_nans)
        self.crop = check_crop(crop, None, type(self).__name__)
        self.symmetric = bool(symmetric)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """Per-case mean inverse-consistency error ``(B, 1)``."""
        ddf_inverse = self._require_y(y, "the inverse displacement field")
        error = inverse_consistency_error(
            y_pred, ddf_inverse, self._spacing(kwargs), kwargs.get("mask"), self.crop, self.symmetric
        )
        return error.unsqueeze(1)
