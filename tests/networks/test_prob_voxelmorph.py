"""ProbabilisticVoxelMorph: fixed output keys and shapes, initialisation, exp(v) / exp(-v), gradients."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.functional import compose_ddf, gaussian_smooth, integrate_velocity, resize_field, warp
from monai_diffreg.engines.refinement import refine_network
from monai_diffreg.losses.prob_svf import ProbabilisticSVFLoss
from monai_diffreg.networks import ProbabilisticVoxelMorph
from monai_diffreg.functional.posterior import optimal_log_variance

KEYS = {"ddf", "inverse_ddf", "velocity", "velocity_mean", "velocity_log_var", "warped", "warped_fixed"}
SMALL = {"enc_channels": (4, 8), "dec_channels": (8, 8, 8)}


def _model(spatial_dims, **kwargs):
    return ProbabilisticVoxelMorph(spatial_dims, **{**SMALL, **kwargs})


def _training_loss(model, **kwargs):
    return ProbabilisticSVFLoss("ncc", prior_lambda=model.prior_lambda, posterior=model.posterior, **kwargs)


def _set_constant_velocity(model, values):
    """Make the mean head output the constant vector ``values`` everywhere."""
    with torch.no_grad():
        model.mean_head.weight.zero_()
        model.mean_head.bias.copy_(torch.tensor(values))


@pytest.mark.parametrize("spatial_dims,size,scale,downsize,velocity_size", [
    (2, (33, 47), 1.0, 2, (17, 24)),
    (2, (32, 40), 0.5, 1, (16, 20)),
    (3, (9, 10, 11), 1.0, 2, (5, 5, 6)),
    (3, (16, 18, 21), 0.5, 2, (4, 5, 5)),  # 21 * 0.5 rounds to 10 (half to even)
])
@pytest.mark.parametrize("posterior", ["diagonal", "smoothed"])
def test_keys_and_shapes(spatial_dims, size, scale, downsize, velocity_size, posterior):
    model = _model(spatial_dims, image_scale=scale, int_downsize=downsize, posterior=posterior)
    moving, fixed = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    for mode in (model.train, model.eval):
        mode()
        out = model(moving, fixed)
        assert set(out) == KEYS
        for key in ("ddf", "inverse_ddf"):
            assert out[key].shape == (2, spatial_dims, *size)
        for key in ("velocity", "velocity_mean", "velocity_log_var"):
            assert out[key].shape == (2, spatial_dims, *velocity_size)
        assert out["warped"].shape == out["warped_fixed"].shape == (2, 1, *size)
    assert model.velocity_size(size) == velocity_size
    model.eval()
    with torch.no_grad():
        sampled = model.sample(moving, fixed, num_samples=3)
    assert set(sampled) == KEYS | {"uncertainty"}
    assert sampled["uncertainty"].shape == (2, 1, *size)


@pytest.mark.parametrize("posterior", ["diagonal", "smoothed"])
def test_initial_field_is_near_zero_and_variance_at_the_kl_optimum(posterior):
    model = ProbabilisticVoxelMorph(3, posterior=posterior).eval()  # VoxelMorph's default widths
    moving, fixed = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        out = model(moving, fixed)
    assert out["ddf"].abs().max() < 1e-2
    assert out["inverse_ddf"].abs().max() < 1e-2
    optimum = optimal_log_variance(posterior, model.prior_lambda, 3)
    assert torch.allclose(out["velocity_log_var"], torch.full_like(out["velocity_log_var"], optimum), atol=1e-3)
    assert float(model.mean_head.weight.detach().std()) == pytest.approx(1e-5, rel=0.2)
    assert torch.allclose(out["warped"], moving, atol=1e-2)


def test_eval_uses_mean_and_train_samples():
    model = _model(2)
    with torch.no_grad():
        model.log_var_head.bias.fill_(0.0)
    moving, fixed = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    model.eval()
    out = model(moving, fixed)
    assert torch.equal(out["velocity"], out["velocity_mean"])
    model.train()
    a, b = model(moving, fixed), model(moving, fixed)
    assert not torch.equal(a["velocity"], a["velocity_mean"])
    assert not torch.equal(a["velocity"], b["velocity"])


@pytest.mark.parametrize("scale,downsize", [(1.0, 2), (0.5, 2), (1.0, 1)])
def test_constant_velocity_is_an_exact_translation(scale, downsize):
    """A constant velocity c (velocity-grid voxels) integrates to the translation c * downsize / scale."""
    model = _model(3, image_scale=scale, int_downsize=downsize).eval()
    _set_constant_velocity(model, [0.5, -0.25, 0.75])
    moving, fixed = torch.rand(1, 1, 16, 20, 24), torch.rand(1, 1, 16, 20, 24)
    with torch.no_grad():
        out = model(moving, fixed)
    factor = downsize / scale
    expected = torch.tensor([0.5, -0.25, 0.75]).view(1, 3, 1, 1, 1) * factor
    torch.testing.assert_close(out["ddf"], expected.expand_as(out["ddf"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["inverse_ddf"], -expected.expand_as(out["ddf"]), atol=1e-5, rtol=0)


def test_ddf_is_exp_velocity_and_inverse_is_exp_minus_velocity():
    model = _model(3).eval()
    with torch.no_grad():
        model.mean_head.weight.normal_(0.0, 1.0)
    moving, fixed = (gaussian_smooth(torch.rand(1, 1, 24, 24, 24), 2.0) for _ in range(2))
    with torch.no_grad():
        out = model(moving, fixed)
    v = out["velocity"]
    assert v.abs().max() > 0.3  # a real, non-trivial field
    torch.testing.assert_close(out["ddf"], resize_field(integrate_velocity(v, 7), size=(24, 24, 24)))
    torch.testing.assert_close(out["inverse_ddf"], resize_field(integrate_velocity(-v, 7), size=(24, 24, 24)))
    # phi o phi^-1 ~ id away from the border (interpolation error only)
    inner = (slice(None), slice(None), *[slice(4, -4)] * 3)
    residual = compose_ddf(out["ddf"], out["inverse_ddf"])[inner].abs().max()
    assert residual < 0.1 * out["ddf"][inner].abs().max()


def test_bidirectional_ddfs_keep_each_pair_of_a_batch_apart():
    """Integrated as one batch [v; -v], each item's forward and inverse must come back in order."""
    model = _model(3)
    size = (12, 10, 14)
    velocity = torch.randn(2, 3, *model.velocity_size(size))
    ddf, inverse_ddf = model.bidirectional_ddfs(velocity, size)
    for b in range(2):
        torch.testing.assert_close(ddf[b:b + 1], model.velocity_to_ddf(velocity[b:b + 1], size))
        torch.testing.assert_close(inverse_ddf[b:b + 1], model.velocity_to_ddf(-velocity[b:b + 1], size))


