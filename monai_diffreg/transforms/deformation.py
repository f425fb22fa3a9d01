"""Random smooth diffeomorphic deformations, split into "sample parameters" and "apply".

A random deformation is the exponential of a smooth stationary velocity field (SVF):

1. :func:`sample_smooth_velocity_params` draws the only random numbers: the velocity at a
   coarse grid of control points, every component uniform in ``[-max_displacement,
   max_displacement]`` voxels of the full-resolution grid.
2. :func:`smooth_velocity_from_params` makes it dense and smooth (linear resampling + Gaussian
   of half a control cell, :func:`.control_grid.upsample_control_grid`).
3. :func:`deformation_from_params` integrates it by scaling and squaring:
   ``ddf = exp(v)`` and ``inverse_ddf = exp(-v)`` (Arsigny et al. 2006; VoxelMorph).

Steps 2 and 3 are deterministic, so the same parameters always give the same field
(replay), and the field can be rebuilt on a grid of another resolution (the control values
are a velocity field on the control grid, in its own voxels, and are rescaled on resizing).

**Magnitude.** ``max_displacement`` is in voxels of the grid the parameters were sampled for.
Resampling and smoothing are convex combinations and scaling and squaring with border
padding cannot grow a component beyond ``max |v_i|``, so every component of both ``ddf`` and
``inverse_ddf`` is bounded by ``max_displacement`` voxels. The Jacobian of the velocity is at
most about ``2 * max_displacement / control_spacing``; the default (3 voxels over 8) keeps
``det J`` well above 0 (diffeomorphic on the discrete grid as well, tested).

Fields follow the package conventions (:mod:`monai_diffreg.functional`): ``(1, D, *spatial)``,
voxels, channel ``i`` along axis ``i + 2``, pull-back ``warped(x) = image(x + ddf(x))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..functional import integrate_velocity
from ..validation import check_positive
from .control_grid import as_spatial_shape, control_grid_shape, per_axis, upsample_control_grid

__all__ = [
    "DEFAULT_CONTROL_SPACING",
    "DEFAULT_MAX_DISPLACEMENT",
    "sample_smooth_velocity_params",
    "smooth_velocity_from_params",
    "deformation_from_params",
    "sample_random_affine",
]

DEFAULT_CONTROL_SPACING = 8.0
DEFAULT_MAX_DISPLACEMENT = 3.0

_PARAM_KEYS = ("coefficients", "spatial_shape", "control_spacing", "max_displacement")


def sample_smooth_velocity_params(
    spatial_shape: Sequence[int],
    control_spacing: float | Sequence[float] = DEFAULT_CONTROL_SPACING,
    max_displacement: float = DEFAULT_MAX_DISPLACEMENT,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Draw the parameters of a random smooth velocity field.

    Args:
        spatial_shape: the image grid ``(*spatial)``, 2D or 3D.
        control_spacing: distance between control points in voxels (one for all axes or one per axis);
            larger is smoother. The control grid has ``max(2, ceil(n_i / spacing_i) + 1)`` points per axis.
        max_displacement: bound on every velocity component, in voxels of ``spatial_shape`` (>= 0);
            it also bounds every component of the resulting displacement.
        generator: optional CPU ``torch.Generator`` for reproducible draws.

    Returns:
        dict with ``"coefficients"``: ``(1, D, *grid)`` float32 CPU tensor, the velocity at the
        control points in voxels of the control grid (full-resolution voxels times
        ``grid_i / n_i`` for channel ``i``); ``"spatial_shape"``, ``"control_spacing"`` (tuples)
        and ``"max_displacement"`` (float), the settings it was drawn with.
    """
    caller = "sample_smooth_velocity_params"
    shape = as_spatial_shape(spatial_shape, caller)
    ndim = len(shape)
    spacing = per_axis(control_spacing, ndim, "control_spacing", caller)
    magnitude = check_positive(max_displacement, "max_displacement", caller, allow_zero=True)
    grid = control_grid_shape(shape, spacing)
    uniform = torch.rand((1, ndim, *grid), generator=generator, dtype=torch.float32) * 2.0 - 1.0
    to_grid_voxels = torch.tensor([m / n for m, n in zip(grid, shape)], dtype=torch.float32)
    coefficients = uniform * magnitude * to_grid_voxels.view(1, ndim, *([1] * ndim))
    return {
        "coefficients": coefficients,
        "spatial_shape": shape,
        "control_spacing": spacing,
        "max_displacement": magnitude,
    }


def _check_params(params: object, caller: str) -> torch.Tensor:
    if not isinstance(params, Mapping) or any(k not in params for k in _PARAM_KEYS):
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"{caller}(): 'params' must be a dict with keys {list(_PARAM_KEYS)} "
                         f"(from sample_smooth_velocity_params), got {got}")
    coefficients = params["coefficients"]
    if not isinstance(coefficients, torch.Tensor) or coefficients.ndim not in (4, 5) or \
            coefficients.shape[0] != 1 or coefficients.shape[1] != coefficients.ndim - 2:
        shape = tuple(coefficients.shape) if isinstance(coefficients, torch.Tensor) else type(coefficients).__name__
        raise ValueError(f"{caller}(): params['coefficients'] must be a (1, D, *grid) tensor with D = 2 or 3, "
                         f"got {shape}")
    return coefficients


