"""RDMM: region-specific diffeomorphic metric mapping (Shen, Vialard, Niethammer, NeurIPS 2019; Mermaid's
``lddmm_adapt_smoother_map`` with ``w_K_w`` weighting).

LDDMM shooting (:mod:`.lddmm`) whose multi-Gaussian kernel varies in space and moves with the flow. With
``N`` Gaussians ``G_{sigma_i}`` (:mod:`.kernels`) and weights ``w_i(x, t)`` the velocity of the momentum
``m`` is::

    v = K_w m = sum_i w_i G_{sigma_i} * (w_i m),       sum_i w_i(x, 0)^2 = 1

a symmetric positive operator: where the weights are constant it is the kernel ``sum_i w_i^2 G_{sigma_i}``,
so ``w_i^2`` are the local kernel weights (the global ``weights`` of vSVF and LDDMM, voxel by voxel).
The weights are advected with the flow, ``w_i(x, t) = w_i(phi_t^-1(x), 0)``, i.e. ``dw/dt = -(Dw) v``, and
start as the normalised Gaussian smoothing of non-negative pre-weights ``h`` (width ``weight_sigma``)::

    w(x, 0) = (G * |h|)(x) / |(G * |h|)(x)|     (norm over the N Gaussians)

The geodesic equations (the Hamiltonian ``H = 1/2 <m, K_w m>`` with ``w`` advected) are EPDiff plus a
force from the weights' gradients, and the transport of ``w``::

    dm/dt = -( (Dv)^T m + div(m (x) v) ) + sum_i (m . G_{sigma_i} * (w_i m)) grad w_i
    dw/dt = -(Dw) v

with :mod:`.lddmm`'s periodic central differences for every derivative. ``H`` (``<m_t, v_t>``) is
conserved exactly by this semi-discrete system (the extra force's work cancels the change of the
metric under transport), so its drift measures the time integrator's error only. ``(m, w)`` are
integrated jointly (RK4 by default, :func:`~monai_diffreg.lddmm.shooting.integrate_geodesic`); the maps
``phi_1^-1`` and ``phi_1`` follow the characteristics of the velocities at the time steps, as LDDMM's
(:func:`~.lddmm.semi_lagrangian_maps`). :func:`shoot` can also transport ``phi_t^-1 = id + u`` in Eulerian
form (``du/dt = -v - (Du) v``) jointly with ``(m, w)``; the registration does not use it.

The energy minimised over ``m_0`` and (unless the weights are given and fixed) ``h``::

    E = image_term(moving o phi_1^-1, fixed) + regularization_weight * <m_0, K_w(0) m_0>
        + omt_weight * mean_x OMT(w(x, 0)^2) + range_weight * mean_x |w(x, 0) - sqrt(weights)|^2

with :func:`~.kernels.omt_penalty` per voxel on the local kernel weights (0 with all weight on the
widest Gaussian) and a range term keeping the weights near the global ones (Mermaid's weight-range
loss). The loop is vSVF's and LDDMM's (:func:`~._momentum.optimise_momentum`), the pre-weights
being a second parameter tensor with their own Adam step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import NamedTuple

import torch

from ..engines._optim_common import EngineSettings, ProgressReporter, check_pair, level_grid
from ..functional import resize_image
from ..lddmm.shooting import integrate_geodesic
from ..validation import check_positive
from ._momentum import MomentumModel, image_energy, optimise_momentum, to_voxels
from .kernels import apply_kernel, gaussian_multiplier, gaussian_multipliers, kernel_energy, omt_penalty
from .lddmm import _check_settings as _check_lddmm_settings
from .lddmm import (DEFAULT_NUM_STEPS, DEFAULT_REGULARIZATION_WEIGHT, advection, central_difference, epdiff_force,
                    semi_lagrangian_maps)
from .vsvf import DEFAULT_LEARNING_RATE, DEFAULT_SIGMAS

__all__ = ["RDMMOperators", "rdmm_operators", "pre_weights", "smooth_weights", "rdmm_velocity", "rdmm_rates", "shoot",
           "rdmm_fields", "weight_penalties", "rdmm_energy", "weights_from_labels", "rdmm_register", "RDMMRegistration"]

DEFAULT_WEIGHT_SIGMA = 8.0  # mm; provisional, like the penalties' weights and the pre-weights' step (docs)
DEFAULT_OMT_WEIGHT = 0.01
DEFAULT_RANGE_WEIGHT = 0.1
DEFAULT_WEIGHTS_LEARNING_RATE = 0.02
#: :func:`rdmm_velocity` transforms the N weighted momenta together up to this many elements (64 MB in float32: a
#: 2 mm brain grid), one at a time above (a schedule whose last level is a 1 mm brain's full grid: 1.2 GB less at
#: the peak)
BATCHED_KERNELS_LIMIT = 2**24
#: Adam steps per level of the default pyramid (4 mm, 2 mm; :func:`~._momentum.default_schedule`): LDDMM's
#: (60, 30) cost more than ANTsPy SyN's time on 2 threads (docs)
DEFAULT_ITERATIONS = (60, 25)


class RDMMOperators(NamedTuple):
    """The Fourier multipliers of RDMM on a grid (:func:`rdmm_operators`).

    Attributes:
        multipliers: ``(N, *F)``, one per Gaussian of the kernel.
        smoothing: ``(*F)``, the pre-weights' Gaussian ``G`` (width ``weight_sigma``).
    """

    multipliers: torch.Tensor
    smoothing: torch.Tensor


def rdmm_operators(shape: Sequence[int], sigmas: Sequence[float], weight_sigma: float,
                   spacing: Sequence[float] | None = None, *, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> RDMMOperators:
    """:class:`RDMMOperators` of a grid (:func:`~.kernels.gaussian_multiplier`; widths in the units of ``spacing``)."""
    return RDMMOperators(gaussian_multipliers(shape, sigmas, spacing, device=device, dtype=dtype),
                         gaussian_multiplier(shape, weight_sigma, spacing, device=device, dtype=dtype))


def pre_weights(kernel_weights: torch.Tensor) -> torch.Tensor:
    """Pre-weights ``h = sqrt(omega / sum_i omega_i)`` of local kernel weights ``omega`` ``(B, N, *S)`` (>= 0)."""
    return (kernel_weights / kernel_weights.sum(1, keepdim=True)).sqrt()


def smooth_weights(pre: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """``w(x, 0) = G * |h| / |G * |h||`` ``(B, N, *S)`` of pre-weights ``h`` (module docstring): ``sum_i w_i^2 = 1``."""
    smoothed = apply_kernel(pre.abs(), smoothing)
    return smoothed / smoothed.square().sum(1, keepdim=True).sqrt()


def rdmm_velocity(momentum: torch.Tensor, weights: torch.Tensor, multipliers: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``v = sum_i w_i G_i * (w_i m)`` ``(B, D, *S)`` and the terms ``G_i * (w_i m)`` ``(B, N, D, *S)``.

    Args:
        momentum: ``m`` ``(B, D, *S)``; weights: ``w`` ``(B, N, *S)``; multipliers: ``(N, *F)`` (:class:`RDMMOperators`).
    """
    if weights.shape[1] * momentum.numel() <= BATCHED_KERNELS_LIMIT:  # one transform for all N: fewer, larger ops
        smoothed = apply_kernel(weights[:, :, None] * momentum[:, None], multipliers[:, None], ndim=momentum.ndim - 2)
    else:  # one Gaussian at a time: N spectra at once would cost memory on a large grid
        smoothed = torch.stack([apply_kernel(weights[:, i:i + 1] * momentum, multiplier)
                                for i, multiplier in enumerate(multipliers)], dim=1)
    return (weights[:, :, None] * smoothed).sum(1), smoothed


