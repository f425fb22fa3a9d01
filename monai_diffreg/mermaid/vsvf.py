"""vSVF: registration by the stationary velocity ``v = K * m`` of a vector momentum ``m`` (Mermaid's vSVF).

The transform is ``phi = exp(v)`` (scaling and squaring, :func:`~monai_diffreg.functional.integrate_velocity`)
and the energy minimised over ``m`` is::

    E(m) = image_term(moving o exp(v), fixed) + regularization_weight * <m, K m>

with ``K`` a (multi-)Gaussian kernel (:mod:`.kernels`) and ``<m, K m>`` the mean over voxels of
``m . v`` (:func:`~.kernels.kernel_energy`). ``m`` and ``v`` are in the units of ``spacing``
(millimetres; voxels when it is None), so the same momentum means the same field at every pyramid
level and the energy does not change with the grid; ``v`` is divided by the level's voxel size
before integration. Coarse to fine: the images are area-downsampled to each level's grid, ``m``
is carried linearly, and Adam runs on ``m`` with a step of ``learning_rate`` millimetres, each level
stopping early when ten steps lower the energy by less than ``tolerance`` of it. The output fields
are those of the last level's grid, where the energy was minimised, upsampled to the full grid. The
energy's form and the loop are shared with LDDMM shooting (:mod:`._momentum`); the model is
:func:`vsvf_fields`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from ..engines._optim_common import EngineSettings, ProgressReporter, check_pair
from ..functional import integrate_velocity
from ..validation import check_integer
from ._momentum import MOMENTUM_IMAGE_LOSSES, check_momentum_settings, momentum_energy, register_momentum, to_voxels
from .kernels import apply_kernel

__all__ = ["momentum_to_velocity", "vsvf_fields", "vsvf_energy", "vsvf_register", "VSVFRegistration", "VSVF_IMAGE_LOSSES"]

#: The image terms :func:`vsvf_register` offers (a subset of the similarity registry).
VSVF_IMAGE_LOSSES = MOMENTUM_IMAGE_LOSSES
DEFAULT_SIGMAS = (2.0, 4.0, 8.0, 16.0)
DEFAULT_REGULARIZATION_WEIGHT = 0.001  # chosen on validation cases (docs)
DEFAULT_LEARNING_RATE = 0.3
#: Adam steps per level of the default pyramid (4 mm, 2 mm; chosen on validation cases, docs)
DEFAULT_ITERATIONS = (60, 30)


def momentum_to_velocity(momentum: torch.Tensor, multiplier: torch.Tensor, spacing: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``v = K * m`` in physical units and the same field in voxels of the grid, both ``(B, D, *S)``."""
    velocity = apply_kernel(momentum, multiplier)
    return velocity, to_voxels(velocity, spacing)


def vsvf_fields(momentum: torch.Tensor, velocity: torch.Tensor, multiplier: torch.Tensor, spacing: Sequence[float],
                inverse: bool, *, num_steps: int = 7) -> dict[str, torch.Tensor]:
    """vSVF's fields of ``v = K * m`` ``(B, D, *S)`` (physical units; ``m`` and ``K`` are not needed again):
    ``"ddf"`` ``exp(v) - id``, ``"velocity"`` ``v`` and, with ``inverse``, ``"inverse_ddf"`` ``exp(-v) - id``, in voxels."""
    voxels = to_voxels(velocity, spacing)
    out = {"ddf": integrate_velocity(voxels, num_steps), "velocity": voxels}
    if inverse:
        out["inverse_ddf"] = integrate_velocity(-voxels, num_steps)
    return out


