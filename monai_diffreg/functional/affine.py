"""Affine transforms in voxel coordinates and their displacement fields.

An affine transform is a matrix ``(B, D, D + 1)`` holding ``[A | t]`` that maps a **fixed-grid
voxel index** ``x`` (axis order = tensor axis order) to a **moving-grid voxel index**
``y = A x + t``. This is the space of the package's displacement fields, so the transform's
displacement is ``u(x) = A x + t - x`` (:func:`affine_to_ddf`) and
``warp(moving, affine_to_ddf(matrix, shape))`` resamples the moving image onto the fixed grid.
It is also :func:`scipy.ndimage.affine_transform`'s convention (``output[x] = input[A x + t]``).

For optimisation, :func:`affine_from_params` parameterises the matrix about a centre ``c``
(typically the image centre), ``y = (I + L)(x - c) + c + t``, so that the zero parameter
vector is the identity and rotations/scalings do not drag translations with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..validation import check_field
from .grid import identity_grid

__all__ = ["identity_affine", "affine_to_ddf", "affine_from_params", "num_affine_params", "rescale_affine", "invert_affine", "compose_affine",
           "compose_affine_ddf",
           "affine_from_normalized", "affine_to_normalized"]


def _check_matrix(matrix: object, caller: str, ndim: int | None = None) -> int:
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(f"{caller}(): 'matrix' must be a torch.Tensor, got {type(matrix).__name__}")
    d = matrix.shape[1] if matrix.ndim == 3 else -1
    if matrix.ndim != 3 or d not in (2, 3) or matrix.shape[2] != d + 1 or (ndim is not None and d != ndim):
        dims = f"{ndim}" if ndim is not None else "D"
        raise ValueError(
            f"{caller}(): 'matrix' must have shape (B, {dims}, {dims}+1) with D = 2 or 3"
            f"{'' if ndim is None else f' for a {ndim}D grid'}, got {tuple(matrix.shape)}"
        )
    return d


def _check_shape(spatial_shape: Sequence[int], caller: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise ValueError(f"{caller}(): 'spatial_shape' must be 2 or 3 positive integers, got {tuple(spatial_shape)!r}")
    return shape


def num_affine_params(ndim: int) -> int:
    """Number of parameters of :func:`affine_from_params`: ``D * D + D`` (12 in 3D, 6 in 2D)."""
    if ndim not in (2, 3):
        raise ValueError(f"num_affine_params(): 'ndim' must be 2 or 3, got {ndim!r}")
    return ndim * ndim + ndim


def identity_affine(batch: int, ndim: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Identity matrices ``[I | 0]``.

    Args:
        batch: batch size ``B``.
        ndim: spatial dimension ``D`` (2 or 3).
        dtype: floating dtype.
        device: tensor device.

    Returns:
        ``(B, D, D + 1)`` tensor.
    """
    if ndim not in (2, 3):
        raise ValueError(f"identity_affine(): 'ndim' must be 2 or 3, got {ndim!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"identity_affine(): 'batch' must be an integer >= 1, got {batch!r}")
    eye = torch.eye(ndim, ndim + 1, dtype=dtype, device=device)
    return eye.unsqueeze(0).repeat(batch, 1, 1)


def affine_to_ddf(matrix: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Displacement field of a voxel-space affine transform: ``u(x) = A x + t - x``.

    Args:
        matrix: ``(B, D, D + 1)`` ``[A | t]`` mapping fixed-grid voxel indices to moving-grid
            voxel indices (module docstring).
        spatial_shape: the fixed grid ``(*spatial)``, ``D`` integers.

    Returns:
        ``(B, D, *spatial_shape)`` displacement in voxels, in the matrix's dtype and device;
        differentiable with respect to ``matrix``.
    """
    shape = _check_shape(spatial_shape, "affine_to_ddf")
    ndim = _check_matrix(matrix, "affine_to_ddf", ndim=len(shape))
    grid = identity_grid(shape, matrix.device, matrix.dtype)  # (D, *S)
    linear = matrix[:, :, :ndim] - torch.eye(ndim, dtype=matrix.dtype, device=matrix.device)
    ddf = torch.einsum("bij,j...->bi...", linear, grid)
    return ddf + matrix[:, :, ndim].view(*matrix.shape[:2], *([1] * ndim))


def affine_from_params(params: torch.Tensor, centre: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Affine matrix from an unconstrained parameter vector, about a centre.

    ``y = (I + L)(x - c) + c + t``, i.e. ``A = I + L`` and translation column ``c + t - A c``.
    The parameters are ``params = [L.flatten() (row-major, D*D values), t (D values)]``:
    12 in 3D (``L`` 3x3 then ``t`` 3), 6 in 2D (``L`` 2x2 then ``t`` 2); all zeros is the
    identity. ``L`` is dimensionless (rotation, scaling and shear together), ``t`` is in voxels
    and is the displacement of the centre ``c``. Every parameter enters linearly, which keeps
    gradient descent well conditioned.

    Args:
        params: ``(B, D * D + D)``.
        centre: ``(D,)`` or ``(B, D)`` centre in voxel indices (e.g. ``(n - 1) / 2`` per axis).

    Returns:
        ``(B, D, D + 1)`` matrix, differentiable with respect to ``params``.
    """
    if not isinstance(params, torch.Tensor) or params.ndim != 2 or params.shape[1] not in (6, 12):
        shape = tuple(params.shape) if isinstance(params, torch.Tensor) else type(params).__name__
        raise ValueError(f"affine_from_params(): 'params' must have shape (B, 6) in 2D or (B, 12) in 3D, got {shape}")
    ndim = 2 if params.shape[1] == 6 else 3
    centre = torch.as_tensor(centre, dtype=params.dtype, device=params.device)
    if centre.shape[-1] != ndim or centre.ndim not in (1, 2) or (centre.ndim == 2 and centre.shape[0] != params.shape[0]):
        raise ValueError(
            f"affine_from_params(): 'centre' must have shape ({ndim},) or ({params.shape[0]}, {ndim}), "
            f"got {tuple(centre.shape)}"
        )
    centre = centre.expand(params.shape[0], ndim)
    linear = torch.eye(ndim, dtype=params.dtype, device=params.device) + params[:, : ndim * ndim].view(-1, ndim, ndim)
    offset = centre + params[:, ndim * ndim :] - torch.einsum("bij,bj->bi", linear, centre)
    return torch.cat([linear, offset.unsqueeze(-1)], dim=2)


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """``[A | t]^-1 = [A^-1 | -A^-1 t]`` of ``(B, D, D + 1)`` voxel-index matrices (the inverse transform)."""
    ndim = _check_matrix(matrix, "invert_affine")
    inverse = torch.linalg.inv(matrix[:, :, :ndim])
    return torch.cat([inverse, -(inverse @ matrix[:, :, ndim:])], dim=2)


def compose_affine(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``outer o inner`` of ``(B, D, D + 1)`` voxel-index matrices: ``x -> outer(inner(x))``, i.e.
    ``[A_o A_i | A_o t_i + t_o]`` (the matrix of :func:`~monai_diffreg.functional.compose_ddf` of their fields)."""
    ndim = _check_matrix(outer, "compose_affine")
    _check_matrix(inner, "compose_affine", ndim)
    linear = outer[:, :, :ndim] @ inner[:, :, :ndim]
    return torch.cat([linear, outer[:, :, :ndim] @ inner[:, :, ndim:] + outer[:, :, ndim:]], dim=2)


def compose_affine_ddf(matrix: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Displacement of ``phi_matrix o phi_inner``: ``u(x) = (A - I) x + t + A u_inner(x)``, exactly.

    The same transform as ``compose_ddf(affine_to_ddf(matrix, S), inner)``, without interpolating the
    affine field: exact everywhere (also where ``x + u_inner(x)`` leaves the grid, which
    :func:`~monai_diffreg.functional.compose_ddf` clamps) and one matrix product per voxel.

    Args:
        matrix: ``(B, D, D + 1)`` voxel-index matrix ``[A | t]`` (module docstring).
        inner: ``(B, D, *S)`` displacement in voxels, applied to the grid first.

    Returns:
        ``(B, D, *S)`` displacement in voxels.
    """
    ndim = _check_matrix(matrix, "compose_affine_ddf")
    if check_field(inner, "inner", "compose_affine_ddf") != ndim or inner.shape[0] != matrix.shape[0]:
        raise ValueError(f"compose_affine_ddf(): 'matrix' {tuple(matrix.shape)} and 'inner' {tuple(inner.shape)} must "
                         f"have the same batch size and dimension")
    rotated = torch.einsum("bij,bj...->bi...", matrix[:, :, :ndim].to(inner.dtype), inner)
    return affine_to_ddf(matrix.to(inner.dtype), inner.shape[2:]) + rotated


def rescale_affine(matrix: torch.Tensor, from_shape: Sequence[int], to_shape: Sequence[int]) -> torch.Tensor:
    """Express a voxel-space affine matrix on another grid covering the same extent.

    Grids of different resolution share their extent as in :func:`resize_field`
    (``align_corners=False``): voxel ``x'`` of a grid with ``N`` voxels along an axis sits at
    ``x = (x' + 0.5) * n / N - 0.5`` on the grid with ``n`` voxels. With ``T`` that map
    (``x = S x' + o``), the matrix on the new grid is ``T^-1 M T`` (the same physical transform).

    Args:
        matrix: ``(B, D, D + 1)`` on the grid ``from_shape``, both fixed and moving grids
            having that shape.
        from_shape: spatial shape the matrix is expressed on.
        to_shape: spatial shape to express it on.

    Returns:
        ``(B, D, D + 1)`` matrix in voxel indices of ``to_shape``.
    """
    src = _check_shape(from_shape, "rescale_affine")
    dst = _check_shape(to_shape, "rescale_affine")
    ndim = _check_matrix(matrix, "rescale_affine", ndim=len(src))
    if len(dst) != ndim:
        raise ValueError(f"rescale_affine(): 'to_shape' must have {ndim} entries like 'from_shape', got {dst!r}")
    scale = torch.tensor([n / m for n, m in zip(src, dst)], dtype=matrix.dtype, device=matrix.device)
    origin = 0.5 * scale - 0.5
    linear = matrix[:, :, :ndim] * scale.view(1, 1, ndim) / scale.view(1, ndim, 1)
    # y' = S^-1 (A (S x' + o) + t - o)
    shift = (torch.einsum("bij,j->bi", matrix[:, :, :ndim], origin) + matrix[:, :, ndim] - origin) / scale
    return torch.cat([linear, shift.unsqueeze(-1)], dim=2)


# ------------------------------------------------------------------------------- normalised coordinates
# Affine transforms in normalised coordinates of a grid, and their voxel-index matrices.
#
# The package's affine matrices (:mod:`monai_diffreg.functional.affine`) map fixed-grid voxel
# indices to moving-grid voxel indices. Their translation column depends on the grid's size and
# origin (a rotation about the image centre has a translation of the order of the image size), so
# it is a poor quantity to predict or to penalise. Here the same transform is written in
# **normalised coordinates** of a grid with ``n`` voxels per axis::
#
#     x_n = (x - c) / h,      c = (n - 1) / 2,   h = n / 2     (per axis, tensor axis order)
#
# so the grid's extent (voxel ``i`` covers ``[i - 1/2, i + 1/2]``) is ``[-1, 1]`` and its centre is
# 0, the ``align_corners=False`` geometry of :func:`~monai_diffreg.functional.resize.resize_field`:
# grids of any resolution over the same extent share these coordinates, so a normalised matrix
# means the same physical transform on all of them. A normalised matrix ``[A_n | t_n]`` maps
# ``x_n -> A_n x_n + t_n``: ``A_n`` is dimensionless, ``t_n`` is the displacement of the centre as a
# fraction of the half-extent. With ``H = diag(h)`` the voxel-index matrix is
# ``A = H A_n H^-1``, ``t = c + H t_n - A c``.


def _centre_and_half(shape: tuple[int, ...], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=like.dtype, device=like.device)
    half = torch.tensor([n / 2 for n in shape], dtype=like.dtype, device=like.device)
    return centre, half


def affine_from_normalized(params: torch.Tensor, spatial_shape: Sequence[int],
                           exponential: bool = False) -> torch.Tensor:
    """Voxel-index matrix of a grid from normalised affine parameters (the "normalised coordinates" comment above).

    Args:
        params: ``(B, D * D + D)``: ``L`` (row-major ``D x D``) then ``t_n`` (``D``); all zeros is
            the identity. The normalised linear part is ``A_n = I + L`` or, with
            ``exponential=True``, ``A_n = expm(L)`` (``det A_n = exp(trace L) > 0``: always
            invertible and orientation-preserving).
        spatial_shape: the grid ``(*spatial)``, ``D`` integers.
        exponential: the linear part as a matrix exponential.

    Returns:
        ``(B, D, D + 1)`` ``[A | t]`` mapping fixed-grid voxel indices to moving-grid voxel indices
        (the convention of :func:`~monai_diffreg.functional.affine.affine_to_ddf`), differentiable
        with respect to ``params``.
    """
    caller = "affine_from_normalized"
    shape = _check_shape(spatial_shape, caller)
    ndim = len(shape)
    expected = ndim * ndim + ndim
    if not isinstance(params, torch.Tensor) or params.ndim != 2 or params.shape[1] != expected:
        got = tuple(params.shape) if isinstance(params, torch.Tensor) else type(params).__name__
        raise ValueError(f"{caller}(): 'params' must have shape (B, {expected}) for a {ndim}D grid, got {got}")
    if not isinstance(exponential, bool):
        raise ValueError(f"{caller}(): 'exponential' must be True or False, got {exponential!r}")
    log_or_offset = params[:, : ndim * ndim].reshape(-1, ndim, ndim)
    eye = torch.eye(ndim, dtype=params.dtype, device=params.device)
    linear_n = torch.linalg.matrix_exp(log_or_offset) if exponential else eye + log_or_offset
    centre, half = _centre_and_half(shape, params)
    linear = linear_n * half.view(1, ndim, 1) / half.view(1, 1, ndim)
    shift = centre + half * params[:, ndim * ndim:] - torch.einsum("bij,j->bi", linear, centre)
    return torch.cat([linear, shift.unsqueeze(-1)], dim=2)


def affine_to_normalized(matrix: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """The normalised matrix ``[A_n | t_n]`` of a voxel-index matrix of a grid (the "normalised coordinates" comment above).

    Args:
        matrix: ``(B, D, D + 1)`` voxel-index matrix on the grid ``spatial_shape``.
        spatial_shape: the grid ``(*spatial)``.

    Returns:
        ``(B, D, D + 1)``; the identity gives ``[I | 0]``. Differentiable with respect to ``matrix``.
    """
    caller = "affine_to_normalized"
    shape = _check_shape(spatial_shape, caller)
    ndim = _check_matrix(matrix, caller, ndim=len(shape))
    centre, half = _centre_and_half(shape, matrix)
    linear = matrix[:, :, :ndim]
    linear_n = linear * half.view(1, 1, ndim) / half.view(1, ndim, 1)
    shift_n = (torch.einsum("bij,j->bi", linear, centre) + matrix[:, :, ndim] - centre) / half
    return torch.cat([linear_n, shift_n.unsqueeze(-1)], dim=2)
