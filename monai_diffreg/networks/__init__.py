"""Registration networks. Every network returns a dict with fixed keys (DESIGN.md 3.5)."""

from .posterior import POSTERIORS, posterior_smoothing_sigma, sample_velocity
from .prob_voxelmorph import ProbabilisticVoxelMorph
from .vxm_unet import VxmUNet

__all__ = ["POSTERIORS", "posterior_smoothing_sigma", "sample_velocity", "ProbabilisticVoxelMorph", "VxmUNet"]
