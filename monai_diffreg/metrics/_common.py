"""Input checks and reductions shared by the metrics (private).

Every metric reduces a per-voxel map to one value per case over the voxels kept by an
optional border ``crop`` and an optional ``mask``; these helpers do that once.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from ..validation import check_positive, check_spatial_tensor

__all__ = [
    "check_spacing",
    "check_crop",
    "check_region_mask",
    "crop_border",
    "masked_mean",
    "masked_std",
    "vector_norm_mm",
    "mean_vector_norm",
]


def check_spacing(spacing: float | Sequence[float] | None, ndim: int | None, caller: str) -> tuple[float, ...]:
    """Voxel size per spatial axis (tensor axis order), ``None`` meaning 1 (results in voxels).

    Args:
        spacing: one positive number (isotropic) or ``ndim`` positive numbers (a sequence, numpy
            array or tensor, e.g. nibabel's ``header.get_zooms()``), or ``None``.
        ndim: number of spatial axes; ``None`` when not known yet (a setting checked at construction).
        caller: the public callable's name, for error messages.

    Returns:
        ``ndim`` floats (as many as given when ``ndim`` is None).
    """
    if isinstance(spacing, (torch.Tensor, np.ndarray)):
        spacing = spacing.tolist()
    if spacing is None or isinstance(spacing, numbers.Real):
        spacing = (1.0 if spacing is None else spacing,) * (ndim or 1)
    if not isinstance(spacing, Sequence) or isinstance(spacing, str) or len(spacing) != (ndim or len(spacing)):
        expected = "a number or a sequence of numbers" if ndim is None else f"a number or {ndim} numbers (one per spatial axis)"
        raise ValueError(f"{caller}(): 'spacing' must be {expected}, got {spacing!r}")
    # numpy scalars (nibabel zooms are float32) become Python floats; anything else fails the check
    values = [float(s) if isinstance(s, numbers.Real) and not isinstance(s, bool) else s for s in spacing]
    return tuple(check_positive(s, "spacing", caller) for s in values)


def check_crop(crop: int, spatial: Sequence[int] | None, caller: str) -> int:
    """Validate a border crop (voxels removed at both ends of every spatial axis).

    Args:
        crop: the crop, an integer >= 0.
        spatial: the spatial shape it applies to, or ``None`` when not known yet (a setting).
        caller: the public callable's name.
    """
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 0:
        raise ValueError(f"{caller}(): 'crop' must be an integer >= 0, got {crop!r}")
    if spatial is not None and any(2 * crop >= n for n in spatial):
        raise ValueError(
            f"{caller}(): 'crop'={crop} leaves no voxel of the spatial shape {tuple(int(n) for n in spatial)}"
        )
    return crop


def check_region_mask(mask: object, like: torch.Tensor, caller: str) -> torch.Tensor | None:
    """Validate a region mask ``(B or 1, 1, *spatial)`` of 0/1 (or bool) values; return it as bool.

    A region says which voxels a metric evaluates (in or out), unlike the engines' soft weights
    in ``[0, 1]`` (``engines._optim_common.check_weight_mask``).

    Args:
        mask: ``None`` or the mask; non-zero voxels are evaluated.
        like: the ``(B, C, *spatial)`` tensor whose batch size and spatial shape the mask must match.
        caller: the public callable's name.
    """
    if mask is None:
        return None
    check_spatial_tensor(mask, "mask", caller, spatial_dims=like.ndim - 2, channels=1)
    if mask.shape[0] not in (1, like.shape[0]) or mask.shape[2:] != like.shape[2:]:  # type: ignore[union-attr]
        expected = (int(like.shape[0]), 1, *(int(s) for s in like.shape[2:]))
        raise ValueError(f"{caller}(): 'mask' must have shape {expected} (or batch size 1), got {tuple(mask.shape)}")  # type: ignore[union-attr]
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):  # type: ignore[union-attr]
        raise ValueError(f"{caller}(): 'mask' must hold only 0 and 1 (or be bool)")
    return mask.to(device=like.device, dtype=torch.bool)  # type: ignore[union-attr]


def crop_border(x: torch.Tensor, crop: int) -> torch.Tensor:
    """Remove ``crop`` voxels at both ends of every spatial axis of ``(B, C, *spatial)``."""
    if crop == 0:
        return x
    return x[(slice(None), slice(None), *(slice(crop, -crop) for _ in x.shape[2:]))]


def _kept(values: torch.Tensor, keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened ``(B, N)`` values with excluded voxels zeroed (so NaN/Inf there cannot leak) and 0/1 weights."""
    if keep is None:
        return values.flatten(1), torch.ones_like(values.flatten(1))
    keep = keep.expand_as(values).flatten(1)
    return torch.where(keep, values.flatten(1), torch.zeros((), dtype=values.dtype, device=values.device)), keep.to(values.dtype)


def masked_mean(values: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``(B, 1, *spatial)`` values over the voxels where ``keep`` is true; NaN when none is.

    Args:
        values: ``(B, 1, *spatial)``.
        keep: bool ``(B or 1, 1, *spatial)``, or ``None`` for every voxel.

    Returns:
        ``(B,)``.
    """
    if keep is None:
        return values.flatten(1).mean(1)
    v, w = _kept(values, keep)
    return (v * w).sum(1) / w.sum(1)


def masked_std(values: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Population standard deviation (``ddof = 0``, as ``numpy.std``) over the kept voxels; NaN when none.

    Args:
        values: ``(B, 1, *spatial)``.
        keep: bool ``(B or 1, 1, *spatial)``, or ``None`` for every voxel.

    Returns:
        ``(B,)``.
    """
    if keep is None:
        return values.flatten(1).std(1, correction=0)
    v, w = _kept(values, keep)
    mean = (v * w).sum(1, keepdim=True) / w.sum(1, keepdim=True)
    return (((v - mean) ** 2 * w).sum(1) / w.sum(1)).sqrt()


def vector_norm_mm(vectors: torch.Tensor, spacing: Sequence[float], dim: int = 1) -> torch.Tensor:
    """Euclidean length of voxel-unit vectors in physical units: ``sqrt(sum_i (s_i v_i)^2)``.

    Args:
        vectors: tensor whose axis ``dim`` holds the D components in tensor axis order.
        spacing: D voxel sizes (mm per voxel) in the same order.
        dim: the component axis.

    Returns:
        ``vectors`` with axis ``dim`` reduced to the norm.
    """
    shape = [1] * vectors.ndim
    shape[dim] = len(spacing)
    scale = torch.tensor(spacing, dtype=vectors.dtype, device=vectors.device).view(shape)
    return torch.linalg.vector_norm(vectors * scale, dim=dim)


def mean_vector_norm(vectors: torch.Tensor, spacing: Sequence[float], keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean physical length of a vector field ``(B, D, *spatial)`` over the kept voxels.

    Returns:
        ``(B,)``; NaN where ``keep`` keeps no voxel.
    """
    return masked_mean(vector_norm_mm(vectors, spacing).unsqueeze(1), keep)
