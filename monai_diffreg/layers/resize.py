"""Field resizing layer with vector rescaling: :func:`monai_diffreg.functional.resize_field` as a module."""

from __future__ import annotations

import torch
from torch import nn

from ..functional.resize import resize_field

__all__ = ["FieldResize"]


class FieldResize(nn.Module):
    """Resize a field ``(B, D, *spatial)`` by ``scale`` and rescale its vectors accordingly.

    Args:
        scale: factor applied to every spatial axis (e.g. 2.0 to upsample a half-resolution field).
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"FieldResize(): 'scale' must be a number > 0, got {scale!r}")
        self.scale = float(scale)

    def forward(self, field: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
        """Resize to ``size`` when given (exact shapes after odd sizes), else by ``scale``."""
        if size is not None:
            return resize_field(field, size=size)
        return resize_field(field, scale=self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
