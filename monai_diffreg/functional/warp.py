"""Pull-back warping of images by displacement fields (MONAI ``Warp`` convention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..validation import check_choice, check_field, check_spatial_tensor
from .grid import identity_grid

__all__ = ["warp", "WARP_MODES", "PADDING_MODES", "ddf_to_sampling_grid", "voxel_to_sampling_coordinates"]

WARP_MODES = ("bilinear", "nearest")
PADDING_MODES = ("border", "zeros", "reflection")


def voxel_to_sampling_coordinates(locations: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    """Voxel coordinates ``(..., D)`` (tensor axis order) -> ``grid_sample`` coordinates ``(..., D)``.

    The result is normalised to ``[-1, 1]`` for ``align_corners=True``, with the last axis in
    ``grid_sample``'s (x, y[, z]) order, i.e. spatial axes reversed.
    """
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in spatial_shape], device=locations.device, dtype=locations.dtype)
    return (locations * scale - 1.0).flip(-1)


def ddf_to_sampling_grid(ddf: torch.Tensor) -> torch.Tensor:
    """Convert a DDF ``(B, D, *spatial)`` in voxels to a ``grid_sample`` grid ``(B, *spatial, D)``
    (see :func:`voxel_to_sampling_coordinates`)."""
    spatial = ddf.shape[2:]
    locations = identity_grid(spatial, ddf.device, ddf.dtype) + ddf
    return voxel_to_sampling_coordinates(locations.permute(0, *range(2, len(spatial) + 2), 1), tuple(spatial))


def warp(image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border") -> torch.Tensor:
    """Warp ``image`` by ``ddf``: ``warped(x) = image(x + ddf(x))``.

    Args:
        image: ``(B, C, *spatial)``, 2D or 3D.
        ddf: ``(B, D, *spatial)`` displacement in voxels on the same grid (see package conventions).
        mode: ``"bilinear"`` (linear in 2D/3D, differentiable) or ``"nearest"`` (label maps).
        padding_mode: value outside the image: ``"border"`` (nearest edge value), ``"zeros"``
            or ``"reflection"``.

    Returns:
        ``(B, C, *spatial)`` warped image, same dtype as ``image``.
    """
    check_spatial_tensor(image, "image", "warp")
    check_field(ddf, "ddf", "warp", like=image)
    check_choice(mode, "mode", "warp", WARP_MODES)
    check_choice(padding_mode, "padding_mode", "warp", PADDING_MODES)
    grid = ddf_to_sampling_grid(ddf.to(image.dtype))
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
