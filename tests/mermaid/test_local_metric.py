"""Local metric learning: the weighted linear softmax, the velocity against vSVF's, the weight network on the
simplex, gradients, learning narrow kernels where the deformation is fine, registration with a network, bad inputs."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.functional import gaussian_smooth, warp
from monai_diffreg.mermaid.kernels import apply_kernel, gaussian_multiplier, gaussian_multipliers, kernel_multiplier
from monai_diffreg.mermaid.local_metric import (LocalMetricRegistration, LocalWeightNetwork,
                                                learn_local_weights, local_metric_energy, local_metric_register,
                                                local_velocity, predict_local_weights, smooth_local_weights,
                                                weighted_linear_softmax,
                                                weights_total_variation)
from monai_diffreg.metrics import folding_percentage
from monai_diffreg.validation import NonFiniteError

GLOBAL = torch.tensor([0.2, 0.3, 0.5])
SIGMAS = (1.0, 2.0, 4.0)


def _assert_on_simplex(weights, atol=1e-6):
    assert bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(1), torch.ones_like(weights.sum(1)), atol=atol, rtol=0)


def _varying_network(spatial_dims, scale=1.0, seed=0, **options):
    """A network whose last BatchNorm has a random scale (an untrained one predicts the global weights)."""
    torch.manual_seed(seed)
    network = LocalWeightNetwork(spatial_dims, 3, GLOBAL, **options)
    with torch.no_grad():
        network.layers[-1].weight.uniform_(0.5 * scale, scale)
    return network


def test_weighted_linear_softmax_zero_logits_simplex_and_clamping():
    torch.testing.assert_close(weighted_linear_softmax(torch.zeros(2, 3, 4, 5), GLOBAL),
                               GLOBAL.view(1, 3, 1, 1).expand(2, 3, 4, 5), rtol=0, atol=0)
    torch.testing.assert_close(weighted_linear_softmax(torch.full((3, 7), 5.0), GLOBAL, dim=0),
                               GLOBAL[:, None].expand(3, 7), rtol=0, atol=1e-7)  # only differences to the mean count
    _assert_on_simplex(weighted_linear_softmax(3.0 * torch.randn(4, 3, 6, 6), GLOBAL))
    # x - mean(x) + g = (2.2, 0.3, -1.5) -> clamped (1, 0.3, 0) -> / 1.3
    out = weighted_linear_softmax(torch.tensor([[2.0, 0.0, -2.0]]), GLOBAL)
    torch.testing.assert_close(out, torch.tensor([[1 / 1.3, 0.3 / 1.3, 0.0]]))
    # nothing clamped: (0, -0.1, 0.1) + g = (0.2, 0.2, 0.6), already summing to 1
    torch.testing.assert_close(weighted_linear_softmax(torch.tensor([[0.1, 0.0, 0.2]]), GLOBAL),
                               torch.tensor([[0.2, 0.2, 0.6]]))
    # (1000.2, -999.7, 0.5) -> clamped (1, 0, 0.5) -> / 1.5
    torch.testing.assert_close(weighted_linear_softmax(torch.tensor([[1e3, -1e3, 0.0]]), GLOBAL),
                               torch.tensor([[2 / 3, 0.0, 1 / 3]]))


@pytest.mark.parametrize("shape, spacing", [((12, 10), (1.0, 1.5)), ((8, 10, 6), (1.0, 0.8, 1.2))])
def test_constant_weights_give_vsvf_velocity(shape, spacing):
    """``sqrt(g_i) G_i * (sqrt(g_i) m) = g_i G_i * m``: vSVF's ``v = (sum_i g_i G_i) * m``, with zero TV."""
    momentum = torch.randn(2, len(shape), *shape, dtype=torch.float64)
    weights = GLOBAL.double().view(1, 3, *([1] * len(shape))).expand(2, 3, *shape)
    velocity = local_velocity(momentum, weights, gaussian_multipliers(shape, SIGMAS, spacing, dtype=torch.float64))
    expected = apply_kernel(momentum, kernel_multiplier(shape, SIGMAS, GLOBAL.double(), spacing, dtype=torch.float64))
    torch.testing.assert_close(velocity, expected, rtol=0, atol=1e-12)
    assert float(weights_total_variation(weights, spacing).abs().max()) == 0.0


