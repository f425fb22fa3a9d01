"""EPDiff shooting in the band: identity, translations, a hand-derived shear mode, energy conservation,
inverse consistency of phi_1 and phi_1^-1 (evaluated exactly as Fourier series), float64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from monai_diffreg.lddmm.fourier import band_frequencies, band_to_spatial, hermitian_part
from monai_diffreg.lddmm.shooting import band_operators, geodesic_rates, shoot, shoot_maps


def smooth_velocity(band, max_frequency=2, amplitude=0.01, seed=0):
    """Hermitian random coefficients on frequencies ``|k| <= max_frequency`` of a band ``(1, D, *band)``."""
    g = torch.Generator().manual_seed(seed)
    c = torch.zeros(1, len(band), *band, dtype=torch.complex128)
    centre = [slice(t // 2 - max_frequency, t // 2 + max_frequency + 1) for t in band]
    size = 2 * max_frequency + 1
    c[(slice(None), slice(None), *centre)] = torch.complex(torch.randn(1, len(band), *[size] * len(band), generator=g, dtype=torch.float64),
                                                           torch.randn(1, len(band), *[size] * len(band), generator=g, dtype=torch.float64))
    return amplitude * hermitian_part(c)


def evaluate_at(coefficients, points, shape):
    """Exact value of a band-limited field ``(1, D, *band)`` at arbitrary points ``(P, D)`` (voxels): ``(P, D)``."""
    band = coefficients.shape[2:]
    grids = torch.meshgrid(*band_frequencies(band), indexing="ij")
    k = torch.stack([g.flatten() for g in grids], dim=1)                          # (F, D)
    phase = 2 * math.pi * (points / torch.tensor(shape, dtype=torch.float64)) @ k.T  # (P, F)
    return (torch.exp(1j * phase) @ coefficients[0].flatten(1).T).real


def test_zero_velocity_is_the_identity():
    ops = band_operators((16, 16, 16), 3.0, 7, dtype=torch.float64)
    v1, u1 = shoot(torch.zeros(1, 3, *ops.band, dtype=torch.complex128), ops)
    assert v1.abs().max() == 0 and u1.abs().max() == 0


@pytest.mark.parametrize("integrator", ["rk4", "euler"])
def test_constant_velocity_is_an_exact_translation(integrator):
    ops = band_operators((20, 16), 6.0, 9, dtype=torch.float64)
    v0 = torch.zeros(1, 2, *ops.band, dtype=torch.complex128)
    v0[0, :, 4, 4] = torch.tensor([1.5, -0.75], dtype=torch.complex128)  # k = 0
    v1, u1 = shoot(v0, ops, integrator=integrator)
    ddf = band_to_spatial(u1, ops.shape)
    assert torch.allclose(v1, v0, atol=1e-15)
    assert torch.allclose(ddf[0, 0], torch.full((20, 16), -1.5, dtype=torch.float64), atol=1e-13)
    assert torch.allclose(ddf[0, 1], torch.full((20, 16), 0.75, dtype=torch.float64), atol=1e-13)


@pytest.mark.parametrize("eps", [1e-2, 2e-2])
def test_single_shear_mode_shoots_as_derived_by_hand(eps):
    """v_0 = eps cos(theta) e_0 with theta = 2 pi k x_1 / N (a shear). Only (Dv)^T m survives in EPDiff:
    its component 1 is d_1 v_0 m_0 = -eps^2 L(k) sin(w) sin(2 theta) / 2 (w = 2 pi k / N), so
    v_1 = eps cos(theta) e_0 + eps^2 L(k) sin(w) / (2 L(2k)) sin(2 theta) e_1 + O(eps^3), and the inverse
    map's displacement is -eps cos(theta) e_0 to first order ((Du) v = 0 for a shear)."""
    n, k, alpha = 32, 2, 2.0
    ops = band_operators((n, n, n), alpha, 15, dtype=torch.float64)
    v0 = torch.zeros(1, 3, *ops.band, dtype=torch.complex128)
    v0[0, 0, 7, 7 + k, 7] = v0[0, 0, 7, 7 - k, 7] = eps / 2
    v1, u1 = shoot(v0, ops, num_steps=20)
    w = 2 * math.pi * k / n
    big_l = lambda q: (alpha * (2 - 2 * math.cos(q)) + 1) ** 3  # noqa: E731
    theta = 2 * math.pi * k * torch.arange(n, dtype=torch.float64) / n
    v = band_to_spatial(v1, ops.shape)[0, :, 0, :, 0]
    u = band_to_spatial(u1, ops.shape)[0, :, 0, :, 0]
    second_order = eps ** 2 * big_l(w) * math.sin(w) / (2 * big_l(2 * w)) * torch.sin(2 * theta)
    assert second_order.abs().max() > 1e-6
    assert (v[1] - second_order).abs().max() < 10 * eps ** 3 * 1e-2
    assert (v[0] - eps * torch.cos(theta)).abs().max() < eps ** 3
    assert (u[0] + eps * torch.cos(theta)).abs().max() < eps ** 3
    assert v[2].abs().max() < 1e-15


