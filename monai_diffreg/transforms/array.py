"""Array transforms (MONAI style): one channel-first image ``(C, *spatial)`` in, one out.

Random transforms follow torchio's split: ``randomize()`` draws a parameter dict with the
transform's own ``self.R`` (so MONAI's ``set_random_state`` makes runs reproducible),
``apply_params(img, params)`` applies a parameter dict deterministically, and ``.params``
exposes the last draw so any augmentation can be replayed, logged or inverted.
The maths lives in the stateless modules :mod:`.deformation`, :mod:`.synthesis`,
:mod:`.intensity` and :mod:`.spatial`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import DivisiblePad, InvertibleTransform, RandomizableTransform, Transform
from monai.transforms.inverse import TraceKeys
from monai.utils import TransformBackends, convert_to_dst_type

from ..functional import warp
from ..functional.warp import PADDING_MODES, WARP_MODES
from ..validation import check_choice, check_positive
from .deformation import (
    DEFAULT_CONTROL_SPACING,
    DEFAULT_MAX_DISPLACEMENT,
    deformation_from_params,
    sample_smooth_velocity_params,
)
from .intensity import normalize_intensity_percentile
from .spatial import crop_back, divisible_padding
from .synthesis import sample_synthesis_params, synthesize_image
from .utils import as_channel_first, integer_labels, plain_tensor, torch_generator_from

__all__ = [
    "NormalizeIntensityPercentile",
    "PadToDivisible",
    "RandSmoothDeformation",
    "SynthesizeImageFromLabels",
    "warp_channel_first",
]


def _work_dtype(data: torch.Tensor) -> torch.dtype:
    return data.dtype if data.dtype in (torch.float32, torch.float64) else torch.float32


def warp_channel_first(img: NdarrayOrTensor, ddf: torch.Tensor, mode: str = "bilinear",
                       padding_mode: str = "border") -> torch.Tensor:
    """Warp a channel-first image ``(C, *spatial)`` by a batched DDF ``(1, D, *spatial)`` (package convention).

    Integer images (label maps) are warped as float and cast back after rounding; use ``"nearest"``
    for them so that only existing values appear. The result keeps ``img``'s type, dtype and metadata.
    """
    caller = "warp_channel_first"
    image = as_channel_first(img, "img", caller)
    check_choice(mode, "mode", caller, WARP_MODES)
    check_choice(padding_mode, "padding_mode", caller, PADDING_MODES)
    data = plain_tensor(image)
    warped = warp(data.unsqueeze(0).to(_work_dtype(data)), ddf.to(data.device), mode=mode, padding_mode=padding_mode)[0]
    if not data.dtype.is_floating_point:
        warped = warped.round()
    return convert_to_dst_type(warped, dst=image, dtype=data.dtype)[0]


class RandSmoothDeformation(RandomizableTransform, InvertibleTransform):
    """Warp an image by a random smooth diffeomorphism ``exp(v)`` (see :mod:`.deformation`).

    ``randomize(img)`` draws the velocity's control-point values for ``img``'s grid;
    ``__call__`` warps; ``apply_params(img, params, inverse=True)`` applies the inverse
    ``exp(-v)`` of any recorded draw. On a :class:`~monai.data.MetaTensor` the draw is also
    pushed to ``applied_operations``, so :meth:`inverse` (and MONAI's ``Invertd``) undo it.

    Args:
        prob: probability of deforming (otherwise the image is returned unchanged).
        control_spacing: distance between control points in voxels; larger is smoother.
        max_displacement: bound on every displacement component, in voxels.
        mode: interpolation, ``"bilinear"`` or ``"nearest"`` (label maps: values preserved).
        padding_mode: outside the image, ``"border"``, ``"zeros"`` or ``"reflection"``.
        num_steps: scaling-and-squaring steps.

    Example::

        deform = RandSmoothDeformation(max_displacement=4.0).set_random_state(0)
        warped = deform(image)                      # (C, *spatial)
        again = deform.apply_params(image, deform.params)            # identical
        back = deform.apply_params(warped, deform.params, inverse=True)  # ~ image
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        prob: float = 1.0,
        control_spacing: float | Sequence[float] = DEFAULT_CONTROL_SPACING,
        max_displacement: float = DEFAULT_MAX_DISPLACEMENT,
        mode: str = "bilinear",
        padding_mode: str = "border",
        num_steps: int = 7,
    ) -> None:
        caller = "RandSmoothDeformation"
        RandomizableTransform.__init__(self, prob)
        self.control_spacing = control_spacing
        self.max_displacement = check_positive(max_displacement, "max_displacement", caller, allow_zero=True)
        self.mode = check_choice(mode, "mode", caller, WARP_MODES)
        self.padding_mode = check_choice(padding_mode, "padding_mode", caller, PADDING_MODES)
        if not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"{caller}(): 'num_steps' must be an integer >= 0, got {num_steps!r}")
        self.num_steps = num_steps
        self._params: dict[str, Any] | None = None

    @property
    def params(self) -> dict[str, Any] | None:
        """The last parameters drawn by :meth:`randomize` (None when the last draw did not deform)."""
        return self._params

    def randomize(self, data: NdarrayOrTensor | Sequence[int]) -> None:
        """Decide whether to deform and draw the parameters for ``data``'s grid.

        Args:
            data: a channel-first image ``(C, *spatial)`` or a spatial shape.
        """
        super().randomize(None)
        if not self._do_transform:
            self._params = None
            return
        shape = tuple(data.shape[1:]) if isinstance(data, (torch.Tensor, np.ndarray)) else tuple(data)
        self._params = sample_smooth_velocity_params(
            shape, self.control_spacing, self.max_displacement, generator=torch_generator_from(self.R)
        )

    def fields(self, params: Mapping[str, Any], spatial_shape: Sequence[int], device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The ``(1, D, *spatial)`` fields of ``params``, as :func:`deformation_from_params` returns them."""
        return deformation_from_params(params, spatial_shape, num_steps=self.num_steps, device=device, dtype=dtype)

    def apply_params(self, img: NdarrayOrTensor, params: Mapping[str, Any], inverse: bool = False,
                     mode: str | None = None, padding_mode: str | None = None) -> torch.Tensor:
        """Warp ``img`` deterministically by the deformation ``params`` (or by its inverse).

        Args:
            img: ``(C, *spatial)``; integer images are warped as float and cast back (use ``"nearest"``).
            params: output of :func:`sample_smooth_velocity_params` (e.g. ``self.params``).
            inverse: apply ``exp(-v)`` instead of ``exp(v)``.
            mode: overrides the constructor's interpolation for this call.
            padding_mode: overrides the constructor's padding for this call.

        Returns:
            ``(C, *spatial)`` warped image, same type, dtype and metadata as ``img``.
        """
        image = as_channel_first(img, "img", "RandSmoothDeformation.apply_params")
        data = plain_tensor(image)
        fields = self.fields(params, data.shape[1:], device=data.device, dtype=_work_dtype(data))
        ddf = fields["inverse_ddf" if inverse else "ddf"]
        return warp_channel_first(image, ddf, self.mode if mode is None else mode,
                                  self.padding_mode if padding_mode is None else padding_mode)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> torch.Tensor:
        """Deform ``img`` (``(C, *spatial)``) with a new draw (or the last one when ``randomize=False``)."""
        image = as_channel_first(img, "img", "RandSmoothDeformation")
        if randomize:
            self.randomize(image)
        if self._do_transform and self._params is None:
            raise RuntimeError("RandSmoothDeformation(): randomize=False but no parameters were drawn yet")
        out = self.apply_params(image, self._params) if self._do_transform else image
        return self.push_transform(out, extra_info={"params": self._params})

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Undo the most recent deformation recorded in a MetaTensor's ``applied_operations``."""
        transform = self.pop_transform(data)
        if not transform[TraceKeys.DO_TRANSFORM]:
            return data
        return self.apply_params(data, transform[TraceKeys.EXTRA_INFO]["params"], inverse=True)


class SynthesizeImageFromLabels(RandomizableTransform):
    """Synthesise a random-contrast image from a label map (SynthMorph; see :mod:`.synthesis`).

    ``randomize(labels)`` draws intensities for the labels present, blur, bias field, gamma and
    noise; ``__call__`` synthesises; ``apply_params(labels, params)`` replays any draw exactly.
    The label map itself is never modified.

    Args:
        settings: keyword arguments of :func:`~monai_diffreg.transforms.synthesis.sample_synthesis_params`
            (all optional): ``mean_range`` (per-label mean ~ U), ``std_range`` (per-label std ~ U),
            ``max_blur_sigma`` (voxels), ``max_bias_std`` (0: no bias field), ``bias_control_spacing``
            (voxels), ``gamma_std`` (0: no gamma change), ``max_noise_std`` (0: no noise). They are
            checked when the transform is built.

    Input ``(1, *spatial)`` integer-valued label map (float maps with whole values are accepted);
    output ``(1, *spatial)`` float32 image in [0, 1] carrying the label map's metadata.

    Example::

        synth = SynthesizeImageFromLabels(max_noise_std=0.0).set_random_state(0)
        image = synth(labels)
        same = synth.apply_params(labels, synth.params)
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, **settings: Any) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        try:
            sample_synthesis_params([0], (2, 2), **settings)  # fail at construction on bad names or values
        except TypeError as error:
            raise TypeError(f"SynthesizeImageFromLabels(): unknown setting ({error}); "
                            "see sample_synthesis_params for the accepted ones") from None
        self.settings = settings
        self._params: dict[str, Any] | None = None

    @property
    def params(self) -> dict[str, Any] | None:
        """The last parameters drawn by :meth:`randomize`."""
        return self._params

    def _labels(self, labels: NdarrayOrTensor, caller: str) -> tuple[torch.Tensor, torch.Tensor]:
        label_map = as_channel_first(labels, "labels", caller)
        if label_map.shape[0] != 1:
            raise ValueError(f"{caller}(): 'labels' must have 1 channel, got shape {tuple(label_map.shape)}")
        return label_map, integer_labels(label_map, "labels", caller)

    def randomize(self, data: NdarrayOrTensor) -> None:
        """Draw synthesis parameters for the label map ``data`` ``(1, *spatial)``."""
        _, values = self._labels(data, "SynthesizeImageFromLabels.randomize")
        self._params = sample_synthesis_params(values.unique(), values.shape[1:], **self.settings,
                                               generator=torch_generator_from(self.R))

    def apply_params(self, labels: NdarrayOrTensor, params: Mapping[str, Any]) -> torch.Tensor:
        """Synthesise deterministically from ``labels`` ``(1, *spatial)`` with ``params``; returns ``(1, *spatial)``."""
        label_map, values = self._labels(labels, "SynthesizeImageFromLabels.apply_params")
        image = synthesize_image(values.unsqueeze(0), params)[0]
        return convert_to_dst_type(image, dst=label_map, dtype=torch.float32)[0]

    def __call__(self, labels: NdarrayOrTensor, randomize: bool = True) -> torch.Tensor:
        """Synthesise an image from ``labels`` with a new draw (or the last one when ``randomize=False``)."""
        if randomize:
            self.randomize(labels)
        if self._params is None:
            raise RuntimeError("SynthesizeImageFromLabels(): randomize=False but no parameters were drawn yet")
        return self.apply_params(labels, self._params)


class NormalizeIntensityPercentile(Transform):
    """Scale intensities linearly so that the ``lower``/``upper`` percentiles map to 0/1 (see :mod:`.intensity`).

    Args:
        lower: lower percentile in [0, 100).
        upper: upper percentile in (lower, 100].
        clip: clip the result to [0, 1].

    Input ``(C, *spatial)`` (percentiles over all channels together); output float32 (float64
    stays float64) with the input's metadata. A constant image or one holding NaN/Inf raises
    ``ValueError``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, lower: float = 0.5, upper: float = 99.5, clip: bool = True) -> None:
        self.lower, self.upper, self.clip = lower, upper, clip

    def __call__(self, img: NdarrayOrTensor, name: str = "img") -> torch.Tensor:
        """Normalise ``img``; ``name`` labels it in error messages (the dictionary version passes its key)."""
        image = as_channel_first(img, name, "NormalizeIntensityPercentile")
        out = normalize_intensity_percentile(plain_tensor(image), self.lower, self.upper, self.clip,
                                             name=name, caller="NormalizeIntensityPercentile")
        return convert_to_dst_type(out, dst=image, dtype=out.dtype)[0]