def test_total_variation_of_a_step():
    """One unit step per row along the last axis (periodic: two steps), voxel size 2 there: 2 * 1/2 per row."""
    weights = torch.zeros(1, 2, 4, 6, dtype=torch.float64)
    weights[:, 0, :, :3] = 1.0
    weights[:, 1] = 1.0 - weights[:, 0]
    # per voxel mean: 2 Gaussians x 2 jumps per row x (1 / 2) / 6 voxels per row
    torch.testing.assert_close(weights_total_variation(weights, (1.0, 2.0)), torch.tensor([2 * 2 * 0.5 / 6],
                                                                                         dtype=torch.float64))


@pytest.mark.parametrize("shape", [(20, 18), (10, 12, 8)])
def test_network_output_on_simplex_2d_3d(shape):
    network = _varying_network(len(shape), scale=3.0, weight_sigma=1.5, spacing=(1.0,) * len(shape))
    image = torch.rand(2, 1, *shape)
    untrained = LocalWeightNetwork(len(shape), 3, GLOBAL)
    torch.testing.assert_close(untrained(image), GLOBAL.view(1, 3, *([1] * len(shape))).expand(2, 3, *shape))
    for mode in (network.train, network.eval):
        mode()
        weights = network(image).detach()
        assert weights.shape == (2, 3, *shape)
        _assert_on_simplex(weights)
        assert float(weights.std(dim=tuple(range(2, weights.ndim))).max()) > 0.01  # varies in space
    # smoothing keeps weights on the simplex, even with exact zeros, and keeps their mean
    raw = weighted_linear_softmax(5.0 * torch.randn(2, 3, *shape, dtype=torch.float64), GLOBAL)
    assert bool((raw == 0).any())
    smoothed = smooth_local_weights(raw, gaussian_multiplier(shape, 0.7, dtype=torch.float64))
    _assert_on_simplex(smoothed, atol=1e-12)
    torch.testing.assert_close(smoothed.mean(dim=tuple(range(2, raw.ndim))), raw.mean(dim=tuple(range(2, raw.ndim))),
                               rtol=0, atol=1e-3)


def _tiny_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape, spacing = (7, 6), (1.0, 1.5)
    fixed = torch.rand(2, 1, *shape, dtype=torch.float64, generator=gen)
    moving = torch.rand(2, 1, *shape, dtype=torch.float64, generator=gen)
    momentum = 0.5 * torch.randn(2, 2, *shape, dtype=torch.float64, generator=gen)
    settings = dict(sigmas=(1.5, 3.0, 6.0), regularization_weight=0.1, omt_weight=0.5, tv_weight=0.3, image_loss="mse",
                    num_steps=3)
    return fixed, moving, momentum, shape, spacing, settings


