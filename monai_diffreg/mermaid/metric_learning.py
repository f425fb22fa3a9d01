"""Metric learning, global variant: the weights of vSVF's multi-Gaussian kernel learned over a population.

Niethammer, Kwitt, Vialard, "Metric learning for image registration" (CVPR 2019). The kernel is
``K_w = sum_i w_i G_{sigma_i}`` (:mod:`.kernels`) with weights ``w`` on the simplex shared by ``P`` pairs,
and the energy minimised jointly over ``w`` and each pair's momentum ``m_p`` is::

    E(w, m_1..m_P) = (1/P) sum_p [image_term(moving_p o exp(K_w m_p), fixed_p) + regularization_weight <m_p, K_w m_p>]
                     + omt_weight * OMT(w)

(the bracket is vSVF's energy, :func:`~._momentum.momentum_energy` with :func:`~.vsvf.vsvf_fields`;
``OMT`` is :func:`~.kernels.omt_penalty`). Without ``OMT`` the prior alone always prefers the narrowest
Gaussian (its multiplier is the largest at every frequency); ``OMT`` charges weight away from the widest
one, so a population keeps wide kernels unless its deformations need narrow ones.

``w = softmax(logits)``: strictly positive, summing to one, smooth in the logits (Mermaid instead clamps
its global weights and renormalises them after each step, a projection); Adam updates the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from ..engines._optim_common import ProgressReporter, check_pair, downsample, level_grid, progress_reporter
from ..validation import check_integer, check_positive
from ._momentum import MOMENTUM_IMAGE_LOSSES, momentum_energy
from .kernels import _spacing, check_kernel, kernel_multiplier, omt_penalty
from .vsvf import DEFAULT_LEARNING_RATE, DEFAULT_REGULARIZATION_WEIGHT, DEFAULT_SIGMAS, vsvf_fields

__all__ = ["population_energy", "learn_global_weights"]

DEFAULT_OMT_WEIGHT = 0.01  # not tuned on real data yet


def population_energy(logits: torch.Tensor, momentum: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor,
                      spacing: Sequence[float], *, sigmas: Sequence[float], regularization_weight: float,
                      omt_weight: float, omt_power: float = 1.0, image_loss: str = "ncc", num_steps: int = 7,
                      ncc_window: int = 9, image_sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """The energy of the module docstring for ``P`` pairs stacked on the batch axis.

    Args:
        logits: ``(N,)``, one per sigma; ``w = softmax(logits)``.
        momentum: ``(P, D, *S)`` momenta in the units of ``spacing``.
        fixed, moving: ``(P, C, *S)`` images.
        spacing: voxel size of the grid ``S`` per axis.

    Returns:
        scalars ``"total"``, ``"image"``, ``"prior"`` (means over the pairs), ``"omt"`` and ``"weights"`` ``(N,)``.
    """
    weights = torch.softmax(logits, dim=0)
    multiplier = kernel_multiplier(tuple(momentum.shape[2:]), sigmas, weights, spacing, device=momentum.device,
                                   dtype=momentum.dtype)
    out = momentum_energy(partial(vsvf_fields, num_steps=num_steps), momentum, fixed, moving, multiplier, spacing,
                          regularization_weight=regularization_weight, image_loss=image_loss, ncc_window=ncc_window,
                          image_sigma=image_sigma)
    omt = omt_penalty(weights, sigmas, omt_power)
    return {"total": out["total"] + omt_weight * omt, "image": out["image"], "prior": out["prior"], "omt": omt,
            "weights": weights}


def _stack_pairs(pairs: object, caller: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``(fixed, moving)`` pairs ``(1, C, *S)`` on one grid and stack them to ``(P, C, *S)`` each."""
    if not isinstance(pairs, Sequence) or len(pairs) == 0 or not all(
            isinstance(p, Sequence) and len(p) == 2 for p in pairs):
        got = f"{type(pairs).__name__} of {len(pairs)} items" if isinstance(pairs, Sequence) else type(pairs).__name__
        raise ValueError(f"{caller}(): 'pairs' must be a non-empty sequence of (fixed, moving) tensors, got {got}")
    for index, (fixed, moving) in enumerate(pairs):
        check_pair(fixed, moving, f"{caller}[pair {index}]")
        if fixed.shape[0] != 1:
            raise ValueError(f"{caller}(): pair {index} must hold (1, C, *S) tensors (one pair each), "
                             f"got {tuple(fixed.shape)}")
        if fixed.shape != pairs[0][0].shape:
            raise ValueError(f"{caller}(): pair {index} must have the shape of pair 0 {tuple(pairs[0][0].shape)} "
                             f"(one grid for the population), got {tuple(fixed.shape)}")
    return torch.cat([f.float() for f, _ in pairs]), torch.cat([m.float() for _, m in pairs])


