"""Gaussian smoothing layer: :func:`monai_diffreg.functional.gaussian_smooth` as a module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..functional.smoothing import SMOOTH_PADDING_MODES, gaussian_kernel1d, gaussian_smooth
from ..validation import check_choice

__all__ = ["GaussianSmoothing"]


class GaussianSmoothing(nn.Module):
    """Fixed (non-learnable) separable Gaussian smoothing of every channel.

    MDReg-Net applies it to the finest velocity (sigma 1.732 voxels, kernel 3); probabilistic
    VoxelMorph uses it as the smoothing matrix ``C`` of the posterior covariance.

    Args:
        sigma: standard deviation in voxels, one value or one per axis.
        kernel_size: odd number of taps; default ``2 * ceil(3 sigma) + 1``.
        padding_mode: ``"replicate"``, ``"reflect"`` or ``"zeros"``.
    """

    def __init__(self, sigma: float | Sequence[float], kernel_size: int | None = None,
                 padding_mode: str = "replicate") -> None:
        super().__init__()
        for s in [sigma] if isinstance(sigma, (int, float)) else sigma:
            gaussian_kernel1d(s, kernel_size)  # validates sigma and kernel_size now, not at first call
        self.sigma = sigma
        self.kernel_size = kernel_size
        self.padding_mode = check_choice(padding_mode, "padding_mode", "GaussianSmoothing", SMOOTH_PADDING_MODES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_smooth(x, self.sigma, self.kernel_size, self.padding_mode)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, kernel_size={self.kernel_size}, padding_mode={self.padding_mode!r}"
