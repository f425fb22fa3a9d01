"""Regularity of a transform from its Jacobian determinant: folding percentage and SDlogJ.

``det J(x)`` is the determinant of the Jacobian of ``phi(x) = x + u(x)`` by central differences
(:func:`monai_diffreg.functional.jacobian_determinant`; it is the same in voxel and physical
units). One-sided differences on the border are not central, so ``crop`` voxels are removed at
both ends of every spatial axis first (Learn2Reg crops 2: its zero-padded differences are wrong
on the two outermost layers). ``det J <= 0`` marks a fold: ``phi`` is not invertible there.

Learn2Reg (Hering et al., "Learn2Reg: comprehensive multi-task medical image registration
challenge", IEEE TMI 2023) reports the standard deviation of ``log det J``; its evaluation code
actually computes ``std(log(clip(det J + 3, 1e-9, 1e9)))``, which stays finite on folds but is a
different (much smaller) number. Both are offered, named apart: :func:`sd_log_jacobian` (the
true statistic, folded voxels excluded) and :func:`sd_log_jacobian_l2r` (Learn2Reg's code).
:func:`jacobian_statistics` gives all three from one determinant (what a report needs).
"""

from __future__ import annotations

from typing import Any

import torch

from ..functional import jacobian_determinant
from ..validation import check_choice, check_field
from ._base import ReducedMetric
from ._common import check_crop, check_region_mask, crop_border, masked_mean, masked_std

__all__ = [
    "SD_LOG_JACOBIAN_VARIANTS",
    "folding_percentage",
    "sd_log_jacobian",
    "sd_log_jacobian_l2r",
    "jacobian_statistics",
    "determinant_statistics",
    "FoldingMetric",
    "SDLogJacobianMetric",
]

SD_LOG_JACOBIAN_VARIANTS = ("true", "learn2reg")


