"""Identity grids in voxel coordinates, built lazily and cached by (shape, device, dtype).

While ``torch.export`` / ``torch.compile`` trace a model the caches are bypassed: a cached eager
tensor would be baked into the program as a constant, and a traced (fake) tensor left in the
cache would break later eager calls (:func:`tracing`).
"""

from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["identity_grid", "tracing"]


def tracing() -> bool:
    """True while ``torch.export`` or ``torch.compile`` trace the calling code."""
    return torch.compiler.is_compiling()


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
        The tensor is shared from a cache (except while tracing): never modify it in place.
    """
    build = _cached_grid.__wrapped__ if tracing() else _cached_grid
    return build(tuple(int(s) for s in shape), torch.device(device or "cpu"), dtype)
