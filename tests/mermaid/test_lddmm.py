"""LDDMM shooting (spatial domain): identity at m_0 = 0, exact translations, conservation of <m, v>, agreement with
FLASH's band-limited shooting, inverse consistency, gradients, a recovered shift, the method contract, bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import monai_diffreg as md
from monai_diffreg.functional import compose_ddf, warp
from monai_diffreg.lddmm.fourier import _embed_half, band_to_spatial, resize_band, spatial_to_band
from monai_diffreg.lddmm.shooting import band_operators, geodesic_rates
from monai_diffreg.lddmm.shooting import shoot as shoot_band
from monai_diffreg.mermaid import LDDMMRegistration, apply_kernel, gaussian_multiplier, kernel_energy, kernel_multiplier
from monai_diffreg.mermaid.lddmm import epdiff_rates, lddmm_energy, lddmm_fields, lddmm_register, shoot
from monai_diffreg.methods import load_method


def _blob(shape, centre, width=4.0):
    grids = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return torch.exp(-r2 / (2 * width**2))[None, None]


def _smooth_momentum(shape, amplitude, spacing=None, seed=0, centred=False):
    """A smooth random momentum ``(1, D, *shape)`` float64 with ``max |m| = amplitude`` (optionally vanishing
    towards the borders)."""
    noise = torch.randn(1, len(shape), *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    m = apply_kernel(noise, gaussian_multiplier(shape, 2.0, spacing, dtype=torch.float64))
    if centred:
        grids = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij")
        m = m * torch.exp(-sum((x - n / 2) ** 2 for x, n in zip(grids, shape)) / (2 * (shape[0] / 6) ** 2))
    return amplitude * m / m.abs().max()


def _fields(momentum, multiplier, spacing, **settings):
    return lddmm_fields(momentum, apply_kernel(momentum, multiplier), multiplier, spacing, True, **settings)


def test_zero_momentum_is_the_identity():
    fixed = _blob((20, 24), (10, 12))
    out = lddmm_register(fixed, fixed.clone(), levels=(1,), iterations=(0,))
    assert torch.equal(out["ddf"], torch.zeros(1, 2, 20, 24))
    assert torch.equal(out["inverse_ddf"], torch.zeros(1, 2, 20, 24))
    torch.testing.assert_close(out["warped"], fixed)


@pytest.mark.parametrize("integrator", ["rk4", "euler"])
def test_constant_momentum_is_a_stationary_geodesic_and_an_exact_translation(integrator):
    """K * constant = constant and its derivatives vanish: m_t = m_0, v = m_0, and phi_1^-1 = x - v, i.e.
    ddf = -v / spacing voxels (warped(x) = moving(x - v): the image moves by +v); phi_1 = x + v."""
    shape, spacing = (12, 10, 8), (2.0, 1.0, 0.5)
    momentum = torch.tensor([3.0, -1.0, 0.25], dtype=torch.float64).view(1, 3, 1, 1, 1).expand(1, 3, *shape).clone()
    multiplier = kernel_multiplier(shape, (2.0, 6.0), None, spacing, dtype=torch.float64)
    m1, _ = shoot(momentum, multiplier, spacing, integrator=integrator, with_map=False)
    torch.testing.assert_close(m1, momentum, atol=1e-12, rtol=0)
    out = _fields(momentum, multiplier, spacing, integrator=integrator)
    voxels = torch.tensor([1.5, -1.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1, 1).expand(1, 3, *shape)
    torch.testing.assert_close(out["ddf"], -voxels, atol=1e-12, rtol=0)
    torch.testing.assert_close(out["inverse_ddf"], voxels, atol=1e-12, rtol=0)
    torch.testing.assert_close(out["initial_velocity"], voxels, atol=1e-12, rtol=0)
    # through the registration (float32, no steps): the same field
    reg = lddmm_register(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape), levels=(1,), iterations=(0,),
                         spacing=spacing, initial_momentum=momentum.float(), sigmas=(2.0, 6.0), integrator=integrator)
    torch.testing.assert_close(reg["ddf"], -voxels.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(reg["inverse_ddf"], voxels.float(), atol=1e-5, rtol=0)


def test_kinetic_energy_is_conserved_along_the_geodesic():
    """<m_t, v_t> is conserved exactly by the semi-discrete EPDiff (skew-adjoint central differences): along
    10 RK4 steps it drifts by < 1e-6 relative for a momentum that changes by half its size (|v| up to 1.6
    voxels); Euler drifts by > 1e-3."""
    shape = (16, 16, 16)
    spacing = (1.0, 1.0, 1.0)
    multiplier = kernel_multiplier(shape, (2.0, 4.0), None, spacing, dtype=torch.float64)
    m0 = _smooth_momentum(shape, 3.0, spacing)
    drift = {}
    for integrator in ("rk4", "euler"):
        _, _, path = shoot(m0, multiplier, spacing, integrator=integrator, with_map=False, return_path=True)
        energy = torch.cat([kernel_energy(m, apply_kernel(m, multiplier)) for m in path])
        drift[integrator] = float((energy - energy[0]).abs().max() / energy[0])
    assert float((path[-1] - m0).abs().max() / m0.abs().max()) > 0.5  # a non-trivial geodesic
    assert drift["rk4"] < 1e-6, drift
    assert drift["euler"] > 1e-3 and drift["rk4"] < drift["euler"] / 1e4, drift


def _band_limited(shape, band, frequencies, amplitude, seed):
    """Band coefficients ``(1, D, *band)`` of a real random field with frequencies ``|k| <= frequencies`` and
    ``max |f| = amplitude`` on the grid."""
    noise = torch.randn(1, len(shape), *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    low = resize_band(resize_band(spatial_to_band(noise, band), (2 * frequencies + 1,) * len(shape)), band)
    return amplitude * low / band_to_spatial(low, shape).abs().max()


def _flash_setting(shape, truncation, spacing):
    """FLASH's operators and its kernel as a full-grid multiplier: ``K`` on the band, 0 outside it."""
    ops = band_operators(shape, 2.0, truncation, spacing=spacing, dtype=torch.float64)
    multiplier = _embed_half(ops.kernel, shape)
    return ops, multiplier