def _cropped_determinant(
    ddf: torch.Tensor, crop: int, mask: torch.Tensor | None, caller: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``det J`` ``(B, 1, *spatial')`` and the bool mask of evaluated voxels, both cropped."""
    check_field(ddf, "ddf", caller)
    check_crop(crop, ddf.shape[2:], caller)
    keep = check_region_mask(mask, ddf, caller)
    det = jacobian_determinant(ddf)
    return crop_border(det, crop), None if keep is None else crop_border(keep, crop)


def _folding(det: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return 100.0 * masked_mean((det <= 0).to(det.dtype), keep)


def _sd_log(det: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    unfolded = det > 0
    keep = unfolded if keep is None else keep & unfolded
    return masked_std(torch.log(det), keep)


def _sd_log_l2r(det: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return masked_std(torch.log((det + 3.0).clamp(1e-9, 1e9)), keep)


def jacobian_statistics(ddf: torch.Tensor, crop: int = 2, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """:func:`folding_percentage`, :func:`sd_log_jacobian` and :func:`sd_log_jacobian_l2r` from one ``det J``.

    Args:
        ddf: ``(B, D, *spatial)`` displacement in voxels (2D or 3D).
        crop: voxels removed at both ends of every spatial axis (default 2).
        mask: optional ``(B or 1, 1, *spatial)`` region on the full grid.

    Returns:
        ``{"folding_percent", "sd_log_jacobian", "sd_log_jacobian_learn2reg"}``: ``(B,)`` each,
        equal to the three functions' values.
    """
    check_field(ddf, "ddf", "jacobian_statistics")
    return determinant_statistics(jacobian_determinant(ddf), crop, mask)


def determinant_statistics(det: torch.Tensor, crop: int = 2,
                           mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """:func:`jacobian_statistics` from a determinant map already computed (e.g. shown in a QC figure).

    Args:
        det: ``(B, 1, *spatial)`` ``det J`` on the full grid (:func:`~monai_diffreg.functional.jacobian_determinant`).
        crop: voxels removed at both ends of every spatial axis (default 2).
        mask: optional ``(B or 1, 1, *spatial)`` region on the full grid.
    """
    caller = "determinant_statistics"
    if not isinstance(det, torch.Tensor) or det.ndim not in (4, 5) or det.shape[1] != 1:
        raise ValueError(f"{caller}(): 'det' must be a (B, 1, *spatial) tensor, got "
                         f"{tuple(det.shape) if isinstance(det, torch.Tensor) else type(det).__name__}")
    check_crop(crop, det.shape[2:], caller)
    keep = check_region_mask(mask, det, caller)
    det, keep = crop_border(det, crop), None if keep is None else crop_border(keep, crop)
    return {"folding_percent": _folding(det, keep), "sd_log_jacobian": _sd_log(det, keep),
            "sd_log_jacobian_learn2reg": _sd_log_l2r(det, keep)}


def folding_percentage(ddf: torch.Tensor, crop: int = 2, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Percentage of voxels where the transform folds: ``100 * #{det J <= 0} / #voxels``.

    Args:
        ddf: ``(B, D, *spatial)`` displacement in voxels (2D or 3D).
        crop: voxels removed at both ends of every spatial axis before counting (default 2, as Learn2Reg).
        mask: optional ``(B or 1, 1, *spatial)`` 0/1 or bool region on the full grid; only its
            voxels are counted (after the same crop).

    Returns:
        ``(B,)`` percentage in ``[0, 100]``, ``ddf``'s dtype; NaN where the mask keeps no voxel.
    """
    return _folding(*_cropped_determinant(ddf, crop, mask, "folding_percentage"))


def sd_log_jacobian(ddf: torch.Tensor, crop: int = 2, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Standard deviation of ``log det J`` over the voxels where ``det J > 0`` (the true SDlogJ).

    Folded voxels (``det J <= 0``) have no logarithm and are **excluded**; report
    :func:`folding_percentage` beside this value. The deviation is the population one
    (``ddof = 0``, as ``numpy.std``).

    Args:
        ddf: ``(B, D, *spatial)`` displacement in voxels (2D or 3D).
        crop: voxels removed at both ends of every spatial axis (default 2).
        mask: optional ``(B or 1, 1, *spatial)`` region on the full grid.

    Returns:
        ``(B,)``, ``ddf``'s dtype; 0 for any affine transform with ``det > 0``; NaN where no
        voxel is kept.
    """
    return _sd_log(*_cropped_determinant(ddf, crop, mask, "sd_log_jacobian"))


def sd_log_jacobian_l2r(ddf: torch.Tensor, crop: int = 2, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDlogJ as Learn2Reg's evaluation code computes it: ``std(log(clip(det J + 3, 1e-9, 1e9)))``.

    The ``+ 3`` shift keeps folded voxels finite but compresses the statistic (``log(det + 3)``
    varies about 4 times less than ``log det`` near ``det = 1``), so the value is not the standard
    deviation of ``log det J``; use it only to compare with numbers published from that code.
    Population deviation (``ddof = 0``) over every kept voxel, folded ones included.

    Args:
        ddf: ``(B, D, *spatial)`` displacement in voxels (2D or 3D).
        crop: voxels removed at both ends of every spatial axis (default 2, as Learn2Reg).
        mask: optional ``(B or 1, 1, *spatial)`` region on the full grid (Learn2Reg's masked variant).

    Returns:
        ``(B,)``, ``ddf``'s dtype.
    """
    return _sd_log_l2r(*_cropped_determinant(ddf, crop, mask, "sd_log_jacobian_l2r"))


class _JacobianMetric(ReducedMetric):
    """Shared settings of the Jacobian metrics; called as ``metric(y_pred=ddf, mask=None)``."""

    def __init__(self, crop: int = 2, reduction: str = "mean", get_not_nans: bool = False) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.crop = check_crop(crop, None, type(self).__name__)

    def _value(self, ddf: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _value")

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """One value per case ``(B, 1)`` for the DDF ``y_pred``; ``y`` is unused."""
        return self._value(y_pred, kwargs.get("mask")).unsqueeze(1)


class FoldingMetric(_JacobianMetric):
    """MONAI metric accumulating :func:`folding_percentage` (``metric(y_pred=ddf, mask=None)``).

    Args:
        crop: voxels removed at both ends of every spatial axis (default 2).
        reduction: MONAI reduction over cases (see :class:`~monai_diffreg.metrics._base.ReducedMetric`).
        get_not_nans: return the count of non-NaN values as well.
    """

    def _value(self, ddf: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return folding_percentage(ddf, self.crop, mask)


class SDLogJacobianMetric(_JacobianMetric):
    """MONAI metric accumulating SDlogJ (``metric(y_pred=ddf, mask=None)``).

    Args:
        variant: ``"true"``: :func:`sd_log_jacobian` (std of ``log det J``, folds excluded);
            ``"learn2reg"``: :func:`sd_log_jacobian_l2r` (``std(log(clip(det J + 3)))``).
        crop: voxels removed at both ends of every spatial axis (default 2).
        reduction: MONAI reduction over cases.
        get_not_nans: return the count of non-NaN values as well.
    """

    def __init__(self, variant: str = "true", crop: int = 2, reduction: str = "mean", get_not_nans: bool = False) -> None:
        super().__init__(crop=crop, reduction=reduction, get_not_nans=get_not_nans)
        self.variant = check_choice(variant, "variant", type(self).__name__, SD_LOG_JACOBIAN_VARIANTS)

    def _value(self, ddf: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        fn = sd_log_jacobian if self.variant == "true" else sd_log_jacobian_l2r
        return fn(ddf, self.crop, mask)
