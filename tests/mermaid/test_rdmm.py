"""RDMM: identity at m_0 = 0, equality with LDDMM for spatially constant weights, conservation of <m, v>, advected
weights, gradients in m_0 and the pre-weights, a recovered shift with pre-defined and optimised weights, weights from
labels, the method contract, bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import monai_diffreg as md
from monai_diffreg.functional import warp
from monai_diffreg.mermaid import RDMMRegistration, apply_kernel, gaussian_multiplier, kernel_energy, kernel_multiplier
from monai_diffreg.mermaid.lddmm import epdiff_rates, lddmm_fields
from monai_diffreg.mermaid.lddmm import shoot as shoot_lddmm
from monai_diffreg.mermaid.rdmm import (pre_weights, rdmm_energy, rdmm_fields, rdmm_operators, rdmm_rates, rdmm_register,
                                        rdmm_velocity, shoot, smooth_weights, weights_from_labels)
from monai_diffreg.methods import load_method


def _blob(shape, centre, width=4.0):
    grids = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return torch.exp(-r2 / (2 * width**2))[None, None]


def _smooth(shape, channels, amplitude, spacing, seed, offset=0.0):
    """A smooth random field ``(1, channels, *shape)`` float64, ``offset + amplitude * f`` with ``max |f| = 1``."""
    noise = torch.randn(1, channels, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    field = apply_kernel(noise, gaussian_multiplier(shape, 2.0, spacing, dtype=torch.float64))
    return offset + amplitude * field / field.abs().max()


def _constant(values, shape):
    return torch.tensor(values, dtype=torch.float64).view(1, -1, *([1] * len(shape))).expand(1, -1, *shape).clone()


def test_zero_momentum_is_the_identity():
    fixed = _blob((20, 24), (10, 12))
    out = rdmm_register(fixed, fixed.clone(), levels=(1,), iterations=(0,))
    assert torch.equal(out["ddf"], torch.zeros(1, 2, 20, 24))
    assert torch.equal(out["inverse_ddf"], torch.zeros(1, 2, 20, 24))
    torch.testing.assert_close(out["warped"], fixed)
    torch.testing.assert_close(out["weights"], torch.full((1, 4, 20, 24), 0.25))  # the global weights (equal)


@pytest.mark.parametrize("shape, spacing", [((16, 14), (1.0, 1.5)), ((10, 9, 8), (1.0, 1.2, 0.8))])
def test_constant_weights_are_lddmm_with_the_weighted_kernel(shape, spacing):
    """Every voxel the same kernel weights omega (w = sqrt(omega), grad w = 0): RDMM's rates and shot fields are
    LDDMM's with K = sum_i omega_i G_i to float64 rounding, and the weights do not change."""
    sigmas, omega = (2.0, 4.0, 8.0), (0.2, 0.3, 0.5)
    ops = rdmm_operators(shape, sigmas, 3.0, spacing, dtype=torch.float64)
    multiplier = kernel_multiplier(shape, sigmas, omega, spacing, dtype=torch.float64)
    weights = smooth_weights(pre_weights(_constant(omega, shape)), ops.smoothing)
    torch.testing.assert_close(weights, _constant(omega, shape).sqrt(), atol=1e-15, rtol=0)
    momentum = _smooth(shape, len(shape), 3.0, spacing, seed=0)
    displacement = _smooth(shape, len(shape), 1.0, spacing, seed=1)
    dm, dw, du = rdmm_rates(momentum, weights, displacement, ops.multipliers, spacing)
    dm_lddmm, du_lddmm = epdiff_rates(momentum, displacement, multiplier, spacing)
    assert float(dm_lddmm.abs().max()) > 0.1
    torch.testing.assert_close(dm, dm_lddmm, atol=1e-12, rtol=0)
    torch.testing.assert_close(du, du_lddmm, atol=1e-12, rtol=0)
    assert float(dw.abs().max()) == 0.0
    m1, w1, u1 = shoot(momentum, weights, ops.multipliers, spacing)
    m1_lddmm, u1_lddmm = shoot_lddmm(momentum, multiplier, spacing)
    assert float((m1_lddmm - momentum).abs().max()) > 0.3  # a non-trivial geodesic
    torch.testing.assert_close(m1, m1_lddmm, atol=1e-12, rtol=0)
    torch.testing.assert_close(u1, u1_lddmm, atol=1e-12, rtol=0)
    torch.testing.assert_close(w1, weights, atol=0, rtol=0)
    out = rdmm_fields(momentum, weights, ops.multipliers, spacing, False)
    ref = lddmm_fields(momentum, apply_kernel(momentum, multiplier), multiplier, spacing, False)
    for key in ("ddf", "initial_velocity"):
        torch.testing.assert_close(out[key], ref[key], atol=1e-12, rtol=0)


