"""The contract of registration networks: what the engines may ask of a network.

:class:`~monai_diffreg.engines.network_inference.NetworkRegistration` turns any module
obeying :class:`RegistrationNetwork` into a registration method, and uses the optional
capabilities below when a network offers them (checked with ``isinstance``, so a new network
needs only these methods, no registration anywhere). All images are ``(B, C, *S)``, all
displacements ``(B, D, *S)`` in voxels, pull-back from fixed to moving (package convention,
:mod:`monai_diffreg.functional`).

* :class:`RegistrationNetwork`: ``forward(moving, fixed)`` returns a dict with at least
  ``"ddf"`` and ``"inverse_ddf"`` (training adds what its loss needs), and
  ``displacements(moving, fixed, inverse=True)`` returns just those two, or only ``"ddf"`` with
  ``inverse=False`` (inference without the warped images, and without the inverse nobody asked for).
  A network with a learned affine part (:class:`~monai_diffreg.networks.KeypointAffine`,
  :class:`~monai_diffreg.networks.AffineThenDeformable`) adds ``"affine"`` ``(B, D, D + 1)`` (the voxel
  matrix, :mod:`monai_diffreg.functional.affine`) to both, and says so with the class attribute
  ``learns_affine = True``; the engines pass the matrix on (``affine.tfm``), and ``register()`` does not
  ask for the affine stage on a misaligned pair that such a network aligns itself.
  A model whose output is an optimisation rather than one forward pass (the momentum of
  :class:`~monai_diffreg.mermaid.learned_metric.LearnedMetricVSVF` is optimised per pair, under autograd)
  says so with the class attribute ``optimises_at_inference = True``: ``torch.export`` cannot capture it
  (:func:`monai_diffreg.export.export_network` refuses it in one line).
* :class:`SamplingNetwork`: ``sample(moving, fixed, num_samples)`` adds ``"uncertainty"``
  ``(B, 1, *S)`` (probabilistic models).
* :class:`MultiLevelNetwork`: ``warped_level_images(moving, fixed)`` ``(B, L * C, *S)``, the
  moving image warped by each level's field, coarse to fine (for inspection).
* :class:`RefinableNetwork`: test-time refinement of a velocity field
  (:func:`monai_diffreg.engines.refinement.refine_network`): ``refinement_start(moving, fixed)``
  states the problem (:class:`VelocityRefinementStart`), ``refined_outputs(moving, fixed,
  velocity, start)`` turns the refined velocity into ``"ddf"``, ``"inverse_ddf"``, ``"velocity"``
  and ``"warped"``, ``refined_displacements(..., inverse)`` into the displacements alone. The loss is the caller's (normally the training loss); the network knows
  nothing of losses or optimisers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

__all__ = [
    "RegistrationNetwork",
    "SamplingNetwork",
    "MultiLevelNetwork",
    "RefinableNetwork",
    "VelocityRefinementStart",
]


@runtime_checkable
class RegistrationNetwork(Protocol):
    """A registration network: ``network(moving, fixed)`` and ``network.displacements(moving, fixed)``."""

    spatial_dims: int

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """At least ``"ddf"`` and ``"inverse_ddf"`` ``(B, D, *S)``."""

    def displacements(self, moving: torch.Tensor, fixed: torch.Tensor, inverse: bool = True) -> Mapping[str, torch.Tensor]:
        """Only ``"ddf"`` and (``inverse``) ``"inverse_ddf"`` ``(B, D, *S)``."""


@runtime_checkable
class SamplingNetwork(Protocol):
    """A probabilistic network that estimates the uncertainty of its displacement."""

    def sample(self, moving: torch.Tensor, fixed: torch.Tensor, num_samples: int) -> Mapping[str, torch.Tensor]:
        """``"ddf"``, ``"inverse_ddf"`` and ``"uncertainty"`` ``(B, 1, *S)`` from ``num_samples`` samples."""


@runtime_checkable
class MultiLevelNetwork(Protocol):
    """A coarse-to-fine network whose levels can be inspected."""

    def warped_level_images(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """``(B, L * C, *S)``: the moving image warped by each level's accumulated field, coarse to fine."""


@dataclass
class VelocityRefinementStart:
    """Where test-time refinement of a stationary velocity starts, as the network states it.

    Attributes:
        fixed, moving: ``(B, C, *N)`` the images on the grid where the image term is evaluated
            (the grid the network sees: resampled and padded).
        velocity: ``(B, D, *n)`` the network's velocity, ``n = N / int_downsize``, in voxels of its grid.
        int_downsize: how many times coarser the velocity grid is than the images' ``N``.
        num_steps: scaling-and-squaring steps of ``exp(velocity)``.
        smoothing_sigma, smoothing_kernel_size: the network's default preconditioning of the
            updates (velocity voxels; None: voxel-wise updates).
        context: what a loss needs besides the velocity (e.g. ``"velocity_log_var"`` of a
            probabilistic network for its KL term).
    """

    fixed: torch.Tensor
    moving: torch.Tensor
    velocity: torch.Tensor
    int_downsize: int
    num_steps: int
    smoothing_sigma: float | None = None
    smoothing_kernel_size: int | None = None
    context: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class RefinableNetwork(Protocol):
    """A network whose stationary velocity can be refined for one pair at test time."""

    def refinement_start(self, moving: torch.Tensor, fixed: torch.Tensor) -> VelocityRefinementStart:
        """The refinement problem for this pair (run without gradients)."""

    def refined_outputs(self, moving: torch.Tensor, fixed: torch.Tensor, velocity: torch.Tensor,
                        start: VelocityRefinementStart) -> dict[str, torch.Tensor]:
        """``"ddf"``, ``"inverse_ddf"`` ``(B, D, *S)``, ``"velocity"`` and ``"warped"`` for a refined velocity."""

    def refined_displacements(self, moving: torch.Tensor, fixed: torch.Tensor, velocity: torch.Tensor,
                              start: VelocityRefinementStart, inverse: bool = True) -> dict[str, torch.Tensor]:
        """Only ``"ddf"`` and (``inverse``) ``"inverse_ddf"`` ``(B, D, *S)`` of a refined velocity (as
        :meth:`RegistrationNetwork.displacements` is to ``forward``)."""
