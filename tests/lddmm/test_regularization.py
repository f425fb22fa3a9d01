"""Estimation of FLASH's alpha: the closed-form alpha gradient against autograd, the prior sampler's
moments, and MAP/evidence estimation on pairs deformed by prior samples of known alpha."""

from __future__ import annotations

import math

import pytest
import torch

from monai_diffreg.functional import warp
from monai_diffreg.lddmm import band_operators, band_to_ddf, estimate_regularization, sample_initial_velocity, shoot_maps
from monai_diffreg.lddmm.flash import prior_energy
from monai_diffreg.lddmm.fourier import band_to_spatial
from monai_diffreg.lddmm.regularization import (LOG_SCALE_RANGE, alpha_gradient, best_alpha, best_scale, data_curvature,
                                               data_precision, effective_precision, log_determinant)


def test_alpha_gradient_is_the_derivative_of_prior_minus_half_log_determinant():
    shape = (20, 16, 12)
    v0 = sample_initial_velocity(shape, 4.0, 7, generator=torch.Generator().manual_seed(0))
    for alpha in (0.5, 4.0, 20.0):
        a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
        ops = band_operators(shape, a, 7, dtype=torch.float64)
        f = prior_energy(v0, ops).sum() - 0.5 * log_determinant(a, ops, 3)
        (grad,) = torch.autograd.grad(f, a)
        assert alpha_gradient(alpha, v0, ops) == pytest.approx(float(grad), rel=1e-10)
        # the evidence weights tend to 1 (the joint MAP) as the data precision grows
        huge = torch.full((3,), 1e30, dtype=torch.float64)
        assert alpha_gradient(alpha, v0, ops, huge) == pytest.approx(float(grad), rel=1e-8)
        assert alpha_gradient(alpha, v0, ops, torch.zeros(3, dtype=torch.float64)) > float(grad)


def test_prior_samples_have_the_prior_moments():
    """E[prod(N) L(k) |v(k)|^2] = 1 per real degree of freedom: the mean quadratic form per dof is 1."""
    shape, alpha = (32, 24), 3.0
    samples = sample_initial_velocity(shape, alpha, 9, num_samples=400, generator=torch.Generator().manual_seed(1))
    ops = band_operators(shape, alpha, 9, dtype=torch.float64)
    per_dof = 2 * prior_energy(samples, ops) / (2 * 81)
    assert float(per_dof.mean()) == pytest.approx(1.0, abs=0.02)
    assert torch.allclose(samples, samples.flip((2, 3)).conj())  # Hermitian: real fields
    # a larger alpha gives smaller high-frequency content
    stiff = sample_initial_velocity(shape, 30.0, 9, num_samples=400, generator=torch.Generator().manual_seed(1))
    assert stiff[..., 0, 0].abs().mean() < samples[..., 0, 0].abs().mean()


def test_data_precision_is_the_gradient_energy():
    image = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    image[0, 0] = torch.arange(8, dtype=torch.float64)[:, None] * 0.1  # gradient 0.1 along axis 0 only
    g = data_precision(image, sigma=0.05)
    assert g[0] == pytest.approx(64 * 0.01 / 0.0025) and g[1] == 0


def _explicit_curvature(warped, sigma, band):
    """J^H J / sigma^2 with J[x, (c, k)] = d_c warped(x) b_k(x), b_k the band's Fourier basis (checked against
    band_to_spatial): the definition of data_curvature, one column per band mode."""
    shape = tuple(warped.shape[2:])
    eye = torch.eye(math.prod(band), dtype=torch.complex128).view(-1, 1, *band)
    basis = (band_to_spatial(eye, shape) + 1j * band_to_spatial(-1j * eye, shape)).reshape(len(eye), -1)  # (K, X)
    grads = torch.stack(torch.gradient(warped[0].double(), dim=tuple(range(1, 1 + len(shape)))), dim=1)  # (C, D, *shape)
    jacobian = torch.cat([grads[:, c].reshape(grads.shape[0], 1, -1) * basis[None] for c in range(len(shape))], dim=1)
    return torch.einsum("cix,cjx->ij", jacobian.conj(), jacobian) / sigma**2


