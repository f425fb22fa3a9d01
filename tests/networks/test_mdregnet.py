"""MDRegNet: output keys and shapes, eq. 3 accumulation with vector rescaling, level inputs, smoothing layer, learning."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.functional import gaussian_smooth, resize_image, warp
from monai_diffreg.engines.refinement import refine_network
from monai_diffreg.losses import MDRegNetLoss
from monai_diffreg.networks import MDRegNet

LEVEL_KEYS = ("velocity_levels", "fixed_levels", "moving_levels", "warped_levels", "warped_fixed_levels")
KEYS = {"ddf", "inverse_ddf", "velocity", "warped", "warped_fixed", *LEVEL_KEYS}
SMALL = {"enc_channels": (4, 8, 8, 8), "up_channels": 8, "out_channels": (8, 4)}


def _model(spatial_dims, **kwargs):
    return MDRegNet(spatial_dims, **{**SMALL, **kwargs})


def _set_constant_increments(model, increments):
    """Make sub-network ``l`` output the constant velocity ``increments[l]`` everywhere."""
    with torch.no_grad():
        for subnetwork, values in zip(model.subnetworks, increments):
            subnetwork.flow.weight.zero_()
            subnetwork.flow.bias.copy_(torch.tensor(values, dtype=torch.float32))


@pytest.mark.parametrize("spatial_dims,size,scale,levels", [
    (2, (50, 37), 1.0, 3),
    (2, (64, 48), 0.5, 2),
    (3, (33, 40, 28), 1.0, 3),
    (3, (32, 32, 32), 1.0, 4),
    (3, (20, 18, 22), 1.0, 1),
])
def test_keys_and_shapes(spatial_dims, size, scale, levels):
    model = _model(spatial_dims, levels=levels, image_scale=scale)
    moving, fixed = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    out = model(moving, fixed)
    assert set(out) == KEYS
    sizes = model.level_sizes(size)
    assert len(sizes) == levels
    assert sizes[-1] == tuple(-(-round(s * scale) // 2) for s in size)  # finest velocity at 1/2
    for key in ("ddf", "inverse_ddf"):
        assert out[key].shape == (2, spatial_dims, *size)
    assert out["velocity"].shape == (2, spatial_dims, *sizes[-1])
    for key in LEVEL_KEYS:
        assert len(out[key]) == levels
    for level in range(levels):
        assert out["velocity_levels"][level].shape == (2, spatial_dims, *sizes[level])
    for level in range(levels - 1):
        for key in LEVEL_KEYS[1:]:
            assert out[key][level].shape == (2, 1, *sizes[level])
    assert out["warped_levels"][-1] is out["warped"]
    assert out["fixed_levels"][-1] is fixed


def test_initial_field_is_near_identity():
    model = MDRegNet(3).eval()  # the paper's widths
    with torch.no_grad():
        out = model(torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32))
    assert out["ddf"].abs().max() < 1e-2
    assert out["inverse_ddf"].abs().max() < 1e-2


@pytest.mark.parametrize("smoothing", [True, False])
def test_constant_increments_accumulate_with_vector_rescaling(smoothing):
    """Eq. 3: v~ = sum_l v^l, each coarser sum upsampled x2 with its vectors doubled; exp of a constant is a shift."""
    model = _model(3, smoothing=smoothing).eval()
    increments = [(0.25, 0.0, -0.125), (0.0, 0.5, 0.25), (-0.5, 0.25, 0.0)]  # velocity voxels of 1/8, 1/4, 1/2
    _set_constant_increments(model, increments)
    with torch.no_grad():
        out = model(torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32))
    finest = torch.tensor(increments[0]) * 4 + torch.tensor(increments[1]) * 2 + torch.tensor(increments[2])
    expected_ddf = 2 * finest  # 1/2 grid -> full resolution
    assert torch.allclose(out["velocity"], finest.view(1, 3, 1, 1, 1).expand_as(out["velocity"]), atol=1e-5)
    assert torch.allclose(out["ddf"], expected_ddf.view(1, 3, 1, 1, 1).expand_as(out["ddf"]), atol=1e-4)
    assert torch.allclose(out["inverse_ddf"], -out["ddf"], atol=1e-4)
    for level, values in enumerate(increments):
        v = out["velocity_levels"][level]
        assert torch.allclose(v, torch.tensor(values).view(1, 3, 1, 1, 1).expand_as(v), atol=1e-6)


def test_level_images_are_warped_by_the_accumulated_field():
    """Level l's warped image is its pyramid image shifted by exp(v~^l); the next level sees moving o exp(v~^l)."""
    model = _model(2, levels=2).eval()
    increments = [(1.0, -0.5), (0.5, 0.25)]  # at 1/4 and 1/2
    _set_constant_increments(model, increments)
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    seen = {}
    model.subnetworks[1].register_forward_pre_hook(lambda module, args: seen.setdefault("input", args[0]))
    with torch.no_grad():
        out = model(moving, fixed)
    coarse_shift = torch.tensor(increments[0]).view(1, 2, 1, 1)
    pyramid = resize_image(moving, size=(8, 8), mode="area")
    assert torch.allclose(out["moving_levels"][0], pyramid)
    assert torch.allclose(out["warped_levels"][0], warp(pyramid, coarse_shift.expand(1, 2, 8, 8)), atol=1e-5)
    fixed_pyramid = resize_image(fixed, size=(8, 8), mode="area")
    assert torch.allclose(out["warped_fixed_levels"][0], warp(fixed_pyramid, -coarse_shift.expand(1, 2, 8, 8)), atol=1e-5)
    full_shift = (4 * coarse_shift).expand(1, 2, 32, 32)  # 1/4 grid -> full resolution
    assert torch.allclose(seen["input"][:, :1], warp(moving, full_shift), atol=1e-5)
    assert torch.equal(seen["input"][:, 1:], fixed)