class PadToDivisible(DivisiblePad):
    """MONAI :class:`~monai.transforms.DivisiblePad` that also records the padding it applied.

    On MetaTensors, MONAI's :meth:`inverse` undoes the padding from ``applied_operations``. For
    plain tensors, and for outputs computed from the padded image (e.g. a displacement field
    predicted on the padded grid), ``self.padding`` holds ``((before, after), ...)`` per spatial
    axis of the last call and :meth:`crop_back` removes it from the trailing spatial axes.

    Args:
        k: every spatial size becomes a multiple of ``k`` (one value or one per axis).
        mode: padding mode (MONAI/PyTorch names: ``"constant"``, ``"replicate"``, ``"reflect"``, ...).
        method: ``"symmetric"`` or ``"end"``.
        kwargs: passed to MONAI's ``DivisiblePad`` (e.g. ``value`` for constant padding).
    """

    def __init__(self, k: int | Sequence[int], mode: str = "constant", method: str = "symmetric", **kwargs) -> None:
        super().__init__(k=k, mode=mode, method=method, **kwargs)
        self.padding: tuple[tuple[int, int], ...] | None = None

    def __call__(self, img: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # type: ignore[override]
        """Pad ``img`` ``(C, *spatial)`` (arguments as MONAI ``DivisiblePad``) and record the padding."""
        image = as_channel_first(img, "img", "PadToDivisible")
        self.padding = divisible_padding(image.shape[1:], self.k, self.method)
        return super().__call__(image, *args, **kwargs)

    def crop_back(self, x: torch.Tensor, padding: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """Remove ``padding`` (default: that of the last call) from the trailing spatial axes of ``x``."""
        padding = self.padding if padding is None else padding
        if padding is None:
            raise RuntimeError("PadToDivisible.crop_back(): no padding recorded yet; call the transform first")
        return crop_back(x, padding)
