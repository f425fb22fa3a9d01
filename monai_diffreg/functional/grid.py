"""Identity grids in voxel coordinates, built lazily and cached by (shape, device, dtype)."""

from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["identity_grid"]


@lru_cache(maxsize=32)
def _cached_grid(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
    grid.requires_grad_(False)
    return grid


def identity_grid(shape: tuple[int, ...] | torch.Size, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Voxel coordinates of a grid.

    Args:
        shape: spatial shape ``(*spatial)``.
        device: tensor device.
        dtype: floating dtype.

    Returns:
        ``(D, *spatial)`` tensor whose channel ``i`` holds the index along spatial axis ``i``.
        The tensor is shared from a cache: never modify it in place.
    """
    return _cached_grid(tuple(int(s) for s in shape), torch.device(device or "cpu"), dtype)
