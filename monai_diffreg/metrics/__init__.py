"""Registration evaluation metrics (Learn2Reg vocabulary), each a function and a MONAI metric class.

Every metric is a stateless function returning per-case values, plus a thin
:class:`monai.metrics.CumulativeIterationMetric` subclass that accumulates them over
iterations and reduces them with MONAI's reductions (NaN = skipped, as in ``DiceMetric``).
"""

from .dice import DiceOverlapMetric, dice_per_label, mean_dice
from .field_error import EndPointErrorMetric, endpoint_error
from .hd95 import Hausdorff95Metric, hausdorff95_per_label, mean_hausdorff95
from .inverse_consistency import InverseConsistencyMetric, inverse_consistency_error
from .jacobian import (
    SD_LOG_JACOBIAN_VARIANTS,
    FoldingMetric,
    SDLogJacobianMetric,
    folding_percentage,
    sd_log_jacobian,
    sd_log_jacobian_l2r,
    jacobian_statistics,
    determinant_statistics,
)
from .similarity import normalized_mutual_information
from .tre import TREMetric, target_registration_error

__all__ = [
    "DiceOverlapMetric",
    "dice_per_label",
    "mean_dice",
    "Hausdorff95Metric",
    "hausdorff95_per_label",
    "mean_hausdorff95",
    "EndPointErrorMetric",
    "endpoint_error",
    "InverseConsistencyMetric",
    "inverse_consistency_error",
    "FoldingMetric",
    "SDLogJacobianMetric",
    "SD_LOG_JACOBIAN_VARIANTS",
    "folding_percentage",
    "sd_log_jacobian",
    "sd_log_jacobian_l2r",
    "jacobian_statistics",
    "determinant_statistics",
    "normalized_mutual_information",
    "TREMetric",
    "target_registration_error",
]