def test_energy_is_conserved_along_the_geodesic():
    """<L v_t, v_t> is conserved exactly by the semi-discrete EPDiff; RK4 keeps it to 1e-5 at 10 steps."""
    ops = band_operators((32, 32, 32), 3.0, 11, dtype=torch.float64)
    v0 = smooth_velocity(ops.band, max_frequency=3, amplitude=0.02)
    drift = {}
    for integrator in ("rk4", "euler"):
        _, _, path = shoot(v0, ops, integrator=integrator, with_map=False, return_path=True)
        energy = torch.stack([(ops.regularization * v.abs() ** 2).sum() for v in path])
        drift[integrator] = float((energy - energy[0]).abs().max() / energy[0])
    moved = float((path[-1] - v0).abs().max() / v0.abs().max())
    assert moved > 1e-2  # the velocity changed along the geodesic: a non-trivial check
    assert drift["rk4"] < 1e-5
    assert drift["euler"] < 0.2 and drift["rk4"] < drift["euler"] / 100


def test_forward_and_inverse_maps_are_inverse():
    """phi_1^-1(phi_1(x)) = x, both maps evaluated exactly as Fourier series (no interpolation error)."""
    shape = (48, 48, 48)
    ops = band_operators(shape, 3.0, 15, dtype=torch.float64)
    v0 = smooth_velocity(ops.band, max_frequency=3, amplitude=0.005, seed=1)
    inverse, forward = shoot_maps(v0, ops)
    points = torch.rand(300, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 48
    displacement = evaluate_at(forward, points, shape)
    back = evaluate_at(inverse, points + displacement, shape)
    assert displacement.abs().max() > 0.2
    assert (displacement + back).abs().max() < 0.01 * displacement.abs().max()


def test_gradcheck_float64():
    ops = band_operators((8, 8), 1.0, 5, dtype=torch.float64)
    weights = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def functional(real, imag):
        v0 = hermitian_part(torch.complex(real, imag))
        v1, u1 = shoot(v0, ops, num_steps=3)
        return (band_to_spatial(u1, ops.shape) * weights).sum() + (v1.abs() ** 2).sum()

    start = smooth_velocity(ops.band, max_frequency=2, amplitude=0.05)
    inputs = (start.real.clone().requires_grad_(True), start.imag.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(functional, inputs)


def test_rates_reject_nothing_silently():
    ops = band_operators((8, 8), 1.0, 5)
    with pytest.raises(ValueError, match="band shape"):
        shoot(torch.zeros(1, 2, 3, 3, dtype=torch.complex64), ops)
    with pytest.raises(ValueError, match="integrator"):
        shoot(torch.zeros(1, 2, 5, 5, dtype=torch.complex64), ops, integrator="midpoint")
    dv, du = geodesic_rates(torch.zeros(1, 2, 5, 5, dtype=torch.complex64), None, ops)
    assert du is None and dv.shape == (1, 2, 5, 5)
