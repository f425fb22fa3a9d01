"""MAP estimation of FLASH's regularisation parameter ``alpha`` (Wang & Zhang, sec. 3.1, Algorithm 1).

The prior on the band-limited initial velocity is the Gaussian ``p(v_0 | alpha) ∝ |L|^(1/2)
exp(-1/2 <L v_0, v_0>)`` with ``L = (alpha A + 1)^3`` (``<., .>`` as in :mod:`.flash`), the likelihood
i.i.d. Gaussian with noise ``sigma``. The negative log posterior (eq. 6, up to constants in ``alpha``
and ``v_0``) is

    f(v_0, alpha) = E(v_0; alpha) - 1/2 ln|L|,    ln|L| = 3 sum_{c, k} ln(alpha A(k) + 1)

where the sum runs over the ``D`` vector components and the band frequencies (one term per real
degree of freedom; the paper's formula drops the logarithm, a typo), and its ``alpha`` derivative
(eq. 7, whose exponent 5 is a typo for 2) is

    df/dalpha = 3/2 [ prod(N) sum_{c, k} (alpha A + 1)^2 A |v_0|^2 - sum_{c, k} A / (alpha A + 1) ]

Algorithm 1 alternates an ``alpha`` step and a ``v_0`` step until the relative change of ``f``
has stayed below ``u`` on ``q_min`` iterations. The ``v_0`` step is an L-BFGS step started from the Sobolev
metric (:mod:`.lbfgs`; the paper's gradient step is ``memory=0``): the image term dominates once the prior's
scale is estimated, and the Sobolev steps then crawl. Its curvature pairs are kept across ``alpha`` steps (the
newest is always of the current objective; pairs that no longer give a descent direction are dropped). Further
changes, all tested:

* **The evidence instead of the joint MAP** (``model="laplace"``, default). The joint posterior of
  eq. (6) is unbounded below: ``alpha -> inf`` with ``v_0 -> 0`` sends ``-1/2 ln|L|`` to ``-inf`` at
  a finite image term, and on pairs whose deformation is small (e.g. bull's-eye pairs drawn from the
  prior) the paper's iteration runs there. The Laplace approximation of the marginal likelihood
  ``p(T | alpha)`` adds ``1/2 ln|H|`` (``H = prod(N) L + G``, ``G`` the Gauss-Newton curvature of the
  image term in the band, :func:`data_curvature`), which cancels the log-determinant of the modes the
  data do not determine. Its ``alpha`` derivative is eq. (7) with each mode's log-determinant term
  weighted by ``g_k / (g_k + prod(N) L(k))``, where ``g_k = 1 / (H^-1)_kk - prod(N) L(k)`` is the mode's
  effective data precision (:func:`effective_precision`; MacKay's effective number of parameters).
  ``model="joint"`` keeps the paper's objective.
* **The alpha step** moves ``log alpha`` towards the minimiser for the current ``v_0``
  (:func:`best_alpha`, a 1D root of the monotone derivative, with ``g_k`` of the current ``alpha``), by
  at most ``max_alpha_change``, instead of a fixed gradient step on ``alpha`` (whose scale depends on the
  number of voxels). At a fixed point the root is that of the exact evidence derivative.

* **The prior's scale** (``estimate_scale=True``; the method contract's ``alpha="map"`` uses it). With
  ``L = (alpha A + 1)^3`` every mode's prior variance is at most ``1 / prod(N)``: a prior sample moves a
  100 x 100 image by a third of a voxel, and on brains, whose deformations are millimetres, the estimate
  can only lower ``alpha`` to its bound. A prior precision ``tau`` (prior ``tau L``, ``ln|tau L| = M ln tau
  + ln|L|``, ``M`` the real degrees of freedom) is estimated with ``alpha`` by MacKay's update
  ``tau = gamma / <L v_0, v_0>`` (:func:`best_scale`; ``gamma`` the sum of :func:`determined_share`, the
  number of modes the data determine; ``M`` for the joint MAP). The ``v_0`` step at ``(alpha, tau)``
  minimises FLASH's energy at ``alpha`` with the noise ``sigma sqrt(tau)``, which is what the registration
  at the estimate uses. ``alpha`` shapes the spectrum and ``tau`` scales it.

``G`` is dense: ``G[(c, k), (c', k')] = P_cc'^(k - k') / sigma^2``, the DFT of the products of the warped
image's derivatives ``P_cc' = sum_channels d_c W d_c' W`` (first order in the displacement). Up to
:data:`DENSE_CURVATURE_LIMIT` band modes (the default 2D band has 450) it is built and inverted exactly;
above (the default 3D band has 10125) only its diagonal ``P_cc^(0) / sigma^2`` is used
(:func:`data_precision`), which spreads the information of edges over every mode and overstates the
effective number of parameters: on the 2D bull's-eye pairs the diagonal gave about twice the true
``alpha``, the full matrix recovers it (``docs``: the experiment and its plot).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from ..engines._optim_common import ProgressReporter, check_pair, progress_reporter
from ..functional import spatial_gradient, warp
from ..validation import check_choice, check_flag, check_integer, check_positive
from .flash import DEFAULT_SIGMA, band_to_ddf, flash_energy
from .lbfgs import CurvatureMemory, lbfgs_step
from .shooting import BandOperators, band_operators, shoot_maps

#: ``"laplace"``: evidence (Laplace approximation, default); ``"joint"``: the paper's joint MAP
ESTIMATION_MODELS = ("laplace", "joint")

#: Band modes (components x frequencies) up to which the evidence uses the full curvature matrix (module docstring):
#: its inverse takes about a second at this size
DENSE_CURVATURE_LIMIT = 2048

#: ``log alpha`` stays in ``log [1e-3, 1e3]``: the joint MAP is unbounded as ``alpha -> inf, v_0 -> 0`` (module docstring)
LOG_ALPHA_RANGE = (math.log(1e-3), math.log(1e3))

#: ``log tau`` (the estimated prior precision) stays in ``log [1e-9, 1e9]``
LOG_SCALE_RANGE = (math.log(1e-9), math.log(1e9))

__all__ = ["log_determinant", "alpha_gradient", "data_precision", "data_curvature", "effective_precision", "best_alpha",
           "determined_share", "best_scale", "DENSE_CURVATURE_LIMIT", "ESTIMATION_MODELS", "LOG_ALPHA_RANGE",
           "LOG_SCALE_RANGE", "sample_initial_velocity", "estimate_regularization"]


def log_determinant(alpha: float | torch.Tensor, operators: BandOperators, num_components: int, power: int = 3) -> torch.Tensor:
    """``ln|L| = power * num_components * sum_k ln(alpha A(k) + 1)`` over the band."""
    return power * num_components * torch.log(alpha * operators.laplacian + 1).sum()


def alpha_gradient(alpha: float, initial_velocity: torch.Tensor, operators: BandOperators,
                   data_precision: torch.Tensor | None = None, power: int = 3, scale: float = 1.0) -> float:
    """``d f / d alpha`` at ``(v_0, alpha)`` (module docstring; the image term does not depend on ``alpha``).

    Args:
        alpha: the current ``alpha``; ``operators`` are those of the grid (any ``alpha``: only ``A`` is used).
        initial_velocity: ``(1, D, *band)`` complex band coefficients.
        data_precision: None for the paper's joint MAP; or the data precision of each band mode ``g``,
            ``(D, *band)`` (:func:`effective_precision`) or ``(D,)`` for every frequency of a component
            (:func:`data_precision`): each mode's log-determinant term is then weighted by
            ``g / (g + tau prod(N) L(k))``, the share of it the data determine (:func:`determined_share`; the
            Laplace approximation of the evidence, module docstring).
        scale: the prior precision ``tau`` (the prior operator is ``tau L``; 1 in the paper's model).
    """
    a = operators.laplacian
    squared = (initial_velocity.real ** 2 + initial_velocity.imag ** 2).sum(dim=0)       # (D, *band)
    quadratic = scale * operators.num_voxels * ((alpha * a + 1) ** (power - 1) * a * squared).sum()
    trace_terms = (a / (alpha * a + 1)).expand_as(squared)
    if data_precision is not None:
        trace_terms = trace_terms * determined_share(alpha, operators, data_precision, power, scale)
    return float(0.5 * power * (quadratic - trace_terms.sum()))


def determined_share(alpha: float, operators: BandOperators, data_precision: torch.Tensor, power: int = 3,
                     scale: float = 1.0) -> torch.Tensor:
    """``g / (g + tau prod(N) L(k))`` ``(D, *band)``: the share of each band mode the data determine (MacKay's
    effective number of parameters is its sum); ``data_precision`` ``g`` as in :func:`alpha_gradient`."""
    a = operators.laplacian
    prior = scale * operators.num_voxels * (alpha * a + 1) ** power
    g = data_precision.to(a.dtype)
    g = g.view(-1, *([1] * a.ndim)) if g.ndim == 1 else g
    return (g / (g + prior)).expand(g.shape[0], *a.shape)


def best_scale(alpha: float, initial_velocity: torch.Tensor, operators: BandOperators,
               data_precision: torch.Tensor | None = None, power: int = 3, scale: float = 1.0) -> float:
    """MacKay's update of the prior precision ``tau = gamma / <L v_0, v_0>``, ``gamma`` the number of band modes the
    data determine at the current ``tau`` (:func:`determined_share` summed; every real degree of freedom,
    ``D prod(band)``, for the joint MAP: ``data_precision`` None): where the evidence is stationary in ``tau`` for
    that ``gamma``. Kept in :data:`LOG_SCALE_RANGE`."""
    a = operators.laplacian
    squared = (initial_velocity.real ** 2 + initial_velocity.imag ** 2).sum(dim=0)       # (D, *band)
    quadratic = float(operators.num_voxels * ((alpha * a + 1) ** power * squared).sum())
    gamma = float(squared.numel()) if data_precision is None else \
        float(determined_share(alpha, operators, data_precision, power, scale).sum())
    low, high = LOG_SCALE_RANGE
    if gamma <= 0 or quadratic <= 0:
        return math.exp(high if quadratic <= 0 else low)
    return math.exp(min(high, max(low, math.log(gamma / quadratic))))


def data_precision(warped: torch.Tensor, sigma: float) -> torch.Tensor:
    """``g_i = sum_x (d_i warped)^2 / sigma^2`` ``(D,)``: the diagonal of :func:`data_curvature`, the same for every
    frequency of velocity component ``i`` (to first order in the displacement), from the warped moving image
    ``(1, C, *shape)`` (central differences, summed over channels); the evidence's curvature above
    :data:`DENSE_CURVATURE_LIMIT` modes."""
    grads = spatial_gradient(warped.double())  # (B, C, D, *shape)
    return grads.pow(2).sum(dim=(0, 1)).flatten(1).sum(1) / sigma ** 2


def data_curvature(warped: torch.Tensor, sigma: float, band: Sequence[int]) -> torch.Tensor:
    """The Gauss-Newton matrix ``G`` of the image term in the band basis (module docstring), complex Hermitian
    ``(D * K, D * K)`` with ``K = prod(band)``, rows ordered by component then centred frequency (C order),
    from the warped moving image ``(1, C, *shape)``."""
    shape = tuple(warped.shape[2:])
    ndim = len(shape)
    grads = spatial_gradient(warped.double())[0]                                  # (C, D, *shape)
    products = torch.einsum("ci...,cj...->ij...", grads, grads)                    # (D, D, *shape)
    spectrum = torch.fft.fftn(products, dim=tuple(range(2, 2 + ndim)))             # unnormalised DFT
    frequencies = torch.cartesian_prod(*(torch.arange(t, device=warped.device) - t // 2 for t in band))
    frequencies = frequencies.view(-1, ndim)                                       # (K, D)
    difference = frequencies[:, None] - frequencies[None]                          # (K, K, D): k - k'
    blocks = spectrum[(slice(None), slice(None)) + tuple(difference[..., d] % n for d, n in enumerate(shape))]
    size = ndim * frequencies.shape[0]
    return blocks.permute(0, 2, 1, 3).reshape(size, size) / sigma ** 2


def effective_precision(curvature: torch.Tensor, alpha: float, operators: BandOperators, power: int = 3,
                        scale: float = 1.0) -> torch.Tensor:
    """The data precision of each band mode at ``alpha``, ``(D, *band)``: ``g_k = 1 / (H^-1)_kk - tau prod(N) L(k)``
    with ``H = tau prod(N) L + G`` (``G`` from :func:`data_curvature`; ``operators`` of the grid, any ``alpha``;
    ``tau`` the prior precision ``scale``).
    ``G`` diagonal gives its diagonal back; with couplings it is the precision a mode has once the others are
    fitted too."""
    a = operators.laplacian
    ndim = curvature.shape[0] // a.numel()
    prior = (scale * operators.num_voxels * (alpha * a.double() + 1) ** power).reshape(-1).repeat(ndim)
    factor = torch.linalg.cholesky(curvature + torch.diag(prior).to(curvature.dtype))
    inverse_diagonal = torch.cholesky_inverse(factor).diagonal().real
    return (1 / inverse_diagonal - prior).clamp_min(0).view(ndim, *a.shape)


def best_alpha(initial_velocity: torch.Tensor, operators: BandOperators, data_precision: torch.Tensor | None = None,
               power: int = 3, scale: float = 1.0) -> float:
    """The ``alpha`` that minimises ``f`` for a fixed ``v_0``: the root of :func:`alpha_gradient` (monotone in
    ``alpha``, the prior precision ``scale`` fixed), by bisection on ``log alpha`` in [1e-3, 1e3] (a bound when there
    is no root inside)."""
    def gradient(log_alpha: float) -> float:
        return alpha_gradient(math.exp(log_alpha), initial_velocity, operators, data_precision, power, scale)

    low, high = LOG_ALPHA_RANGE
    if gradient(high) < 0:
        return math.exp(high)
    if gradient(low) > 0:
        return math.exp(low)
    for _ in range(50):
        mid = 0.5 * (low + high)
        if gradient(mid) > 0:
            high = mid
        else:
            low = mid
    return math.exp(0.5 * (low + high))


def sample_initial_velocity(shape: Sequence[int], alpha: float, truncation: int | Sequence[int] = 15, *,
                            num_samples: int = 1, generator: torch.Generator | None = None,
                            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Draw ``v_0`` from the prior ``N(0, (prod(N) L)^-1)`` of the band-limited velocities (Hermitian, a real field).

    The FFT (orthonormal) of white noise on the ``T_1 x ... x T_D`` grid has Hermitian coefficients of
    unit variance; each is divided by ``sqrt(prod(N) L(k))``.

    Returns:
        ``(num_samples, D, *band)`` complex band coefficients on the grid ``shape``.
    """
    ops = band_operators(shape, alpha, truncation, dtype=dtype)
    dims = tuple(range(2, 2 + len(shape)))
    noise = torch.randn(num_samples, len(shape), *ops.band, generator=generator, dtype=dtype)
    coefficients = torch.fft.fftshift(torch.fft.fftn(noise, dim=dims, norm="ortho"), dim=dims)
    return coefficients / torch.sqrt(ops.num_voxels * ops.regularization)


def estimate_regularization(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    alpha: float = 3.0,
    sigma: float = DEFAULT_SIGMA,
    truncation: int | Sequence[int] = 15,
    num_steps: int = 10,
    integrator: str = "rk4",
    iterations: int = 300,
    memory: int = 10,
    max_alpha_change: float = 0.5,
    min_alpha_change: float = 1e-3,
    tolerance: float = 1e-6,
    min_converged: int = 30,
    warmup: int = 50,
    model: str = "laplace",
    estimate_scale: bool = False,
    prior_scale: float = 1.0,
    spacing: Sequence[float] | None = None,
    callback: ProgressReporter | None = None,
    progress: bool = False,
) -> dict:
    """MAP estimate of ``alpha`` and ``v_0`` for one pair (Algorithm 1 of Wang & Zhang).

    Args:
        fixed, moving: ``(1, C, *shape)`` images on the same grid, intensities in about [0, 1].
        alpha: starting ``alpha`` (> 0).
        sigma: likelihood noise standard deviation (fixed, as in the paper: 0.03).
        truncation, num_steps, integrator, spacing: as :func:`~.flash.flash_register`.
        iterations: at most this many alternations (the paper's ``r``).
        memory: curvature pairs of the ``v_0`` steps' L-BFGS (:mod:`.lbfgs`; 0: the paper's Sobolev gradient steps).
        max_alpha_change: bound on ``|Δ log alpha|`` (and ``|Δ log tau|``) per iteration (the ``alpha`` step
            moves towards :func:`best_alpha` of the current ``v_0``).
        min_alpha_change: ``alpha`` (and ``tau``) stays where it is while its target is closer than this in log
            (1e-3: 0.1 %), and the ``v_0`` step goes on from the last evaluation instead of shooting again.
        tolerance: ``u``: an iteration whose relative objective change is below it counts as converged.
        min_converged: ``q_min``: stop after this many converged iterations.
        warmup: at most this many ``v_0`` steps at the starting ``alpha`` before ``alpha`` moves (from ``v_0 = 0``
            the ``alpha`` gradient alone would only grow ``alpha``); at most half of ``iterations``. The warm-up
            ends sooner once ``v_0`` has converged at that ``alpha``: two successive iterations' relative changes
            below ``tolerance``, or no descent left.
        model: ``"laplace"`` (default): the ``alpha`` gradient of the Laplace-approximated evidence, which
            counts a mode's log-determinant only as far as the data determine it; ``"joint"``: the
            paper's joint MAP of eq. (6)-(7), unbounded as ``alpha -> inf`` (module docstring).
        estimate_scale: also estimate the prior precision ``tau`` (prior ``tau L``; module docstring), by
            MacKay's update (:func:`best_scale`) before each ``alpha`` step; False: ``tau`` stays ``prior_scale``.
        prior_scale: ``tau`` (> 0), fixed or (``estimate_scale``) the start: 1 is the paper's model with this
            package's voxel-sum ``<L v, v>``; ``1 / prod(N)`` makes it a voxel mean.

    Once a ``v_0`` search finds no descent even from the metric's steepest descent (``v_0`` at its minimum to float
    precision), it is not repeated until ``alpha`` or ``tau`` moves (it would repeat exactly); once the ``alpha`` step
    too leaves them where they are, it is not repeated either: those iterations cost nothing and count as converged,
    as they would have.

    Returns:
        dict with ``"alpha"`` (float), ``"scale"`` (``tau``: ``prior_scale`` unless estimated), ``"sigma"`` (``sigma sqrt(tau)``:
        the noise level at which :func:`~.flash.flash_register`, whose prior is ``L``, minimises the same energy),
        ``"curvature"`` (``"full"`` or ``"diagonal"``: the evidence's curvature matrix, module docstring),
        ``"initial_velocity"``, ``"ddf"``, ``"warped"``, ``"objective"`` and ``"history"`` (per iteration:
        ``iteration``, ``alpha``, ``scale``, ``objective``, ``evaluations`` and ``seconds`` (energy evaluations and
        wall time so far), and the ``image`` and ``prior`` terms at ``tau``).
    """
    caller = "estimate_regularization"
    ndim = check_pair(fixed, moving, caller)
    check_choice(model, "model", caller, ESTIMATION_MODELS)
    check_flag(estimate_scale, "estimate_scale", caller)
    if fixed.shape[0] != 1:
        raise ValueError(f"{caller}(): one pair at a time (batch 1), got batch {fixed.shape[0]}")
    log_alpha = math.log(check_positive(alpha, "alpha", caller))
    sigma = check_positive(sigma, "sigma", caller)
    for name, value in (("iterations", iterations), ("min_converged", min_converged), ("warmup", warmup)):
        check_integer(value, name, caller)
    warmup = min(warmup, iterations // 2)
    check_integer(memory, "memory", caller, minimum=0)
    check_positive(max_alpha_change, "max_alpha_change", caller)
    check_positive(min_alpha_change, "min_alpha_change", caller, allow_zero=True)
    fixed32, moving32 = fixed.float(), moving.float()
    shape = tuple(fixed.shape[2:])
    base = band_operators(shape, 1.0, truncation, spacing=spacing, device=fixed.device)
    num_modes = ndim * math.prod(base.band)
    dense = num_modes <= DENSE_CURVATURE_LIMIT
    evaluations, started = 0, time.perf_counter()

    def objective(v: torch.Tensor, log_a: float, log_tau: float) -> dict:
        # the v_0 step minimises E(v_0; alpha, sigma sqrt(tau)) = (image term + tau prior) / tau; the objective adds
        # the tau- and alpha-dependent log-determinant -1/2 (M ln tau + ln|L|)
        nonlocal evaluations
        evaluations += 1
        ops = band_operators(shape, math.exp(log_a), truncation, spacing=spacing, device=fixed.device)
        v = v.detach().requires_grad_(True)
        out = flash_energy(v, fixed32, moving32, ops, sigma=sigma * math.exp(0.5 * log_tau), num_steps=num_steps,
                           integrator=integrator)
        out["objective"] = math.exp(log_tau) * out["total"].sum() - 0.5 * (
            num_modes * log_tau + log_determinant(math.exp(log_a), ops, ndim))
        out["velocity"], out["operators"], out["value"] = v, ops, float(out["objective"].detach())
        out["loss"] = out["total"].sum()  # what the v_0 step lowers: E, the objective's v_0 part up to the factor tau
        return out

    def moved(log_value: float, target: float) -> float:
        change = math.log(target) - log_value
        return log_value if abs(change) < min_alpha_change else \
            log_value + max(-max_alpha_change, min(max_alpha_change, change))

    velocity = torch.zeros(1, ndim, *base.band, dtype=torch.complex64, device=fixed.device)
    log_tau = math.log(check_positive(prior_scale, "prior_scale", caller))
    current = objective(velocity, log_alpha, log_tau)
    pairs = CurvatureMemory(memory)
    history, converged, settling, previous = [], 0, 0, current["value"]
    stalled = settled = False  # no descent left for v_0 / the last alpha step left alpha and tau where they were
    with progress_reporter(iterations, caller, progress, callback) as report:
        for iteration in range(iterations):
            if iteration >= warmup and not (stalled and settled):  # (both: it would only repeat itself)
                v = current["velocity"].detach()
                a, tau = math.exp(log_alpha), math.exp(log_tau)
                precision = None if model == "joint" else (
                    effective_precision(data_curvature(current["warped"].detach(), sigma, base.band), a, base, scale=tau)
                    if dense else data_precision(current["warped"].detach(), sigma))
                new_tau = moved(log_tau, best_scale(a, v, base, precision, scale=tau)) if estimate_scale else log_tau
                new_alpha = moved(log_alpha, best_alpha(v, base, precision, scale=math.exp(new_tau)))
                settled = (new_alpha, new_tau) == (log_alpha, log_tau)
                if not settled:
                    log_alpha, log_tau, stalled = new_alpha, new_tau, False
                    current = objective(v, log_alpha, log_tau)
            if not stalled:
                ops, from_metric = current["operators"], not pairs.steps
                trial, _ = lbfgs_step(current, lambda v: objective(v, log_alpha, log_tau), ops.kernel / ops.num_voxels,
                                      pairs)
                if trial is not None:
                    current = trial
                else:  # v_0 at its minimum for this alpha to float precision: next, start from the metric afresh
                    pairs.forget()
                    stalled = from_metric
            value = current["value"]
            history.append({"iteration": iteration, "alpha": math.exp(log_alpha), "scale": math.exp(log_tau),
                            "objective": value, "evaluations": evaluations, "seconds": time.perf_counter() - started,
                            "image": math.exp(log_tau) * float(current["image"].detach().sum()),
                            "prior": math.exp(log_tau) * float(current["prior"].detach().sum())})
            report(0, iteration, value)
            small_change = abs(value - previous) / max(abs(value), 1e-12) < tolerance
            if iteration >= warmup and small_change:
                converged += 1
                if converged >= min_converged:
                    break
            elif iteration < warmup:  # v_0 converged at the starting alpha (one short L-BFGS step is not enough)
                settling = settling + 1 if small_change else 0
                if settling == 2 or stalled:
                    warmup = iteration + 1
            previous = value

    velocity = current["velocity"].detach()
    with torch.no_grad():
        inverse_map, _ = shoot_maps(velocity, current["operators"], num_steps, integrator, forward=False)
        ddf = band_to_ddf(inverse_map, current["operators"])
    return {"alpha": math.exp(log_alpha), "scale": math.exp(log_tau), "sigma": sigma * math.exp(0.5 * log_tau),
            "curvature": "full" if dense else "diagonal",
            "initial_velocity": velocity, "ddf": ddf, "warped": warp(moving32, ddf),
            "objective": history[-1]["objective"] if history else current["value"], "history": history}
