"""Scaling-and-squaring layer: :func:`monai_diffreg.functional.integrate_velocity` as a module."""

from __future__ import annotations

import torch
from torch import nn

from ..functional.integrate import integrate_velocity
from ..functional.warp import PADDING_MODES
from ..validation import check_choice

__all__ = ["VelocityIntegration"]


class VelocityIntegration(nn.Module):
    """Map a stationary velocity field ``(B, D, *spatial)`` to the displacement of ``exp(v)``.

    Args:
        num_steps: number of squarings (7 in VoxelMorph and MDReg-Net).
        padding_mode: field extension when composing (see :func:`integrate_velocity`).
    """

    def __init__(self, num_steps: int = 7, padding_mode: str = "border") -> None:
        super().__init__()
        if not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"VelocityIntegration(): 'num_steps' must be an integer >= 0, got {num_steps!r}")
        self.num_steps = num_steps
        self.padding_mode = check_choice(padding_mode, "padding_mode", "VelocityIntegration", PADDING_MODES)

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        return integrate_velocity(velocity, self.num_steps, self.padding_mode)

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, padding_mode={self.padding_mode!r}"
