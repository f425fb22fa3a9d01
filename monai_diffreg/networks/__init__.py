"""Registration networks. Every network returns a dict with fixed keys (DESIGN.md 3.5) and obeys
the contract of :mod:`.contract` (what the engines may ask of a network)."""

from .affine_then_deformable import AffineThenDeformable
from .blocks import NORMS, OneDNNConv2d, OneDNNConv3d, conv_block, convolution, init_flow_head
from .contract import MultiLevelNetwork, RefinableNetwork, RegistrationNetwork, SamplingNetwork, VelocityRefinementStart
from .hypermorph import HyperConv, HyperMorph, HyperNetwork, HyperVxmUNet, check_reg_weight, hyper_conv
from .keypoint_affine import KeypointAffine
from .mdregnet import MDRegNet, MDRegSubNetwork
from .prob_voxelmorph import ProbabilisticVoxelMorph
from .pyramid import CoarseToFinePass, coarse_to_fine
from .reg_pyramid import AffineHead, DenseDeformBlock, FeaturePyramid, RegistrationPyramid
from .voxelmorph import VoxelMorph
from .vxm_unet import VxmUNet

__all__ = [
    "AffineThenDeformable",
    "NORMS",
    "OneDNNConv2d",
    "OneDNNConv3d",
    "conv_block",
    "convolution",
    "init_flow_head",
    "HyperMorph",
    "HyperVxmUNet",
    "HyperNetwork",
    "HyperConv",
    "hyper_conv",
    "check_reg_weight",
    "KeypointAffine",
    "MDRegNet",
    "MDRegSubNetwork",
    "RegistrationNetwork",
    "SamplingNetwork",
    "MultiLevelNetwork",
    "RefinableNetwork",
    "VelocityRefinementStart",
    "ProbabilisticVoxelMorph",
    "VoxelMorph",
    "CoarseToFinePass",
    "coarse_to_fine",
    "RegistrationPyramid",
    "FeaturePyramid",
    "AffineHead",
    "DenseDeformBlock",
    "VxmUNet",
]
