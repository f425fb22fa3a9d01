"""Scores of one registration result on one case, with the package's metrics.

* ``dice``: mean Dice over the case's labels (:func:`monai_diffreg.metrics.dice_per_label`,
  Learn2Reg rule: a label absent from either map is skipped); moving labels are warped with
  nearest neighbour by the method's field; ``dice_per_label`` keeps every label's value.
* ``hd95``: mean 95th-percentile Hausdorff distance over the same labels, in mm.
* ``folding_percent``: percentage of voxels with ``det J <= 0`` (central differences, 2 voxels
  cropped at the border).
* ``sdlogj``: the standard deviation of ``log det J`` over unfolded voxels;
  ``sdlogj_l2r``: Learn2Reg's code's variant ``std(log(clip(det J + 3)))``.
* ``epe``: mean end-point error against the known field in mm, over the case's mask (the
  fixed brain / foreground), for cases with a known field.
"""

from __future__ import annotations

import math

import torch

from monai_diffreg.functional import warp
from monai_diffreg.metrics import (
    dice_per_label,
    endpoint_error,
    folding_percentage,
    hausdorff95_per_label,
    sd_log_jacobian,
    sd_log_jacobian_l2r,
)

__all__ = ["METRICS", "evaluate"]

#: metric key -> (column title, lower is better)
METRICS = {
    "dice": ("Dice", False),
    "hd95": ("HD95 (mm)", True),
    "folding_percent": ("% det J <= 0", True),
    "sdlogj": ("SDlogJ", True),
    "sdlogj_l2r": ("SDlogJ (L2R +3)", True),
    "epe": ("EPE (mm)", True),
}


def _nanmean(values: torch.Tensor) -> float:
    return float(torch.nanmean(values)) if bool((~values.isnan()).any()) else math.nan


def evaluate(case: dict, ddf: torch.Tensor, hd95: bool = True) -> dict:
    """Metrics of ``ddf`` ``(1, D, *S)`` (fixed-grid voxels) on ``case`` (see the module docstring)."""
    ddf = ddf.detach().float().cpu()
    labels, spacing = case["labels"], case["spacing"]
    warped = warp(case["moving_labels"], ddf, mode="nearest")
    dice = dice_per_label(warped, case["fixed_labels"], labels)[0]
    scores = {
        "dice": _nanmean(dice),
        "dice_per_label": {str(lab): float(v) for lab, v in zip(labels, dice)},
        "folding_percent": float(folding_percentage(ddf)[0]),
        "sdlogj": float(sd_log_jacobian(ddf)[0]),
        "sdlogj_l2r": float(sd_log_jacobian_l2r(ddf)[0]),
        "hd95": math.nan,
        "epe": math.nan,
    }
    if hd95:
        scores["hd95"] = _nanmean(hausdorff95_per_label(warped, case["fixed_labels"], labels, spacing)[0])
    if case.get("true_ddf") is not None:
        scores["epe"] = float(endpoint_error(ddf, case["true_ddf"], spacing, case["mask"])[0])
    return scores