def test_rates_equal_flash_rates():
    """On a grid where the products of band-limited fields do not alias (|k| <= 2K < N / 2), with FLASH's K:
    K * (dm/dt) is FLASH's dv/dt and the band part of du/dt FLASH's du/dt (the same central differences)."""
    shape, spacing = (32, 32), (1.0, 1.5)
    ops, multiplier = _flash_setting(shape, 15, spacing)
    v0 = _band_limited(shape, ops.band, 7, 0.3, seed=0)  # the whole band
    u0 = _band_limited(shape, ops.band, 7, 1.0, seed=1)
    dv, du = geodesic_rates(v0, u0, ops)
    m0 = band_to_spatial(ops.regularization * v0, shape)
    dm, du_spatial = epdiff_rates(m0, band_to_spatial(u0, shape), multiplier, spacing)
    torch.testing.assert_close(apply_kernel(m0, multiplier), band_to_spatial(v0, shape), atol=1e-12, rtol=0)
    torch.testing.assert_close(apply_kernel(dm, multiplier), band_to_spatial(dv, shape), atol=1e-12, rtol=0)
    torch.testing.assert_close(spatial_to_band(du_spatial, ops.band), du, atol=1e-12, rtol=0)
    assert float(band_to_spatial(dv, shape).abs().max()) > 0.05  # non-trivial rates, both terms
    assert float(band_to_spatial(du + v0, shape).abs().max()) > 0.05


