"""Label-map inputs shared by the overlap and surface-distance metrics (private).

Contract: a label map is a tensor ``(B, 1, *spatial)`` (2 or 3 spatial axes) of integer
labels, of any integer, bool or floating dtype as long as every value is an integer
(``0`` is background). ``pred`` (usually the warped moving labels) and ``target`` (the
fixed labels) have the same shape.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from ..validation import check_choice, check_spatial_tensor

__all__ = ["SKIP_IF_ABSENT_FROM", "check_label_maps", "check_labels", "resolve_labels", "skipped_labels"]

SKIP_IF_ABSENT_FROM = ("either", "target")


def _as_label_map(x: torch.Tensor, name: str, caller: str) -> torch.Tensor:
    check_spatial_tensor(x, name, caller, channels=1)
    if x.is_floating_point():
        bad = ~torch.isfinite(x) | (x != torch.round(x))
        if bool(bad.any()):
            example = float(x[bad].flatten()[0])
            raise ValueError(
                f"{caller}(): '{name}' must be an integer label map, got {int(bad.sum())} non-integer value(s) "
                f"(e.g. {example}); warp label maps with mode='nearest'"
            )
    elif x.is_complex():
        raise ValueError(f"{caller}(): '{name}' must be an integer label map, got dtype {x.dtype}")
    return x.long()


def check_label_maps(pred: object, target: object, caller: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two label maps ``(B, 1, *spatial)`` of equal shape; return them as int64 on ``pred``'s device."""
    pred_l = _as_label_map(pred, "pred", caller)  # type: ignore[arg-type]
    target_l = _as_label_map(target, "target", caller)  # type: ignore[arg-type]
    if pred_l.shape != target_l.shape:
        raise ValueError(
            f"{caller}(): 'pred' and 'target' must have the same shape, got {tuple(pred_l.shape)} and {tuple(target_l.shape)}"
        )
    return pred_l, target_l.to(pred_l.device)


def check_labels(labels: Sequence[int] | torch.Tensor | None, caller: str) -> list[int] | None:
    """Validate a choice of labels: ``None`` or a non-empty sequence (or 1D tensor) of unique integers."""
    if labels is None:
        return None
    values = labels.flatten().tolist() if isinstance(labels, torch.Tensor) else labels
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) == 0:
        raise ValueError(f"{caller}(): 'labels' must be None or a non-empty sequence of integers, got {labels!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v).is_integer():
            raise ValueError(f"{caller}(): 'labels' must hold integers, got {v!r} in {labels!r}")
        out.append(int(v))
    if len(set(out)) != len(out):
        raise ValueError(f"{caller}(): 'labels' must not repeat a label, got {labels!r}")
    return out


def resolve_labels(
    labels: Sequence[int] | torch.Tensor | None, pred: torch.Tensor, target: torch.Tensor, caller: str
) -> list[int]:
    """The labels to evaluate: the given ones, or every non-zero label in either map (ascending)."""
    checked = check_labels(labels, caller)
    if checked is not None:
        return checked
    values = torch.unique(torch.cat([pred.flatten(), target.flatten()]))
    return [int(v) for v in values.tolist() if v != 0]


def skipped_labels(
    pred: torch.Tensor, target: torch.Tensor, labels: Sequence[int], skip_if_absent_from: str, caller: str
) -> torch.Tensor:
    """Which (case, label) pairs are skipped (reported as NaN).

    Args:
        pred: ``(B, 1, *spatial)`` int64 label map.
        target: ``(B, 1, *spatial)`` int64 label map.
        labels: the L labels evaluated.
        skip_if_absent_from: ``"either"``: skip a label missing from ``pred`` or from ``target``;
            ``"target"``: skip only a label missing from ``target`` (one present in ``target`` but
            lost from ``pred`` is then scored, as MONAI's ``DiceMetric(ignore_empty=True)`` does).
        caller: the public callable's name.

    Returns:
        bool ``(B, L)``, True where the label is skipped.
    """
    check_choice(skip_if_absent_from, "skip_if_absent_from", caller, SKIP_IF_ABSENT_FROM)
    if not labels:
        return torch.zeros(pred.shape[0], 0, dtype=torch.bool, device=pred.device)
    in_target = torch.stack([(target == lab).flatten(1).any(1) for lab in labels], 1)
    if skip_if_absent_from == "target":
        return ~in_target
    in_pred = torch.stack([(pred == lab).flatten(1).any(1) for lab in labels], 1)
    return ~(in_pred & in_target)
