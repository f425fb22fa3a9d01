"""Engines: registration by optimisation, inference with trained networks, and training.

* :func:`optimise_affine` / :class:`AffineRegistration`: multi-resolution affine registration
  (local NCC, MSE or mutual information) of two images on the same grid.
* :func:`optimise_svf` / :class:`SVFRegistration`: multi-resolution diffeomorphic registration
  by gradient descent on a stationary velocity field.
* :func:`refine_velocity`: refinement of a velocity field with any differentiable loss;
  :func:`refine_network` runs it from a network's prediction with its training loss (the
  test-time instance optimisation of the learned methods).
* :func:`image_dissimilarity`: the (optionally masked) image terms these engines share.
* :class:`NetworkRegistration`: a trained network as a registration method (bundles' ``"method"``).
* :class:`RegistrationTrainer` / :class:`SyntheticPairDataset`: resumable (DDP-capable) training
  of registration networks on synthetic pairs.
"""

from .affine import AFFINE_INITIALISATIONS, AffineRegistration, centre_of_mass, optimise_affine
from .similarity import SIMILARITY_METRICS, image_dissimilarity
from .network_inference import NetworkRegistration, load_weights
from .refinement import RefinementLoss, refine_network
from .svf_optim import SVF_IMAGE_LOSSES, SVFRegistration, optimise_svf, refine_velocity
from .training import RegistrationTrainer, latest_checkpoint, registration_step, save_atomic
from .training_data import SyntheticPairDataset

__all__ = [
    "AFFINE_INITIALISATIONS",
    "AffineRegistration",
    "centre_of_mass",
    "optimise_affine",
    "SIMILARITY_METRICS",
    "image_dissimilarity",
    "SVF_IMAGE_LOSSES",
    "SVFRegistration",
    "optimise_svf",
    "refine_velocity",
    "RefinementLoss",
    "refine_network",
    "NetworkRegistration",
    "load_weights",
    "RegistrationTrainer",
    "latest_checkpoint",
    "registration_step",
    "save_atomic",
    "SyntheticPairDataset",
]
