"""Estimation of FLASH's alpha: the closed-form alpha gradient against autograd, the prior sampler's
moments, and MAP/evidence estimation on pairs deformed by prior samples of known alpha."""

from __future__ import annotations

import math

import pytest
import torch

from monai_diffreg.functional import warp
from monai_diffreg.lddmm import band_operators, band_to_ddf, estimate_regularization, sample_initial_velocity, shoot_maps
from monai_diffreg.lddmm.flash import prior_energy
from monai_diffreg.lddmm.regularization import alpha_gradient, best_alpha, data_precision, log_determinant


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
    """The evidence estimate stops where alpha is the best alpha of its own v_0 (a finite fixed point), and a
    stiffer truth gives a larger estimate; the paper's joint MAP instead runs to the bound (it is unbounded
    as alpha -> inf, v_0 -> 0)."""
    source = bullseye()
    target = deformed_by_prior(source, 3.0, seed=1)
    options = {"truncation": 7, "iterations": 200, "warmup": 30}
    result = estimate_regularization(target, source, alpha=1.0, **options)
    assert 1.0 < result["alpha"] < 100.0
    ops = band_operators(tuple(source.shape[2:]), 1.0, 7)
    precision = data_precision(result["warped"], 0.03)
    assert best_alpha(result["initial_velocity"], ops, precision) == pytest.approx(result["alpha"], rel=0.05)
    stiffer = estimate_regularization(deformed_by_prior(source, 11.0, seed=1), source, alpha=1.0, **options)
    assert stiffer["alpha"] > result["alpha"]
    joint = estimate_regularization(target, source, alpha=1.0, model="joint", **{**options, "iterations": 120})
    assert joint["alpha"] > 5 * result["alpha"]  # still growing when stopped (it reaches the bound 1e3 by 200)
    assert math.isfinite(result["objective"]) and result["ddf"].shape == (1, 2, 32, 32)


def test_estimation_rejects_bad_input():
    source = bullseye(16)
    with pytest.raises(ValueError, match="model"):
        estimate_regularization(source, source.flip(-1), model="mcmc")
    with pytest.raises(ValueError, match="batch 1"):
        estimate_regularization(source.repeat(2, 1, 1, 1), source.repeat(2, 1, 1, 1).flip(-1))
    with pytest.raises(ValueError, match="'alpha'"):
        estimate_regularization(source, source.flip(-1), alpha=-1.0)