def smooth_velocity_from_params(
    params: Mapping[str, Any],
    spatial_shape: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dense smooth velocity field from :func:`sample_smooth_velocity_params` output.

    Args:
        params: the sampled parameters.
        spatial_shape: grid to build the field on; default ``params["spatial_shape"]``. Another
            shape (same number of axes) gives the same physical velocity at that resolution.
        device: device of the result (default CPU).
        dtype: floating dtype of the result.

    Returns:
        ``(1, D, *spatial)`` velocity in voxels of ``spatial_shape``.
    """
    caller = "smooth_velocity_from_params"
    coefficients = _check_params(params, caller)
    shape = as_spatial_shape(params["spatial_shape"] if spatial_shape is None else spatial_shape, caller)
    if len(shape) != coefficients.shape[1]:
        raise ValueError(f"{caller}(): 'spatial_shape' must have {coefficients.shape[1]} axes to match the "
                         f"{coefficients.shape[1]}D parameters, got {shape}")
    return upsample_control_grid(coefficients.to(device=device, dtype=dtype), shape, is_field=True)


def deformation_from_params(
    params: Mapping[str, Any],
    spatial_shape: Sequence[int] | None = None,
    num_steps: int = 7,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Velocity, displacement and inverse displacement of the deformation described by ``params``.

    Args:
        params: output of :func:`sample_smooth_velocity_params`.
        spatial_shape: grid to build the fields on; default ``params["spatial_shape"]``.
        num_steps: scaling-and-squaring steps (7 as in VoxelMorph).
        device: device of the results (default CPU).
        dtype: floating dtype of the results.

    Returns:
        dict with ``"velocity"`` ``v``, ``"ddf"`` ``= exp(v)`` and ``"inverse_ddf"`` ``= exp(-v)``,
        each ``(1, D, *spatial)`` in voxels. ``warp(warp(img, ddf), inverse_ddf) ~ img``.
    """
    velocity = smooth_velocity_from_params(params, spatial_shape, device=device, dtype=dtype)
    return {
        "velocity": velocity,
        "ddf": integrate_velocity(velocity, num_steps=num_steps),
        "inverse_ddf": integrate_velocity(-velocity, num_steps=num_steps),
    }


def sample_random_affine(spatial_shape: Sequence[int], max_rotation_degrees: float = 0.0, max_translation: float = 0.0,
                         max_log_scaling: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random affine about the grid's centre, ``(1, D, D + 1)`` voxel-index matrix (:mod:`monai_diffreg.functional.affine`).

    ``y = R S (x - c) + c + t`` with ``c`` the centre, ``R`` a rotation by angles drawn uniformly in
    ``[-max_rotation_degrees, max_rotation_degrees]`` (one in 2D; about each axis in 3D, composed in
    axis order), ``S = diag(exp(s))`` with each ``s`` uniform in ``[-max_log_scaling, max_log_scaling]``
    and ``t`` uniform in ``[-max_translation, max_translation]`` voxels per axis. Draws from
    ``generator`` in a fixed order (angles, scalings, translations).
    """
    caller = "sample_random_affine"
    shape = as_spatial_shape(spatial_shape, caller)
    ndim = len(shape)
    rotation_limit = math.radians(check_positive(max_rotation_degrees, "max_rotation_degrees", caller, allow_zero=True))
    translation_limit = check_positive(max_translation, "max_translation", caller, allow_zero=True)
    scaling_limit = check_positive(max_log_scaling, "max_log_scaling", caller, allow_zero=True)

    def uniform(count: int, limit: float) -> torch.Tensor:
        return (torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1) * limit

    angles = uniform(1 if ndim == 2 else 3, rotation_limit)
    scaling = torch.diag(torch.exp(uniform(ndim, scaling_limit)))
    translation = uniform(ndim, translation_limit)
    rotation = torch.eye(ndim, dtype=torch.float64)
    planes = [(0, 1)] if ndim == 2 else [(1, 2), (0, 2), (0, 1)]  # about axis 0, 1, 2 in turn
    for angle, (i, j) in zip(angles, planes):
        turn = torch.eye(ndim, dtype=torch.float64)
        turn[i, i] = turn[j, j] = torch.cos(angle)
        turn[i, j], turn[j, i] = -torch.sin(angle), torch.sin(angle)
        rotation = turn @ rotation
    linear = rotation @ scaling
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64)
    offset = centre + translation - linear @ centre
    return torch.cat([linear, offset[:, None]], dim=1)[None].float()