@pytest.mark.parametrize("shape, truncation, frequencies, spacing", [
    ((32, 32), 15, 2, (1.0, 1.5)),
    ((20, 20, 20), 9, 1, (1.0, 1.5, 1.25)),
])
def test_shooting_agrees_with_flash_when_the_band_limit_is_not_active(shape, truncation, frequencies, spacing):
    """v_0 of low frequencies in a wide band: the frequencies the geodesic creates beyond the band are
    negligible, so the spatial shooting and FLASH's truncated one agree: v_1 to 2e-4 of its change along the
    geodesic (4e-5 and 7e-5 here), phi_1^-1 to 1e-3 of the displacement (u has more high frequencies than v)."""
    ops, multiplier = _flash_setting(shape, truncation, spacing)
    v0 = _band_limited(shape, ops.band, frequencies, 0.8, seed=2)
    v1_band, u1_band = shoot_band(v0, ops)
    m1, u1 = shoot(band_to_spatial(ops.regularization * v0, shape), multiplier, spacing)
    v0_s, v1_flash, u1_flash = (band_to_spatial(c, shape) for c in (v0, v1_band, u1_band))
    change = float((v1_flash - v0_s).abs().max())
    assert change > 0.05 * float(v0_s.abs().max())  # the velocity changed along the geodesic
    assert float((apply_kernel(m1, multiplier) - v1_flash).abs().max()) < 2e-4 * change
    assert float((u1 - u1_flash).abs().max()) < 1e-3 * float(u1_flash.abs().max())


def _flow_of_points(velocities, reverse, substeps=8):
    """Reference ``phi_1 - id`` (``reverse``: ``phi_1^-1 - id``) of the nodes ``velocities`` (voxels; linear in time
    between them): every grid point's characteristic integrated by RK4 with ``substeps`` steps per node interval."""
    nodes = [-v for v in reversed(velocities)] if reverse else list(velocities)
    n = len(nodes) - 1

    def velocity_at(t, points):
        k = min(int(t * n), n - 1)
        a = t * n - k
        return warp((1 - a) * nodes[k] + a * nodes[k + 1], points)

    u, h = torch.zeros_like(nodes[0]), 1.0 / (n * substeps)
    for i in range(n * substeps):
        t = i * h
        k1 = velocity_at(t, u)
        k2 = velocity_at(t + h / 2, u + h / 2 * k1)
        k3 = velocity_at(t + h / 2, u + h / 2 * k2)
        k4 = velocity_at(t + h, u + h * k3)
        u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return u


