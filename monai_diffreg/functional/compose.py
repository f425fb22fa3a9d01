"""Composition of displacement fields."""

from __future__ import annotations

import torch

from ..validation import check_choice, check_field
from .warp import PADDING_MODES, warp

__all__ = ["compose_ddf"]


def compose_ddf(outer: torch.Tensor, inner: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Displacement of ``phi_outer o phi_inner``: ``u(x) = u_inner(x) + u_outer(x + u_inner(x))``.

    With pull-back warping, ``warp(warp(img, outer), inner) == warp(img, compose_ddf(outer, inner))``
    (up to interpolation): ``inner`` is applied to the grid first.

    Args:
        outer: ``(B, D, *spatial)`` displacement in voxels.
        inner: ``(B, D, *spatial)`` displacement in voxels, same shape.
        padding_mode: extension of ``outer`` beyond the grid (see :func:`warp`).

    Returns:
        ``(B, D, *spatial)`` composed displacement in voxels.
    """
    check_field(outer, "outer", "compose_ddf")
    check_field(inner, "inner", "compose_ddf", like=outer)
    check_choice(padding_mode, "padding_mode", "compose_ddf", PADDING_MODES)
    return inner + warp(outer, inner, padding_mode=padding_mode)
