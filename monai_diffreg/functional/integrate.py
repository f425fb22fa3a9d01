"""Scaling and squaring: the exponential of a stationary velocity field."""

from __future__ import annotations

import torch

from ..validation import check_choice, check_field
from .warp import PADDING_MODES, warp

__all__ = ["integrate_velocity"]


def integrate_velocity(velocity: torch.Tensor, num_steps: int = 7, padding_mode: str = "border") -> torch.Tensor:
    """Displacement of ``phi = exp(v)`` by scaling and squaring.

    ``u_0 = v / 2**N``, then ``N`` times ``u <- u + u o (id + u)`` (``phi <- phi o phi``).
    The inverse transform is ``integrate_velocity(-v)``.

    Args:
        velocity: ``(B, D, *spatial)`` stationary velocity field in voxels.
        num_steps: number of squarings ``N`` (VoxelMorph and MDReg-Net use 7); 0 returns ``v``.
        padding_mode: how the field is extended beyond the grid when composing. ``"border"``
            (default) integrates a constant field exactly; ``"zeros"`` matches MONAI's ``DVF2DDF``.

    Returns:
        ``(B, D, *spatial)`` displacement field in voxels.
    """
    check_field(velocity, "velocity", "integrate_velocity")
    check_choice(padding_mode, "padding_mode", "integrate_velocity", PADDING_MODES)
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"integrate_velocity(): 'num_steps' must be an integer >= 0, got {num_steps!r}")
    ddf = velocity / (2**num_steps)
    for _ in range(num_steps):
        ddf = ddf + warp(ddf, ddf, padding_mode=padding_mode)
    return ddf
