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
are computed on the full grid from the final momentum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..engines._optim_common import (EngineSettings, ProgressReporter, check_pair, check_schedule, downsample,
                                     level_grid, progress_reporter)
from ..engines.similarity import image_dissimilarity
from ..functional import integrate_velocity, resize_image, warp
from ..losses.similarity import similarity_subset
from ..validation import check_integer, check_positive
from .kernels import apply_kernel, check_kernel, kernel_energy, kernel_multiplier

__all__ = ["momentum_to_velocity", "vsvf_energy", "vsvf_register", "VSVFRegistration", "VSVF_IMAGE_LOSSES"]

#: The image terms :func:`vsvf_register` offers (a subset of the similarity registry).
VSVF_IMAGE_LOSSES = similarity_subset(("ncc", "mse"), "vsvf_register")
DEFAULT_SIGMAS = (2.0, 4.0, 8.0, 16.0)
DEFAULT_REGULARIZATION_WEIGHT = 0.001  # chosen on validation cases (docs)
DEFAULT_LEARNING_RATE = 0.3


def momentum_to_velocity(momentum: torch.Tensor, multiplier: torch.Tensor, spacing: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``v = K * m`` in physical units and the same field in voxels of the grid, both ``(B, D, *S)``."""
    velocity = apply_kernel(momentum, multiplier)
    steps = torch.tensor(spacing, dtype=velocity.dtype, device=velocity.device).view(1, -1, *([1] * (velocity.ndim - 2)))
    return velocity, velocity / steps


def vsvf_energy(momentum: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, multiplier: torch.Tensor,
                spacing: Sequence[float], *, regularization_weight: float, image_loss: str = "ncc", num_steps: int = 7,
                ncc_window: int = 9, image_sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """The energy of the module docstring at ``momentum`` ``(B, D, *S)`` (physical units) on one grid.

    Returns:
        ``"total"``, ``"image"``, ``"prior"`` (scalars: batch means) and ``"ddf"`` ``(B, D, *S)`` in voxels.
    """
    velocity, velocity_voxels = momentum_to_velocity(momentum, multiplier, spacing)
    ddf = integrate_velocity(velocity_voxels, num_steps)
    image = image_dissimilarity(warp(moving, ddf), fixed, image_loss, ncc_window=ncc_window, image_sigma=image_sigma)
    prior = kernel_energy(momentum, velocity).mean()
    return {"total": image + regularization_weight * prior, "image": image, "prior": prior, "ddf": ddf}


def _check_settings(caller: str, *, sigmas, weights, regularization_weight, image_loss, levels, iterations,
                    learning_rate, num_steps, tolerance) -> tuple[tuple[float, ...], torch.Tensor, tuple[float, ...], tuple[int, ...]]:
    """Validate :func:`vsvf_register`'s settings; return the kernel's widths and weights and the schedule."""
    widths, w = check_kernel(sigmas, weights, caller)
    check_positive(regularization_weight, "regularization_weight", caller, allow_zero=True)
    if image_loss not in VSVF_IMAGE_LOSSES:
        raise ValueError(f"{caller}(): 'image_loss' must be one of {list(VSVF_IMAGE_LOSSES)}, got {image_loss!r}")
    factors, counts = check_schedule(levels, iterations, caller)
    check_positive(learning_rate, "learning_rate", caller)
    check_integer(num_steps, "num_steps", caller, minimum=0)
    check_positive(tolerance, "tolerance", caller, allow_zero=True)
    return widths, w, factors, counts


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
    levels: Sequence[float] = (4, 2),
    iterations: Sequence[int] = (60, 30),
    learning_rate: float = DEFAULT_LEARNING_RATE,
    num_steps: int = 7,
    tolerance: float = 1e-4,
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
        levels: downsampling factors, coarsest first (the default stops at half resolution: the full-resolution
            field comes from the half-resolution momentum; docs); iterations: Adam steps at most, per level.
        learning_rate: Adam's step, in the units of ``spacing``.
        num_steps: scaling-and-squaring steps.
        tolerance: a level stops when ten steps lower the energy by less than this fraction of it.
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
    ndim = check_pair(fixed, moving, caller)
    widths, w, factors, counts = _check_settings(caller, sigmas=sigmas, weights=weights,
                                                 regularization_weight=regularization_weight, image_loss=image_loss,
                                                 levels=levels, iterations=iterations, learning_rate=learning_rate,
                                                 num_steps=num_steps, tolerance=tolerance)
    fixed32, moving32 = fixed.float(), moving.float()
    shape = tuple(fixed.shape[2:])
    if initial_momentum is not None and (initial_momentum.ndim != ndim + 2
                                         or initial_momentum.shape[:2] != (fixed.shape[0], ndim)):
        raise ValueError(f"{caller}(): 'initial_momentum' must have shape ({fixed.shape[0]}, {ndim}, *spatial), "
                         f"got {tuple(initial_momentum.shape)}")
    momentum = (torch.zeros(fixed.shape[0], ndim, *shape, device=fixed.device) if initial_momentum is None
                else initial_momentum.detach().float().to(fixed.device))
    settings = dict(regularization_weight=regularization_weight, image_loss=image_loss, num_steps=num_steps,
                    ncc_window=ncc_window, image_sigma=image_sigma)

    history, energy = [], None
    with progress_reporter(sum(counts), caller, progress, callback) as report:
        for level, (factor, count) in enumerate(zip(factors, counts)):
            grid, grid_spacing = level_grid(shape, factor, spacing)
            multiplier = kernel_multiplier(grid, widths, w, grid_spacing, device=fixed.device)
            images = (downsample(fixed32, grid), downsample(moving32, grid))
            m = resize_image(momentum, size=grid).detach().requires_grad_(True)
            optimizer = torch.optim.Adam([m], lr=learning_rate)
            losses: list[float] = []
            for iteration in range(count):
                optimizer.zero_grad(set_to_none=True)
                out = vsvf_energy(m, *images, multiplier, grid_spacing, **settings)
                out["total"].backward()
                optimizer.step()
                losses.append(float(out["total"].detach()))
                history.append({"level": level, "iteration": iteration, "loss": losses[-1],
                                "image": float(out["image"].detach()), "prior": float(out["prior"].detach())})
                report(level, iteration, losses[-1])
                if len(losses) > 10 and losses[-11] - losses[-1] < tolerance * abs(losses[-11]):
                    break
            momentum = m.detach()
            energy = losses[-1] if losses else energy

    with torch.no_grad():
        full_spacing = level_grid(shape, 1, spacing)[1]
        momentum = resize_image(momentum, size=shape)
        multiplier = kernel_multiplier(shape, widths, w, full_spacing, device=fixed.device)
        _, velocity = momentum_to_velocity(momentum, multiplier, full_spacing)
        ddf = integrate_velocity(velocity, num_steps)
        out = {"ddf": ddf, "velocity": velocity, "momentum": momentum, "warped": warp(moving32, ddf),
               "energy": energy, "history": history}
        if inverse:
            out["inverse_ddf"] = integrate_velocity(-velocity, num_steps)
    return out


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
                   "num_steps", "tolerance")
        _check_settings(type(self).__name__, **{k: self.settings[k] for k in checked})  # bad values before any work

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor, inverse: bool = True,
                 callback: ProgressReporter | None = None) -> dict:
        """Register ``moving`` to ``fixed``; see :func:`vsvf_register`."""
        return vsvf_register(fixed, moving, inverse=inverse, callback=callback, **self.settings)
