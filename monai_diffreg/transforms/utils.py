"""Small helpers shared by the array and dictionary transforms."""

from __future__ import annotations

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor, get_track_meta
from monai.utils import convert_to_tensor

__all__ = ["as_channel_first", "plain_tensor", "integer_labels", "torch_generator_from"]


def as_channel_first(img: NdarrayOrTensor, name: str, caller: str) -> torch.Tensor:
    """Convert ``img`` to a tensor (keeping MONAI metadata) and check it is ``(C, *spatial)``, 2D or 3D."""
    if not isinstance(img, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{caller}(): '{name}' must be a torch.Tensor or numpy array, got {type(img).__name__}")
    tensor = convert_to_tensor(img, track_meta=get_track_meta())
    if tensor.ndim not in (3, 4) or any(s == 0 for s in tensor.shape):
        raise ValueError(f"{caller}(): '{name}' must be channel-first (C, *spatial) with 2 or 3 non-empty spatial "
                         f"axes, got shape {tuple(tensor.shape)}")
    return tensor


def plain_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The data of a MetaTensor as a plain ``torch.Tensor`` (other tensors unchanged)."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


def integer_labels(labels: torch.Tensor, name: str, caller: str) -> torch.Tensor:
    """Return a label map as int64, raising if a floating map holds non-integer (or NaN/Inf) values.

    Label maps read from files are often stored or loaded as float; they are accepted when every
    value is a whole number.
    """
    data = plain_tensor(labels)
    if data.dtype == torch.bool or not data.dtype.is_floating_point:
        return data.to(torch.int64)
    bad = ~torch.isfinite(data) | (data != data.round())
    if bool(bad.any()):
        examples = data[bad].unique()[:5].tolist()
        raise ValueError(f"{caller}(): '{name}' must be a label map of integer values, got {int(bad.sum())} "
                         f"non-integer value(s), e.g. {examples}")
    return data.to(torch.int64)


def torch_generator_from(state: np.random.RandomState) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from a MONAI transform's ``self.R``, so ``set_random_state`` governs it."""
    return torch.Generator().manual_seed(int(state.randint(0, 2**31 - 1)))