def learn_global_weights(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    initial_weights: Sequence[float] | None = None,
    regularization_weight: float = DEFAULT_REGULARIZATION_WEIGHT,
    omt_weight: float = DEFAULT_OMT_WEIGHT,
    omt_power: float = 1.0,
    image_loss: str = "ncc",
    ncc_window: int = 9,
    image_sigma: float = 1.0,
    iterations: int = 100,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    weights_learning_rate: float = 0.05,
    num_steps: int = 7,
    level: float = 1.0,
    spacing: Sequence[float] | None = None,
    callback: ProgressReporter | None = None,
    progress: bool = False,
) -> dict:
    """Learn the kernel weights shared by a population of pairs, jointly with each pair's momentum (module docstring).

    Args:
        pairs: ``(fixed, moving)`` tensors ``(1, C, *S)``, 2D or 3D, all on the same grid.
        sigmas: Gaussian widths in the units of ``spacing`` (at least two distinct ones).
        initial_weights: starting weights (> 0, sum 1; None: equal).
        regularization_weight: weight of ``<m, K m>`` (>= 0); omt_weight: weight of the OMT penalty (>= 0);
            omt_power: its ``r`` (> 0).
        image_loss, ncc_window, image_sigma, num_steps: vSVF's image term and integration
            (:func:`~.vsvf.vsvf_register`).
        iterations: joint Adam steps; learning_rate: the momenta's step (units of ``spacing``);
            weights_learning_rate: the logits' step.
        level: downsampling factor (>= 1) of the grid everything runs on (images area-downsampled).
        spacing: voxel size per axis of the full grid (None: voxel units).
        callback: ``callback(0, iteration, energy)`` after each step; progress: a progress bar.

    Returns:
        dict with ``"weights"`` ``(N,)`` (float64, on the simplex; pass to ``vsvf_register(weights=...)``),
        ``"momenta"`` (one ``(1, D, *S')`` per pair, on the level's grid) and ``"history"`` (per step, before it:
        ``loss``, ``image``, ``prior``, ``omt`` and ``weights`` ``(N,)``).
    """
    caller = "learn_global_weights"
    fixed, moving = _stack_pairs(pairs, caller)
    widths, start = check_kernel(sigmas, initial_weights, caller, "initial_weights")
    if bool((start <= 0).any()):
        raise ValueError(f"{caller}(): 'initial_weights' must all be > 0 (the weights are a softmax), "
                         f"got {initial_weights!r}")
    if max(widths) == min(widths):
        raise ValueError(f"{caller}(): 'sigmas' must hold at least two distinct widths, got {sigmas!r}")
    check_positive(regularization_weight, "regularization_weight", caller, allow_zero=True)
    check_positive(omt_weight, "omt_weight", caller, allow_zero=True)
    check_positive(omt_power, "omt_power", caller)
    if image_loss not in MOMENTUM_IMAGE_LOSSES:
        raise ValueError(f"{caller}(): 'image_loss' must be one of {list(MOMENTUM_IMAGE_LOSSES)}, got {image_loss!r}")
    check_integer(iterations, "iterations", caller)
    check_positive(learning_rate, "learning_rate", caller)
    check_positive(weights_learning_rate, "weights_learning_rate", caller)
    if check_positive(level, "level", caller) < 1:
        raise ValueError(f"{caller}(): 'level' must be a downsampling factor >= 1, got {level!r}")
    check_integer(num_steps, "num_steps", caller)

    shape = tuple(fixed.shape[2:])
    grid, grid_spacing = level_grid(shape, float(level), _spacing(spacing, len(shape), caller))
    fixed, moving = downsample(fixed, grid), downsample(moving, grid)
    momentum = torch.zeros(fixed.shape[0], len(shape), *grid, device=fixed.device, requires_grad=True)
    logits = torch.log(start.detach()).float().to(fixed.device).requires_grad_(True)
    optimizer = torch.optim.Adam([{"params": [momentum], "lr": learning_rate},
                                  {"params": [logits], "lr": weights_learning_rate}])
    settings = dict(sigmas=widths, regularization_weight=regularization_weight, omt_weight=omt_weight,
                    omt_power=omt_power, image_loss=image_loss, num_steps=num_steps, ncc_window=ncc_window,
                    image_sigma=image_sigma)
    history = []
    with progress_reporter(iterations, caller, progress, callback) as report:
        for iteration in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            out = population_energy(logits, momentum, fixed, moving, grid_spacing, **settings)
            out["total"].backward()
            optimizer.step()
            history.append({"loss": float(out["total"].detach()),
                            **{key: float(out[key].detach()) for key in ("image", "prior", "omt")},
                            "weights": out["weights"].detach().double().cpu()})
            report(0, iteration, history[-1]["loss"])
    weights = torch.softmax(logits.detach().double(), dim=0).cpu()
    return {"weights": weights, "momenta": list(momentum.detach().split(1)), "history": history}
