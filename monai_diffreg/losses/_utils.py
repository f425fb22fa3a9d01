"""Checks and reductions shared by every loss in :mod:`monai_diffreg.losses` (private)."""

from __future__ import annotations

from enum import Enum

import torch

from ..validation import check_choice, check_spatial_tensor

__all__ = ["REDUCTIONS", "check_reduction", "check_same_shape", "check_image_pair", "reduce_loss", "promote_float"]

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: object, caller: str) -> str:
    """Validate a reduction option (a string or MONAI's ``LossReduction``) and return it as a plain string."""
    value = reduction.value if isinstance(reduction, Enum) else reduction
    return check_choice(value, "reduction", caller, REDUCTIONS)


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str, caller: str) -> None:
    """Raise a ValueError naming both arguments when two tensors differ in shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{caller}(): '{name_a}' and '{name_b}' must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_image_pair(pred: object, target: object, caller: str) -> int:
    """Check ``pred`` and ``target`` are ``(B, C, *spatial)`` tensors of one shape; return the spatial rank."""
    ndim = check_spatial_tensor(pred, "pred", caller)
    check_spatial_tensor(target, "target", caller)
    check_same_shape(pred, target, "pred", "target", caller)  # type: ignore[arg-type]
    return ndim


def reduce_loss(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply a validated reduction: mean or sum of every element, or ``x`` unchanged for ``"none"``."""
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def promote_float(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` in float32 when it is an integer, half or bfloat16 tensor, otherwise unchanged.

    Windowed sums of squares overflow float16 and lose most digits in bfloat16, so losses are
    evaluated in at least float32 (float64 inputs stay float64, e.g. for gradcheck).
    """
    if not x.is_floating_point() or torch.finfo(x.dtype).bits < 32:
        return x.float()
    return x
