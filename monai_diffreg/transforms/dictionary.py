"""Dictionary transforms (MONAI style): the array transforms of :mod:`.array` applied to keys of a dict.

Random dictionary transforms draw ONE set of parameters per call and apply it to every key
(images and their label maps move together), exposing it as ``.params``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor, get_track_meta
from monai.transforms import (
    DivisiblePadd,
    InvertibleTransform,
    MapTransform,
    Orientation,
    RandomizableTransform,
    ResampleToMatch,
)
from monai.transforms.inverse import TraceKeys
from monai.utils import convert_to_tensor, ensure_tuple_rep

from ..functional.warp import PADDING_MODES, WARP_MODES
from ..validation import check_choice
from .array import NormalizeIntensityPercentile, RandSmoothDeformation, SynthesizeImageFromLabels, warp_channel_first
from .control_grid import as_spatial_shape
from .deformation import DEFAULT_CONTROL_SPACING, DEFAULT_MAX_DISPLACEMENT
from .spatial import check_image, divisible_padding, load_channel_first
from .synthesis import random_label_map, sample_synthesis_params
from .utils import as_channel_first, integer_labels, torch_generator_from

__all__ = [
    "LoadRegistrationPaird",
    "NormalizeIntensityPercentiled",
    "PadToDivisibled",
    "RandLabelMapd",
    "RandSmoothDeformationd",
    "RandSynthesizeImaged",
]


class RandSmoothDeformationd(RandomizableTransform, MapTransform, InvertibleTransform):
    """Dictionary version of :class:`~monai_diffreg.transforms.array.RandSmoothDeformation`.

    The SAME random diffeomorphism warps every key (e.g. an image bilinearly and its label map
    with ``"nearest"``), so label maps stay aligned with their images. With ``ddf_key`` the
    displacement that was applied is stored in the dict as a ``(D, *spatial)`` float32 tensor
    (zeros when ``prob`` skipped the call), so a synthetic pair carries its ground truth: for
    ``fixed = warp(moving, ddf)``, ``ddf`` is the displacement a registration of ``moving`` to
    ``fixed`` should find (package convention). ``inverse_ddf_key`` stores ``exp(-v)`` likewise.

    Args:
        keys: keys of the channel-first images ``(C, *spatial)`` to deform; all must share a grid.
        prob: probability of deforming.
        control_spacing: distance between control points in voxels.
        max_displacement: bound on every displacement component, in voxels.
        mode: interpolation per key (one value or one per key): ``"bilinear"`` or ``"nearest"``.
        padding_mode: outside the image, per key: ``"border"``, ``"zeros"`` or ``"reflection"``.
        num_steps: scaling-and-squaring steps.
        ddf_key: where to store the applied displacement (None: not stored).
        inverse_ddf_key: where to store the inverse displacement (None: not stored).
        allow_missing_keys: don't raise if a key is missing.

    Example::

        deform = RandSmoothDeformationd(("image", "label"), mode=("bilinear", "nearest"), ddf_key="true_ddf")
        out = deform({"image": image, "label": label})
    """

    backend = RandSmoothDeformation.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        control_spacing: float | Sequence[float] = DEFAULT_CONTROL_SPACING,
        max_displacement: float = DEFAULT_MAX_DISPLACEMENT,
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str | Sequence[str] = "border",
        num_steps: int = 7,
        ddf_key: Hashable | None = None,
        inverse_ddf_key: Hashable | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        caller = "RandSmoothDeformationd"
        count = len(self.keys)
        self.mode = tuple(check_choice(m, "mode", caller, WARP_MODES) for m in ensure_tuple_rep(mode, count))
        self.padding_mode = tuple(check_choice(p, "padding_mode", caller, PADDING_MODES)
                                  for p in ensure_tuple_rep(padding_mode, count))
        self.deformer = RandSmoothDeformation(1.0, control_spacing, max_displacement, num_steps=num_steps)
        self.ddf_key = ddf_key
        self.inverse_ddf_key = inverse_ddf_key

    @property
    def params(self) -> dict[str, Any] | None:
        """The last parameters drawn (None when the last call did not deform)."""
        return self.deformer.params if self._do_transform else None

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.deformer.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        images = {key: as_channel_first(d[key], str(key), "RandSmoothDeformationd") for key in self.key_iterator(d)}
        shapes = {key: tuple(image.shape[1:]) for key, image in images.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"RandSmoothDeformationd(): all keys must share one spatial shape, got {shapes}")
        self.randomize(None)
        if not images:
            return d
        shape, device = next(iter(shapes.values())), next(iter(images.values())).device
        if self._do_transform:
            self.deformer.randomize(shape)
        params = self.params
        fields = self.deformer.fields(params, shape, device=device) if params is not None else None
        for key, mode, padding_mode in self.key_iterator(d, self.mode, self.padding_mode):
            image = images[key]
            if fields is not None:
                image = warp_channel_first(image, fields["ddf"], mode=mode, padding_mode=padding_mode)
            info = {"params": params, "mode": mode, "padding_mode": padding_mode}
            d[key] = self.push_transform(image, extra_info=info)
        for store_key, field_name in ((self.ddf_key, "ddf"), (self.inverse_ddf_key, "inverse_ddf")):
            if store_key is not None:
                d[store_key] = fields[field_name][0] if fields is not None else torch.zeros(len(shape), *shape,
                                                                                            device=device)
        return d

    def inverse(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Undo the deformation on every key, from the parameters recorded in each MetaTensor."""
        d = dict(data)
        for key in self.key_iterator(d):
            transform = self.pop_transform(d[key])
            if transform[TraceKeys.DO_TRANSFORM]:
                info = transform[TraceKeys.EXTRA_INFO]
                d[key] = self.deformer.apply_params(d[key], info["params"], inverse=True, mode=info["mode"],
                                                    padding_mode=info["padding_mode"])
        return d


