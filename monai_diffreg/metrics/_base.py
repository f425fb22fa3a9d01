"""The MONAI metric base shared by every metric class of the package (private)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from ..validation import check_choice
from ._common import check_spacing
from ._labels import SKIP_IF_ABSENT_FROM, check_labels

__all__ = ["ReducedMetric", "SpacingMetric", "PerLabelMetric"]

REDUCTIONS = tuple(r.value for r in MetricReduction)


class ReducedMetric(CumulativeIterationMetric):
    """A :class:`monai.metrics.CumulativeIterationMetric` whose buffer is ``(cases, values)`` with NaN = skipped.

    Subclasses implement ``_compute_tensor`` returning a ``(B, C)`` tensor (``C = 1`` for one
    value per case). :meth:`aggregate` reduces the accumulated buffer over the non-NaN entries
    with MONAI's :func:`~monai.metrics.utils.do_metric_reduction`, exactly as ``DiceMetric`` does.

    Args:
        reduction: ``"mean"`` (mean over values, then over cases), ``"sum"``, ``"mean_batch"``
            (per column over cases), ``"sum_batch"``, ``"mean_channel"`` (per case),
            ``"sum_channel"`` or ``"none"``. NaN entries are left out of every reduction; a mean
            over only NaN entries is reported as 0 with a ``not_nans`` count of 0 (MONAI's convention).
        get_not_nans: if True, :meth:`aggregate` returns ``(metric, not_nans)``.
    """

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__()
        self.reduction = check_choice(str(getattr(reduction, "value", reduction)), "reduction", type(self).__name__, REDUCTIONS)
        self.get_not_nans = get_not_nans

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce every value accumulated since the last :meth:`reset`.

        Args:
            reduction: overrides the reduction given at construction.

        Returns:
            the reduced metric, and the count of non-NaN values reduced if ``get_not_nans``.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{type(self).__name__}.aggregate(): no values accumulated yet; call the metric first")
        reduction = self.reduction if reduction is None else str(getattr(reduction, "value", reduction))
        check_choice(reduction, "reduction", f"{type(self).__name__}.aggregate", REDUCTIONS)
        # do_metric_reduction zeroes NaNs in place: work on a copy so the buffer survives
        f, not_nans = do_metric_reduction(data.clone(), reduction)
        return (f, not_nans) if self.get_not_nans else f

    def _require_y(self, y: torch.Tensor | None, what: str) -> torch.Tensor:
        """``y``, or a clear error naming what it should have been."""
        if y is None:
            raise ValueError(f"{type(self).__name__}(): 'y' ({what}) is required")
        return y


class SpacingMetric(ReducedMetric):
    """A :class:`ReducedMetric` measuring in mm: holds a default spacing that a call may override.

    Args:
        spacing: default voxel size in mm (tensor axis order, or one number), or ``None`` for
            voxels; ``metric(..., spacing=...)`` overrides it for one call.
        reduction: MONAI reduction over non-NaN values (see :class:`ReducedMetric`).
        get_not_nans: return the count of non-NaN values as well.
    """

    def __init__(
        self, spacing: float | Sequence[float] | None = None, reduction: str = "mean", get_not_nans: bool = False
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        check_spacing(spacing, None, type(self).__name__)
        self.spacing = spacing

    def _spacing(self, kwargs: dict[str, Any]) -> float | Sequence[float] | None:
        """The spacing of this call: ``kwargs["spacing"]`` if given, else the default."""
        return kwargs.get("spacing", self.spacing)


class PerLabelMetric(ReducedMetric):
    """Base of the label-map metrics: subclasses implement :meth:`_per_label` returning ``(B, L)``.

    Args:
        labels: the labels to score. Given: the buffer holds ``(cases, L)`` values, so
            ``reduction="mean_batch"`` gives the mean of each label. ``None``: each case's labels
            are found in its maps and differ between cases, so the buffer holds the per-case mean
            over labels ``(cases, 1)`` instead.
        skip_if_absent_from: ``"either"`` or ``"target"``: which missing labels are skipped (NaN).
        reduction: MONAI reduction over non-NaN values (see :class:`ReducedMetric`).
        get_not_nans: return the count of non-NaN values as well.
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        skip_if_absent_from: str = "either",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        name = type(self).__name__
        self.labels = check_labels(labels, name)
        self.skip_if_absent_from = check_choice(skip_if_absent_from, "skip_if_absent_from", name, SKIP_IF_ABSENT_FROM)

    def _per_label(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _per_label")

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """Per-label values ``(B, L)`` (labels given) or their per-case mean ``(B, 1)`` (``labels=None``)."""
        values = self._per_label(y_pred, self._require_y(y, "the target label map"), **kwargs)
        return values if self.labels is not None else torch.nanmean(values, dim=1, keepdim=True)
