"""Pull-back warping of images by displacement fields (MONAI ``Warp`` convention)."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from ..validation import NonFiniteError, all_finite, check_choice, check_field, check_spatial_tensor
from .grid import tracing

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
def _sampling_axes(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
                   ) -> tuple[tuple[torch.Tensor, ...], tuple[float, ...]]:
    """Per spatial axis ``k``: the ``grid_sample`` coordinate of each voxel index, shaped to broadcast against
    ``(B, *S)`` (``(1, .., n_k, .., 1)``), and the scale from voxels, so that axis ``k``'s sampling coordinate
    is ``coordinate_k + scale_k * u_k`` (cached; never modify)."""
    scales = tuple(2.0 / max(n - 1, 1) for n in shape)
    coordinates = tuple((torch.arange(n, device=device, dtype=dtype) * scales[k] - 1.0).view(
        1, *(n if j == k else 1 for j in range(len(shape)))) for k, n in enumerate(shape))
    return coordinates, scales


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
    if ddf.device.type == "cpu" and not tracing() and not all_finite(ddf):
        # grid_sample's CPU kernels index memory with non-finite coordinates unchecked (a crash, not an error)
        raise NonFiniteError("warp(): 'ddf' has non-finite values (NaN or Inf): the computation that produced "
                                 "it diverged")
    coordinates, scales = (_sampling_axes.__wrapped__ if tracing() else _sampling_axes)(
        tuple(ddf.shape[2:]), ddf.device, image.dtype)
    # the grid from per-axis identity coordinates (broadcast, nothing of the grid's size read) and the
    # field's components, stacked in grid_sample's reversed axis order: one pass over the field (the image
    # is left contiguous: grid_sample's backward is about twice slower on a permuted input)
    ddf = ddf.to(image.dtype)
    grid = torch.stack([torch.add(coordinates[k], ddf[:, k], alpha=scales[k]) for k in reversed(range(ddf.shape[1]))],
                       dim=-1)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
