"""MONAI-style transforms for registration: random diffeomorphisms, label-map image synthesis,
robust intensity scaling, padding and loading of registration pairs.

Stateless maths lives in :mod:`.deformation`, :mod:`.synthesis`, :mod:`.intensity` and
:mod:`.spatial`; :mod:`.array` holds the array transforms (``(C, *spatial)`` in and out) and
:mod:`.dictionary` their dictionary versions, as in MONAI.
"""

from .array import RandSmoothDeformation, warp_channel_first
from .control_grid import control_grid_shape, upsample_control_grid
from .deformation import deformation_from_params, sample_smooth_velocity_params, smooth_velocity_from_params
from .dictionary import RandSmoothDeformationd

__all__ = [
    "RandSmoothDeformation",
    "RandSmoothDeformationd",
    "control_grid_shape",
    "deformation_from_params",
    "sample_smooth_velocity_params",
    "smooth_velocity_from_params",
    "upsample_control_grid",
    "warp_channel_first",
]