def test_kinetic_energy_is_conserved_with_varying_weights():
    """<m_t, v_t> (the Hamiltonian) is conserved exactly by the semi-discrete system, the weights' force included:
    10 RK4 steps drift by < 1e-6 relative while m and w change; Euler by > 1e-3."""
    shape, spacing, sigmas = (16, 14), (1.0, 1.5), (2.0, 4.0, 8.0)
    ops = rdmm_operators(shape, sigmas, 2.0, spacing, dtype=torch.float64)
    momentum = _smooth(shape, 2, 3.0, spacing, seed=0)
    weights = smooth_weights(_smooth(shape, 3, 0.5, spacing, seed=2, offset=1.0), ops.smoothing)
    drift = {}
    for integrator in ("rk4", "euler"):
        *_, path = shoot(momentum, weights, ops.multipliers, spacing, integrator=integrator, with_map=False,
                         return_path=True)
        for m, w, v in path:  # the nodes' velocities are the integrator's (reused), equal to recomputed ones
            torch.testing.assert_close(v, rdmm_velocity(m, w, ops.multipliers)[0], rtol=0, atol=1e-12)
        energy = torch.cat([kernel_energy(m, v) for m, _, v in path])
        drift[integrator] = float((energy - energy[0]).abs().max() / energy[0])
    assert float((path[-1][0] - momentum).abs().max()) > 0.3 * float(momentum.abs().max())
    assert float((path[-1][1] - weights).abs().max()) > 0.02
    assert drift["rk4"] < 1e-6 and drift["euler"] > 1e-3, drift


def test_path_velocities_come_from_the_integrator(monkeypatch):
    """RK4 evaluates the velocity at every node but the last: the path costs one velocity more than the shooting."""
    import monai_diffreg.mermaid.rdmm as rdmm_module

    shape, spacing = (12, 10), (1.0, 1.0)
    ops = rdmm_operators(shape, (1.0, 2.0), 1.0, spacing, dtype=torch.float64)
    calls = []
    original = rdmm_module.rdmm_velocity
    monkeypatch.setattr(rdmm_module, "rdmm_velocity", lambda *args: calls.append(1) or original(*args))
    momentum = _smooth(shape, 2, 1.0, spacing, seed=0)
    weights = smooth_weights(_smooth(shape, 2, 0.5, spacing, seed=2, offset=1.0), ops.smoothing)
    shoot(momentum, weights, ops.multipliers, spacing, num_steps=3, with_map=False, return_path=True)
    assert len(calls) == 4 * 3 + 1


def test_velocity_is_the_same_one_gaussian_at_a_time(monkeypatch):
    """Above BATCHED_KERNELS_LIMIT the Gaussians are applied one by one (memory): the same velocity and terms."""
    import monai_diffreg.mermaid.rdmm as rdmm_module

    shape, spacing = (14, 12, 10), (1.0, 1.5, 1.0)
    ops = rdmm_operators(shape, (1.0, 2.0, 4.0), 1.0, spacing, dtype=torch.float64)
    momentum = _smooth(shape, 3, 1.0, spacing, seed=0)
    weights = smooth_weights(_smooth(shape, 3, 0.5, spacing, seed=2, offset=1.0), ops.smoothing)
    batched = rdmm_velocity(momentum, weights, ops.multipliers)
    monkeypatch.setattr(rdmm_module, "BATCHED_KERNELS_LIMIT", 0)
    for together, alone in zip(batched, rdmm_velocity(momentum, weights, ops.multipliers)):
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)


