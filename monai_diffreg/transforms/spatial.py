"""Grid handling: padding to a multiple of the network's downsampling, and reading pair images.

Networks that downsample ``n`` times need every spatial size divisible by ``2**n``. Padding
shifts the grid by whole voxels, which leaves displacements (in voxels) unchanged, so a field
predicted on the padded grid is cropped back to the original grid with :func:`crop_back`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import DivisiblePad, EnsureChannelFirst, LoadImage

from ..validation import check_finite, check_not_constant

__all__ = ["divisible_padding", "pad_to_divisible", "crop_back", "load_channel_first", "check_image"]

PAD_MODES = ("constant", "replicate", "reflect")


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


def load_channel_first(path: str | os.PathLike, key: str, caller: str, reader: object | None = None) -> MetaTensor:
    """Read an image file (NIfTI, NRRD, MHA, ...: MONAI :class:`~monai.transforms.LoadImage`) as ``(C, *spatial)``.

    Raises:
        FileNotFoundError: the file does not exist (message names ``key`` and ``path``).
        ValueError: the file cannot be read, or is not a single-channel 2D or 3D image.
    """
    if os.path.isdir(path):
        raise ValueError(f"{caller}(): '{key}' is a folder, not an image file: {os.fspath(path)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{caller}(): '{key}' file not found: {os.fspath(path)}")
    try:
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
