"""Engines: classical (instance-specific) registration by optimisation.

* :func:`optimise_affine` / :class:`AffineRegistration`: multi-resolution affine registration
  (local NCC, MSE or mutual information) of two images on the same grid.
* :func:`optimise_svf` / :class:`SVFRegistration`: multi-resolution diffeomorphic registration
  by gradient descent on a stationary velocity field.
* :func:`refine_velocity`: single-resolution refinement of a velocity field with any
  differentiable loss, the test-time instance optimisation of the learned methods.
* :func:`image_dissimilarity`: the (optionally masked) image terms these engines share.
"""

from .affine import AFFINE_INITIALISATIONS, AffineRegistration, centre_of_mass, optimise_affine
from .similarity import SIMILARITY_METRICS, image_dissimilarity, normalise_intensity
from .svf_optim import SVF_IMAGE_LOSSES, SVFRegistration, optimise_svf, refine_velocity

__all__ = [
    "AFFINE_INITIALISATIONS",
    "AffineRegistration",
    "centre_of_mass",
    "optimise_affine",
    "SIMILARITY_METRICS",
    "image_dissimilarity",
    "normalise_intensity",
    "SVF_IMAGE_LOSSES",
    "SVFRegistration",
    "optimise_svf",
    "refine_velocity",
]
