"""Target registration error of corresponding landmarks (Learn2Reg's TRE).

A DDF ``u`` maps the fixed grid to the moving image (pull-back, package convention):
fixed voxel ``x`` corresponds to moving location ``phi(x) = x + u(x)``. For landmark pairs
``(x_i, y_i)`` (fixed, moving),

    TRE_i = || S (x_i + u(x_i) - y_i) ||,   S = diag(spacing),

with ``u(x_i)`` interpolated (bi/tri)linearly between voxels, exactly as
:func:`monai_diffreg.functional.warp` samples (``grid_sample``, ``align_corners=True``).
Learn2Reg's evaluation interpolates the field with cubic splines (``map_coordinates`` default);
the difference is negligible for smooth fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..functional.warp import voxel_to_sampling_coordinates
from ..validation import check_field
from ._base import SpacingMetric
from ._common import check_spacing, vector_norm_mm

__all__ = ["target_registration_error", "TREMetric"]


def _check_points(points: object, name: str, ddf: torch.Tensor, caller: str, inside_grid: bool) -> torch.Tensor:
    """Landmarks ``(N, D)`` or ``(B, N, D)`` in voxels (inside the grid if asked), as ``(B, N, D)`` in ``ddf``'s dtype."""
    if not isinstance(points, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{caller}(): '{name}' must be a torch.Tensor or numpy array, got {type(points).__name__}")
    pts = torch.as_tensor(points).to(device=ddf.device, dtype=ddf.dtype)
    batch, ndim, spatial = ddf.shape[0], ddf.shape[1], ddf.shape[2:]
    if pts.ndim == 2:
        pts = pts.expand(batch, *pts.shape)
    if pts.ndim != 3 or pts.shape[0] != batch or pts.shape[2] != ndim or pts.shape[1] == 0:
        raise ValueError(
            f"{caller}(): '{name}' must have shape (N, {ndim}) or ({batch}, N, {ndim}) with N >= 1 "
            f"(voxel coordinates in tensor axis order), got {tuple(points.shape)}"
        )
    if not bool(torch.isfinite(pts).all()):
        raise ValueError(f"{caller}(): '{name}' contains NaN/Inf coordinates")
    if not inside_grid:
        return pts
    upper = torch.tensor([n - 1 for n in spatial], dtype=pts.dtype, device=pts.device)
    outside = ((pts < 0) | (pts > upper)).any(-1)
    if bool(outside.any()):
        raise ValueError(
            f"{caller}(): {int(outside.sum())} of the '{name}' lie outside the grid [0, n - 1] per axis "
            f"for spatial shape {tuple(int(n) for n in spatial)}, e.g. {pts[outside][0].tolist()}"
        )
    return pts


def _sample_at_points(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Linearly interpolate ``field`` ``(B, C, *spatial)`` at voxel ``points`` ``(B, N, D)``; returns ``(B, N, C)``."""
    spatial = tuple(field.shape[2:])
    grid = voxel_to_sampling_coordinates(points, spatial)
    grid = grid.view(points.shape[0], points.shape[1], *([1] * (len(spatial) - 1)), len(spatial))
    values = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return values.flatten(2).transpose(1, 2)


def target_registration_error(
    fixed_points: torch.Tensor | np.ndarray,
    moving_points: torch.Tensor | np.ndarray,
    ddf: torch.Tensor,
    spacing: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """Distance between each moving landmark and where the DDF sends its fixed partner.

    Args:
        fixed_points: ``(N, D)`` or ``(B, N, D)`` landmarks in voxel coordinates of the fixed grid
            (the DDF's grid), in tensor axis order (the order of the DDF's channels), not
            necessarily integers; ``(N, D)`` applies to every case. Must lie inside the grid
            (``0 <= x_i <= n - 1`` per axis): the field is not extrapolated.
        moving_points: corresponding moving landmarks, same shape, in voxel coordinates of the
            moving image on the same grid (the package registers images resampled to one grid).
        ddf: ``(B, D, *spatial)`` displacement in voxels mapping fixed to moving (2D or 3D).
        spacing: voxel size in mm per spatial axis (tensor axis order) or one number;
            ``None``: the error is in voxels.

    Returns:
        ``(B, N)`` per-landmark error in mm (voxels without ``spacing``), ``ddf``'s dtype.
    """
    ndim = check_field(ddf, "ddf", "target_registration_error")
    spacing = check_spacing(spacing, ndim, "target_registration_error")
    fixed = _check_points(fixed_points, "fixed_points", ddf, "target_registration_error", inside_grid=True)
    moving = _check_points(moving_points, "moving_points", ddf, "target_registration_error", inside_grid=False)
    if fixed.shape != moving.shape:
        raise ValueError(
            f"target_registration_error(): 'fixed_points' and 'moving_points' must pair up, "
            f"got shapes {tuple(fixed_points.shape)} and {tuple(moving_points.shape)}"
        )
    mapped = fixed + _sample_at_points(ddf, fixed)
    return vector_norm_mm(mapped - moving, spacing, dim=-1)


class TREMetric(SpacingMetric):
    """MONAI metric accumulating the mean :func:`target_registration_error` of each case.

    Call it as ``metric(y_pred=ddf, fixed_points=..., moving_points=..., spacing=None)`` with
    ``(B, N, D)`` (or ``(N, D)``) landmarks; cases may have different N across calls, so the
    buffer holds one mean TRE per case ``(cases, 1)``. ``spacing`` per call overrides the
    default given here.

    Args:
        spacing: default voxel size in mm, or ``None`` for voxels.
        reduction: MONAI reduction over cases (see :class:`~monai_diffreg.metrics._base.ReducedMetric`).
        get_not_nans: return the count of non-NaN values as well.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """Per-case mean TRE ``(B, 1)``; the landmarks come as keyword arguments, ``y`` is unused."""
        missing = [k for k in ("fixed_points", "moving_points") if k not in kwargs]
        if missing:
            raise ValueError(f"{type(self).__name__}(): keyword argument(s) {missing} are required")
        tre = target_registration_error(kwargs["fixed_points"], kwargs["moving_points"], y_pred, self._spacing(kwargs))
        return tre.mean(dim=1, keepdim=True)