def test_maps_follow_the_characteristics_and_converge_to_the_exact_flow():
    """Both maps against every point's characteristic integrated finely on the same path (velocity nodes of a
    40-step shooting, up to 5 voxels): the error halves as the steps double (second order) and at 10 steps is
    below a third of the Eulerian transport's by central differences (the former map, FLASH's way)."""
    shape, spacing = (48, 48), (1.0, 1.0)
    multiplier = kernel_multiplier(shape, (2.0, 4.0, 8.0), None, spacing, dtype=torch.float64)
    noise = torch.randn(1, 2, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    momentum = 5.0 * noise / apply_kernel(noise, multiplier).abs().max()
    _, _, path = shoot(momentum, multiplier, spacing, 40, with_map=False, return_path=True)
    nodes = [apply_kernel(m, multiplier) for m in path]
    exact = {"inverse_ddf": _flow_of_points(nodes, reverse=False), "ddf": _flow_of_points(nodes, reverse=True)}
    inner = (..., slice(10, -10), slice(10, -10))
    errors = {}
    for steps in (5, 10, 20):
        out = _fields(momentum, multiplier, spacing, num_steps=steps)
        errors[steps] = [float((out[k] - exact[k])[inner].abs().max()) for k in ("ddf", "inverse_ddf")]
    for coarse, fine in ((5, 10), (10, 20)):
        assert all(0.35 < f / c < 0.65 for c, f in zip(errors[coarse], errors[fine])), errors
    _, eulerian = shoot(momentum, multiplier, spacing, 10)
    assert errors[10][0] < float((eulerian - exact["ddf"])[inner].abs().max()) / 3, errors


def test_forward_and_inverse_maps_are_inverse():
    """phi_1 o phi_1^-1 and phi_1^-1 o phi_1 within 0.15 voxel of the identity away from the borders for a
    displacement of up to 2.4 voxels (spatial discretisation and bilinear composition; 10 RK4 steps)."""
    shape, spacing = (32, 32), (1.0, 1.5)
    multiplier = kernel_multiplier(shape, (2.0, 4.0), None, spacing, dtype=torch.float64)
    out = _fields(_smooth_momentum(shape, 5.0, spacing, centred=True), multiplier, spacing)
    inner = (..., slice(4, -4), slice(4, -4))
    assert float(out["ddf"].abs().max()) > 2.0
    for composed in (compose_ddf(out["inverse_ddf"], out["ddf"]), compose_ddf(out["ddf"], out["inverse_ddf"])):
        assert float(composed[inner].abs().max()) < 0.15


def test_energy_gradient_float64():
    """Autograd through the kernel, the RK4 shooting and the warp: gradcheck in float64 (2D)."""
    gen = torch.Generator().manual_seed(0)
    shape, spacing = (7, 6), (1.0, 1.5)
    fixed = torch.rand(1, 1, *shape, dtype=torch.float64, generator=gen)
    moving = torch.rand(1, 1, *shape, dtype=torch.float64, generator=gen)
    multiplier = kernel_multiplier(shape, (1.5, 3.0), (0.3, 0.7), spacing, dtype=torch.float64)
    momentum = (0.3 * torch.randn(1, 2, *shape, dtype=torch.float64, generator=gen)).requires_grad_(True)

    def energy(m):
        return lddmm_energy(m, fixed, moving, multiplier, spacing, regularization_weight=0.1, image_loss="mse",
                            num_steps=3)["total"]

    assert torch.autograd.gradcheck(energy, (momentum,), eps=1e-6, atol=1e-5)


def test_energy_directional_derivative_matches_finite_differences_3d():
    """<grad E, d> against the central difference (E(m + e d) - E(m - e d)) / 2e, float64, 3D, NCC."""
    gen = torch.Generator().manual_seed(1)
    shape, spacing = (10, 9, 8), (1.0, 1.2, 0.8)
    fixed, moving = _blob(shape, (5, 4, 4), 2.0).double(), _blob(shape, (6, 4, 3), 2.0).double()
    multiplier = kernel_multiplier(shape, (1.5, 3.0), None, spacing, dtype=torch.float64)
    momentum = (0.5 * torch.randn(1, 3, *shape, dtype=torch.float64, generator=gen)).requires_grad_(True)
    direction = torch.randn(1, 3, *shape, dtype=torch.float64, generator=gen)

    def energy(m):
        return lddmm_energy(m, fixed, moving, multiplier, spacing, regularization_weight=0.05, ncc_window=5,
                            num_steps=4)["total"]

    (gradient,) = torch.autograd.grad(energy(momentum), momentum)
    eps = 1e-5
    with torch.no_grad():
        numeric = (energy(momentum + eps * direction) - energy(momentum - eps * direction)) / (2 * eps)
    analytic = (gradient * direction).sum()
    assert abs(float(analytic)) > 1e-3
    assert abs(float(analytic - numeric)) < 1e-6 * abs(float(analytic)), (float(analytic), float(numeric))


@pytest.mark.parametrize("map_factor", [1.0, 2.0])
def test_recovers_a_known_shift(map_factor):
    """A blob moved by 3 voxels along the first axis: the field at the blob is about 3 voxels, the images match,
    also with the momentum and maps on a grid twice as coarse as the images (fields returned on the image grid)."""
    shape = (48, 40)
    fixed, moving = _blob(shape, (22, 20)), _blob(shape, (25, 20))
    out = lddmm_register(fixed, moving, sigmas=(4.0, 8.0), image_loss="mse", image_sigma=0.1, regularization_weight=1e-3,
                         levels=(2, 1), iterations=(60, 20), learning_rate=0.3, num_steps=5, inverse=False,
                         map_factor=map_factor)
    assert out["ddf"].shape == (1, 2, *shape) and out["warped"].shape == fixed.shape
    assert out["momentum"].shape == (1, 2, *(round(n / map_factor) for n in shape))
    centre = out["ddf"][0, :, 20:25, 18:23].mean(dim=(1, 2))
    assert abs(float(centre[0]) - 3.0) < 0.3 and abs(float(centre[1])) < 0.3, centre
    assert float((out["warped"] - fixed).abs().max()) < 0.25 * float((moving - fixed).abs().max())
    first, last = out["history"][0]["loss"], out["history"][-1]["loss"]
    assert last < 0.2 * first
    assert "inverse_ddf" not in out


def test_builtin_method_through_register_3d():
    """`register(..., bundle="lddmm")`: the method contract, a smaller image difference, no folding."""
    shape = (24, 20, 16)
    fixed = _blob(shape, (12, 10, 8), width=3.0)[0, 0].numpy()
    moving = _blob(shape, (13, 11, 8), width=3.0)[0, 0].numpy()
    result = md.register(fixed, moving, bundle="lddmm", levels=[2, 1], iterations=[40, 10], regularization_weight=0.01,
                         num_steps=5)
    assert result.info["method"] == "lddmm"
    assert result.inverse_ddf is None  # not asked for
    before = np.abs(moving - fixed).mean()
    after = np.abs(result.warped[0, 0].numpy() - fixed).mean()
    assert after < 0.6 * before
    assert result.metrics["folding_percent"] == 0.0


@pytest.mark.parametrize("options, match", [
    ({"regularization_weight": -1.0}, "'regularization_weight' must be a finite number >= 0"),
    ({"image_loss": "mi"}, "'image_loss' must be one of"),
    ({"levels": (2, 1), "iterations": (5,)}, "'iterations' must be 2 integers"),
    ({"sigmas": (2.0,), "weights": (0.5,)}, "'weights' must be 1 numbers >= 0 summing to 1"),
    ({"num_steps": 0}, "'num_steps' must be an integer >= 1"),
    ({"integrator": "midpoint"}, "'integrator' must be one of \\['rk4', 'euler'\\]"),
    ({"map_factor": 0.5}, "'map_factor' must be >= 1"),
])
def test_bad_settings(options, match):
    with pytest.raises(ValueError, match=r"LDDMMRegistration\(\): " + match):
        LDDMMRegistration(**options)  # refused when built, before any work
    with pytest.raises(ValueError, match=r"lddmm_register\(\): " + match):
        lddmm_register(_blob((16, 16), (8, 8)), _blob((16, 16), (8, 8)), **options)
    with pytest.raises(ValueError, match=r"LDDMMRegistration\(\): " + match):
        load_method("lddmm", **options)  # the built-in method


def test_a_diverging_optimisation_is_one_clear_error():
    """An absurd step size makes the shooting blow up: one line naming the level, the step and what to change
    (before, a non-finite field reached grid_sample's backward: a segmentation fault)."""
    fixed = torch.zeros(1, 1, 24, 24)
    fixed[..., 8:16, 8:16] = 1.0
    moving = torch.roll(fixed, 2, dims=2)
    with pytest.raises(FloatingPointError, match=r"lddmm_register\(\): the optimisation diverged at level 1 of 1, "
                                                 r"step \d+ .*'regularization_weight'"):
        lddmm_register(fixed, moving, image_loss="mse", image_sigma=0.01, regularization_weight=0.0, levels=(1,),
                       iterations=(20,), learning_rate=1e5, num_steps=2, inverse=False)
