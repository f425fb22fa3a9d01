"""Separable Gaussian smoothing of images and fields."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..validation import check_choice, check_spatial_tensor

__all__ = ["gaussian_kernel1d", "gaussian_smooth", "SMOOTH_PADDING_MODES"]

SMOOTH_PADDING_MODES = ("replicate", "reflect", "zeros")


def gaussian_kernel1d(sigma: float, kernel_size: int | None = None, truncate: float = 3.0,
                      dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1D Gaussian kernel sampled at integer offsets.

    Args:
        sigma: standard deviation in voxels (> 0).
        kernel_size: odd number of taps; default ``2 * ceil(truncate * sigma) + 1``.
        truncate: half-width in standard deviations when ``kernel_size`` is not given.

    Returns:
        ``(kernel_size,)`` weights summing to 1.
    """
    if not (isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"gaussian_kernel1d(): 'sigma' must be a finite number > 0, got {sigma!r}")
    if kernel_size is None:
        kernel_size = 2 * math.ceil(truncate * sigma) + 1
    if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1):
        raise ValueError(f"gaussian_kernel1d(): 'kernel_size' must be an odd integer >= 1, got {kernel_size!r}")
    offsets = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size - 1) / 2
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_smooth(x: torch.Tensor, sigma: float | Sequence[float], kernel_size: int | None = None,
                    padding_mode: str = "replicate") -> torch.Tensor:
    """Smooth every channel of ``x`` with a separable Gaussian.

    Args:
        x: ``(B, C, *spatial)`` image or field (fields are smoothed per component).
        sigma: standard deviation in voxels, one for all axes or one per axis.
        kernel_size: odd number of taps per axis; default from ``sigma`` (3 sigma each side).
        padding_mode: border handling: ``"replicate"``, ``"reflect"`` or ``"zeros"``.

    Returns:
        ``(B, C, *spatial)`` smoothed tensor.
    """
    ndim = check_spatial_tensor(x, "x", "gaussian_smooth")
    check_choice(padding_mode, "padding_mode", "gaussian_smooth", SMOOTH_PADDING_MODES)
    sigmas = [sigma] * ndim if isinstance(sigma, (int, float)) else list(sigma)
    if len(sigmas) != ndim:
        raise ValueError(f"gaussian_smooth(): 'sigma' must be one number or {ndim} numbers, got {sigma!r}")
    channels = x.shape[1]
    conv = (F.conv2d, F.conv3d)[ndim - 2]
    out = x
    for axis, s in enumerate(sigmas):
        kernel = gaussian_kernel1d(s, kernel_size, dtype=x.dtype, device=x.device)
        half = kernel.numel() // 2
        if half == 0:
            continue
        shape = [1] * ndim
        shape[axis] = kernel.numel()
        weight = kernel.view(1, 1, *shape).expand(channels, 1, *shape)
        pad = [0, 0] * ndim
        pad[2 * (ndim - 1 - axis)] = pad[2 * (ndim - 1 - axis) + 1] = half
        mode = "constant" if padding_mode == "zeros" else padding_mode
        out = conv(F.pad(out, pad, mode=mode), weight, groups=channels)
    return out
