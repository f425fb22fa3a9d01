"""The atlas the app propagates labels from: an intensity image, a label map and label names.

An atlas is configured with the app's ``--conf`` options (:mod:`.config`); it is read and
checked once, when the app starts, so every request sees the same validated atlas:

* ``atlas_image``: intensity image (NIfTI, NRRD, MHA, ...; anything MONAI ``LoadImage`` reads),
  2D or 3D, with a meaningful orientation in its header;
* ``atlas_labels``: label map on the same grid (same shape and affine), integer values,
  0 = background;
* ``atlas_label_names``: a JSON object (inline or a ``.json`` file) naming the labels, either
  ``{"name": value}`` (MONAI Label's convention) or ``{"value": "name"}``. Every non-zero
  value of the label map must be named, and every named value must occur in it; without
  names, value ``v`` is called ``label_v``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from monai_diffreg.transforms.spatial import check_image, load_channel_first
from monai_diffreg.transforms.utils import integer_labels

from .config import json_object

__all__ = ["Atlas", "load_atlas", "parse_label_names"]

_CALLER = "load_atlas"


@dataclass(frozen=True)
class Atlas:
    """A validated atlas.

    Attributes:
        image: ``(1, *S)`` float32 MetaTensor with its RAS ``affine``.
        labels: ``(1, *S)`` int64 MetaTensor on the same grid.
        label_names: ``{name: value}`` for every non-zero label value, ordered by value.
        image_path: where ``image`` was read from.
        labels_path: where ``labels`` was read from.
    """

    image: MetaTensor
    labels: MetaTensor
    label_names: dict[str, int]
    image_path: Path
    labels_path: Path

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return self.image.ndim - 1

    def describe(self) -> dict[str, object]:
        """JSON-ready description (file names, shape, label names) for the app's info and results."""
        return {
            "image": self.image_path.name,
            "labels": self.labels_path.name,
            "shape": [int(s) for s in self.image.shape[1:]],
            "label_names": dict(self.label_names),
        }


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{_CALLER}(): label value for {what} must be an integer, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{_CALLER}(): label value for {what} must be an integer, got {value!r}") from None
    if not number.is_integer() or number <= 0:
        raise ValueError(f"{_CALLER}(): label value for {what} must be a positive integer, got {value!r}")
    return int(number)


def parse_label_names(spec: str | Mapping[str, object]) -> dict[str, int]:
    """Parse ``atlas_label_names``: a mapping, inline JSON, or the path of a JSON file.

    Both ``{"grey_matter": 1}`` and ``{"1": "grey_matter"}`` are accepted (the direction is
    told apart by which side holds the numbers).

    Returns:
        ``{name: value}`` sorted by value.

    Raises:
        ValueError: the file is missing or unreadable, the JSON is not an object, a value is
            not a positive integer, or a name or value is repeated.
    """
    if isinstance(spec, Mapping):
        mapping = dict(spec)
    else:
        text = str(spec).strip()
        if not text.startswith("{"):
            path = Path(text).expanduser()
            if not path.is_file():
                raise ValueError(f"{_CALLER}(): 'atlas_label_names' must be a JSON object or the path of a JSON file, "
                                 f"got {text!r} (no such file)")
            text = path.read_text(encoding="utf-8")
        mapping = json_object(text, "atlas_label_names", _CALLER)
    if not mapping:
        raise ValueError(f"{_CALLER}(): 'atlas_label_names' is empty")
    keys_are_values = all(isinstance(k, str) and k.strip().lstrip("+").isdigit() for k in mapping)
    names: dict[str, int] = {}
    for key, value in mapping.items():
        name, number = (value, key) if keys_are_values else (key, value)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{_CALLER}(): 'atlas_label_names' names must be non-empty strings, got {name!r}")
        if name in names:
            raise ValueError(f"{_CALLER}(): 'atlas_label_names' repeats the name {name!r}")
        names[name] = _as_int(number, repr(name))
    values = list(names.values())
    if len(set(values)) != len(values):
        repeated = sorted({v for v in values if values.count(v) > 1})
        raise ValueError(f"{_CALLER}(): 'atlas_label_names' gives several names to the value(s) {repeated}")
    return dict(sorted(names.items(), key=lambda item: item[1]))


def load_atlas(image_path: str | os.PathLike, labels_path: str | os.PathLike,
               label_names: str | Mapping[str, object] | None = None) -> Atlas:
    """Read and check an atlas.

    Args:
        image_path: atlas intensity image.
        labels_path: atlas label map on the same grid.
        label_names: see :func:`parse_label_names`; None names value ``v`` ``label_v``.

    Returns:
        the :class:`Atlas`.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file is unreadable, the image is constant or not finite, the
            label map is not on the image's grid or not integer-valued or has no foreground,
            or the label names do not match the label values.
    """
    image = load_channel_first(image_path, "atlas_image", _CALLER).float()
    labels = load_channel_first(labels_path, "atlas_labels", _CALLER)
    check_image(image, "atlas_image", _CALLER)
    values_tensor = integer_labels(labels, "atlas_labels", _CALLER)
    if labels.shape != image.shape:
        raise ValueError(f"{_CALLER}(): 'atlas_labels' must have the shape of 'atlas_image' {tuple(image.shape[1:])}, "
                         f"got {tuple(labels.shape[1:])}")
    affine_i, affine_l = np.asarray(image.affine, dtype=float), np.asarray(labels.affine, dtype=float)
    if not np.allclose(affine_i, affine_l, atol=1e-3):
        raise ValueError(f"{_CALLER}(): 'atlas_labels' must have the affine of 'atlas_image' "
                         f"{affine_i.round(4).tolist()}, "
                         f"got {affine_l.round(4).tolist()}")
    present = sorted(int(v) for v in torch.unique(values_tensor).tolist() if v != 0)
    if not present:
        raise ValueError(f"{_CALLER}(): 'atlas_labels' ({labels_path}) holds no foreground label (only 0)")
    if any(v < 0 for v in present):
        negative = [v for v in present if v < 0]
        raise ValueError(f"{_CALLER}(): 'atlas_labels' must hold non-negative values, got {negative}")
    if label_names is None:
        names = {f"label_{v}": v for v in present}
    else:
        names = parse_label_names(label_names)
        unnamed = sorted(set(present) - set(names.values()))
        absent = {n: v for n, v in names.items() if v not in present}
        if unnamed:
            raise ValueError(f"{_CALLER}(): 'atlas_label_names' must name every label of 'atlas_labels'; "
                             f"unnamed value(s): {unnamed}")
        if absent:
            raise ValueError(f"{_CALLER}(): 'atlas_label_names' names value(s) absent from 'atlas_labels': {absent} "
                             f"(present: {present})")
    label_tensor = MetaTensor(values_tensor, meta=labels.meta)  # meta holds the affine
    return Atlas(image=image, labels=label_tensor, label_names=names, image_path=Path(image_path),
                 labels_path=Path(labels_path))
