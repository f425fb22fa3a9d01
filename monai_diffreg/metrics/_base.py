"""The MONAI metric base shared by every metric class of the package (private)."""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from ..validation import check_choice

__all__ = ["ReducedMetric"]

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
