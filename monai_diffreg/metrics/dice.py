"""Dice overlap per label between two integer label maps (Learn2Reg's DSC).

``Dice_l = 2 |P_l ∩ T_l| / (|P_l| + |T_l|)`` with ``P_l = {pred == l}`` and ``T_l = {target == l}``.
By default a label absent from either map is skipped (NaN) and left out of means, as Learn2Reg
skips labels absent from the fixed or the moving image; see :func:`dice_per_label` for the
exact Learn2Reg rule and MONAI's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._base import PerLabelMetric
from ._labels import check_label_maps, resolve_labels, skipped_labels

__all__ = ["dice_per_label", "mean_dice", "DiceOverlapMetric"]


def dice_per_label(
    pred: torch.Tensor,
    target: torch.Tensor,
    labels: Sequence[int] | torch.Tensor | None = None,
    skip_if_absent_from: str = "either",
) -> torch.Tensor:
    """Dice coefficient of every label, per case.

    Args:
        pred: ``(B, 1, *spatial)`` integer label map (2D or 3D), typically the moving labels warped
            with ``mode="nearest"``. Any dtype whose values are integers; a floating map with a
            non-integer value raises ``ValueError``.
        target: ``(B, 1, *spatial)`` integer label map, typically the fixed labels.
        labels: the L labels to score, in output column order; ``None``: every non-zero label
            present in ``pred`` or ``target`` (anywhere in the batch), ascending.
        skip_if_absent_from: when a label is reported as NaN (skipped):
            ``"either"`` (default, Learn2Reg): when it is missing from ``pred`` or from ``target``;
            ``"target"``: only when it is missing from ``target``, so a structure present in
            ``target`` that the registration lost entirely scores 0 (MONAI ``DiceMetric``'s
            ``ignore_empty=True``). Learn2Reg decides absence on the fixed and the *unwarped*
            moving maps; to reproduce it exactly pass ``labels`` present in both and ``"target"``.

    Returns:
        ``(B, L)`` float32 Dice in ``[0, 1]``, NaN where skipped.
    """
    pred, target = check_label_maps(pred, target, "dice_per_label")
    labels = resolve_labels(labels, pred, target, "dice_per_label")
    skipped = skipped_labels(pred, target, labels, skip_if_absent_from, "dice_per_label")
    scores = torch.zeros(skipped.shape, dtype=torch.float64, device=pred.device)
    for j, lab in enumerate(labels):
        p, t = (pred == lab).flatten(1), (target == lab).flatten(1)
        overlap = (p & t).sum(1).double()
        scores[:, j] = 2.0 * overlap / (p.sum(1) + t.sum(1)).double()
    return scores.masked_fill(skipped, float("nan")).float()


def mean_dice(
    pred: torch.Tensor,
    target: torch.Tensor,
    labels: Sequence[int] | torch.Tensor | None = None,
    skip_if_absent_from: str = "either",
) -> torch.Tensor:
    """Mean Dice over the labels that are not skipped, per case (see :func:`dice_per_label`).

    Returns:
        ``(B,)`` float32; NaN for a case where every label is skipped.
    """
    return torch.nanmean(dice_per_label(pred, target, labels, skip_if_absent_from), dim=1)


class DiceOverlapMetric(PerLabelMetric):
    """MONAI metric accumulating :func:`dice_per_label` over iterations.

    Call it as ``metric(y_pred=warped_labels, y=fixed_labels)`` with integer label maps
    ``(B, 1, *spatial)`` (or lists of ``(1, *spatial)`` maps), then :meth:`aggregate`.

    Args:
        labels: the labels to score. Given: the buffer holds ``(cases, L)`` Dice values, so
            ``reduction="mean_batch"`` gives the mean Dice of each label. ``None``: each case's
            labels are found in its maps, so the buffer holds the per-case mean Dice ``(cases, 1)``.
        skip_if_absent_from: ``"either"`` or ``"target"`` (see :func:`dice_per_label`).
        reduction: MONAI reduction over non-NaN values (see :class:`~monai_diffreg.metrics._base.ReducedMetric`).
        get_not_nans: return the count of non-NaN values as well.
    """

    def _per_label(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return dice_per_label(y_pred, y, self.labels, self.skip_if_absent_from)
