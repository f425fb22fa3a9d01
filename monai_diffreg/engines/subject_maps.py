"""Real subjects' label maps placed on one training canvas, brain moments matched.

Training pairs of two different subjects need roughly affinely aligned anatomy (registration
networks are applied after an affine stage). :func:`moment_alignment` gives each subject the
per-axis map that superimposes its brain's centroid and matches its brain's per-axis spread
(standard deviation of voxel positions) to a reference spread; :func:`prepare_subject_maps`
resamples every map onto a canvas of ``spacing`` mm voxels centred on the brain (nearest
neighbour, so codes stay codes). The brain for the moments is every structure of
:data:`~monai_diffreg.transforms.label_protocol.TRAINING_STRUCTURES` except the CSF label
(SynthSeg's CSF runs down the spinal canal in some maps and would bias the spread).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..functional.grid import identity_grid
from ..functional.warp import voxel_to_sampling_coordinates
from ..transforms.label_protocol import TRAINING_STRUCTURES, to_training_labels

__all__ = ["brain_moments", "moment_alignment", "prepare_subject_maps"]

_CSF = 1 + [name for name, _ in TRAINING_STRUCTURES].index("CSF")


def brain_moments(codes: torch.Tensor, voxel_size: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid (voxels) and per-axis spread (mm) of the brain of a label map.

    Args:
        codes: ``(*S)`` label codes (any source; see the module docstring for what counts as brain).
        voxel_size: ``len(S)`` voxel sizes in mm.

    Returns:
        ``(centroid, spread)``: float64 ``(D,)`` each; centroid in voxel indices, spread in mm.

    Raises:
        ValueError: the map holds no brain structure.
    """
    labels = to_training_labels(codes)
    positions = torch.nonzero((labels > 0) & (labels != _CSF)).double()
    if positions.shape[0] < 2:
        raise ValueError("brain_moments(): the label map holds no brain structure (no known code other than CSF)")
    size = torch.as_tensor(voxel_size, dtype=torch.float64)
    return positions.mean(0), positions.std(0) * size


def moment_alignment(centroid: torch.Tensor, spread: torch.Tensor, reference_spread: torch.Tensor,
                     voxel_size: Sequence[float], canvas_size: Sequence[int], spacing: float) -> torch.Tensor:
    """Subject voxel positions of every canvas voxel: ``x = c + (spread / ref) * spacing * (j - (N - 1) / 2) / voxel``.

    Args:
        centroid: ``(D,)`` brain centroid in subject voxels.
        spread: ``(D,)`` subject brain spread in mm; reference_spread: ``(D,)`` the spread it is scaled to.
        voxel_size: subject voxel sizes in mm.
        canvas_size: ``(*N)`` canvas shape; spacing: canvas voxel size in mm.

    Returns:
        float64 ``(*N, D)`` subject voxel coordinates (tensor axis order).
    """
    size = torch.as_tensor(voxel_size, dtype=torch.float64)
    scale = spread / reference_spread
    grid = identity_grid(tuple(canvas_size), torch.device("cpu"), torch.float64)
    centre = torch.as_tensor([(n - 1) / 2 for n in canvas_size], dtype=torch.float64)
    offsets_mm = (grid.movedim(0, -1) - centre) * spacing
    return centroid + offsets_mm * scale / size


def prepare_subject_maps(paths: Sequence[str | Path], canvas_size: Sequence[int], spacing: float = 2.0) -> torch.Tensor:
    """Load label maps and resample each onto the canvas, brain moments matched to their mean.

    Args:
        paths: label-map files (:func:`monai_diffreg.datasets.load_label_map` reads them).
        canvas_size: 3 sizes of the canvas; spacing: its voxel size in mm.

    Returns:
        int32 ``(len(paths), 1, *canvas_size)`` label codes (0 outside each subject's field of view).
    """
    from ..datasets import load_label_map

    if len(paths) == 0:
        raise ValueError("prepare_subject_maps(): 'paths' is empty")
    maps, moments = [], []
    for path in paths:
        image = load_label_map(path)
        voxel_size = image.affine[:3, :3].norm(dim=0).tolist()
        codes = image.as_tensor()[0]
        maps.append((codes, voxel_size))
        moments.append(brain_moments(codes, voxel_size))
    reference = torch.stack([spread for _, spread in moments]).mean(0)
    out = torch.zeros((len(paths), 1, *canvas_size), dtype=torch.int32)
    for i, ((codes, voxel_size), (centroid, spread)) in enumerate(zip(maps, moments)):
        where = moment_alignment(centroid, spread, reference, voxel_size, canvas_size, spacing)
        grid = voxel_to_sampling_coordinates(where, tuple(codes.shape)).float()[None]
        sampled = F.grid_sample(codes[None, None], grid, mode="nearest", padding_mode="zeros", align_corners=True)
        out[i] = sampled[0].round().int()
    return out