def rdmm_rates(momentum: torch.Tensor, weights: torch.Tensor, displacement: torch.Tensor | None,
               multipliers: torch.Tensor, spacing: Sequence[float], *,
               velocity_terms: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Time derivatives of ``m``, ``w`` and ``u = phi_t^-1 - id`` (module docstring; ``u`` None: not integrated).

    Args:
        momentum: ``(B, D, *S)``; weights: ``(B, N, *S)``; displacement: ``(B, D, *S)`` or None; ``m`` and ``u``
            in the units of ``spacing``.
        multipliers: the Gaussians' ``(N, *F)``.
        velocity_terms: :func:`rdmm_velocity` of ``(m, w)`` when the caller has it (else computed).

    Returns:
        ``(dm/dt, dw/dt, du/dt)`` (``du/dt`` None when ``displacement`` is None).
    """
    velocity, smoothed = rdmm_velocity(momentum, weights, multipliers) if velocity_terms is None else velocity_terms
    work = (momentum[:, None] * smoothed).sum(2)  # (B, N, *S): m . G_i * (w_i m), the derivative of H in w_i
    gradients = [central_difference(weights, a, spacing) for a in range(momentum.shape[1])]  # d_a w, each (B, N, *S)
    force = torch.stack([(gradient * work).sum(1) for gradient in gradients], 1)
    momentum_rate = epdiff_force(momentum, velocity, spacing) + force
    weights_rate = -advection(weights, velocity, spacing, gradients)
    if displacement is None:
        return momentum_rate, weights_rate, None
    return momentum_rate, weights_rate, -velocity - advection(displacement, velocity, spacing)


def shoot(momentum: torch.Tensor, weights: torch.Tensor, multipliers: torch.Tensor, spacing: Sequence[float],
          num_steps: int = 10, integrator: str = "rk4", *, with_map: bool = True, return_path: bool = False):
    """Integrate ``(m, w)`` (and ``u``, from 0) from ``(m_0, w_0)`` over ``t in [0, 1]`` (:func:`rdmm_rates`).

    Returns:
        ``(m_1, w_1, u_1)`` (``u_1`` None without ``with_map``), plus, when ``return_path``, the nodes
        ``[(m_0, w_0, v_0), ..., (m_1, w_1, v_1)]`` with their velocities (units of ``spacing``; those the
        integrator evaluated at the nodes are reused, not recomputed).
    """
    d = momentum.shape[1]
    evaluated = []  # (state, velocity) of every state the rates were evaluated at, with return_path

    def rates(state: torch.Tensor, displacement: torch.Tensor | None):
        m, w = state[:, :d], state[:, d:]
        terms = rdmm_velocity(m, w, multipliers)
        if return_path:
            evaluated.append((state, terms[0]))
        dm, dw, du = rdmm_rates(m, w, displacement, multipliers, spacing, velocity_terms=terms)
        return torch.cat([dm, dw], dim=1), du

    out = integrate_geodesic(rates, torch.cat([momentum, weights], dim=1), num_steps, integrator, with_map=with_map,
                             return_path=return_path, initial_map=torch.zeros_like(momentum), caller="shoot")
    final = (out[0][:, :d], out[0][:, d:], out[1])
    if not return_path:
        return final
    known = {id(state): velocity for state, velocity in evaluated}  # ids of live objects: `evaluated` holds them
    nodes = [(x[:, :d], x[:, d:], known[id(x)] if id(x) in known else rdmm_velocity(x[:, :d], x[:, d:], multipliers)[0])
             for x in out[2]]
    return (*final, nodes)


def _geodesic_fields(momentum: torch.Tensor, weights: torch.Tensor, multipliers: torch.Tensor, spacing: Sequence[float],
                     inverse: bool, num_steps: int, integrator: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """:func:`rdmm_fields`'s fields and ``v_0`` in the units of ``spacing`` (the prior's)."""
    *_, path = shoot(momentum, weights, multipliers, spacing, num_steps, integrator, with_map=False, return_path=True)
    velocities = [to_voxels(v, spacing) for _, _, v in path]
    inverse_map, forward_map = semi_lagrangian_maps(velocities, forward=inverse)
    out = {"ddf": inverse_map, "initial_velocity": velocities[0]}
    if inverse:
        out["inverse_ddf"] = forward_map
    return out, path[0][2]


def rdmm_fields(momentum: torch.Tensor, weights: torch.Tensor, multipliers: torch.Tensor, spacing: Sequence[float],
                inverse: bool, *, num_steps: int = 10, integrator: str = "rk4") -> dict[str, torch.Tensor]:
    """The fields of the geodesic from ``(m_0, w_0)`` (units of ``spacing``), in voxels: ``"ddf"`` ``phi_1^-1 - id``,
    ``"initial_velocity"`` ``v_0`` and, with ``inverse``, ``"inverse_ddf"`` ``phi_1 - id``.

    ``(m, w)`` are shot (:func:`shoot`); the maps follow the characteristics of the velocities at the time steps
    (:func:`~.lddmm.semi_lagrangian_maps`), as LDDMM's.
    """
    return _geodesic_fields(momentum, weights, multipliers, spacing, inverse, num_steps, integrator)[0]


def weight_penalties(weights: torch.Tensor, sigmas: Sequence[float], reference: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean_x OMT(w^2), mean_x |w - reference|^2)`` per batch item ``(B,)`` of weights ``(B, N, *S)``.

    ``reference``: ``(N,)``, the square roots of the global kernel weights. The OMT term needs two distinct
    widths (:func:`~.kernels.omt_penalty`); with one, it is 0.
    """
    distance = (weights - reference.to(weights).view(1, -1, *([1] * (weights.ndim - 2)))).square().sum(1).flatten(1).mean(1)
    if min(sigmas) == max(sigmas):
        return torch.zeros_like(distance), distance
    return omt_penalty(weights.square().movedim(1, -1), sigmas).flatten(1).mean(1), distance