def test_smoothing_layer_smooths_the_finest_accumulated_velocity():
    torch.manual_seed(0)
    smoothed = _model(3)
    plain = _model(3, smoothing=False)
    plain.load_state_dict(smoothed.state_dict())
    for subnetwork in smoothed.subnetworks:  # a field with texture, so smoothing changes it
        torch.nn.init.normal_(subnetwork.flow.weight, 0.0, 0.1)
    plain.load_state_dict(smoothed.state_dict())
    pair = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        v_smoothed, v_plain = smoothed(*pair)["velocity"], plain(*pair)["velocity"]
    expected = gaussian_smooth(v_plain, 1.732, kernel_size=3)
    assert torch.allclose(v_smoothed, expected, atol=1e-6)
    assert (v_smoothed - v_plain).abs().max() > 1e-3


def test_displacements_match_forward():
    model = _model(3).eval()
    for subnetwork in model.subnetworks:
        torch.nn.init.normal_(subnetwork.flow.weight, 0.0, 0.05)
    pair = torch.rand(1, 1, 24, 30, 20), torch.rand(1, 1, 24, 30, 20)
    with torch.no_grad():
        full, lean = model(*pair), model.displacements(*pair)
    assert set(lean) == {"ddf", "inverse_ddf"}
    assert torch.equal(full["ddf"], lean["ddf"]) and torch.equal(full["inverse_ddf"], lean["inverse_ddf"])


def test_loss_reaches_every_subnetwork():
    model = _model(2)
    out = model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    MDRegNetLoss()(out)["loss"].backward()
    for level, subnetwork in enumerate(model.subnetworks):
        assert subnetwork.flow.weight.grad.abs().sum() > 0, f"level {level} got no gradient"


def test_learns_a_translation_2d(fit_blob_translation):
    """A few Adam steps on one pair: the similarity improves and the field moves the right way."""
    torch.manual_seed(0)
    model = _model(2, norm="instance")
    loss_fn = MDRegNetLoss(regularization_weight=0.01)
    # moving(x + (3, -2)) == fixed(x)
    fixed, moving, first = fit_blob_translation(model, loss_fn, 48, (24, 24), (27, 22), 60.0, 60)
    with torch.no_grad():
        out = model(moving, fixed)
    centre = out["ddf"][0, :, 20:28, 20:28].mean(dim=(1, 2))
    assert float(loss_fn(out)["similarity"]) < first - 0.1
    assert 1.5 < centre[0] < 4.5 and -3.5 < centre[1] < -0.5, centre


