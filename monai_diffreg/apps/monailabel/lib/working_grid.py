"""A coarser working grid for registering large images quickly, and the way back.

A clinical scan at 1 mm has millions of voxels; an interactive labelling request on a CPU
cannot afford an optimisation at that resolution, and the atlas labels gain little from it.
The app therefore registers on a **working grid** covering the same extent with voxels of at
most ``spacing_mm`` (per axis), then brings the displacement field back to the image's grid
and warps the atlas there, so the label map is still on the image's own grid.

Geometry (the cell convention of :mod:`monai_diffreg.functional.resize`): an axis of ``N``
voxels of size ``s`` becomes ``n`` voxels of size ``s * r`` with ``r = N / n``, covering the
same extent. Working voxel ``c`` is centred at image voxel ``x = r (c + 1/2) - 1/2``, so the
working affine is ``A_w = A [[diag(r), (r - 1) / 2], [0, 1]]``. The image is average-pooled
onto it (``resize_image(mode="area")``) and a working-grid displacement returns to the image
grid with :func:`~monai_diffreg.functional.resize_field` (vectors scaled by ``N / n``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor

from monai_diffreg.functional import resize_field, resize_image
from monai_diffreg.io import spatial_affine

__all__ = ["working_shape", "to_working_grid", "field_to_image_grid", "MIN_COARSENING", "MIN_WORKING_SIZE"]

#: An axis is coarsened only when its voxels would grow by at least this factor (smaller
#: gains are not worth the extra interpolation).
MIN_COARSENING = 1.5
#: A coarsened axis keeps at least this many voxels (or all it has).
MIN_WORKING_SIZE = 16


def working_shape(shape: Sequence[int], spacing: Sequence[float], spacing_mm: float) -> tuple[int, ...]:
    """Shape of the working grid: axes with voxels finer than ``spacing_mm / MIN_COARSENING``
    get ``round(N * s / spacing_mm)`` voxels (at least ``MIN_WORKING_SIZE``), others keep ``N``.

    Args:
        shape: the image's spatial shape ``N``.
        spacing: its voxel sizes ``s`` in mm, per axis.
        spacing_mm: the largest voxel size wanted for registration (> 0).
    """
    if not spacing_mm > 0:
        raise ValueError(f"working_shape(): 'spacing_mm' must be > 0, got {spacing_mm!r}")
    out = []
    for n, s in zip(shape, spacing):
        n = int(n)
        factor = spacing_mm / float(s)
        out.append(n if factor < MIN_COARSENING else max(min(n, MIN_WORKING_SIZE), int(round(n / factor))))
    return tuple(out)


def to_working_grid(image: MetaTensor, spacing_mm: float) -> MetaTensor:
    """The image average-pooled onto its working grid (module docstring), or ``image`` itself
    when no axis needs coarsening.

    Args:
        image: ``(1, *S)`` MetaTensor with its voxel-to-RAS affine.
        spacing_mm: the largest voxel size wanted for registration.

    Returns:
        ``(1, *S_w)`` MetaTensor with the working grid's affine.
    """
    ndim = image.ndim - 1
    affine = spatial_affine(image.affine, ndim, "to_working_grid")
    shape = tuple(int(s) for s in image.shape[1:])
    spacing = np.linalg.norm(affine[:ndim, :ndim], axis=0)
    target = working_shape(shape, spacing, spacing_mm)
    if target == shape:
        return image
    ratio = np.array(shape, dtype=np.float64) / np.array(target, dtype=np.float64)
    scale = np.eye(ndim + 1)
    scale[:ndim, :ndim] = np.diag(ratio)
    scale[:ndim, ndim] = (ratio - 1.0) / 2.0
    data = resize_image(image.as_tensor().float().unsqueeze(0), size=target, mode="area")[0]
    return MetaTensor(data, affine=torch.as_tensor(affine @ scale, dtype=torch.float64))


def field_to_image_grid(ddf: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A working-grid displacement ``(1, D, *S_w)`` (working voxels) as ``(1, D, *S)`` in image voxels."""
    return resize_field(ddf, size=tuple(int(s) for s in shape))
