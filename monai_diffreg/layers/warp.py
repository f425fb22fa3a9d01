"""Warp layer: :func:`monai_diffreg.functional.warp` as a module."""

from __future__ import annotations

import torch
from torch import nn

from ..functional.warp import PADDING_MODES, WARP_MODES, warp
from ..validation import check_choice

__all__ = ["Warp"]


class Warp(nn.Module):
    """``warped(x) = image(x + ddf(x))`` for ``image (B, C, *spatial)`` and ``ddf (B, D, *spatial)`` in voxels.

    A drop-in for :class:`monai.networks.blocks.Warp` (same convention) with validated options.
    """

    def __init__(self, mode: str = "bilinear", padding_mode: str = "border") -> None:
        super().__init__()
        self.mode = check_choice(mode, "mode", "Warp", WARP_MODES)
        self.padding_mode = check_choice(padding_mode, "padding_mode", "Warp", PADDING_MODES)

    def forward(self, image: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        return warp(image, ddf, mode=self.mode, padding_mode=self.padding_mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, padding_mode={self.padding_mode!r}"
