"""Resampling images and fields to another resolution over the same extent.

Voxels are treated as cells covering the same physical extent at every resolution
(``align_corners=False``, the geometry of average pooling), so an axis resized from ``n``
to ``N`` voxels scales lengths measured in voxels by ``N / n``. Every change of a field's
resolution goes through :func:`resize_field`, which applies that scaling to the vectors.
"""

from __future__ import annotations

import math

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..validation import check_choice, check_field, check_spatial_tensor

__all__ = ["resize_image", "resize_field", "IMAGE_RESIZE_MODES"]

IMAGE_RESIZE_MODES = ("linear", "nearest", "area")


def _target_size(caller: str, spatial: Sequence[int], size: Sequence[int] | None, scale: float | None) -> tuple[int, ...]:
    if (size is None) == (scale is None):
        raise ValueError(f"{caller}(): give exactly one of 'size' or 'scale', got size={size!r}, scale={scale!r}")
    if size is None:
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"{caller}(): 'scale' must be a number > 0, got {scale!r}")
        return tuple(max(1, int(round(n * scale))) for n in spatial)
    size = tuple(int(s) for s in size)
    if len(size) != len(spatial) or any(s < 1 for s in size):
        raise ValueError(f"{caller}(): 'size' must be {len(spatial)} positive integers, got {size!r}")
    return size


def resize_image(image: torch.Tensor, size: Sequence[int] | None = None, scale: float | None = None,
                 mode: str = "linear") -> torch.Tensor:
    """Resample an image ``(B, C, *spatial)`` to ``size`` (or ``spatial * scale``) over the same extent.

    Args:
        image: ``(B, C, *spatial)``, 2D or 3D.
        size: target spatial shape.
        scale: alternatively, a factor applied to every axis (e.g. 0.5 for half resolution).
        mode: ``"linear"`` (bi/trilinear), ``"nearest"`` (label maps) or ``"area"`` (average pooling).

    Returns:
        ``(B, C, *size)`` image.
    """
    ndim = check_spatial_tensor(image, "image", "resize_image")
    check_choice(mode, "mode", "resize_image", IMAGE_RESIZE_MODES)
    target = _target_size("resize_image", image.shape[2:], size, scale)
    if target == tuple(image.shape[2:]):
        return image
    if mode == "linear":
        return F.interpolate(image, size=target, mode=("bilinear", "trilinear")[ndim - 2], align_corners=False)
    if mode == "nearest":
        return F.interpolate(image, size=target, mode="nearest-exact")
    return F.adaptive_avg_pool3d(image, target) if ndim == 3 else F.adaptive_avg_pool2d(image, target)


def resize_field(field: torch.Tensor, size: Sequence[int] | None = None, scale: float | None = None,
                 mode: str = "linear") -> torch.Tensor:
    """Resample a displacement or velocity field and rescale its vectors to the new voxel size.

    Channel ``i`` is multiplied by ``size[i] / field.shape[i + 2]``, so that the field describes
    the same physical motion on the new grid.

    Args:
        field: ``(B, D, *spatial)`` field in voxels of its grid.
        size: target spatial shape.
        scale: alternatively, a factor applied to every axis.
        mode: interpolation, as in :func:`resize_image`.

    Returns:
        ``(B, D, *size)`` field in voxels of the new grid.
    """
    ndim = check_field(field, "field", "resize_field")
    target = _target_size("resize_field", field.shape[2:], size, scale)
    if target == tuple(field.shape[2:]):
        return field
    ratios = torch.tensor([t / n for t, n in zip(target, field.shape[2:])], dtype=field.dtype, device=field.device)
    ratios = ratios.view(1, ndim, *([1] * ndim))
    # interpolation is linear, so the rescaling can be applied on whichever grid is smaller
    if math.prod(target) > math.prod(field.shape[2:]):
        return resize_image(field * ratios, size=target, mode=mode)
    return resize_image(field, size=target, mode=mode) * ratios