def test_weights_are_advected():
    """A bump in the weights under a nearly constant flow (constant momentum; the bump is small): the bump's centre
    moves by the displacement (3 voxels along the first axis) and w_1 = w_0 o phi_1^-1 to 5 % of the bump's change
    (the central differences' transport error)."""
    shape, spacing, sigmas = (40, 24), (1.0, 1.0), (3.0, 6.0)
    ops = rdmm_operators(shape, sigmas, 1.0, spacing, dtype=torch.float64)
    momentum = _constant((3.0, 0.0), shape)
    bump = _blob(shape, (14, 12), width=3.0).double()
    weights = smooth_weights(torch.cat([torch.ones_like(bump), 1.0 + 0.2 * bump], dim=1), ops.smoothing)
    _, w1, ddf = shoot(momentum, weights, ops.multipliers, spacing)  # spacing 1: the displacement in voxels
    assert abs(float(ddf[0, 0].mean()) + 3.0) < 0.01 and float(ddf[0, 0].max() - ddf[0, 0].min()) < 0.06

    def centre(w):
        profile = (w[0, 1] - w[0, 1].min()).sum(1)
        return float((profile * torch.arange(shape[0], dtype=torch.float64)).sum() / profile.sum())

    assert abs(centre(weights) - 14.0) < 0.01 and abs(centre(w1) - 17.0) < 0.05
    change = float((w1 - weights).abs().max())
    assert change > 0.02
    assert float((w1 - warp(weights, ddf))[..., 4:-4, 4:-4].abs().max()) < 0.05 * change


def test_energy_gradient_float64():
    """Autograd through the weights' smoothing, the RDMM shooting, the penalties and the warp: gradcheck in float64
    (2D) in m_0 and the pre-weights."""
    gen = torch.Generator().manual_seed(0)
    shape, spacing, sigmas = (7, 6), (1.0, 1.5), (1.5, 3.0)
    fixed = torch.rand(1, 1, *shape, dtype=torch.float64, generator=gen)
    moving = torch.rand(1, 1, *shape, dtype=torch.float64, generator=gen)
    ops = rdmm_operators(shape, sigmas, 1.5, spacing, dtype=torch.float64)
    momentum = (0.3 * torch.randn(1, 2, *shape, dtype=torch.float64, generator=gen)).requires_grad_(True)
    pre = (0.5 + torch.rand(1, 2, *shape, dtype=torch.float64, generator=gen)).requires_grad_(True)
    reference = torch.tensor([0.6, 0.8], dtype=torch.float64)

    def energy(m, h):
        return rdmm_energy(m, h, fixed, moving, ops, spacing, sigmas=sigmas, reference=reference,
                           regularization_weight=0.1, omt_weight=0.3, range_weight=0.2, image_loss="mse",
                           num_steps=2)["total"]

    assert torch.autograd.gradcheck(energy, (momentum, pre), eps=1e-6, atol=1e-5)