def test_gradients_reach_every_parameter():
    model = _model(2, posterior="smoothed").train()
    moving, fixed = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    out = model(moving, fixed)
    loss = ((out["warped"] - fixed) ** 2).mean() + ((out["warped_fixed"] - moving) ** 2).mean()
    loss = loss + out["velocity_log_var"].exp().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert p.grad.abs().sum() > 0, name


def test_uncertainty_grows_with_posterior_variance():
    model = _model(2).eval()
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        model.log_var_head.bias.fill_(-10.0)
        small = model.sample(moving, fixed, num_samples=4)["uncertainty"]
        model.log_var_head.bias.fill_(-2.0)
        large = model.sample(moving, fixed, num_samples=4)["uncertainty"]
    assert bool((small >= 0).all()) and small.max() < 0.05
    # std of one component of the displacement ~ exp(-1) * 2 (half-resolution voxels), two components
    assert 0.3 < float(large.mean()) < 3.0


def test_velocity_to_ddf_checks_grid():
    model = _model(2)
    with pytest.raises(ValueError, match=r"velocity_to_ddf\(\): 'velocity' must have spatial shape \(8, 8\)"):
        model.velocity_to_ddf(torch.zeros(1, 2, 9, 9), (16, 16))


@pytest.mark.parametrize("kwargs,match", [
    ({"posterior": "full"}, r"'posterior' must be one of \['diagonal', 'smoothed'\]"),
    ({"in_channels": 3}, r"'in_channels' must be an even integer"),
    ({"int_downsize": 3}, r"'int_downsize' must be a power of two"),
    ({"int_downsize": 8}, r"'int_downsize' must be a power of two between 1 and 4"),
    ({"image_scale": 0}, r"'image_scale' must be a finite number > 0"),
    ({"prior_lambda": -1.0}, r"'prior_lambda' must be a finite number > 0"),
    ({"num_steps": -1}, r"'num_steps' must be an integer >= 0"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _model(2, **kwargs)


def test_bad_inputs():
    model = _model(3)
    a = torch.rand(1, 1, 16, 16, 16)
    with pytest.raises(ValueError, match=r"'moving' must be 5D"):
        model(torch.rand(1, 1, 16, 16), a)
    with pytest.raises(ValueError, match=r"must share batch and spatial sizes"):
        model(a, torch.rand(1, 1, 16, 16, 17))
    with pytest.raises(ValueError, match=r"channels must add up to in_channels=2, got 2 \+ 1"):
        model(torch.rand(1, 2, 16, 16, 16), a)
    with pytest.raises(ValueError, match=r"'num_samples' must be an integer >= 2"):
        model.sample(a, a, num_samples=1)


def _synthetic_pair(size=(32, 32)):
    """A smooth random image and a copy deformed by a known smooth diffeomorphism."""
    from monai_diffreg.functional import warp
    from monai_diffreg.transforms.deformation import deformation_from_params, sample_smooth_velocity_params

    generator = torch.Generator().manual_seed(1)
    fixed = gaussian_smooth(torch.rand((1, 1, *size), generator=generator), 1.5)
    fixed = (fixed - fixed.min()) / (fixed.max() - fixed.min())
    params = sample_smooth_velocity_params(size, control_spacing=8.0, max_displacement=2.0, generator=generator)
    moving = warp(fixed, deformation_from_params(params)["inverse_ddf"])
    return moving, fixed


@pytest.mark.parametrize("int_downsize", [1, 2])
def test_refine_improves_the_image_term_and_stays_diffeomorphic(int_downsize):
    from monai_diffreg.functional import jacobian_determinant
    from monai_diffreg.losses.ncc import local_ncc_loss

    model = _model(2, int_downsize=int_downsize, prior_lambda=0.5).eval()
    moving, fixed = _synthetic_pair()
    with torch.no_grad():
        before = model(moving, fixed)
    history = []
    after = refine_network(model, moving, fixed, _training_loss(model), 25, learning_rate=0.3,
                           callback=lambda i, loss: history.append(loss))
    assert set(after) == KEYS and len(history) == 25
    assert history[-1] < history[0]
    ncc_before = float(local_ncc_loss(before["warped"], fixed))
    ncc_after = float(local_ncc_loss(after["warped"], fixed))
    assert ncc_after < ncc_before - 0.05
    assert float(((after["warped"] - fixed) ** 2).mean()) < 0.8 * float(((before["warped"] - fixed) ** 2).mean())
    assert float(jacobian_determinant(after["ddf"]).min()) > 0
    assert float(jacobian_determinant(after["inverse_ddf"]).min()) > 0
    assert torch.equal(after["velocity"], after["velocity_mean"])


def test_refine_without_steps_is_the_mean_prediction():
    model = _model(2).eval()
    moving, fixed = _synthetic_pair()
    with torch.no_grad():
        expected = model(moving, fixed)
    out = refine_network(model, moving, fixed, _training_loss(model), 0)
    for key in KEYS:
        torch.testing.assert_close(out[key], expected[key])


@pytest.mark.parametrize("scale,downsize,size", [(1.0, 2, (9, 12)), (0.5, 2, (20, 18)), (1.0, 1, (8, 8))])
def test_images_on_network_grid_cover_the_velocity_cells(scale, downsize, size):
    model = _model(2, image_scale=scale, int_downsize=downsize)
    image = torch.full((1, 1, *size), 0.25)
    on_grid = model.images_on_network_grid(image)
    assert on_grid.shape == (1, 1, *(n * downsize for n in model.velocity_size(size)))
    torch.testing.assert_close(on_grid, torch.full_like(on_grid, 0.25))


def test_refine_starts_at_the_training_loss_of_the_forward_registration():
    """refine_network's first loss is the training loss (weighted image term, both directions when bidirectional,
    KL) of the forward pass's warped images on the network grid: same geometry, same balance."""
    from monai_diffreg.losses.ncc import local_ncc_loss

    model = _model(2, image_scale=0.5, int_downsize=2).eval()
    with torch.no_grad():
        model.mean_head.weight.normal_(0.0, 0.3)
    moving, fixed = torch.rand(1, 1, 32, 40), torch.rand(1, 1, 32, 40)
    with torch.no_grad():
        mean, log_var = model.posterior_params(moving, fixed)
        ddf = resize_field(integrate_velocity(mean, model.num_steps), size=[2 * n for n in mean.shape[2:]])
        inverse_ddf = resize_field(integrate_velocity(-mean, model.num_steps), size=[2 * n for n in mean.shape[2:]])
        on_grid_moving, on_grid_fixed = model.images_on_network_grid(moving), model.images_on_network_grid(fixed)
        forward_ncc = float(local_ncc_loss(warp(on_grid_moving, ddf), on_grid_fixed))
        inverse_ncc = float(local_ncc_loss(warp(on_grid_fixed, inverse_ddf), on_grid_moving))
    assert ddf.abs().max() > 0.2
    # the training loss as it is: unidirectional weight 1, then bidirectional with the image term weighted
    for bidirectional, weight, image in ((False, 1.0, forward_ncc), (True, 10.0, 0.5 * (forward_ncc + inverse_ncc))):
        loss_function = ProbabilisticSVFLoss("ncc", prior_lambda=model.prior_lambda, posterior=model.posterior,
                                             bidirectional=bidirectional, image_weight=weight)
        expected = weight * image + float(loss_function.kl_term(mean, log_var))
        first = []
        refine_network(model, moving, fixed, loss_function, 1, callback=lambda i, loss: first.append(loss))
        assert first[0] == pytest.approx(expected, abs=1e-4)


def test_instance_norm_model_trains():
    model = _model(3, norm="instance", int_downsize=1).train()
    moving, fixed = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    out = model(moving, fixed)
    assert set(out) == KEYS and out["ddf"].shape == (1, 3, 16, 16, 16)
    ((out["warped"] - fixed) ** 2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_displacements_match_forward_in_eval_mode():
    model = _model(3, int_downsize=2).eval()
    torch.nn.init.normal_(model.mean_head.weight, 0.0, 0.05)
    pair = torch.rand(1, 1, 12, 14, 10), torch.rand(1, 1, 12, 14, 10)
    with torch.no_grad():
        full, lean = model(*pair), model.displacements(*pair)
    assert set(lean) == {"ddf", "inverse_ddf"}
    assert torch.equal(full["ddf"], lean["ddf"]) and torch.equal(full["inverse_ddf"], lean["inverse_ddf"])


def test_refine_needs_the_probabilistic_loss_context():
    """The KL term needs the network's log variance: a network without it (MDRegNet) cannot refine with this loss."""
    from monai_diffreg.networks import MDRegNet

    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    network = MDRegNet(2, enc_channels=(4, 8, 8, 8), up_channels=8, out_channels=(8, 4)).eval()
    with pytest.raises(ValueError, match=r"refinement_terms\(\): the refinement context lacks 'velocity_log_var'"):
        refine_network(network, moving, fixed, ProbabilisticSVFLoss(), 1)
    with pytest.raises(ValueError, match=r"ProbabilisticVoxelMorph\(\): .moving. must be 5D"):
        refine_network(_model(3), moving, fixed, ProbabilisticSVFLoss(), 1)  # 2D images for a 3D model


def test_refined_displacements_are_the_refined_outputs_fields():
    """displacements_only: the same fields as the full outputs, without the warped images; no inverse on request."""
    model = _model(2, int_downsize=2).eval()
    moving, fixed = _synthetic_pair()
    full = refine_network(model, moving, fixed, _training_loss(model), 3, learning_rate=0.3)
    lean = refine_network(model, moving, fixed, _training_loss(model), 3, learning_rate=0.3, displacements_only=True)
    assert set(lean) == {"ddf", "inverse_ddf"}
    for key in lean:
        torch.testing.assert_close(lean[key], full[key])
    forward_only = refine_network(model, moving, fixed, _training_loss(model), 3, learning_rate=0.3,
                                  displacements_only=True, inverse=False)
    assert set(forward_only) == {"ddf"}
    torch.testing.assert_close(forward_only["ddf"], full["ddf"])
