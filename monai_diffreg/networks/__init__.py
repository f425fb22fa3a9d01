"""Registration networks. Every network returns a dict with fixed keys (DESIGN.md 3.5)."""

from .blocks import NORMS, OneDNNConv2d, OneDNNConv3d, conv_block, convolution, init_flow_head
from .mdregnet import MDRegNet, MDRegSubNetwork
from .posterior import POSTERIORS, posterior_smoothing_sigma, sample_velocity
from .prob_voxelmorph import ProbabilisticVoxelMorph
from .vxm_unet import VxmUNet

__all__ = [
    "NORMS",
    "OneDNNConv2d",
    "OneDNNConv3d",
    "conv_block",
    "convolution",
    "init_flow_head",
    "MDRegNet",
    "MDRegSubNetwork",
    "POSTERIORS",
    "posterior_smoothing_sigma",
    "sample_velocity",
    "ProbabilisticVoxelMorph",
    "VxmUNet",
]
