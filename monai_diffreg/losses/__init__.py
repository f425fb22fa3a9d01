"""Registration losses: each a stateless function plus a MONAI-style ``_Loss`` class.

Every function takes batched tensors ``(B, C, *spatial)`` with 2 or 3 spatial axes, validates
its inputs (errors name the function and the argument), evaluates in at least float32 and
supports ``reduction in ("mean", "sum", "none")``; ``"none"`` returns the per-voxel map where
one exists (NCC, MSE), per-sample-per-label values for Dice and per-sample values for the
gradient penalty and the KL term.

=============================  ==================================  ===================================
function                       class                               what
=============================  ==================================  ===================================
:func:`local_ncc_loss`         :class:`LocalNCCLoss`               ``-`` local squared NCC (VoxelMorph)
:func:`mse_loss`               :class:`MSELoss`                    ``(p - t)^2 / (2 sigma^2)``
:func:`soft_dice_loss`         :class:`SoftDiceLoss`               ``1 - soft Dice`` per label
:func:`gradient_loss`          :class:`GradientLoss`               forward-difference l2 / l1 penalty
:func:`kl_svf_laplacian`       :class:`ProbabilisticSVFKLLoss`     KL vs Laplacian prior (+ :func:`degree_matrix`)
(wrapper)                      :class:`BidirectionalLoss`          both directions, mean or sum (:func:`combine_directions`)
(wrapper)                      :class:`MultiResolutionLoss`        weighted sum over pyramid levels
(composite)                    :class:`ProbabilisticSVFLoss`       probabilistic VoxelMorph training loss (eq. 2 + KL + Dice)
(composite)                    :class:`MDRegNetLoss`               MDReg-Net training loss (eq. 4: per-level two-way NCC + L1)
(composite)                    :class:`HyperMorphLoss`             HyperMorph: ``(1 - lambda) sim + lambda reg`` per item (+ :func:`sample_reg_weight`)
(composite)                    :class:`SynthMorphLoss`             SynthMorph: Dice of warped labels + ``lambda`` gradient penalty (:func:`warped_label_dice_loss`)
(composite)                    :class:`RegistrationPyramidLoss`    registration pyramid training loss (eqs. 1-2: Dice + per-level NCC, affine, smoothness)
=============================  ==================================  ===================================

Image terms chosen by name (``"ncc"``, ``"mse"``, ``"mi"``) are stated once in
:mod:`.similarity` (:data:`SIMILARITY_METRICS`, :func:`image_similarity_loss`); the one
bidirectional convention (``"mean"`` or ``"sum"`` of the two directions) in :mod:`.wrappers`.
"""

from .dice import SoftDiceLoss, present_label_dice_loss, soft_dice_loss, warped_label_dice_loss
from .hypermorph import HYPERMORPH_IMAGE_LOSSES, REG_WEIGHT_DISTRIBUTIONS, HyperMorphLoss, sample_reg_weight
from .kl import ProbabilisticSVFKLLoss, degree_matrix, kl_svf_laplacian
from .mdreg import MDRegNetLoss
from .mse import MSELoss, mse_loss
from .ncc import LocalNCCLoss, local_ncc_loss
from .prob_svf import ProbabilisticSVFLoss
from .reg_pyramid import RegistrationPyramidLoss, affine_identity_penalty
from .regularization import GradientLoss, gradient_loss
from .similarity import SIMILARITY_METRICS, image_similarity_loss, similarity_subset
from .synthmorph import SynthMorphLoss
from .wrappers import BIDIRECTIONAL_REDUCTIONS, BidirectionalLoss, MultiResolutionLoss, combine_directions

__all__ = [
    "local_ncc_loss",
    "LocalNCCLoss",
    "mse_loss",
    "MSELoss",
    "soft_dice_loss",
    "SoftDiceLoss",
    "gradient_loss",
    "GradientLoss",
    "degree_matrix",
    "kl_svf_laplacian",
    "ProbabilisticSVFKLLoss",
    "SIMILARITY_METRICS",
    "image_similarity_loss",
    "similarity_subset",
    "BIDIRECTIONAL_REDUCTIONS",
    "combine_directions",
    "BidirectionalLoss",
    "MultiResolutionLoss",
    "ProbabilisticSVFLoss",
    "present_label_dice_loss",
    "warped_label_dice_loss",
    "MDRegNetLoss",
    "HyperMorphLoss",
    "sample_reg_weight",
    "HYPERMORPH_IMAGE_LOSSES",
    "REG_WEIGHT_DISTRIBUTIONS",
    "SynthMorphLoss",
    "RegistrationPyramidLoss",
    "affine_identity_penalty",
]