def rdmm_energy(momentum: torch.Tensor, pre: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor,
                operators: RDMMOperators, spacing: Sequence[float], *, sigmas: Sequence[float], reference: torch.Tensor,
                regularization_weight: float, omt_weight: float = DEFAULT_OMT_WEIGHT,
                range_weight: float = DEFAULT_RANGE_WEIGHT, image_loss: str = "ncc", num_steps: int = 10,
                integrator: str = "rk4", ncc_window: int = 9, image_sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """The energy of the module docstring at ``m_0`` ``(B, D, *S')`` and pre-weights ``h`` ``(B, N, *S')``.

    ``operators`` and ``spacing`` belong to the grid ``S'``; the images ``(B, C, *S)`` may be finer.
    ``reference``: ``(N,)`` square roots of the global kernel weights (the range term's centre).

    Returns:
        ``"total"``, ``"image"``, ``"prior"`` (``<m_0, K_w m_0>``), ``"omt"``, ``"range"`` (scalars: batch means,
        unweighted) and ``"ddf"`` ``(B, D, *S)`` in voxels of ``S``.
    """
    weights = smooth_weights(pre, operators.smoothing)
    fields, velocity = _geodesic_fields(momentum, weights, operators.multipliers, spacing, False, num_steps, integrator)
    ddf, image = image_energy(fields["ddf"], fixed, moving, image_loss=image_loss, ncc_window=ncc_window,
                              image_sigma=image_sigma)
    prior = kernel_energy(momentum, velocity).mean()
    omt, distance = (term.mean() for term in weight_penalties(weights, sigmas, reference))
    total = image + regularization_weight * prior + omt_weight * omt + range_weight * distance
    return {"total": total, "image": image, "prior": prior, "omt": omt, "range": distance, "ddf": ddf}


def _weight_vector(value: object, n: int, name: str) -> torch.Tensor:
    vector = torch.as_tensor(value, dtype=torch.float64) if not isinstance(value, torch.Tensor) else value.double()
    if vector.shape != (n,) or not bool(torch.isfinite(vector).all()) or bool((vector < 0).any()) \
            or abs(float(vector.sum()) - 1.0) > 1e-6:
        raise ValueError(f"weights_from_labels(): '{name}' must give {n} numbers >= 0 summing to 1 (one per sigma), "
                         f"got {value!r}")
    return vector


def weights_from_labels(labels: torch.Tensor, label_weights: Mapping[int, Sequence[float]],
                        default_weights: Sequence[float]) -> torch.Tensor:
    """Local kernel weights ``(B, N, *S)`` from a label map ``(B, 1, *S)``: ``label_weights[l]`` where the label
    is ``l``, ``default_weights`` elsewhere (each ``N`` numbers >= 0 summing to 1, one per sigma).

    For :func:`rdmm_register`'s ``initial_weights`` (which smooths them, ``weight_sigma``): e.g. a stiffer
    structure with more weight on the widest Gaussian inside it.
    """
    if labels.ndim < 3 or labels.shape[1] != 1 or (labels.is_floating_point()
                                                   and not bool((labels == labels.round()).all())):
        raise ValueError(f"weights_from_labels(): 'labels' must be a (B, 1, *spatial) label map of integers, "
                         f"got shape {tuple(labels.shape)}")
    view = (1, -1, *([1] * (labels.ndim - 2)))
    n = len(default_weights)
    out = _weight_vector(default_weights, n, "default_weights").to(labels.device).view(view)
    out = out.expand(labels.shape[0], -1, *labels.shape[2:])
    for label, value in label_weights.items():
        out = torch.where(labels == label, _weight_vector(value, n, f"label_weights[{label!r}]").to(out).view(view), out)
    return out.float()


def _check_settings(caller: str, *, weight_sigma, omt_weight, range_weight, optimize_weights, weights_learning_rate,
                    **lddmm) -> tuple:
    """Validate :func:`rdmm_register`'s settings; return the kernel and schedule (:func:`~.lddmm._check_settings`)."""
    checked = _check_lddmm_settings(caller, **lddmm)
    check_positive(weight_sigma, "weight_sigma", caller)
    check_positive(omt_weight, "omt_weight", caller, allow_zero=True)
    check_positive(range_weight, "range_weight", caller, allow_zero=True)
    if not isinstance(optimize_weights, bool):
        raise ValueError(f"{caller}(): 'optimize_weights' must be True or False, got {optimize_weights!r}")
    check_positive(weights_learning_rate, "weights_learning_rate", caller)
    return checked


def rdmm_register(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    weights: Sequence[float] | None = None,
    initial_weights: torch.Tensor | None = None,
    optimize_weights: bool = True,
    weight_sigma: float = DEFAULT_WEIGHT_SIGMA,
    omt_weight: float = DEFAULT_OMT_WEIGHT,
    range_weight: float = DEFAULT_RANGE_WEIGHT,
    weights_learning_rate: float = DEFAULT_WEIGHTS_LEARNING_RATE,
    regularization_weight: float = DEFAULT_REGULARIZATION_WEIGHT,
    image_loss: str = "ncc",
    ncc_window: int = 9,
    image_sigma: float = 1.0,
    levels: Sequence[float] | None = None,
    iterations: Sequence[int] | None = None,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    num_steps: int = DEFAULT_NUM_STEPS,
    integrator: str = "rk4",
    tolerance: float = 1e-4,
    map_factor: float = 2.0,
    spacing: Sequence[float] | None = None,
    initial_momentum: torch.Tensor | None = None,
    inverse: bool = True,
    callback: ProgressReporter | None = None,
    progress: bool = False,
) -> dict:
    """Register ``moving`` to ``fixed`` (same grid) by RDMM (module docstring), coarse to fine.

    Two variants: the **optimised** regulariser (default), the pre-weights optimised with ``m_0`` from
    ``initial_weights`` (default: the global ``weights`` everywhere); the **pre-defined** one
    (``optimize_weights=False`` with ``initial_weights``, e.g. :func:`weights_from_labels`), only ``m_0``
    optimised. LDDMM's defaults (:func:`~.lddmm.lddmm_register`, chosen on validation cases for LDDMM, which
    RDMM is with constant weights) but 25 steps instead of 30 on the finer level (chosen on validation cases to
    fit ANTsPy SyN's time, docs), and provisional settings of the weights, until chosen for RDMM.

    Args:
        fixed, moving: ``(B, C, *S)`` images, 2D or 3D, intensities of order 1 (e.g. in [0, 1]).
        sigmas: the Gaussians' widths in the units of ``spacing``; weights: the global kernel weights
            (>= 0, sum 1; None: equal), the weights' start without ``initial_weights`` and the range term's centre.
        initial_weights: local kernel weights ``(B, N, *S'')`` (any grid; >= 0 with a positive sum at every
            voxel; normalised), the pre-weights' start (``h = sqrt(omega)``).
        optimize_weights: optimise the pre-weights with ``m_0`` (False: keep them).
        weight_sigma: width of the pre-weights' smoothing ``G`` in the units of ``spacing``.
        omt_weight, range_weight: weights of the OMT and range terms (>= 0).
        weights_learning_rate: Adam's step on the pre-weights (with ``optimize_weights``).
        regularization_weight: weight of ``<m_0, K_w m_0>`` (>= 0; larger is smoother).
        image_loss: ``"ncc"`` (local, ``ncc_window`` voxels) or ``"mse"`` (noise ``image_sigma``).
        levels, iterations, learning_rate, num_steps, integrator, tolerance, map_factor, spacing, initial_momentum,
            callback, progress: as :func:`~.lddmm.lddmm_register`'s.
        inverse: also return ``"inverse_ddf"`` (``phi_1 - id``, along the same path's characteristics).

    Returns:
        dict with ``"ddf"`` (``phi_1^-1 - id``, fixed to moving, voxels), ``"inverse_ddf"`` (with ``inverse``),
        ``"initial_velocity"`` (``v_0``, voxels), ``"momentum"`` (``m_0``, physical units), ``"pre_weights"`` (``h``,
        map grid), ``"weights"`` (the local kernel weights ``w(x, 0)^2`` ``(B, N, *S)``), ``"warped"``, ``"energy"``
        (last level) and ``"history"`` (per step: ``level``, ``iteration``, ``loss``, ``image``, ``prior``, ``omt``,
        ``range``).
    """
    caller = "rdmm_register"
    check_pair(fixed, moving, caller)
    kernel, factors, counts = _check_settings(
        caller, sigmas=sigmas, weights=weights, regularization_weight=regularization_weight, image_loss=image_loss,
        levels=levels, iterations=iterations, learning_rate=learning_rate, num_steps=num_steps, integrator=integrator,
        tolerance=tolerance, map_factor=map_factor, weight_sigma=weight_sigma, omt_weight=omt_weight,
        range_weight=range_weight, optimize_weights=optimize_weights, weights_learning_rate=weights_learning_rate,
        default_steps=DEFAULT_ITERATIONS, ndim=fixed.ndim - 2)
    widths, global_weights = kernel
    batch, ndim = fixed.shape[0], fixed.ndim - 2
    if initial_weights is None:
        initial_weights = global_weights.float().view(1, -1, *([1] * ndim)).expand(batch, -1, *fixed.shape[2:])
    elif (initial_weights.ndim != ndim + 2 or initial_weights.shape[:2] != (batch, len(widths))
          or not bool(torch.isfinite(initial_weights).all()) or bool((initial_weights < 0).any())
          or not bool((initial_weights.sum(1) > 0).all())):
        raise ValueError(f"{caller}(): 'initial_weights' must be a ({batch}, {len(widths)}, *spatial) tensor of weights "
                         f">= 0 with a positive sum at every voxel, got shape {tuple(initial_weights.shape)}")
    reference = global_weights.sqrt().float().to(fixed.device)
    steps = {"num_steps": num_steps, "integrator": integrator}
    model = MomentumModel(
        operators=lambda grid, grid_spacing, device: rdmm_operators(grid, widths, weight_sigma, grid_spacing,
                                                                    device=device),
        energy=partial(rdmm_energy, sigmas=widths, reference=reference, regularization_weight=regularization_weight,
                       omt_weight=omt_weight, range_weight=range_weight, image_loss=image_loss, ncc_window=ncc_window,
                       image_sigma=image_sigma, **steps),
        fields=lambda m, pre, ops, grid_spacing, inv: rdmm_fields(m, smooth_weights(pre, ops.smoothing), ops.multipliers,
                                                                  grid_spacing, inv, **steps))
    out = optimise_momentum(fixed, moving, model, caller=caller, factors=factors, counts=counts,
                            learning_rate=learning_rate, tolerance=tolerance, map_factor=map_factor, spacing=spacing,
                            initial_momentum=initial_momentum, inverse=inverse, callback=callback, progress=progress,
                            extra=pre_weights(initial_weights.float()),
                            extra_learning_rate=weights_learning_rate if optimize_weights else 0.0)
    out["pre_weights"] = out.pop("extra")
    map_grid, map_spacing = level_grid(fixed.shape[2:], factors[-1] * map_factor, spacing)  # the fields' grid
    smoothing = model.operators(map_grid, map_spacing, fixed.device).smoothing
    out["weights"] = resize_image(smooth_weights(out["pre_weights"], smoothing).square(), size=fixed.shape[2:])
    return out


class RDMMRegistration(EngineSettings):
    """Settings holder for :func:`rdmm_register`: ``RDMMRegistration(omt_weight=0.1)(fixed, moving)``.

    Args:
        **settings: any keyword of :func:`rdmm_register` except ``initial_momentum``, ``initial_weights``,
            ``inverse`` and ``callback`` (per call; the method contract passes images only, so through
            ``register()`` the weights start from the global ones).
    """

    engine = staticmethod(rdmm_register)
    per_call = ("initial_momentum", "initial_weights", "callback", "inverse")

    def __init__(self, **settings: object) -> None:
        super().__init__(**settings)
        checked = ("sigmas", "weights", "regularization_weight", "image_loss", "levels", "iterations", "learning_rate",
                   "num_steps", "integrator", "tolerance", "map_factor", "weight_sigma", "omt_weight", "range_weight",
                   "optimize_weights", "weights_learning_rate")
        _check_settings(type(self).__name__, **{k: self.settings[k] for k in checked})  # bad values before any work

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor, inverse: bool = True,
                 callback: ProgressReporter | None = None, initial_weights: torch.Tensor | None = None) -> dict:
        """Register ``moving`` to ``fixed``; see :func:`rdmm_register`."""
        return rdmm_register(fixed, moving, inverse=inverse, callback=callback, initial_weights=initial_weights,
                             **self.settings)
