"""Pull-back warping of images by displacement fields (MONAI ``Warp`` convention)."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from ..validation import check_choice, check_field, check_spatial_tensor
from .grid import identity_grid, tracing

__all__ = ["warp", "WARP_MODES", "PADDING_MODES", "voxel_to_sampling_coordinates"]

WARP_MODES = ("bilinear", "nearest")
PADDING_MODES = ("border", "zeros", "reflection")


def voxel_to_sampling_coordinates(locations: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    """Voxel coordinates ``(..., D)`` (tensor axis order) -> ``grid_sample`` coordinates ``(..., D)``.

    The result is normalised to ``[-1, 1]`` for ``align_corners=True``, with the last axis in
    ``grid_sample``'s (x, y[, z]) order, i.e. spatial axes reversed.
    """
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in spatial_shape], device=locations.device, dtype=locations.dtype)
    return (locations * scale - 1.0).flip(-1)


@lru_cache(maxsize=16)
def _sampling_base(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``grid_sample`` coordinates of the identity ``(1, *S, D)`` (last axis in its (x, y[, z]) order, i.e.
    spatial axes reversed) and the matching per-axis scale ``(D,)`` from voxels: ``coords = base + scale *
    u_reversed`` (cached; never modify)."""
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=device, dtype=dtype)
    base = (identity_grid(shape, device, dtype).movedim(0, -1) * scale - 1.0).flip(-1).unsqueeze(0).contiguous()
    return base, scale.flip(0)


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
    base, scale = (_sampling_base.__wrapped__ if tracing() else _sampling_base)(tuple(ddf.shape[2:]), ddf.device,
                                                                                 image.dtype)
    # the grid in one fused pass from the cached normalised identity (the image is left contiguous:
    # grid_sample's backward is about twice slower on a permuted input)
    grid = torch.addcmul(base, ddf.to(image.dtype).flip(1).movedim(1, -1), scale)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