def test_energy_gradients_wrt_momentum_and_network_float64():
    """Autograd through the network, the softmax, the smoothing, the local kernel, scaling and squaring, the warp,
    OMT and TV."""
    fixed, moving, momentum, shape, spacing, settings = _tiny_problem()
    multipliers = gaussian_multipliers(shape, settings["sigmas"], spacing, dtype=torch.float64)
    network = _varying_network(2, scale=0.05, weight_sigma=1.0).double()  # small logits: no clamping near here
    weights = network(moving, spacing).detach()
    out = local_metric_energy(momentum, weights, fixed, moving, multipliers, spacing, **settings)
    torch.testing.assert_close(out["total"], out["image"] + 0.1 * out["prior"] + 0.5 * out["omt"] + 0.3 * out["tv"])

    def of_momentum(m):
        return local_metric_energy(m, weights, fixed, moving, multipliers, spacing, **settings)["total"]

    assert torch.autograd.gradcheck(of_momentum, (momentum.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)

    params = dict(network.named_parameters())

    def of_parameter(kernel):
        predicted = torch.func.functional_call(network, {**params, "layers.0.weight": kernel}, (moving, spacing))
        return local_metric_energy(momentum, predicted, fixed, moving, multipliers, spacing, **settings)["total"]

    kernel = params["layers.0.weight"].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(of_parameter, (kernel,), eps=1e-6, atol=1e-6)


def test_zero_weights_give_finite_gradients():
    """Weights clamped to 0 by the softmax: ``sqrt`` is continued linearly below 1e-8, so no inf or NaN."""
    fixed, moving, momentum, shape, spacing, settings = _tiny_problem(1)
    weights = torch.zeros(2, 3, *shape, dtype=torch.float64)
    weights[:, 2] = 1.0
    weights.requires_grad_(True)
    momentum.requires_grad_(True)
    multipliers = gaussian_multipliers(shape, settings["sigmas"], spacing, dtype=torch.float64)
    local_metric_energy(momentum, weights, fixed, moving, multipliers, spacing, **settings)["total"].backward()
    assert bool(torch.isfinite(weights.grad).all()) and bool(torch.isfinite(momentum.grad).all())


def _half_and_half_population(n=4, shape=(32, 32), seed=0):
    """Textured images brighter on the left, deformed at a fine scale (1.5 voxels) on the left and a large one
    (8 voxels) on the right."""
    gen = torch.Generator().manual_seed(seed)
    left = torch.zeros(1, 1, *shape)
    left[..., : shape[1] // 2] = 1.0
    soft_left = gaussian_smooth(left, 1.0)
    pairs = []
    for _ in range(n):
        texture = gaussian_smooth(torch.rand(1, 1, *shape, generator=gen), 1.0)
        image = 0.5 * (texture - texture.min()) / (texture.max() - texture.min()) + 0.5 * left
        fine = gaussian_smooth(torch.randn(1, 2, *shape, generator=gen), 1.5)
        smooth = gaussian_smooth(torch.randn(1, 2, *shape, generator=gen), 8.0)
        ddf = soft_left * 1.5 * fine / fine.abs().amax() + (1 - soft_left) * 2.0 * smooth / smooth.abs().amax()
        pairs.append((image, warp(image, ddf)))
    return pairs


def test_learning_puts_narrow_kernels_where_the_deformation_is_fine():
    pairs = _half_and_half_population()
    torch.manual_seed(0)  # the new network's initialisation
    seen = []
    out = learn_local_weights(pairs, sigmas=SIGMAS, regularization_weight=0.1, omt_weight=0.005, tv_weight=0.001,
                              image_loss="mse", image_sigma=0.1, iterations=40, learning_rate=0.1,
                              network_learning_rate=0.05, weight_sigma=1.0, callback=lambda *args: seen.append(args))
    history = out["history"]
    assert [args[:2] for args in seen] == [(0, i) for i in range(40)] and len(history) == 40
    assert len(out["momenta"]) == 4 and out["momenta"][0].shape == (1, 2, 32, 32)
    network = out["network"]
    assert isinstance(network, LocalWeightNetwork) and not network.training
    assert history[0]["omt"] == pytest.approx((1.0 + 0.5 + 0.0) / 3, abs=1e-6)  # starts at the global weights: equal
    assert history[-1]["loss"] < 0.7 * history[0]["loss"] and history[-1]["image"] < 0.6 * history[0]["image"]
    with torch.no_grad():
        weights = torch.cat([network(moving) for _, moving in pairs])
    _assert_on_simplex(weights)
    narrow_left, narrow_right = float(weights[:, 0, :, 2:14].mean()), float(weights[:, 0, :, 18:30].mean())
    assert narrow_left > narrow_right + 0.2, (narrow_left, narrow_right)  # measured 0.44 against 0.04


def _blob(shape, centre, width=3.0):
    grids = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    return torch.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / (2 * width**2))[None, None]


@pytest.mark.parametrize("shape, shift", [((32, 32), (2.0, 0.0)), ((16, 16, 16), (0.0, 1.5, 0.0))])
def test_register_recovers_a_shift_without_folding(shape, shift):
    centre = tuple(n / 2 for n in shape)
    fixed, moving = _blob(shape, centre), _blob(shape, tuple(c + s for c, s in zip(centre, shift)))
    network = _varying_network(len(shape), scale=0.3)
    out = local_metric_register(fixed, moving, network, sigmas=SIGMAS, image_loss="mse", image_sigma=0.1,
                                levels=(2, 1), iterations=(40, 30), learning_rate=0.2, regularization_weight=0.01)
    assert set(out) == {"ddf", "inverse_ddf", "velocity", "momentum", "warped", "energy", "history", "local_weights"}
    assert out["local_weights"].shape == (1, 3, *shape)
    _assert_on_simplex(out["local_weights"])
    with torch.no_grad():
        expected = network.eval()(moving)
    torch.testing.assert_close(out["local_weights"], expected)
    assert float((out["warped"] - fixed).square().mean()) < 0.1 * float((moving - fixed).square().mean())
    assert float(folding_percentage(out["ddf"])) == 0.0
    at_centre = out["ddf"][(0, slice(None), *(int(c) for c in centre))]
    torch.testing.assert_close(at_centre, torch.tensor(shift), atol=0.4, rtol=0)
    assert {"omt", "tv"} <= set(out["history"][-1])


def test_weights_are_predicted_at_the_voxel_size_the_network_states():
    """A network trained on 2-unit voxels sees a 1-unit image area-averaged to 2 units (a 2x2 mean), a 4-unit one
    linearly resampled; one that states no voxel size, or the image's, sees the image as it is."""
    image = torch.rand(1, 1, 16, 12)
    network = _varying_network(2, scale=3.0, weight_sigma=1.5, spacing=(2.0, 2.0)).eval()
    with torch.no_grad():
        coarse = predict_local_weights(network, image, (1.0, 1.0))
        pooled = torch.nn.functional.avg_pool2d(image, 2)
        torch.testing.assert_close(coarse, network(pooled, (2.0, 2.0)))
        assert coarse.shape == (1, 3, 8, 6)
        torch.testing.assert_close(predict_local_weights(network, pooled, (2.0, 2.0)), network(pooled))
        fine = predict_local_weights(network, pooled[..., :4, :3], (4.0, 4.0))
        assert fine.shape == (1, 3, 8, 6)
        unstated = _varying_network(2, scale=3.0, weight_sigma=1.5).eval()
        torch.testing.assert_close(predict_local_weights(unstated, image, (1.0, 1.0)), unstated(image, (1.0, 1.0)))
    _assert_on_simplex(coarse)
    _assert_on_simplex(fine)


def test_learning_records_the_voxel_size_and_registration_uses_it():
    """learn_local_weights at level 2 records the level's voxel size; registering a full-resolution pair then
    predicts on that grid and returns the weights on the pair's grid."""
    shape = (24, 24)
    fixed, moving = _blob(shape, (12, 12)), _blob(shape, (13, 12))
    out = learn_local_weights([(fixed, moving)], sigmas=SIGMAS, iterations=2, level=2.0, spacing=(1.5, 1.5),
                              image_loss="mse", image_sigma=0.1)
    network = out["network"]
    assert network.config["spacing"] == [3.0, 3.0]
    result = local_metric_register(fixed, moving, network, sigmas=SIGMAS, levels=(1,), iterations=(2,),
                                   image_loss="mse", image_sigma=0.1, spacing=(1.5, 1.5), inverse=False)
    with torch.no_grad():
        expected = predict_local_weights(network, moving, (1.5, 1.5))
    assert expected.shape == (1, 3, 12, 12)
    torch.testing.assert_close(result["local_weights"], torch.nn.functional.interpolate(
        expected, size=shape, mode="bilinear", align_corners=False))


def test_settings_holder_with_a_network_or_its_path(tmp_path):
    shape = (24, 24)
    fixed, moving = _blob(shape, (12, 12)), _blob(shape, (13, 12))
    network = _varying_network(2, scale=0.3, weight_sigma=1.5, spacing=(1.0, 1.0))
    path = tmp_path / "weights.pt"
    network.save(path)
    loaded = LocalWeightNetwork.load(path)
    assert loaded.config == network.config and not loaded.training
    settings = dict(sigmas=SIGMAS, levels=(1,), iterations=(10,), image_loss="mse", image_sigma=0.1)
    outs = [LocalMetricRegistration(source, **settings)(fixed, moving, inverse=False) for source in (network, str(path))]
    assert "inverse_ddf" not in outs[0] and outs[0]["ddf"].shape == (1, 2, *shape)
    torch.testing.assert_close(outs[0]["ddf"], outs[1]["ddf"])
    assert "network=" not in repr(LocalMetricRegistration(network, sigmas=SIGMAS))  # settings only
    with pytest.raises(TypeError, match="unknown setting"):
        LocalMetricRegistration(network, weights=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"LocalMetricRegistration\(\): 'network' must be a LocalWeightNetwork .* with 2 "
                                         r"Gaussians \(one per sigma\), got a LocalWeightNetwork for 2D images of 1 "
                                         r"channel\(s\) and 3 Gaussians$"):
        LocalMetricRegistration(network, sigmas=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"LocalMetricRegistration\(\): 'iterations' must be 1 integers"):
        LocalMetricRegistration(network, levels=(1,), iterations=(10, 5))


_PAIR = (torch.rand(1, 1, 10, 10), torch.rand(1, 1, 10, 10))


@pytest.mark.parametrize("pairs, options, match", [
    ([], {}, r"'pairs' must be a non-empty sequence of \(fixed, moving\) tensors"),
    ([_PAIR, (torch.rand(1, 1, 12, 10), torch.rand(1, 1, 12, 10))], {}, r"pair 1 must have the shape of pair 0"),
    ([(_PAIR[0], torch.rand(1, 1, 10, 9))], {}, r"'moving' must have the shape of 'fixed'"),
    ([_PAIR], {"sigmas": ()}, r"'sigmas' must be a non-empty sequence of widths > 0"),
    ([_PAIR], {"sigmas": (2.0, -1.0)}, r"'sigmas' must be a finite number > 0"),
    ([_PAIR], {"sigmas": (2.0, 2.0)}, r"'sigmas' must hold at least two distinct widths"),
    ([_PAIR], {"sigmas": (1.0, 2.0), "global_weights": (1.2, -0.2)}, r"'global_weights' must be 2 numbers >= 0 summing to 1"),
    ([_PAIR], {"global_weights": (0.25,) * 4, "network": LocalWeightNetwork(2, 4, (0.25,) * 4)},
     r"'global_weights' must be None when 'network' is given"),
    ([_PAIR], {"network": LocalWeightNetwork(2, 3, GLOBAL)}, r"'network' must be a LocalWeightNetwork for 2D images of 1 "
                                                             r"channel\(s\) and 4 Gaussians"),
    ([_PAIR], {"network": LocalWeightNetwork(3, 4, (0.25,) * 4)}, r"'network' must be a LocalWeightNetwork for 2D"),
    ([_PAIR], {"tv_weight": -1.0}, r"'tv_weight' must be a finite number >= 0"),
    ([_PAIR], {"omt_weight": float("nan")}, r"'omt_weight' must be a finite number >= 0"),
    ([_PAIR], {"iterations": 2.5}, r"'iterations' must be an integer >= 0"),
    ([_PAIR], {"iterations": -1}, r"'iterations' must be an integer >= 0"),
    ([_PAIR], {"network_learning_rate": 0.0}, r"'network_learning_rate' must be a finite number > 0"),
    ([_PAIR], {"weight_sigma": 0.0}, r"'weight_sigma' must be a finite number > 0"),
    ([_PAIR], {"level": 0.5}, r"'level' must be a downsampling factor >= 1"),
    ([_PAIR], {"image_loss": "mi"}, r"'image_loss' must be one of"),
    ([_PAIR], {"spacing": (1.0,)}, r"'spacing' must be 2 voxel sizes > 0"),
])
def test_learn_bad_inputs(pairs, options, match):
    with pytest.raises(ValueError, match=r"^learn_local_weights(\[pair \d\])?\(\): " + match) as info:
        learn_local_weights(pairs, **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("network, options, match", [
    ("weights.pt", {}, r"'network' must be a LocalWeightNetwork for 2D images of 1 channel\(s\) and 4 Gaussians"),
    (LocalWeightNetwork(2, 3, GLOBAL), {}, r"'network' must be a LocalWeightNetwork for 2D images of 1 channel\(s\) and "
                                          r"4 Gaussians"),
    (LocalWeightNetwork(2, 3, GLOBAL, in_channels=2), {"sigmas": SIGMAS}, r"'network' must be a LocalWeightNetwork"),
    (LocalWeightNetwork(2, 3, GLOBAL), {"sigmas": (1.0, 0.0, 2.0)}, r"'sigmas' must be a finite number > 0"),
    (LocalWeightNetwork(2, 3, GLOBAL), {"sigmas": SIGMAS, "levels": (2, 1), "iterations": (3,)},
     r"'iterations' must be 2 integers >= 0"),
    (LocalWeightNetwork(2, 3, GLOBAL), {"sigmas": SIGMAS, "map_factor": 0.5}, r"'map_factor' must be >= 1"),
    (LocalWeightNetwork(2, 3, GLOBAL), {"sigmas": SIGMAS, "num_steps": -1}, r"'num_steps' must be an integer >= 0"),
])
def test_register_bad_inputs(network, options, match):
    with pytest.raises(ValueError, match=r"^local_metric_register\(\): " + match):
        local_metric_register(*_PAIR, network, **options)


def test_register_refuses_a_network_that_predicts_non_finite_weights():
    """Corrupt parameters (a NaN in the first convolution) are named as such in one line, before any optimisation."""
    network = LocalWeightNetwork(2, 3, GLOBAL)
    with torch.no_grad():
        next(network.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^local_metric_register\(\): the weight network predicted non-finite "
                                             r"kernel weights"):
        local_metric_register(*_PAIR, network, sigmas=SIGMAS)


@pytest.mark.parametrize("args, options, match", [
    ((1, 3, GLOBAL), {}, r"'spatial_dims' must be 2 or 3"),
    ((2, 3, (0.5, 0.6, -0.1)), {}, r"'global_weights' must be 3 numbers >= 0 summing to 1"),
    ((2, 2, GLOBAL), {}, r"'global_weights' must be 2 numbers >= 0 summing to 1"),
    ((2, 3, GLOBAL), {"kernel_size": 4}, r"'kernel_size' must be odd"),
    ((2, 3, GLOBAL), {"hidden_channels": 0}, r"'hidden_channels' must be an integer >= 1"),
    ((2, 3, GLOBAL), {"spacing": (1.0, 0.0)}, r"'spacing' must be 2 voxel sizes > 0"),
])
def test_network_bad_inputs(args, options, match):
    with pytest.raises(ValueError, match=r"^LocalWeightNetwork\(\): " + match):
        LocalWeightNetwork(*args, **options)
