"""Smooth dense fields from values on a coarse grid of control points.

Random deformations (:mod:`.deformation`) and bias fields (:mod:`.synthesis`) are both
sampled as a few random numbers on a coarse grid and made dense the same way: linear
resampling over the same extent (:func:`monai_diffreg.functional.resize_field` for vector
fields, :func:`monai_diffreg.functional.resize_image` for scalar maps), then a Gaussian of
half a control cell, so the result is smooth (C-infinity) rather than piecewise linear.
Both steps are convex combinations of the control values (replicate padding), so the dense
field never exceeds the largest control value in magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..functional import gaussian_smooth, resize_field, resize_image

__all__ = ["as_spatial_shape", "per_axis", "control_grid_shape", "upsample_control_grid"]


def as_spatial_shape(spatial_shape: Sequence[int], caller: str) -> tuple[int, ...]:
    """Validate a 2D or 3D spatial shape of positive integers and return it as a tuple."""
    message = f"{caller}(): 'spatial_shape' must be 2 or 3 positive integers, got {spatial_shape!r}"
    try:
        shape = tuple(int(s) for s in spatial_shape)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if len(shape) not in (2, 3) or any(s < 1 or s != float(t) for s, t in zip(shape, spatial_shape)):
        raise ValueError(message)
    return shape


def per_axis(value: float | Sequence[float], ndim: int, name: str, caller: str) -> tuple[float, ...]:
    """Broadcast one positive number (or check ``ndim`` numbers) to one finite value > 0 per axis."""
    values = (value,) * ndim if isinstance(value, (int, float)) else tuple(value)
    if len(values) != ndim or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{caller}(): '{name}' must be a number > 0 or {ndim} numbers > 0, got {value!r}")
    return tuple(float(v) for v in values)


def control_grid_shape(spatial_shape: Sequence[int], control_spacing: float | Sequence[float]) -> tuple[int, ...]:
    """Number of control points per axis: ``max(2, ceil(n_i / spacing_i) + 1)``.

    Args:
        spatial_shape: the dense grid ``(*spatial)``.
        control_spacing: distance between control points in voxels of the dense grid (one per axis or one for all).

    Returns:
        the control grid's shape, one entry per spatial axis.
    """
    shape = as_spatial_shape(spatial_shape, "control_grid_shape")
    spacing = per_axis(control_spacing, len(shape), "control_spacing", "control_grid_shape")
    return tuple(max(2, math.ceil(n / s) + 1) for n, s in zip(shape, spacing))


def upsample_control_grid(coefficients: torch.Tensor, spatial_shape: Sequence[int], is_field: bool) -> torch.Tensor:
    """Dense smooth field from control-point values.

    The control grid's ``m_i`` cells and the dense grid's ``n_i`` voxels cover the same extent
    (``align_corners=False``). After linear resampling, the result is smoothed with a Gaussian
    of standard deviation ``n_i / (2 m_i)`` voxels (half a control cell) along axis ``i``.

    Args:
        coefficients: ``(B, C, *grid)`` control values. For a vector field (``is_field``) ``C = D``
            and the values are displacements in voxels of the control grid (package convention),
            rescaled to voxels of the dense grid by :func:`~monai_diffreg.functional.resize_field`.
        spatial_shape: dense shape ``(*spatial)``, same number of axes as the control grid.
        is_field: whether ``coefficients`` is a vector field (vectors rescaled) or a scalar map.

    Returns:
        ``(B, C, *spatial)`` dense field.
    """
    shape = as_spatial_shape(spatial_shape, "upsample_control_grid")
    grid = coefficients.shape[2:]
    if len(grid) != len(shape):
        raise ValueError(
            f"upsample_control_grid(): 'spatial_shape' must have {len(grid)} axes like the control grid "
            f"{tuple(grid)}, got {shape}"
        )
    resize = resize_field if is_field else resize_image
    dense = resize(coefficients, size=shape, mode="linear")
    sigma = [n / (2.0 * m) for n, m in zip(shape, grid)]
    return gaussian_smooth(dense, sigma, padding_mode="replicate")