class RandSynthesizeImaged(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`~monai_diffreg.transforms.array.SynthesizeImageFromLabels`.

    For each label key, an image is synthesised and stored under the matching ``image_keys``
    entry; the label maps are left untouched. With ``independent=True`` (SynthMorph's choice for
    the fixed and moving images of a pair) every key gets its own contrast; with ``False`` one
    draw (over the union of label values) serves all keys. ``.params`` maps each image key to the
    parameters used, so any sample can be replayed with ``synthesizer.apply_params``.

    Args:
        keys: label-map keys, each ``(1, *spatial)`` integer-valued.
        image_keys: output image keys, one per label key.
        independent: draw separate parameters for every key.
        allow_missing_keys: don't raise if a key is missing.
        settings: synthesis settings, as for
            :class:`~monai_diffreg.transforms.array.SynthesizeImageFromLabels`.

    Example::

        synth = RandSynthesizeImaged(("fixed_labels", "moving_labels"), image_keys=("fixed", "moving"))
    """

    backend = SynthesizeImageFromLabels.backend

    def __init__(self, keys: KeysCollection, image_keys: KeysCollection, independent: bool = True,
                 allow_missing_keys: bool = False, **settings: Any) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.image_keys = tuple(image_keys) if isinstance(image_keys, (list, tuple)) else (image_keys,)
        if len(self.image_keys) != len(self.keys):
            raise ValueError(f"RandSynthesizeImaged(): 'image_keys' must name one output per label key "
                             f"{list(self.keys)}, got {list(self.image_keys)}")
        self.independent = independent
        self.synthesizer = SynthesizeImageFromLabels(**settings)
        self._params: dict[Hashable, dict[str, Any]] = {}

    @property
    def params(self) -> dict[Hashable, dict[str, Any]]:
        """Parameters of the last call, by image key."""
        return self._params

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.synthesizer.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Nothing to decide up front: parameters are drawn per key in ``__call__``."""

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        pairs = list(self.key_iterator(d, self.image_keys))
        self._params = {}
        shared = None
        if pairs and not self.independent:
            caller = "RandSynthesizeImaged"
            maps = [integer_labels(as_channel_first(d[k], str(k), caller), str(k), caller) for k, _ in pairs]
            shared = sample_synthesis_params(torch.cat([m.flatten() for m in maps]).unique(), maps[0].shape[1:],
                                             **self.synthesizer.settings,
                                             generator=torch_generator_from(self.synthesizer.R))
        for key, image_key in pairs:
            if shared is None:
                self.synthesizer.randomize(d[key])
            params = self.synthesizer.params if shared is None else shared
            d[image_key] = self.synthesizer.apply_params(d[key], params)
            self._params[image_key] = params
        return d


class RandLabelMapd(RandomizableTransform, MapTransform):
    """Put a random label map of smooth blobs (:func:`~monai_diffreg.transforms.synthesis.random_label_map`)
    under every key, for training without any labelled data (SynthMorph).

    Every key receives the SAME ``(1, *spatial)`` int64 map (a MetaTensor with an identity
    affine); deforming the keys independently afterwards (e.g. one :class:`RandSmoothDeformationd`
    per key, with ``ddf_key``) yields a fixed and a moving label map with known correspondence,
    from which :class:`RandSynthesizeImaged` makes the images. Existing values under the keys
    are replaced.

    Args:
        keys: where to store the label map.
        spatial_shape: ``(*spatial)`` of the maps, 2D or 3D.
        num_labels: number of labels (values ``0 .. num_labels - 1``).
        blob_spacing: typical blob size in voxels.
        max_displacement: bound of the warp that makes the blobs irregular, in voxels (0: none).

    Example::

        pipeline = Compose([
            RandLabelMapd(("fixed_labels", "moving_labels"), (64, 64, 64), num_labels=16),
            RandSmoothDeformationd("fixed_labels", mode="nearest", ddf_key="true_ddf"),
            RandSynthesizeImaged(("fixed_labels", "moving_labels"), ("fixed", "moving")),
        ])
        sample = pipeline({})   # fixed = moving warped by sample["true_ddf"], contrasts independent
    """

    def __init__(self, keys: KeysCollection, spatial_shape: Sequence[int], num_labels: int = 16,
                 blob_spacing: float = 8.0, max_displacement: float = 3.0) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob=1.0)
        self.settings = {"spatial_shape": as_spatial_shape(spatial_shape, "RandLabelMapd"), "num_labels": num_labels,
                         "blob_spacing": blob_spacing, "max_displacement": max_displacement}

    def randomize(self, data: Any = None) -> None:
        """Nothing to decide up front: the map is drawn in ``__call__``."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        labels = random_label_map(**self.settings, generator=torch_generator_from(self.R))[0]
        for key in self.keys:
            d[key] = convert_to_tensor(labels.clone(), track_meta=get_track_meta())
        return d


class NormalizeIntensityPercentiled(MapTransform):
    """Dictionary version of :class:`~monai_diffreg.transforms.array.NormalizeIntensityPercentile`.

    Each key is scaled by its own percentiles; errors name the key.
    """

    backend = NormalizeIntensityPercentile.backend

    def __init__(self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5, clip: bool = True,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeIntensityPercentile(lower, upper, clip)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key], name=str(key))
        return d


class PadToDivisibled(DivisiblePadd):
    """MONAI :class:`~monai.transforms.DivisiblePadd` that records the padding of every key in ``self.padding``.

    MONAI's ``inverse`` undoes it on MetaTensors; for plain tensors and predicted fields use
    :func:`~monai_diffreg.transforms.spatial.crop_back` with ``self.padding[key]``.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        self.padding = {
            key: divisible_padding(as_channel_first(data[key], str(key), "PadToDivisibled").shape[1:],
                                   self.padder.k, self.padder.method)
            for key in self.key_iterator(data)
        }
        return super().__call__(data, lazy=lazy)