def test_weights_from_labels():
    """The stated weights where the label is (and the default elsewhere), exactly, and after the model's smoothing
    far from the structure's border."""
    labels = torch.zeros(1, 1, 40, 12, dtype=torch.int64)
    labels[:, :, :20] = 3
    stiff, default = (0.0, 0.0, 1.0), (0.5, 0.3, 0.2)
    omega = weights_from_labels(labels, {3: stiff}, default)
    assert omega.shape == (1, 3, 40, 12) and omega.dtype == torch.float32
    torch.testing.assert_close(omega[0, :, 5, 3], torch.tensor(stiff), atol=0, rtol=0)
    torch.testing.assert_close(omega[0, :, 25, 3], torch.tensor(default), atol=0, rtol=0)
    weights = smooth_weights(pre_weights(omega.double()), rdmm_operators((40, 12), (1.0, 2.0, 4.0), 1.5,
                                                                         dtype=torch.float64).smoothing)
    torch.testing.assert_close(weights.square()[0, :, 10, 3], torch.tensor(stiff).double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(weights.square()[0, :, 30, 3], torch.tensor(default).double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(weights.square().sum(1), torch.ones(1, 40, 12, dtype=torch.float64))


@pytest.mark.parametrize("optimize_weights", [False, True])
def test_recovers_a_known_shift(optimize_weights):
    """A blob moved by 3 voxels along the first axis, with pre-defined weights (stiff, all on the widest Gaussian,
    inside the blob) or optimised ones: the field at the blob is about 3 voxels and the images match; only the
    optimised weights change (and report their penalties)."""
    shape = (48, 40)
    fixed, moving = _blob(shape, (22, 20)), _blob(shape, (25, 20))
    labels = (_blob(shape, (24, 20)) > 0.3).long()
    initial = weights_from_labels(labels, {1: (0.0, 1.0)}, (0.5, 0.5))
    out = rdmm_register(fixed, moving, sigmas=(4.0, 8.0), initial_weights=initial, optimize_weights=optimize_weights,
                        weight_sigma=2.0, image_loss="mse", image_sigma=0.1, regularization_weight=1e-3,
                        levels=(2, 1), iterations=(60, 20), num_steps=5, inverse=False, map_factor=2.0)
    assert out["ddf"].shape == (1, 2, *shape) and out["weights"].shape == (1, 2, *shape)
    assert out["pre_weights"].shape == out["momentum"].shape == (1, 2, 24, 20)
    centre = out["ddf"][0, :, 20:25, 18:23].mean(dim=(1, 2))
    assert abs(float(centre[0]) - 3.0) < 0.3 and abs(float(centre[1])) < 0.3, centre
    assert float((out["warped"] - fixed).abs().max()) < 0.25 * float((moving - fixed).abs().max())
    assert out["history"][-1]["loss"] < 0.2 * out["history"][0]["loss"]
    assert float(out["weights"][0, 1, 24, 20]) > 0.9  # stiff inside the blob
    changed = not torch.allclose(out["pre_weights"], md.functional.resize_image(initial.sqrt(), size=(24, 20)))
    assert changed == optimize_weights
    assert {"omt", "range"} <= set(out["history"][-1]) and "inverse_ddf" not in out


def test_builtin_method_through_register_3d():
    """`register(..., bundle="rdmm")`: the method contract, a smaller image difference, no folding; the inverse
    (along the same path's characteristics) composes with the field to the identity within 0.1 voxel."""
    shape = (24, 20, 16)
    fixed = _blob(shape, (12, 10, 8), width=3.0)[0, 0].numpy()
    moving = _blob(shape, (13, 11, 8), width=3.0)[0, 0].numpy()
    result = md.register(fixed, moving, bundle="rdmm", levels=[2, 1], iterations=[40, 10], regularization_weight=0.01,
                         num_steps=4)
    assert result.info["method"] == "rdmm"
    assert result.inverse_ddf is None  # not asked for
    before = np.abs(moving - fixed).mean()
    after = np.abs(result.warped[0, 0].numpy() - fixed).mean()
    assert after < 0.6 * before
    assert result.metrics["folding_percent"] == 0.0
    out = RDMMRegistration(levels=(1,), iterations=(5,), num_steps=3, map_factor=1.0)(
        torch.from_numpy(fixed)[None, None], torch.from_numpy(moving)[None, None])
    for residual in (md.functional.compose_ddf(out["ddf"], out["inverse_ddf"]),
                     md.functional.compose_ddf(out["inverse_ddf"], out["ddf"])):
        assert float(residual.abs().max()) < 0.1
    assert float(out["ddf"].abs().max()) > 0.5


@pytest.mark.parametrize("options, match", [
    ({"weight_sigma": 0.0}, "'weight_sigma' must be a finite number > 0"),
    ({"omt_weight": -1.0}, "'omt_weight' must be a finite number >= 0"),
    ({"range_weight": float("nan")}, "'range_weight' must be a finite number >= 0"),
    ({"optimize_weights": "yes"}, "'optimize_weights' must be True or False"),
    ({"weights_learning_rate": 0.0}, "'weights_learning_rate' must be a finite number > 0"),
    ({"num_steps": 0}, "'num_steps' must be an integer >= 1"),
    ({"sigmas": (2.0, 4.0), "weights": (0.5, 0.6)}, "'weights' must be 2 numbers >= 0 summing to 1"),
])
def test_bad_settings(options, match):
    with pytest.raises(ValueError, match=r"RDMMRegistration\(\): " + match):
        RDMMRegistration(**options)  # refused when built, before any work
    with pytest.raises(ValueError, match=r"rdmm_register\(\): " + match):
        rdmm_register(_blob((16, 16), (8, 8)), _blob((16, 16), (8, 8)), **options)
    with pytest.raises(ValueError, match=r"RDMMRegistration\(\): " + match):
        load_method("rdmm", **options)  # the built-in method


def test_bad_weights():
    image = _blob((16, 16), (8, 8))
    for bad in (torch.ones(1, 3, 16, 16), -torch.ones(1, 4, 16, 16), torch.zeros(1, 4, 16, 16)):
        with pytest.raises(ValueError, match=r"rdmm_register\(\): 'initial_weights' must be a \(1, 4, \*spatial\)"):
            rdmm_register(image, image, initial_weights=bad)
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"weights_from_labels\(\): 'label_weights\[1\]' must give 2 numbers >= 0"):
        weights_from_labels(labels, {1: (0.2, 0.2)}, (0.5, 0.5))
    with pytest.raises(ValueError, match=r"weights_from_labels\(\): 'labels' must be a \(B, 1, \*spatial\) label map"):
        weights_from_labels(labels[0], {}, (0.5, 0.5))
