"""The Mermaid family of momentum models (uncbiag's Mermaid; Niethammer, Kwitt, Vialard, CVPR 2019): kernels,
vSVF, LDDMM shooting, RDMM and metric learning (global and local weights). Method notes: ``monai_diffreg/mermaid/README.md``."""

from .kernels import (apply_kernel, check_kernel, gaussian_multiplier, gaussian_multipliers, kernel_energy, kernel_multiplier,
                      omt_penalty)
from .lddmm import LDDMMRegistration, lddmm_energy, lddmm_register
from .learned_metric import LearnedMetricVSVF
from .local_metric import (LocalMetricRegistration, LocalWeightNetwork, learn_local_weights, local_metric_energy,
                           local_metric_register, predict_local_weights, weighted_linear_softmax)
from .metric_learning import learn_global_weights, population_energy
from .rdmm import RDMMRegistration, rdmm_energy, rdmm_register, weights_from_labels
from .vsvf import VSVFRegistration, momentum_to_velocity, vsvf_energy, vsvf_register

__all__ = ["apply_kernel", "check_kernel", "gaussian_multiplier", "gaussian_multipliers", "kernel_energy", "kernel_multiplier", "omt_penalty",
           "VSVFRegistration", "momentum_to_velocity", "vsvf_energy", "vsvf_register",
           "LDDMMRegistration", "lddmm_energy", "lddmm_register", "learn_global_weights", "population_energy",
           "RDMMRegistration", "rdmm_energy", "rdmm_register", "weights_from_labels",
           "LocalMetricRegistration", "LocalWeightNetwork", "learn_local_weights", "local_metric_energy",
           "local_metric_register", "predict_local_weights", "weighted_linear_softmax", "LearnedMetricVSVF"]
