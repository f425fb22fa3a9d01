"""FLASH registration: geodesic shooting of a band-limited initial velocity (Zhang & Fletcher 2015/2019).

The energy (eq. 3 of Wang & Zhang, with the SSD distance of their likelihood, eq. 4) is

    E(v_0) = 1 / (2 sigma^2) sum_x (S o phi_1^-1 - T)^2 + 1/2 <L v_0, v_0>

with ``S`` the moving (source) image, ``T`` the fixed (target) image, ``phi_1^-1`` from
:func:`~.shooting.shoot`, and ``<L v, v> = prod(N) sum_k L(k) |v(k)|^2``: by Parseval the voxel
*sum* of ``v . L v``, as the likelihood is a voxel sum, so ``alpha`` and ``sigma`` mean what they
mean in a spatial-domain LDDMM on this grid (velocities in voxels per unit time with ``spacing`` 1).
The paper does not say how it normalises the inner product; with this choice its ``sigma = 0.03``
and ``alpha`` of a few units give smooth registrations of [0, 1] images (the bundle docs).

The gradient is taken by automatic differentiation through the shooting: the exact gradient of
the discretised energy (the paper's adjoint Jacobi fields are its continuous-time counterpart).
FLASH descends along the Sobolev (V-) gradient ``K grad E / prod(N) = v_0 + K grad(image term) / prod(N)``;
here that metric starts L-BFGS's recursion (:mod:`.lbfgs`; ``memory=0`` is the Sobolev descent itself), with a
step that halves until the energy decreases enough.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from ..engines._optim_common import (EngineSettings, ProgressReporter, check_pair, check_schedule, downsample,
                                     level_grid, progress_reporter)
from ..functional import warp
from ..metrics.jacobian import folding_percentage
from ..validation import check_integer, check_positive
from .fourier import band_to_spatial, resize_band
from .lbfgs import CurvatureMemory, lbfgs_step
from .shooting import BandOperators, band_operators, shoot, shoot_maps

__all__ = ["band_to_ddf", "prior_energy", "flash_energy", "flash_register", "FLASHRegistration", "MapFoldingWarning",
           "MAP_FOLDING_WARNING_PERCENT", "ESTIMATION_SETTINGS"]

#: chosen on validation cases among 0.3, 1, 3, 6, 10 (monai_diffreg/lddmm/README.md)
DEFAULT_ALPHA = 10.0
DEFAULT_SIGMA = 0.03
#: ``alpha="map"`` warns when its field folds on more than this share of voxels (%, det J <= 0; issue 18's bound)
MAP_FOLDING_WARNING_PERCENT = 0.01


class MapFoldingWarning(UserWarning):
    """``FLASHRegistration(alpha="map")`` gave a field that folds (the evidence preferred a prior too weak for the
    band-limited map)."""


def band_to_ddf(displacement: torch.Tensor, operators: BandOperators) -> torch.Tensor:
    """Full-resolution displacement field in voxels ``(B, D, *shape)`` from band coefficients (physical units)."""
    scale = torch.tensor([1.0 / h for h in operators.spacing], device=displacement.device,
                         dtype=displacement.real.dtype)  # applied to the band: the same, on far fewer values
    return band_to_spatial(displacement * scale.view(1, -1, *([1] * len(operators.shape))), operators.shape)


def prior_energy(initial_velocity: torch.Tensor, operators: BandOperators) -> torch.Tensor:
    """``1/2 <L v_0, v_0> = prod(N) / 2 sum_k L(k) |v_0(k)|^2`` per batch item ``(B,)`` (module docstring)."""
    squared = initial_velocity.real ** 2 + initial_velocity.imag ** 2
    return 0.5 * operators.num_voxels * (operators.regularization * squared).flatten(1).sum(1)


def flash_energy(initial_velocity: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, operators: BandOperators, *,
                 sigma: float = DEFAULT_SIGMA, num_steps: int = 10, integrator: str = "rk4") -> dict[str, torch.Tensor]:
    """The FLASH energy of ``v_0`` for a pair (module docstring), per batch item.

    Args:
        initial_velocity: ``(B, D, *band)`` complex band coefficients.
        fixed, moving: ``(B, C, *shape)`` images on the operators' grid.
        operators: :func:`~.shooting.band_operators` of the grid.
        sigma: image noise standard deviation (intensity units).

    Returns:
        dict of ``"total"``, ``"image"``, ``"prior"`` ``(B,)``, ``"ddf"`` (``phi_1^-1 - id`` in voxels) and ``"warped"``.
    """
    _, inverse_map = shoot(initial_velocity, operators, num_steps, integrator)
    ddf = band_to_ddf(inverse_map, operators)
    warped = warp(moving, ddf.to(moving.dtype), displacement_gradient="symmetric")
    image = (warped - fixed).pow(2).flatten(1).sum(1) / (2 * sigma ** 2)
    prior = prior_energy(initial_velocity, operators)
    return {"total": image + prior, "image": image, "prior": prior, "ddf": ddf, "warped": warped}


def flash_register(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    alpha: float = DEFAULT_ALPHA,
    sigma: float = DEFAULT_SIGMA,
    truncation: int | Sequence[int] = 15,
    num_steps: int = 10,
    integrator: str = "rk4",
    levels: Sequence[float] = (2, 1),
    iterations: Sequence[int] = (100, 15),
    memory: int = 10,
    tolerance: float = 1e-5,
    spacing: Sequence[float] | None = None,
    initial_velocity: torch.Tensor | None = None,
    inverse: bool = True,
    callback: ProgressReporter | None = None,
    progress: bool = False,
) -> dict:
    """Register ``moving`` to ``fixed`` (same grid) by FLASH: minimise the energy over ``v_0`` at a given ``alpha``.

    Coarse to fine: at each level the images are area-downsampled and the operators built with the
    level's voxel size (physical units), so the band coefficients carry over unchanged and every level
    minimises (a lower-resolution version of) the same energy; the maps are evaluated exactly on the
    full grid at the end (band-limited fields need no resizing).

    Args:
        fixed, moving: ``(B, C, *shape)`` images, 2D or 3D, intensities of order 1 (e.g. in [0, 1]).
        alpha: regularisation parameter of ``L = (alpha A + 1)^3`` (> 0; larger is smoother;
            :class:`FLASHRegistration` also takes ``"map"``: estimated for the pair).
        sigma: noise standard deviation of the SSD likelihood (> 0; the paper uses 0.03 on [0, 1] images).
        truncation: band frequencies per axis (odd; 16 becomes 15).
        num_steps, integrator: time discretisation of the shooting (10 steps, ``"rk4"`` or ``"euler"``).
        levels: downsampling factors, coarsest first (``(1,)``: full resolution only, as the paper).
        iterations: steps at most, per level.
        memory: curvature pairs of the L-BFGS steps (:mod:`.lbfgs`; 0: steepest descent in the Sobolev metric),
            per level.
        tolerance: a level stops when two successive steps each lower the energy by less than this fraction (one
            such L-BFGS step can be a short one on the way).
        spacing: voxel size per axis of the full grid (None: voxel units).
        initial_velocity: optional starting ``v_0`` ``(B, D, *band)`` complex (any band; resized).
        inverse: also compute the forward map (``"inverse_ddf"``).
        callback: ``callback(level, iteration, energy)`` after each accepted step.
        progress: show a progress bar.

    Returns:
        dict with ``"ddf"`` (``phi_1^-1 - id``, fixed to moving, voxels), ``"inverse_ddf"`` (``phi_1 - id``,
        with ``inverse``), ``"warped"``, ``"initial_velocity"`` (band coefficients), ``"energy"`` ``(B,)``
        (of the last level) and ``"history"`` (per accepted step: ``level``, ``iteration``, ``loss``, ``image``,
        ``prior``, ``step``: the fraction of the L-BFGS step taken).
    """
    caller = "flash_register"
    ndim = check_pair(fixed, moving, caller)
    alpha = check_positive(alpha, "alpha", caller)
    sigma = check_positive(sigma, "sigma", caller)
    factors, counts = check_schedule(levels, iterations, caller)
    check_integer(memory, "memory", caller)
    check_positive(tolerance, "tolerance", caller, allow_zero=True)
    fixed32, moving32 = fixed.float(), moving.float()
    shape = tuple(fixed.shape[2:])
    full = band_operators(shape, alpha, truncation, spacing=spacing, device=fixed.device)
    if initial_velocity is None:
        velocity = torch.zeros(fixed.shape[0], ndim, *full.band, dtype=torch.complex64, device=fixed.device)
    else:
        if initial_velocity.ndim != ndim + 2 or initial_velocity.shape[:2] != (fixed.shape[0], ndim) \
                or not initial_velocity.is_complex():
            raise ValueError(f"{caller}(): 'initial_velocity' must be complex band coefficients of shape "
                             f"({fixed.shape[0]}, {ndim}, *band), got {tuple(initial_velocity.shape)} {initial_velocity.dtype}")
        velocity = initial_velocity.detach().to(device=fixed.device, dtype=torch.complex64)

    history = []
    with progress_reporter(sum(counts), caller, progress, callback) as report:
        for level, (factor, count) in enumerate(zip(factors, counts)):
            grid, grid_spacing = level_grid(shape, factor, spacing)
            ops = band_operators(grid, alpha, truncation, spacing=grid_spacing, device=fixed.device)
            images = (downsample(fixed32, grid), downsample(moving32, grid))

            def evaluate(v: torch.Tensor, ops=ops, images=images) -> dict:
                v = v.detach().requires_grad_(True)
                out = flash_energy(v, *images, ops, sigma=sigma, num_steps=num_steps, integrator=integrator)
                out["velocity"], out["loss"] = v, out["total"].sum()
                return out

            current, pairs, small_steps = evaluate(resize_band(velocity, ops.band)), CurvatureMemory(memory), 0
            for iteration in range(count):
                energy = float(current["loss"].detach())
                trial, step = lbfgs_step(current, evaluate, ops.kernel / ops.num_voxels, pairs)
                if trial is None:
                    break
                current = trial
                value = float(current["loss"].detach())
                history.append({"level": level, "iteration": iteration, "loss": value,
                                "image": float(current["image"].detach().sum()),
                                "prior": float(current["prior"].detach().sum()), "step": step})
                report(level, iteration, value)
                small_steps = small_steps + 1 if (energy - value) / max(abs(energy), 1e-12) < tolerance else 0
                if small_steps == 2:
                    break
            velocity = current["velocity"].detach()
            energy_last = current["total"].detach()

    velocity = resize_band(velocity, full.band)
    with torch.no_grad():
        inverse_map, forward_map = shoot_maps(velocity, full, num_steps, integrator, forward=inverse)
        ddf = band_to_ddf(inverse_map, full)
        out = {"ddf": ddf, "warped": warp(moving32, ddf), "initial_velocity": velocity,
               "energy": energy_last, "history": history}
        if inverse:
            out["inverse_ddf"] = band_to_ddf(forward_map, full)
    return out


#: keywords of ``estimate_regularization`` that ``FLASHRegistration(alpha="map", estimation={...})`` passes on (the
#: others come from the holder's own settings)
ESTIMATION_SETTINGS = ("alpha", "max_alpha_change", "min_alpha_change", "min_converged", "warmup", "model",
                       "estimate_scale", "prior_scale")


class FLASHRegistration(EngineSettings):
    """Settings holder for :func:`flash_register`: ``FLASHRegistration(alpha=6.0)(fixed, moving)``.

    ``alpha="map"`` first estimates ``alpha`` for the pair (:func:`~.regularization.estimate_regularization`
    on the coarsest level's grid, with this holder's ``sigma``, ``truncation``, ``num_steps``, ``integrator``
    and ``tolerance``, and the sum of its ``iterations``; the prior precision ``tau`` estimated with it: on real
    images the paper's ``tau = 1`` sends ``alpha`` to its bound), then registers at that ``alpha`` and the
    effective noise ``sigma sqrt(tau)`` (the same energy) from the estimate's ``v_0``; the output's ``"summary"``
    holds ``alpha``, ``prior_scale``, ``effective_sigma`` and ``folding_percent`` (the method contract copies it into
    ``summary.json``). On brains that prior is weak enough for the band-limited map to fold (9-11 % of the voxels
    of the validation case niivue_mni, lddmm docs): above :data:`MAP_FOLDING_WARNING_PERCENT` it warns with
    :class:`MapFoldingWarning`. ``estimation`` passes the estimate's own settings (e.g. ``{"estimate_scale": False,
    "prior_scale": 1.0}``: the paper's model with ``tau`` fixed; ``{"alpha": 10}``: the starting ``alpha``).

    Args:
        estimation: with ``alpha="map"``, keywords of :func:`~.regularization.estimate_regularization` that this
            holder does not set itself (:data:`ESTIMATION_SETTINGS`); ``estimate_scale`` defaults to True here.
        **settings: any keyword of :func:`flash_register` except ``initial_velocity``, ``inverse`` and ``callback``.
    """

    engine = staticmethod(flash_register)
    per_call = ("initial_velocity", "callback", "inverse")

    def __init__(self, estimation: dict | None = None, **settings: object) -> None:
        super().__init__(**settings)
        name = type(self).__name__
        if self.settings["alpha"] != "map":
            check_positive(self.settings["alpha"], "alpha", name)
        if estimation is not None and not isinstance(estimation, dict):
            raise TypeError(f"{name}(): 'estimation' must be a dict of estimate settings, got {type(estimation).__name__}")
        self.estimation = dict(estimation or {})
        if self.estimation and self.settings["alpha"] != "map":
            raise ValueError(f"{name}(): 'estimation' applies to alpha='map' only, got alpha={self.settings['alpha']!r}")
        unknown = sorted(set(self.estimation) - set(ESTIMATION_SETTINGS))
        if unknown:
            raise TypeError(f"{name}(): unknown 'estimation' setting(s) {unknown}; allowed: {list(ESTIMATION_SETTINGS)}")

    def __repr__(self) -> str:
        extra = f", estimation={self.estimation!r}" if self.estimation else ""
        return super().__repr__()[:-1] + extra + ")"

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor, inverse: bool = True,
                 callback: ProgressReporter | None = None) -> dict:
        """Register ``moving`` to ``fixed``; see :func:`flash_register`."""
        settings = dict(self.settings)
        if settings["alpha"] != "map":
            out = flash_register(fixed, moving, inverse=inverse, callback=callback, **settings)
            out["summary"] = {"alpha": float(settings["alpha"]), "alpha_source": "given"}
            return out
        from .regularization import estimate_regularization

        check_schedule(settings["levels"], settings["iterations"], type(self).__name__)
        grid, grid_spacing = level_grid(fixed.shape[2:], settings["levels"][0], settings["spacing"])
        shared = {k: settings[k] for k in ("sigma", "truncation", "num_steps", "integrator", "memory", "progress", "tolerance")}
        estimate = estimate_regularization(downsample(fixed.float(), grid), downsample(moving.float(), grid),
                                           spacing=grid_spacing, iterations=sum(settings["iterations"]),
                                           **{"estimate_scale": True, **self.estimation}, **shared)
        settings["alpha"], settings["sigma"] = estimate["alpha"], estimate["sigma"]
        out = flash_register(fixed, moving, inverse=inverse, callback=callback,
                             initial_velocity=estimate["initial_velocity"], **settings)
        folding = float(folding_percentage(out["ddf"]).max())
        out["summary"] = {"alpha": estimate["alpha"], "alpha_source": "map", "prior_scale": estimate["scale"],
                          "effective_sigma": estimate["sigma"], "folding_percent": folding,
                          "alpha_estimation_iterations": len(estimate["history"]),
                          "alpha_estimation_curvature": estimate["curvature"]}
        if folding > MAP_FOLDING_WARNING_PERCENT:
            warnings.warn(f"FLASH alpha='map': the field folds on {folding:.2f} % of voxels (det J <= 0) at the "
                          f"estimated alpha {estimate['alpha']:.3g} and effective sigma {estimate['sigma']:.2g}: the "
                          f"evidence preferred a prior too weak for the band-limited map; a fixed alpha (default "
                          f"alpha={DEFAULT_ALPHA:g}, sigma={DEFAULT_SIGMA:g}) keeps it smooth", MapFoldingWarning, stacklevel=2)
        return out