@pytest.mark.parametrize("shape", [(12, 10), (6, 5, 4)])
def test_data_curvature_is_the_gauss_newton_matrix_in_the_band(shape):
    """The FFT construction equals J^H J / sigma^2 built column by column; its diagonal is data_precision's."""
    warped = torch.rand(1, 2, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    band = (5,) * len(shape)
    curvature = data_curvature(warped, 0.1, band)
    assert curvature.shape == (len(shape) * 5 ** len(shape),) * 2
    torch.testing.assert_close(curvature, _explicit_curvature(warped, 0.1, band), rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(curvature, curvature.conj().T)
    torch.testing.assert_close(curvature.diagonal().real.view(len(shape), -1),
                               data_precision(warped, 0.1)[:, None].expand(-1, 5 ** len(shape)))


def test_effective_precision_and_the_evidence_derivative():
    """alpha_gradient with effective_precision(G, alpha) is d/dalpha of prior - 1/2 ln|L| + 1/2 ln|prod(N) L + G|
    (the Laplace evidence's alpha terms, autograd, G fixed); a diagonal G is its own effective precision."""
    shape = (12, 10)
    ops = band_operators(shape, 1.0, 5, dtype=torch.float64)
    v0 = sample_initial_velocity(shape, 2.0, 5, generator=torch.Generator().manual_seed(2))
    warped = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    curvature = data_curvature(warped, 0.1, ops.band)
    for alpha in (0.3, 2.0, 9.0):
        a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
        alpha_ops = band_operators(shape, a, 5, dtype=torch.float64)
        prior = (ops.num_voxels * alpha_ops.regularization).reshape(-1).repeat(2)
        f = (prior_energy(v0, alpha_ops).sum() - 0.5 * log_determinant(a, alpha_ops, 2)
             + 0.5 * torch.linalg.slogdet(curvature + torch.diag(prior).to(curvature.dtype))[1])
        (grad,) = torch.autograd.grad(f, a)
        g = effective_precision(curvature, alpha, ops)
        assert g.shape == (2, 5, 5) and bool((g >= 0).all())
        assert alpha_gradient(alpha, v0, ops, g) == pytest.approx(float(grad), rel=1e-8)
    diagonal = torch.diag(torch.linspace(1.0, 50.0, 50, dtype=torch.float64)).to(torch.complex128)
    torch.testing.assert_close(effective_precision(diagonal, 2.0, ops).reshape(-1), diagonal.diagonal().real)


def test_best_scale_recovers_the_prior_precision_of_a_prior_sample():
    """v_0 ~ N(0, (tau prod(N) L)^-1): the joint update tau = D prod(band) / <L v_0, v_0> recovers tau (450 real
    degrees of freedom: a relative spread of about 7 %)."""
    shape, alpha = (48, 40), 3.0
    ops = band_operators(shape, alpha, 15, dtype=torch.float64)
    for tau in (1.0, 1e-3, 50.0):
        v0 = sample_initial_velocity(shape, alpha, 15, generator=torch.Generator().manual_seed(4)) / math.sqrt(tau)
        assert best_scale(alpha, v0, ops) == pytest.approx(tau, rel=0.2)
    assert best_scale(alpha, torch.zeros_like(v0), ops) == pytest.approx(math.exp(LOG_SCALE_RANGE[1]))


def test_scaled_evidence_derivatives_and_the_scale_fixed_point():
    """With the prior tau L the Laplace evidence's (alpha, tau) terms are F = tau/2 <L v, v> - 1/2 (M ln tau + ln|L|)
    + 1/2 ln|tau prod(N) L + G|: alpha_gradient(..., scale=tau) is dF/dalpha (autograd), and where best_scale's
    iteration stops, dF/dtau = 0."""
    shape, alpha = (12, 10), 2.0
    ops = band_operators(shape, 1.0, 5, dtype=torch.float64)
    v0 = sample_initial_velocity(shape, 2.0, 5, generator=torch.Generator().manual_seed(2)) * 3
    curvature = data_curvature(torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
                               0.1, ops.band)

    def evidence(a, tau):
        alpha_ops = band_operators(shape, a, 5, dtype=torch.float64)
        prior = (tau * ops.num_voxels * alpha_ops.regularization).reshape(-1).repeat(2)
        return (tau * prior_energy(v0, alpha_ops).sum() - 0.5 * (2 * 25 * torch.log(tau) + log_determinant(a, alpha_ops, 2))
                + 0.5 * torch.linalg.slogdet(curvature + torch.diag(prior).to(curvature.dtype))[1])

    for tau in (0.05, 1.0):
        a, t = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (alpha, tau))
        (grad,) = torch.autograd.grad(evidence(a, t), a)
        g = effective_precision(curvature, alpha, ops, scale=tau)
        assert alpha_gradient(alpha, v0, ops, g, scale=tau) == pytest.approx(float(grad), rel=1e-8)
    tau = 1.0
    for _ in range(200):
        tau = best_scale(alpha, v0, ops, effective_precision(curvature, alpha, ops, scale=tau), scale=tau)
    t = torch.tensor(tau, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(evidence(torch.tensor(alpha, dtype=torch.float64), t), t)
    assert abs(float(grad)) * tau < 1e-6 * 50  # relative to the M/2 = 25 of each log term's derivative x tau
    assert tau != pytest.approx(1.0, rel=0.1)  # it moved: the test is not at its start


def bullseye(n=32):
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
    c = (n - 1) / 2
    outer = ((x - c) / (0.3 * n)) ** 2 + ((y - c) / (0.2 * n)) ** 2 < 1
    inner = ((x - c) / (0.15 * n)) ** 2 + ((y - c) / (0.1 * n)) ** 2 < 1
    return (0.5 * outer.float() + 0.5 * inner.float())[None, None]


def deformed_by_prior(source, alpha, seed):
    shape = tuple(source.shape[2:])
    ops = band_operators(shape, alpha, 7, dtype=torch.float64)
    v0 = sample_initial_velocity(shape, alpha, 7, generator=torch.Generator().manual_seed(seed))
    inverse, _ = shoot_maps(v0, ops, forward=False)
    return warp(source, band_to_ddf(inverse, ops).float())


def test_evidence_estimate_stops_at_a_finite_fixed_point_and_is_ordered():
    """The evidence estimate stops where alpha is the best alpha of its own v_0 (a finite fixed point), recovers
    the true alpha of a prior sample, and a stiffer truth gives a larger estimate; the paper's joint MAP instead runs to the bound (it is unbounded
    as alpha -> inf, v_0 -> 0)."""
    source = bullseye()
    target = deformed_by_prior(source, 3.0, seed=1)
    options = {"truncation": 7, "iterations": 200, "warmup": 30}
    result = estimate_regularization(target, source, alpha=1.0, **options)
    assert 1.0 < result["alpha"] < 100.0
    ops = band_operators(tuple(source.shape[2:]), 1.0, 7)
    assert result["curvature"] == "full"  # 2 x 7 x 7 band modes
    precision = effective_precision(data_curvature(result["warped"], 0.03, ops.band), result["alpha"], ops)
    assert best_alpha(result["initial_velocity"], ops, precision) == pytest.approx(result["alpha"], rel=0.05)
    assert result["alpha"] == pytest.approx(3.0, rel=0.2)  # measured 3.03 (the diagonal curvature of 0.4.x: about 2x)
    stiffer = estimate_regularization(deformed_by_prior(source, 11.0, seed=1), source, alpha=1.0, **options)
    assert stiffer["alpha"] > 2 * result["alpha"]  # measured 15.3 for the true 11
    joint = estimate_regularization(target, source, alpha=1.0, model="joint", **{**options, "iterations": 120})
    assert joint["alpha"] > 5 * result["alpha"]  # still growing when stopped (it reaches the bound 1e3 by 200)
    assert math.isfinite(result["objective"]) and result["ddf"].shape == (1, 2, 32, 32)


def test_estimating_the_prior_scale_tells_a_larger_deformation_from_a_stiffer_one():
    """A prior sample of the same alpha made 4x larger (tau 1/16) is recognised as a smaller prior precision, not a
    smaller alpha; the estimate's effective sigma is sigma sqrt(tau)."""
    source = bullseye()
    options = {"truncation": 7, "iterations": 150, "warmup": 30, "alpha": 1.0, "estimate_scale": True}
    shape = tuple(source.shape[2:])
    ops = band_operators(shape, 3.0, 7, dtype=torch.float64)
    estimates = []
    for factor in (1.0, 4.0):
        v0 = sample_initial_velocity(shape, 3.0, 7, generator=torch.Generator().manual_seed(1)) * factor
        inverse, _ = shoot_maps(v0, ops, forward=False)
        estimates.append(estimate_regularization(warp(source, band_to_ddf(inverse, ops).float()), source, **options))
    small, large = estimates
    assert 0.5 < small["scale"] < 2.0 and 1 / 32 < large["scale"] < 1 / 8  # measured 0.83 and 0.082 (true 1, 1/16)
    assert 1.0 < small["alpha"] < 10.0 and 1.0 < large["alpha"] < 10.0  # measured 3.5 and 2.3 (true 3)
    assert large["sigma"] == pytest.approx(0.03 * math.sqrt(large["scale"]))
    assert [h["scale"] for h in large["history"]][:30] == [1.0] * 30  # tau moves with alpha, after the warm-up


def test_a_fixed_prior_scale_is_kept_and_used():
    """``prior_scale`` fixes tau (not estimated): a prior sample of tau L, 3x larger than one of L, is estimated at
    about its alpha with tau fixed at its value, and tau stays there; the effective sigma is sigma sqrt(tau)."""
    source = bullseye()
    shape = tuple(source.shape[2:])
    ops = band_operators(shape, 3.0, 7, dtype=torch.float64)
    v0 = sample_initial_velocity(shape, 3.0, 7, generator=torch.Generator().manual_seed(1)) * 3.0
    inverse, _ = shoot_maps(v0, ops, forward=False)
    target = warp(source, band_to_ddf(inverse, ops).float())
    result = estimate_regularization(target, source, alpha=1.0, truncation=7, iterations=150, warmup=30,
                                     prior_scale=1 / 9)
    assert all(h["scale"] == pytest.approx(1 / 9) for h in result["history"])
    assert result["sigma"] == pytest.approx(0.03 / 3)
    assert 1.5 < result["alpha"] < 6.0  # measured 2.80 (true 3)


def test_estimation_rejects_bad_input():
    source = bullseye(16)
    with pytest.raises(ValueError, match="model"):
        estimate_regularization(source, source.flip(-1), model="mcmc")
    with pytest.raises(ValueError, match="batch 1"):
        estimate_regularization(source.repeat(2, 1, 1, 1), source.repeat(2, 1, 1, 1).flip(-1))
    with pytest.raises(ValueError, match="'alpha'"):
        estimate_regularization(source, source.flip(-1), alpha=-1.0)
    with pytest.raises(ValueError, match="'estimate_scale'"):
        estimate_regularization(source, source.flip(-1), estimate_scale="yes")
    with pytest.raises(ValueError, match="'prior_scale'"):
        estimate_regularization(source, source.flip(-1), prior_scale=0.0)
    with pytest.raises(ValueError, match="'memory'"):
        estimate_regularization(source, source.flip(-1), memory=-1)
    with pytest.raises(ValueError, match="'min_alpha_change'"):
        estimate_regularization(source, source.flip(-1), min_alpha_change=-0.1)


def test_evidence_falls_back_to_the_diagonal_curvature_above_the_limit(monkeypatch):
    """Above DENSE_CURVATURE_LIMIT band modes the evidence uses data_precision (the dense matrix would not fit a
    3D band's time budget) and says so in the result."""
    import monai_diffreg.lddmm.regularization as regularization

    source = bullseye(16)
    target = deformed_by_prior(source, 3.0, seed=0)
    options = {"truncation": 5, "iterations": 12, "warmup": 4, "alpha": 1.0}
    assert estimate_regularization(target, source, **options)["curvature"] == "full"
    monkeypatch.setattr(regularization, "DENSE_CURVATURE_LIMIT", 2 * 5 * 5 - 1)
    monkeypatch.setattr(regularization, "data_curvature", lambda *args: pytest.fail("dense curvature above the limit"))
    result = estimate_regularization(target, source, **options)
    assert result["curvature"] == "diagonal" and math.isfinite(result["alpha"])


def test_a_failed_step_does_not_freeze_the_velocity_for_later_alphas(monkeypatch):
    """When no v_0 step lowers the objective at the current alpha (v_0 at its minimum to float precision), the
    curvature pairs are forgotten and the next alpha's step searches again from the full step: 0.4.8 fixed a search
    that restarted from the collapsed step, so that every later one failed at once and v_0 froze while the stopping
    rule counted the unchanged objective as convergence."""
    import monai_diffreg.lddmm.regularization as regularization

    source = bullseye(16)
    target = deformed_by_prior(source, 3.0, seed=0)
    calls, original = [], regularization.lbfgs_step

    def failing_once(current, evaluate, metric, memory):
        calls.append(len(memory.steps))
        if len(calls) == 3:
            return None, 1e-7  # a search that halved its step below the minimum and gave up
        return original(current, evaluate, metric, memory)

    monkeypatch.setattr(regularization, "lbfgs_step", failing_once)
    result = estimate_regularization(target, source, alpha=1.0, truncation=5, iterations=8, warmup=2)
    assert len(calls) == 8 and calls[3] == 0  # the search goes on, from the metric's steepest descent
    assert result["history"][-1]["objective"] < result["history"][2]["objective"]  # v_0 moved on afterwards


def test_alpha_inside_its_resolution_and_a_stalled_velocity_cost_no_evaluations(monkeypatch):
    """An alpha step smaller than ``min_alpha_change`` is not taken (no new shooting), and once a v_0 search from the
    metric's steepest descent has failed, it is not repeated until alpha moves: those iterations count as converged
    without an evaluation."""
    import monai_diffreg.lddmm.regularization as regularization

    source = bullseye(16)
    target = deformed_by_prior(source, 3.0, seed=0)
    frozen = estimate_regularization(target, source, alpha=1.0, truncation=5, iterations=12, warmup=4,
                                     min_alpha_change=100.0)
    assert [h["alpha"] for h in frozen["history"]] == [1.0] * 12
    calls, original = [], regularization.lbfgs_step

    def failing(current, evaluate, metric, memory):
        calls.append(len(memory.steps))
        return (None, 1e-7) if len(calls) >= 3 else original(current, evaluate, metric, memory)

    monkeypatch.setattr(regularization, "lbfgs_step", failing)
    result = estimate_regularization(target, source, alpha=1.0, truncation=5, iterations=40, warmup=10,
                                     min_converged=5, min_alpha_change=100.0)
    assert calls == [0, 1, 2, 0]  # the L-BFGS search fails, then the metric's; no search after that
    history = result["history"]
    # the stall at iteration 3 also ends the warm-up: 4 iterations, then the 5 converged ones
    assert len(history) == 4 + 5 and history[-1]["evaluations"] == history[3]["evaluations"]


def test_the_warm_up_ends_once_the_velocity_has_converged_at_the_starting_alpha():
    """alpha starts moving after two successive iterations whose relative objective change is below the tolerance,
    not after all ``warmup`` v_0 steps (0.4.11: they only polished v_0 at an alpha about to change)."""
    source = bullseye(16)
    target = deformed_by_prior(source, 3.0, seed=0)
    tolerance = 1e-4
    history = estimate_regularization(target, source, alpha=1.0, truncation=5, iterations=200, warmup=60,
                                      tolerance=tolerance)["history"]
    first_move = next(i for i, h in enumerate(history) if h["alpha"] != 1.0)
    assert 2 < first_move < 60
    changes = [abs(history[i]["objective"] - history[i - 1]["objective"]) / abs(history[i]["objective"])
               for i in (first_move - 2, first_move - 1)]
    stalled = history[first_move - 1]["evaluations"] == history[first_move - 2]["evaluations"]
    assert all(change < tolerance for change in changes) or stalled, changes