class LoadRegistrationPaird(MapTransform):
    """Load a fixed/moving pair (and optional label maps) from files onto the fixed image's grid.

    Steps, with a clear error for every way the input can be wrong:

    1. each path exists (``FileNotFoundError``) and is readable by MONAI
       :class:`~monai.transforms.LoadImage` - NIfTI, NRRD, MHA, ... (``ValueError``), every error
       naming the key and the path;
    2. each image is a single-channel 2D or 3D image, all of the same dimensionality; intensity
       images are finite and not constant; label maps hold whole numbers only;
    3. every image is re-oriented to ``orientation`` (default RAS; ``None`` keeps the files' axes).
       Re-orienting only permutes and flips axes and updates the affine to match, so the fixed
       image keeps exactly the same voxel centres in world space and its values are never
       interpolated; with ``orientation=None`` its data, affine and shape are exactly the file's;
    4. the moving image (``image_mode``, default linear) and the label maps (nearest) are
       resampled by MONAI :class:`~monai.transforms.ResampleToMatch` onto the fixed grid, which
       is never changed: outputs computed on it can be written with ``data["fixed"].affine``.

    Output values are ``(1, *spatial)`` float32 MetaTensors (label maps too, with whole values,
    as MONAI's ``LoadImage`` gives them) with their affines in ``.affine``.

    Args:
        fixed_key, moving_key: keys of the two required image paths.
        fixed_labels_key, moving_labels_key: keys of optional label-map paths (None: never read).
        orientation: axis codes such as ``"RAS"`` (the first D letters are used for 2D), or None.
        image_mode: interpolation of the moving image, ``"bilinear"`` or ``"nearest"``.
        padding_mode: value outside the moving image's field of view: ``"border"``, ``"zeros"``
            or ``"reflection"``.
        reader: optional MONAI reader (name or instance) forced for every file.

    Values may also be already loaded ``(1, *spatial)`` MetaTensors, which skip step 1.
    """

    def __init__(
        self,
        fixed_key: str = "fixed",
        moving_key: str = "moving",
        fixed_labels_key: str | None = "fixed_labels",
        moving_labels_key: str | None = "moving_labels",
        orientation: str | None = "RAS",
        image_mode: str = "bilinear",
        padding_mode: str = "border",
        reader: object | None = None,
    ) -> None:
        self.label_keys = tuple(k for k in (fixed_labels_key, moving_labels_key) if k is not None)
        super().__init__((fixed_key, moving_key, *self.label_keys), allow_missing_keys=True)
        caller = "LoadRegistrationPaird"
        if orientation is not None and (not isinstance(orientation, str) or len(orientation) != 3):
            raise ValueError(f"{caller}(): 'orientation' must be three axis codes such as 'RAS', or None, "
                             f"got {orientation!r}")
        self.fixed_key, self.moving_key = fixed_key, moving_key
        self.orientation = orientation
        self.image_mode = check_choice(image_mode, "image_mode", caller, WARP_MODES)
        self.padding_mode = check_choice(padding_mode, "padding_mode", caller, PADDING_MODES)
        self.reader = reader
        self.resampler = ResampleToMatch()

    def _load(self, value: object, key: str) -> MetaTensor:
        caller = "LoadRegistrationPaird"
        if isinstance(value, (str, os.PathLike)):
            image = load_channel_first(value, key, caller, self.reader)
        elif isinstance(value, MetaTensor):
            image = value
            if image.ndim not in (3, 4) or image.shape[0] != 1:
                raise ValueError(f"{caller}(): '{key}' must be a single-channel 2D or 3D image (1, *spatial), "
                                 f"got shape {tuple(image.shape)}")
        else:
            raise TypeError(f"{caller}(): '{key}' must be a file path or a MetaTensor, got {type(value).__name__}")
        if key in self.label_keys:
            integer_labels(image, key, caller)
        else:
            check_image(image, key, caller)
        return image

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        caller = "LoadRegistrationPaird"
        d = dict(data)
        for key in (self.fixed_key, self.moving_key):
            if key not in d:
                raise KeyError(f"{caller}(): required key '{key}' is missing, got keys {sorted(map(str, d))}")
        loaded = {key: self._load(d[key], str(key)) for key in self.key_iterator(d)}
        ndim = loaded[self.fixed_key].ndim - 1
        for key, image in loaded.items():
            if image.ndim - 1 != ndim:
                raise ValueError(f"{caller}(): '{key}' is {image.ndim - 1}D but '{self.fixed_key}' is {ndim}D")
        if self.orientation is not None:
            orient = Orientation(self.orientation[:ndim], labels=(("L", "R"), ("P", "A"), ("I", "S")))
            loaded = {key: orient(image) for key, image in loaded.items()}
        fixed = loaded[self.fixed_key]
        for key, image in loaded.items():
            if key != self.fixed_key:
                mode = self.image_mode if key == self.moving_key else "nearest"
                loaded[key] = self.resampler(image, fixed, mode=mode, padding_mode=self.padding_mode)
                if key == self.moving_key and bool(torch.eq(*torch.aminmax(loaded[key].as_tensor()))):
                    raise ValueError(
                        f"{caller}(): '{key}' does not overlap '{self.fixed_key}' in world coordinates: on the fixed "
                        f"grid it is constant ({float(loaded[key].flatten()[0])}); check the two files' affines "
                        f"(origins, orientation), or centre the moving image on the fixed one first")
        d.update(loaded)
        return d
