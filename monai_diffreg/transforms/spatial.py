"""Grid handling: padding to a multiple of the network's downsampling, re-orientation of images
and fields between axis orders, and reading pair images.

Networks that downsample ``n`` times need every spatial size divisible by ``2**n``. Padding
shifts the grid by whole voxels, which leaves displacements (in voxels) unchanged, so a field
predicted on the padded grid is cropped back to the original grid with :func:`crop_back`.

Re-orientation (:func:`axis_mapping`, :func:`to_target_axes`, :func:`to_source_axes`) only
permutes and flips voxel axes (no interpolation), as MONAI's ``Orientation`` does to images; for
a displacement field in voxels the components are permuted alike and those of flipped axes
negated, so the field describes the same motion on the other axes. A mapping has one entry per
axis ``j`` of the source grid: ``(i, sign)``, the target axis along the same world direction and
whether it points the same way (+1) or the opposite way (-1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import DivisiblePad, EnsureChannelFirst, LoadImage

from ..validation import check_finite, check_not_constant
from .readers import IsalNibabelReader

__all__ = ["divisible_padding", "pad_to_divisible", "crop_back", "axis_mapping", "to_target_axes", "to_source_axes",
           "load_channel_first", "check_image"]

PAD_MODES = ("constant", "replicate", "reflect")

#: nibabel's axis-code letters: the world axis each names (0 left-right, 1 posterior-anterior,
#: 2 inferior-superior) and its direction (+1 towards R, A, S).
_AXIS_CODES = {"L": (0, -1), "R": (0, 1), "P": (1, -1), "A": (1, 1), "I": (2, -1), "S": (2, 1)}


def divisible_padding(spatial_shape: Sequence[int], k: int | Sequence[int],
                      method: str = "symmetric") -> tuple[tuple[int, int], ...]:
    """Padding ``((before, after), ...)`` per spatial axis that makes every size a multiple of ``k``.

    Same rule as MONAI :class:`~monai.transforms.DivisiblePad` (which computes it): ``"symmetric"``
    puts ``floor(p / 2)`` before and the rest after, ``"end"`` puts everything after.

    Args:
        spatial_shape: ``(*spatial)``.
        k: divisor for every axis, or one per axis (``<= 0`` leaves that axis as is).
        method: ``"symmetric"`` or ``"end"``.
    """
    shape = tuple(int(s) for s in spatial_shape)
    if method not in ("symmetric", "end"):
        raise ValueError(f"divisible_padding(): 'method' must be one of ['symmetric', 'end'], got {method!r}")
    ks = (k,) * len(shape) if isinstance(k, int) else tuple(k)
    if len(ks) != len(shape) or not all(isinstance(v, int) for v in ks):
        raise ValueError(f"divisible_padding(): 'k' must be an integer or {len(shape)} integers, got {k!r}")
    widths = DivisiblePad(k=ks, method=method).compute_pad_width(shape)  # channel axis first
    return tuple((int(before), int(after)) for before, after in widths[1:])


def pad_to_divisible(x: torch.Tensor, k: int | Sequence[int], spatial_dims: int | None = None, mode: str = "constant",
                     value: float = 0.0, method: str = "symmetric") -> tuple[torch.Tensor, tuple[tuple[int, int], ...]]:
    """Pad the last ``spatial_dims`` axes of ``x`` to multiples of ``k``.

    Args:
        x: ``(C, *spatial)`` (default ``spatial_dims = x.ndim - 1``) or ``(B, C, *spatial)``
            with ``spatial_dims`` given.
        k: divisor for every spatial axis, or one per axis.
        spatial_dims: number of trailing spatial axes (2 or 3).
        mode: ``"constant"`` (``value``), ``"replicate"`` or ``"reflect"``.
        value: fill value for ``"constant"``.
        method: ``"symmetric"`` or ``"end"`` (see :func:`divisible_padding`).

    Returns:
        the padded tensor and the padding ``((before, after), ...)`` per spatial axis, to give to
        :func:`crop_back`.
    """
    ndim = x.ndim - 1 if spatial_dims is None else spatial_dims
    if ndim not in (2, 3) or x.ndim < ndim + 1:
        raise ValueError(f"pad_to_divisible(): 'x' must have 2 or 3 trailing spatial axes after a channel axis, "
                         f"got shape {tuple(x.shape)} with spatial_dims={spatial_dims!r}")
    if mode not in PAD_MODES:
        raise ValueError(f"pad_to_divisible(): 'mode' must be one of {list(PAD_MODES)}, got {mode!r}")
    padding = divisible_padding(x.shape[-ndim:], k, method)
    flat = [p for pair in reversed(padding) for p in pair]  # F.pad wants the last axis first
    if not any(flat):
        return x, padding
    lead = x.shape[:-ndim]
    batched = x.reshape(-1, 1, *x.shape[-ndim:]) if mode != "constant" else x
    padded = F.pad(batched, flat, mode=mode, value=value) if mode == "constant" else F.pad(batched, flat, mode=mode)
    return padded.reshape(*lead, *padded.shape[-ndim:]), padding


def crop_back(x: torch.Tensor, padding: Sequence[Sequence[int]]) -> torch.Tensor:
    """Remove ``padding`` (from :func:`pad_to_divisible`) from the trailing ``len(padding)`` axes of ``x``.

    Works for images and for displacement fields (their vectors, in voxels, need no change).
    """
    ndim = len(padding)
    if x.ndim < ndim or any(before + after >= size for (before, after), size in zip(padding, x.shape[-ndim:])):
        raise ValueError(f"crop_back(): cannot remove padding {tuple(map(tuple, padding))} from shape {tuple(x.shape)}")
    index = tuple(slice(before, size - after) for (before, after), size in zip(padding, x.shape[-ndim:]))
    return x[(..., *index)]


def _world_axes(axcodes: object, name: str) -> list[tuple[int, int]]:
    codes = list(axcodes) if isinstance(axcodes, (str, Sequence)) else None
    if not codes or any(c not in _AXIS_CODES for c in codes) or len({_AXIS_CODES[c][0] for c in codes}) != len(codes):
        raise ValueError(f"axis_mapping(): '{name}' must be axis codes with one letter of L/R, P/A, I/S per axis "
                         f"(e.g. 'RAS' or 'LIA'), got {axcodes!r}")
    return [_AXIS_CODES[c] for c in codes]


def axis_mapping(source: str | Sequence[str], target: str | Sequence[str] = "RAS") -> tuple[tuple[int, int], ...]:
    """The voxel-axis mapping from a grid with axis codes ``source`` to one with ``target`` (module docstring).

    Args:
        source: nibabel axis codes of the source grid, one letter per voxel axis (e.g. ``"LIA"``:
            axis 0 points left, 1 inferior, 2 anterior).
        target: axis codes of the target grid, along the same world axes (default ``"RAS"``).

    Returns:
        per source axis ``j``: ``(i, sign)`` with ``i`` the target axis along the same world
        direction and ``sign`` +1 (same way) or -1 (opposite), e.g. ``((0, -1), (2, -1), (1, 1))``
        for ``"LIA"`` to ``"RAS"`` (nibabel's ``ornt_transform``).
    """
    source_axes, target_axes = _world_axes(source, "source"), _world_axes(target, "target")
    target_of = {world: (i, direction) for i, (world, direction) in enumerate(target_axes)}
    if set(target_of) != {world for world, _ in source_axes}:
        raise ValueError(f"axis_mapping(): 'source' {source!r} and 'target' {target!r} must name the same world axes")
    return tuple((target_of[world][0], direction * target_of[world][1]) for world, direction in source_axes)


def _check_mapping(x: object, mapping: Sequence[tuple[int, int]], caller: str) -> tuple[tuple[int, int], ...]:
    ndim = len(mapping)
    if not isinstance(x, torch.Tensor) or x.ndim != ndim + 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{caller}(): 'x' must be (B, C, *spatial) with {ndim} spatial axes (one per mapping "
                         f"entry), got {shape}")
    mapping = tuple((int(i), int(sign)) for i, sign in mapping)
    if sorted(i for i, _ in mapping) != list(range(ndim)) or any(sign not in (1, -1) for _, sign in mapping):
        raise ValueError(f"{caller}(): 'mapping' must give each of the {ndim} target axes once with a sign of "
                         f"+1 or -1 (from axis_mapping), got {mapping}")
    return mapping


def to_target_axes(x: torch.Tensor, mapping: Sequence[tuple[int, int]], is_field: bool = False) -> torch.Tensor:
    """Re-orient ``(B, C, *S_source)`` onto the target grid's axes of ``mapping`` (:func:`axis_mapping`).

    Args:
        x: an image or, with ``is_field``, a displacement field ``(B, D, *S_source)`` in source voxels.
        mapping: per source axis ``(target axis, sign)``.
        is_field: also permute the components and negate those along flipped axes.

    Returns:
        ``(B, C, *S_target)`` (a view of ``x`` where possible), the inverse of :func:`to_source_axes`.
    """
    mapping = _check_mapping(x, mapping, "to_target_axes")
    source_of = [0] * len(mapping)  # target axis i comes from source axis source_of[i]
    for j, (i, _) in enumerate(mapping):
        source_of[i] = j
    flips = [2 + j for j, (_, sign) in enumerate(mapping) if sign < 0]
    out = x.flip(flips) if flips else x
    out = out.permute(0, 1, *(2 + j for j in source_of))
    if is_field:
        out = torch.stack([mapping[j][1] * out[:, j] for j in source_of], dim=1)
    return out


def to_source_axes(x: torch.Tensor, mapping: Sequence[tuple[int, int]], is_field: bool = False) -> torch.Tensor:
    """Re-orient ``(B, C, *S_target)`` back onto the source grid's axes of ``mapping`` (:func:`axis_mapping`).

    Args:
        x: an image or, with ``is_field``, a displacement field ``(B, D, *S_target)`` in target voxels
            (e.g. a method's output on its RAS working grid).
        mapping: per source axis ``(target axis, sign)``.
        is_field: also permute the components and negate those along flipped axes.

    Returns:
        ``(B, C, *S_source)`` (a view of ``x`` where possible), the inverse of :func:`to_target_axes`.
    """
    mapping = _check_mapping(x, mapping, "to_source_axes")
    out = x.permute(0, 1, *(2 + i for i, _ in mapping))  # source axis j is target axis mapping[j][0]
    flips = [2 + j for j, (_, sign) in enumerate(mapping) if sign < 0]
    if flips:
        out = out.flip(flips)
    if is_field:
        out = torch.stack([sign * out[:, i] for i, sign in mapping], dim=1)
    return out


def load_channel_first(path: str | os.PathLike, key: str, caller: str, reader: object | None = None) -> MetaTensor:
    """Read an image file (NIfTI, NRRD, MHA, ...: MONAI :class:`~monai.transforms.LoadImage`) as ``(C, *spatial)``.

    Without a ``reader``, ``.nii.gz`` files are read by :class:`~monai_diffreg.transforms.readers.IsalNibabelReader`.

    Raises:
        FileNotFoundError: the file does not exist (message names ``key`` and ``path``).
        ValueError: the file cannot be read, or is not a single-channel 2D or 3D image.
    """
    if os.path.isdir(path):
        raise ValueError(f"{caller}(): '{key}' is a folder, not an image file: {os.fspath(path)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{caller}(): '{key}' file not found: {os.fspath(path)}")
    try:
        if reader is None and os.fspath(path).endswith(".nii.gz"):
            # MONAI's NIfTI reader, inflating ~4x faster; given at call time, it is the only reader tried
            # (a reader given to LoadImage's constructor makes a failure fall through to every other reader)
            image = LoadImage(image_only=True)(path, reader=IsalNibabelReader())
        else:
            image = LoadImage(reader=reader, image_only=True)(path)
    except Exception as error:  # MONAI raises RuntimeError/OSError/... depending on the reader
        raise ValueError(f"{caller}(): could not read '{key}' from {os.fspath(path)}: {error}") from error
    image = EnsureChannelFirst()(image)
    if image.ndim not in (3, 4) or image.shape[0] != 1:
        raise ValueError(f"{caller}(): '{key}' ({os.fspath(path)}) must be a single-channel 2D or 3D image, "
                         f"got channel-first shape {tuple(image.shape)}")
    return image


def check_image(image: torch.Tensor, key: str, caller: str) -> None:
    """Raise unless ``image`` is finite and not constant (a registrable intensity image)."""
    check_finite(image, key, caller)
    check_not_constant(image, key, caller)
