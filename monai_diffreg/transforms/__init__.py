"""MONAI-style transforms for registration: random diffeomorphisms, label-map image synthesis,
intensity scaling (robust and min-max), padding, re-orientation and loading of registration pairs.

Stateless maths lives in :mod:`.deformation`, :mod:`.synthesis`, :mod:`.intensity` and
:mod:`.spatial`; :mod:`.array` holds the array transforms (``(C, *spatial)`` in and out) and
:mod:`.dictionary` their dictionary versions, as in MONAI.
"""

from .array import (
    NormalizeIntensityPercentile,
    PadToDivisible,
    RandSmoothDeformation,
    SynthesizeImageFromLabels,
    warp_channel_first,
)
from .control_grid import control_grid_shape, upsample_control_grid
from .deformation import (
    deformation_from_params,
    sample_random_affine,
    sample_smooth_velocity_params,
    smooth_velocity_from_params,
)
from .dictionary import (
    LoadRegistrationPaird,
    NormalizeIntensityPercentiled,
    PadToDivisibled,
    RandLabelMapd,
    RandSmoothDeformationd,
    RandSynthesizeImaged,
)
from .intensity import min_max_normalize, normalize_intensity_percentile, percentile
from .spatial import (
    axis_mapping,
    crop_back,
    divisible_padding,
    load_channel_first,
    pad_to_divisible,
    to_source_axes,
    to_target_axes,
)
from .synthesis import (
    add_gaussian_noise,
    apply_gamma,
    bias_field_from_coefficients,
    gaussian_blur,
    label_intensity_image,
    random_label_map,
    sample_synthesis_params,
    synthesize_image,
)

__all__ = [
    "LoadRegistrationPaird",
    "NormalizeIntensityPercentile",
    "NormalizeIntensityPercentiled",
    "PadToDivisible",
    "PadToDivisibled",
    "RandLabelMapd",
    "RandSmoothDeformation",
    "RandSmoothDeformationd",
    "RandSynthesizeImaged",
    "SynthesizeImageFromLabels",
    "add_gaussian_noise",
    "apply_gamma",
    "axis_mapping",
    "bias_field_from_coefficients",
    "control_grid_shape",
    "crop_back",
    "deformation_from_params",
    "divisible_padding",
    "gaussian_blur",
    "label_intensity_image",
    "load_channel_first",
    "min_max_normalize",
    "normalize_intensity_percentile",
    "pad_to_divisible",
    "percentile",
    "random_label_map",
    "sample_smooth_velocity_params",
    "sample_random_affine",
    "sample_synthesis_params",
    "smooth_velocity_from_params",
    "synthesize_image",
    "to_source_axes",
    "to_target_axes",
    "upsample_control_grid",
    "warp_channel_first",
]