def vsvf_energy(momentum: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, multiplier: torch.Tensor,
                spacing: Sequence[float], *, regularization_weight: float, image_loss: str = "ncc", num_steps: int = 7,
                ncc_window: int = 9, image_sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """The energy of the module docstring at ``momentum`` ``(B, D, *S)`` (physical units) on one grid.

    Returns:
        ``"total"``, ``"image"``, ``"prior"`` (scalars: batch means) and ``"ddf"`` ``(B, D, *S)`` in voxels.
    """
    return momentum_energy(partial(vsvf_fields, num_steps=num_steps), momentum, fixed, moving, multiplier, spacing,
                           regularization_weight=regularization_weight, image_loss=image_loss, ncc_window=ncc_window,
                           image_sigma=image_sigma)


def _check_settings(caller: str, *, num_steps, default_steps=DEFAULT_ITERATIONS, **common) -> tuple:
    """Validate :func:`vsvf_register`'s settings; return the kernel and schedule (:func:`~._momentum.check_momentum_settings`)."""
    checked = check_momentum_settings(caller, default_steps=default_steps, **common)
    check_integer(num_steps, "num_steps", caller, minimum=0)
    return checked


def vsvf_register(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    weights: Sequence[float] | None = None,
    regularization_weight: float = DEFAULT_REGULARIZATION_WEIGHT,
    image_loss: str = "ncc",
    ncc_window: int = 9,
    image_sigma: float = 1.0,
    levels: Sequence[float] | None = None,
    iterations: Sequence[int] | None = None,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    num_steps: int = 7,
    tolerance: float = 1e-4,
    map_factor: float = 1.0,
    spacing: Sequence[float] | None = None,
    initial_momentum: torch.Tensor | None = None,
    inverse: bool = True,
    callback: ProgressReporter | None = None,
    progress: bool = False,
) -> dict:
    """Register ``moving`` to ``fixed`` (same grid) by vSVF (module docstring).

    Args:
        fixed, moving: ``(B, C, *S)`` images, 2D or 3D, intensities of order 1 (e.g. in [0, 1]).
        sigmas: Gaussian widths of ``K`` in the units of ``spacing``; weights: their weights (>= 0, sum 1;
            None: equal).
        regularization_weight: weight of ``<m, K m>`` (>= 0; larger is smoother).
        image_loss: ``"ncc"`` (local, ``ncc_window`` voxels) or ``"mse"`` (noise ``image_sigma``).
        levels: downsampling factors, coarsest first; iterations: Adam steps at most, per level (None: 4 and 2
            with :data:`DEFAULT_ITERATIONS` in 3D, where the full-resolution field comes from the half-resolution
            momentum, plus a full-resolution level in 2D: :func:`~._momentum.default_schedule`; docs).
        learning_rate: Adam's step, in the units of ``spacing``.
        num_steps: scaling-and-squaring steps.
        tolerance: a level stops when ten steps lower the energy by less than this fraction of it.
        map_factor: the momentum and maps live on a grid this many times coarser than each level's
            images (>= 1; Mermaid's ``map_low_res_factor`` is its inverse); fields are upsampled.
        spacing: voxel size per axis of the full grid (None: voxel units).
        initial_momentum: optional starting ``m`` ``(B, D, *S')`` (any grid; resized).
        inverse: also return ``"inverse_ddf"`` (``exp(-v) - id``).
        callback: ``callback(level, iteration, energy)`` after each step; progress: a progress bar.

    Returns:
        dict with ``"ddf"`` (fixed to moving, voxels), ``"inverse_ddf"`` (with ``inverse``), ``"velocity"``
        (voxels), ``"momentum"`` (physical units), ``"warped"``, ``"energy"`` (last level) and
        ``"history"`` (per step: ``level``, ``iteration``, ``loss``, ``image``, ``prior``).
    """
    caller = "vsvf_register"
    check_pair(fixed, moving, caller)
    kernel, factors, counts = _check_settings(caller, sigmas=sigmas, weights=weights,
                                              regularization_weight=regularization_weight, image_loss=image_loss,
                                              levels=levels, iterations=iterations, learning_rate=learning_rate,
                                              num_steps=num_steps, tolerance=tolerance,
                                              map_factor=map_factor, ndim=fixed.ndim - 2)
    return register_momentum(fixed, moving, partial(vsvf_fields, num_steps=num_steps), caller=caller, kernel=kernel,
                             factors=factors, counts=counts, learning_rate=learning_rate, tolerance=tolerance,
                             map_factor=map_factor, spacing=spacing, initial_momentum=initial_momentum, inverse=inverse,
                             callback=callback, progress=progress, regularization_weight=regularization_weight, image_loss=image_loss,
                             ncc_window=ncc_window, image_sigma=image_sigma)


class VSVFRegistration(EngineSettings):
    """Settings holder for :func:`vsvf_register`: ``VSVFRegistration(regularization_weight=0.02)(fixed, moving)``.

    Args:
        **settings: any keyword of :func:`vsvf_register` except ``initial_momentum``, ``inverse`` and ``callback``.
    """

    engine = staticmethod(vsvf_register)
    per_call = ("initial_momentum", "callback", "inverse")

    def __init__(self, **settings: object) -> None:
        super().__init__(**settings)
        checked = ("sigmas", "weights", "regularization_weight", "image_loss", "levels", "iterations", "learning_rate",
                   "num_steps", "tolerance", "map_factor")
        _check_settings(type(self).__name__, **{k: self.settings[k] for k in checked})  # bad values before any work

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor, inverse: bool = True,
                 callback: ProgressReporter | None = None) -> dict:
        """Register ``moving`` to ``fixed``; see :func:`vsvf_register`."""
        return vsvf_register(fixed, moving, inverse=inverse, callback=callback, **self.settings)
