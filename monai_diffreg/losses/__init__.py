"""Registration losses: each a stateless function plus a MONAI-style ``_Loss`` class.

Every function takes batched tensors ``(B, C, *spatial)`` with 2 or 3 spatial axes, validates
its inputs (errors name the function and the argument) and supports
``reduction in ("mean", "sum", "none")`` where a per-element value exists.
"""

from .dice import SoftDiceLoss, soft_dice_loss
from .kl import ProbabilisticSVFKLLoss, degree_matrix, kl_svf_laplacian
from .mse import MSELoss, mse_loss
from .ncc import LocalNCCLoss, local_ncc_loss
from .regularization import GradientLoss, gradient_loss

__all__ = [
    "GradientLoss",
    "gradient_loss",
    "degree_matrix",
    "kl_svf_laplacian",
    "LocalNCCLoss",
    "MSELoss",
    "ProbabilisticSVFKLLoss",
    "SoftDiceLoss",
    "local_ncc_loss",
    "mse_loss",
    "soft_dice_loss",
]
