"""Plumbing shared by the classical optimisation engines (private).

Input checks for an image pair and its weight mask, the multi-resolution schedule (level shapes and
area-downsampled images), and progress reporting (callback and/or tqdm bar).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from ..functional import resize_image
from ..validation import check_finite, check_not_constant, check_spatial_tensor

__all__ = ["check_pair", "check_weight_mask", "check_schedule", "level_shape", "downsample", "ProgressReporter", "progress_reporter", "EngineSettings"]

ProgressReporter = Callable[[int, int, float], None]

MIN_LEVEL_SIZE = 8


def check_pair(fixed: object, moving: object, caller: str) -> int:
    """Validate a fixed/moving pair on the same grid: tensors ``(B, C, *spatial)``, finite, not constant.

    Returns:
        the number of spatial axes.
    """
    ndim = check_spatial_tensor(fixed, "fixed", caller)
    check_spatial_tensor(moving, "moving", caller, spatial_dims=ndim)
    if moving.shape != fixed.shape:  # type: ignore[union-attr]
        raise ValueError(
            f"{caller}(): 'moving' must have the shape of 'fixed' {tuple(fixed.shape)} (resample it onto the "  # type: ignore[union-attr]
            f"fixed grid first), got {tuple(moving.shape)}"  # type: ignore[union-attr]
        )
    for name, image in (("fixed", fixed), ("moving", moving)):
        check_finite(image, name, caller)  # type: ignore[arg-type]
        for b in range(image.shape[0]):  # type: ignore[union-attr]
            check_not_constant(image[b], name if image.shape[0] == 1 else f"{name}[{b}]", caller)  # type: ignore[index]
    return ndim


def check_weight_mask(mask: object, fixed: torch.Tensor, caller: str, name: str = "fixed_mask") -> torch.Tensor:
    """Validate a weight mask ``(B or 1, 1, *spatial)``: weights in ``[0, 1]`` on the fixed grid, not all zero.

    Weights scale each voxel's share of the image term, unlike the metrics' 0/1 regions
    (``metrics._common.check_region_mask``).

    Returns:
        the mask as a float tensor on ``fixed``'s device and dtype.
    """
    check_spatial_tensor(mask, name, caller, spatial_dims=fixed.ndim - 2, channels=1)
    expected = f"(1 or {fixed.shape[0]}, 1, {', '.join(str(s) for s in fixed.shape[2:])})"
    if mask.shape[2:] != fixed.shape[2:] or mask.shape[0] not in (1, fixed.shape[0]):  # type: ignore[union-attr]
        raise ValueError(f"{caller}(): '{name}' must have shape {expected}, got {tuple(mask.shape)}")  # type: ignore[union-attr]
    mask = mask.to(device=fixed.device, dtype=fixed.dtype)  # type: ignore[union-attr]
    check_finite(mask, name, caller)
    if bool((mask < 0).any()) or bool((mask > 1).any()):
        raise ValueError(f"{caller}(): '{name}' must hold weights in [0, 1], got values in "
                         f"[{float(mask.min())}, {float(mask.max())}]")
    if bool((mask.flatten(1).sum(1) == 0).any()):
        raise ValueError(f"{caller}(): '{name}' is empty (all zeros): nothing to register")
    return mask


def check_schedule(levels: object, iterations: object, caller: str) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Validate a multi-resolution schedule: downsampling factors >= 1 and iteration counts >= 0, same length."""
    ok_levels = isinstance(levels, Sequence) and len(levels) > 0 and all(
        isinstance(f, (int, float)) and not isinstance(f, bool) and f >= 1 for f in levels
    )
    if not ok_levels:
        raise ValueError(f"{caller}(): 'levels' must be a non-empty sequence of downsampling factors >= 1 "
                         f"(coarsest first, e.g. (4, 2, 1)), got {levels!r}")
    ok_iterations = isinstance(iterations, Sequence) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in iterations
    )
    if not ok_iterations or len(iterations) != len(levels):  # type: ignore[arg-type]
        raise ValueError(f"{caller}(): 'iterations' must be {len(levels)} integers >= 0 (one per level in "  # type: ignore[arg-type]
                         f"'levels' = {tuple(levels)}), got {iterations!r}")  # type: ignore[arg-type]
    return tuple(float(f) for f in levels), tuple(iterations)  # type: ignore[arg-type]


def level_shape(shape: Sequence[int], factor: float) -> tuple[int, ...]:
    """Grid of a pyramid level: ``round(n / factor)`` voxels per axis, but at least ``min(n, 8)``."""
    return tuple(max(int(round(n / factor)), min(n, MIN_LEVEL_SIZE)) for n in shape)


def level_grid(shape: Sequence[int], factor: float, spacing: Sequence[float] | None) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Grid and voxel size of a pyramid level: ``level_shape(shape, factor)`` voxels, each covering the same
    physical extent (``spacing * N / N_level``), so fields in physical units mean the same thing at every level."""
    level = level_shape(shape, factor)
    base = (1.0,) * len(shape) if spacing is None else tuple(float(h) for h in spacing)
    return level, tuple(h * n / m for h, n, m in zip(base, shape, level))


def downsample(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Average-pool (``resize_image(..., mode="area")``) an image or mask onto a level grid."""
    return resize_image(image, size=shape, mode="area")


@contextmanager
def progress_reporter(total: int, description: str, progress: bool,
                      callback: ProgressReporter | None) -> Iterator[ProgressReporter]:
    """Yield ``report(level, iteration, loss)`` that calls ``callback`` and advances a tqdm bar when ``progress``."""
    bar = tqdm(total=total, desc=description, leave=False) if progress else None

    def report(level: int, iteration: int, loss: float) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(level=level, loss=f"{loss:.5g}")
        if callback is not None:
            callback(level, iteration, loss)

    try:
        yield report
    finally:
        if bar is not None:
            bar.close()


class EngineSettings:
    """Base of the engines' thin classes: hold keyword settings of ``engine``, validated by name.

    Subclasses set ``engine`` (the optimisation function) and ``per_call`` (its arguments that
    are given per call, not stored), and define ``__call__``.
    """

    engine: Callable
    per_call: tuple[str, ...] = ()

    def __init__(self, **settings: object) -> None:
        defaults = {k: v for k, v in (self.engine.__kwdefaults__ or {}).items() if k not in self.per_call}
        unknown = sorted(set(settings) - set(defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__}(): unknown setting(s) {unknown}; allowed: {sorted(defaults)}")
        self.settings = {**defaults, **settings}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings.items())})"