@pytest.mark.parametrize("kwargs,match", [
    ({"levels": 5}, "'levels' must be an integer in \\[1, len\\(enc_channels\\)=4\\]"),
    ({"levels": 0}, "'levels'"),
    ({"in_channels": 3}, "'in_channels' must be an even integer"),
    ({"smoothing_kernel_size": 4}, "'smoothing_kernel_size' must be an odd integer"),
    ({"smoothing_sigma": 0.0}, "smoothing_sigma"),
    ({"smoothing": "False"}, "'smoothing' must be True or False, got 'False'"),
    ({"spatial_dims": 4}, "'spatial_dims' must be 2 or 3"),
    ({"norm": "batch"}, "norm"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MDRegNet(**{**SMALL, **kwargs})


def test_bad_inputs():
    model = _model(3)
    with pytest.raises(ValueError, match="MDRegNet\\(\\): 'moving' must be 5D"):
        model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="must share batch and spatial sizes"):
        model(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 17))
    with pytest.raises(ValueError, match="channels must add up to in_channels=2"):
        model(torch.rand(1, 2, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        _model(3, norm="instance")(torch.rand(1, 1, 12, 10, 16), torch.rand(1, 1, 12, 10, 16))


class _Displacements(torch.nn.Module):
    """The inference entry point as a module, for export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, moving, fixed):
        return self.model.displacements(moving, fixed)


def test_level_displacements_and_images():
    """Level fields: constant increments give the accumulated shift of each level; the last is the ddf."""
    model = _model(3).eval()
    increments = [(0.25, 0.0, -0.125), (0.0, 0.5, 0.25), (-0.5, 0.25, 0.0)]
    _set_constant_increments(model, increments)
    moving, fixed = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        levels, out = model.level_displacements(moving, fixed), model(moving, fixed)
        images = model.warped_level_images(moving, fixed)
    shifts = [8 * torch.tensor(increments[0]),  # 1/8 grid -> full
              8 * torch.tensor(increments[0]) + 4 * torch.tensor(increments[1]),
              out["ddf"][0, :, 0, 0, 0]]
    for ddf, shift in zip(levels, shifts):
        assert torch.allclose(ddf, shift.view(1, 3, 1, 1, 1).expand_as(ddf), atol=1e-4)
    assert torch.equal(levels[-1], out["ddf"])
    assert images.shape == (1, 3, 32, 32, 32)
    assert torch.allclose(images[:, 1:2], warp(moving, levels[1]))
    assert torch.allclose(images[:, 2:], out["warped"])


def _shifted_pair(size=(48, 40)):
    generator = torch.Generator().manual_seed(3)
    fixed = gaussian_smooth(torch.rand((1, 1, *size), generator=generator), 1.5)
    fixed = (fixed - fixed.min()) / (fixed.max() - fixed.min())
    moving = torch.roll(fixed, shifts=(2, -1), dims=(2, 3))
    return moving, fixed


def test_refine_starts_at_the_finest_training_terms_and_improves_them():
    """refine's first loss is eq. 4's finest-level terms (both NCC directions + lambda R) of the network's field;
    the refined field lowers them and stays diffeomorphic."""
    from monai_diffreg.functional import integrate_velocity, jacobian_determinant, resize_field
    from monai_diffreg.losses import local_ncc_loss

    model = _model(2, image_scale=0.5).eval()
    for subnetwork in model.subnetworks:
        torch.nn.init.normal_(subnetwork.flow.weight, 0.0, 0.05)
    moving, fixed = _shifted_pair((96, 80))
    loss = MDRegNetLoss(regularization_weight=0.35)
    with torch.no_grad():
        run = model._run_levels(moving, fixed)
        v = run.velocities[-1]
        size = run.moving.shape[2:]
        forward = warp(run.moving, resize_field(integrate_velocity(v, 7), size=size))
        inverse = warp(run.fixed, resize_field(integrate_velocity(-v, 7), size=size))
        expected = float(local_ncc_loss(forward, run.fixed) + local_ncc_loss(inverse, run.moving)
                         + loss.regularization_term(v))
        network = model(moving, fixed)
    history = []
    out = refine_network(model, moving, fixed, loss, 30, learning_rate=0.2,
                         callback=lambda i, value: history.append(value))
    assert history[0] == pytest.approx(expected, abs=1e-5)
    assert history[-1] < history[0] - 0.1
    assert set(out) == {"ddf", "inverse_ddf", "velocity", "warped"}
    assert out["velocity"].shape == network["velocity"].shape and out["ddf"].shape == network["ddf"].shape
    assert float(local_ncc_loss(out["warped"], fixed)) < float(local_ncc_loss(network["warped"], fixed)) - 0.05
    assert float(jacobian_determinant(out["ddf"]).min()) > 0
    assert float(jacobian_determinant(out["inverse_ddf"]).min()) > 0


def test_refine_without_steps_is_the_network_registration():
    model = _model(3).eval()
    moving, fixed = torch.rand(1, 1, 20, 24, 16), torch.rand(1, 1, 20, 24, 16)
    with torch.no_grad():
        expected = model(moving, fixed)
    out = refine_network(model, moving, fixed, MDRegNetLoss(), 0)
    for key in ("ddf", "inverse_ddf", "velocity", "warped"):
        torch.testing.assert_close(out[key], expected[key])


@pytest.mark.parametrize("smoothing", [True, False])
def test_refine_updates_pass_through_the_smoothing_layer(smoothing):
    """With the smoothing layer the refined velocity is the layer's output: start + G * (update);
    without it the update is voxel-wise (rougher)."""
    roughness = _refined_change_roughness(_model(2, smoothing=smoothing).eval())
    if smoothing:
        # a Gaussian-smoothed change: second differences small relative to its size
        assert roughness < 0.3
    else:
        assert roughness > 0.3


def _refined_change_roughness(model, **refine_options) -> float:
    moving, fixed = _shifted_pair((64, 64))
    with torch.no_grad():
        start = model(moving, fixed)["velocity"]
    change = refine_network(model, moving, fixed, MDRegNetLoss(), 5, learning_rate=0.5, **refine_options)["velocity"] - start
    return float(change.diff(dim=2).diff(dim=2).abs().mean() / change.abs().mean())


def test_refine_smoothing_sigma_preconditions_with_the_whole_gaussian():
    """smoothing_sigma replaces the layer's 3-tap kernel by a whole Gaussian: smoother updates, with or without the layer."""
    layered = _model(2, smoothing=True).eval()
    assert _refined_change_roughness(layered, smoothing_sigma=2.0) < 0.5 * _refined_change_roughness(layered)
    assert _refined_change_roughness(_model(2, smoothing=False).eval(), smoothing_sigma=2.0) < 0.3


def test_refine_rejects_what_cannot_refine():
    from monai_diffreg.networks import VxmUNet

    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"refine_network\(\): 'loss' must offer refinement_terms"):
        refine_network(_model(2), moving, fixed, torch.nn.MSELoss(), 1)

    class OldConvention(MDRegNetLoss):  # a bool instead of the bidirectional reduction
        def refinement_terms(self, context):
            return self.finest_image_term, self.regularization_term, True

    with pytest.raises(ValueError, match=r"refine_network\(\): OldConvention.refinement_terms\(\) must give None or "
                                         r"one of \['mean', 'sum'\] as its third item"):
        refine_network(_model(2), moving, fixed, OldConvention(), 1)
    with pytest.raises(ValueError, match=r"refine_network\(\): VxmUNet does not offer refinement"):
        refine_network(VxmUNet(2), moving, fixed, MDRegNetLoss(), 1)
    with pytest.raises(ValueError, match=r"'steps' must be an integer >= 0"):
        refine_network(_model(2), moving, fixed, MDRegNetLoss(), -1)
    with pytest.raises(ValueError, match=r"MDRegNet\(\): .moving. must be 5D"):
        refine_network(_model(3), moving, fixed, MDRegNetLoss(), 1)  # 2D images for a 3D model


def test_refined_displacements_are_the_refined_outputs_fields():
    """displacements_only: the same fields as the full outputs, without the warped image; no inverse on request."""
    model = _model(2).eval()
    moving, fixed = torch.rand(1, 1, 24, 20), torch.rand(1, 1, 24, 20)
    full = refine_network(model, moving, fixed, MDRegNetLoss(), 3, learning_rate=0.2)
    lean = refine_network(model, moving, fixed, MDRegNetLoss(), 3, learning_rate=0.2, displacements_only=True)
    assert set(lean) == {"ddf", "inverse_ddf"}
    for key in lean:
        torch.testing.assert_close(lean[key], full[key])
    forward_only = refine_network(model, moving, fixed, MDRegNetLoss(), 3, learning_rate=0.2,
                                  displacements_only=True, inverse=False)
    assert set(forward_only) == {"ddf"}
