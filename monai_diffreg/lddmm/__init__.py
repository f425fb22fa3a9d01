"""Fourier-space LDDMM (FLASH) and the estimation of its regularisation (Wang & Zhang).

* :mod:`.fourier`: band-limited fields, their diagonal operators and alias-free products.
* :mod:`.shooting`: EPDiff geodesic shooting of a band-limited initial velocity, the maps ``phi_1^-1``
  and ``phi_1`` (:class:`BandOperators`, :func:`shoot`, :func:`shoot_maps`).
* :mod:`.flash`: the registration energy and its minimisation (:func:`flash_register`,
  :class:`FLASHRegistration`, the built-in method ``"flash"``).
* :mod:`.regularization`: the prior, MAP / evidence estimation of ``alpha``
  (:func:`estimate_regularization`, the image term's curvature :func:`data_curvature`, the prior's scale
  :func:`best_scale`) and prior sampling
  (:func:`sample_initial_velocity`).
* :mod:`.predictor`: the CNN that predicts ``alpha`` from a pair (:class:`RegularizationPredictor`).
* :mod:`.adjoint`: the gradient by the adjoint system integrated backward in time (a cross-check
  of the automatic differentiation the registration uses).
"""

from .adjoint import adjoint_gradient
from .flash import FLASHRegistration, MapFoldingWarning, band_to_ddf, flash_energy, flash_register
from .predictor import (PREDICTOR_FUSIONS, PREDICTOR_NORMS, RegularizationPredictor, balanced_difference_gain,
                        log_alpha_loss, predicted_alpha, recalibrate_batch_norm)
from .regularization import (ESTIMATION_MODELS, best_scale, data_curvature, determined_share, effective_precision,
                             estimate_regularization, sample_initial_velocity)
from .shooting import BandOperators, band_operators, shoot, shoot_maps

__all__ = [
    "BandOperators",
    "band_operators",
    "shoot",
    "shoot_maps",
    "band_to_ddf",
    "MapFoldingWarning",
    "flash_energy",
    "flash_register",
    "FLASHRegistration",
    "ESTIMATION_MODELS",
    "estimate_regularization",
    "data_curvature",
    "effective_precision",
    "determined_share",
    "best_scale",
    "sample_initial_velocity",
    "RegularizationPredictor",
    "PREDICTOR_FUSIONS",
    "PREDICTOR_NORMS",
    "predicted_alpha",
    "recalibrate_batch_norm",
    "log_alpha_loss",
    "balanced_difference_gain",
    "adjoint_gradient",
]
