"""RegistrationPyramid: shapes for odd sizes, identity at initialisation, residual refinement, affine on positions and
its composition order, diffeomorphic version, inverses, gradients to every parameter, contract, image_scale (the
pyramid on resampled images, outputs back on the input grid), bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from monai_diffreg.functional import (
    affine_to_ddf,
    compose_ddf,
    gaussian_smooth,
    identity_affine,
    jacobian_determinant,
    rescale_affine,
    resize_field,
    resize_image,
    warp,
)
from monai_diffreg.functional.affine import affine_from_normalized
from monai_diffreg.losses.reg_pyramid import RegistrationPyramidLoss
from monai_diffreg.networks.contract import MultiLevelNetwork, RegistrationNetwork
from monai_diffreg.networks.pair_geometry import scaled_size
from monai_diffreg.networks.reg_pyramid import RegistrationPyramid

SMALL = {"filters": (4, 8, 8), "deform_filters": (8, 8, 4)}
LEVEL_KEYS = ("level_ddfs", "level_increments", "affine_matrices", "fixed_levels", "moving_levels", "warped_levels")
KEYS = {"ddf", "inverse_ddf", "warped", *LEVEL_KEYS}
FLAGS = [{}, {"diffeomorphic": True}, {"affine": False}, {"cost_volume": False}, {"residual": False},
         {"normalize_features": True}, {"norm": "instance"}]


def _model(spatial_dims, **kwargs):
    return RegistrationPyramid(spatial_dims, **{**SMALL, **kwargs}).eval()


def _set_increment(model, index, value):
    """Make deform block ``index`` (coarse to fine) return ``value`` (a tensor, or a callable of the block's input)."""
    block = model.deform_blocks[index]
    block.forward = value if callable(value) else (lambda x: value.to(x.dtype).expand(x.shape[0], *value.shape[1:]))


def _constant(values, size):
    return torch.tensor(values, dtype=torch.float32).view(1, -1, *[1] * len(size)).expand(1, len(values), *size)


def _smooth(shape, amplitude, sigma, seed=0):
    generator = torch.Generator().manual_seed(seed)
    field = gaussian_smooth(torch.randn(1, len(shape), *shape, generator=generator), sigma)
    return field * (amplitude / field.abs().max())


@pytest.mark.parametrize("spatial_dims,size", [(2, (33, 27)), (3, (19, 21, 17))])
@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: ",".join(f) or "default")
def test_keys_and_shapes_for_odd_sizes(spatial_dims, size, flags):
    model = _model(spatial_dims, **flags)
    moving, fixed = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    with torch.no_grad():
        out = model(moving, fixed)
    assert set(out) == KEYS
    sizes = model.level_sizes(size)
    assert sizes[-1] == tuple(-(-s // 2) for s in size)  # the finest field at half resolution
    for key in ("ddf", "inverse_ddf"):
        assert out[key].shape == (2, spatial_dims, *size)
    assert out["warped"].shape == (2, 1, *size)
    for key in LEVEL_KEYS:
        assert len(out[key]) == 3
    for index, grid in enumerate(sizes):
        assert out["level_ddfs"][index].shape == (2, spatial_dims, *grid)
        assert out["level_increments"][index].shape == (2, spatial_dims, *grid)
        assert out["affine_matrices"][index].shape == (2, spatial_dims, spatial_dims + 1)
    for index, grid in enumerate(sizes[:-1]):
        for key in ("fixed_levels", "moving_levels", "warped_levels"):
            assert out[key][index].shape == (2, 1, *grid)
    assert out["fixed_levels"][-1] is fixed and out["moving_levels"][-1] is moving
    assert out["warped_levels"][-1] is out["warped"]


def test_cost_volume_channels_of_the_paper():
    model = RegistrationPyramid(3)
    assert model.deform_blocks[0].blocks[0][0].in_channels == 125 + 32 + 3  # cost volume, fixed features, estimate
    assert [block.blocks[j][0].out_channels for block in model.deform_blocks[:1] for j in range(5)] == [64, 64, 32, 18, 8]
    assert model.affine_heads[0].dense.out_features == 12
    assert len(model.pyramid.levels) == 4 and all(len(level) == 3 for level in model.pyramid.levels)
    assert model.pyramid.levels[0][0][0].stride == (2, 2, 2) and model.pyramid.levels[0][1][0].stride == (1, 1, 1)
    assert RegistrationPyramid(2).deform_blocks[0].blocks[0][0].in_channels == 25 + 32 + 2


@pytest.mark.parametrize("flags", FLAGS[:5], ids=lambda f: ",".join(f) or "default")
def test_initial_field_is_exactly_the_identity(flags):
    model = _model(3, **flags)
    moving, fixed = torch.rand(1, 1, 20, 18, 22), torch.rand(1, 1, 20, 18, 22)
    with torch.no_grad():
        out = model(moving, fixed)
    assert torch.equal(out["ddf"], torch.zeros_like(out["ddf"]))
    assert torch.equal(out["inverse_ddf"], torch.zeros_like(out["inverse_ddf"]))
    for field in out["level_ddfs"]:
        assert torch.equal(field, torch.zeros_like(field))
    for matrix in out["affine_matrices"]:
        torch.testing.assert_close(matrix, identity_affine(1, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["warped"], moving, atol=1e-5, rtol=0)


@pytest.mark.parametrize("diffeomorphic", [False, True])
@pytest.mark.parametrize("residual", [True, False])
def test_levels_refine_the_incoming_field(diffeomorphic, residual):
    """Constant increments c_i (voxels of grid i): residual levels accumulate sum_i c_i 2^(L-1-i) on the finest grid
    (vectors doubled per upsampling; translations compose by addition); non-residual ones keep only the finest."""
    model = _model(2, diffeomorphic=diffeomorphic, residual=residual)
    increments = [(0.5, -0.25), (0.25, 0.5), (-0.5, 0.125)]
    size = (32, 32)
    for index, (values, grid) in enumerate(zip(increments, model.level_sizes(size))):
        _set_increment(model, index, _constant(values, grid))
    with torch.no_grad():
        out = model(torch.rand(1, 1, *size), torch.rand(1, 1, *size))
    c = [torch.tensor(v) for v in increments]
    expected_levels = [c[0], 2 * c[0] + c[1], 4 * c[0] + 2 * c[1] + c[2]] if residual else c
    for field, expected in zip(out["level_ddfs"], expected_levels):
        torch.testing.assert_close(field, expected.view(1, 2, 1, 1).expand_as(field), atol=1e-5, rtol=0)
    expected = 2 * expected_levels[-1]  # half resolution -> input grid
    torch.testing.assert_close(out["ddf"], expected.view(1, 2, 1, 1).expand_as(out["ddf"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["inverse_ddf"], -out["ddf"], atol=1e-4, rtol=0)


def test_level_images_and_warped_level_images():
    model = _model(2)
    increments = [(0.5, -0.25), (0.25, 0.5), (0.0, 0.0)]
    size = (32, 32)
    for index, (values, grid) in enumerate(zip(increments, model.level_sizes(size))):
        _set_increment(model, index, _constant(values, grid))
    moving, fixed = torch.rand(1, 1, *size), torch.rand(1, 1, *size)
    with torch.no_grad():
        out = model(moving, fixed)
        levels = model.level_displacements(moving, fixed)
        images = model.warped_level_images(moving, fixed)
    shifts = [8 * torch.tensor(increments[0]), 8 * torch.tensor(increments[0]) + 4 * torch.tensor(increments[1])]
    for ddf, shift in zip(levels, shifts):
        torch.testing.assert_close(ddf, shift.view(1, 2, 1, 1).expand_as(ddf), atol=1e-5, rtol=0)
    assert torch.equal(levels[-1], out["ddf"])
    assert images.shape == (1, 3, *size)
    torch.testing.assert_close(images[:, :1], warp(moving, levels[0]))
    torch.testing.assert_close(images[:, 2:], out["warped"])
    coarse = torch.nn.functional.adaptive_avg_pool2d(moving, (4, 4))
    torch.testing.assert_close(out["moving_levels"][0], coarse)
    torch.testing.assert_close(out["warped_levels"][0], warp(coarse, out["level_ddfs"][0]))


def _rotation_params(angle_degrees, translation):
    a = math.radians(angle_degrees)
    return torch.tensor([math.cos(a) - 1, -math.sin(a), math.sin(a), math.cos(a) - 1, *translation])


@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_affine_head_acts_on_grid_positions(diffeomorphic):
    """A known dense bias at the coarsest level: its matrix (about the image centre, normalised units) and its field
    affine_to_ddf(matrix) on the level grid and, upsampled, on the input grid."""
    model = _model(2, diffeomorphic=diffeomorphic)
    params = _rotation_params(15.0, (0.1, -0.2))
    if diffeomorphic:  # the linear part is expm(L): the generator of the same rotation
        a = math.radians(15.0)
        params = torch.tensor([0.0, -a, a, 0.0, 0.1, -0.2])
    with torch.no_grad():
        model.affine_heads[0].dense.bias.copy_(params)
    size = (32, 32)
    with torch.no_grad():
        out = model(torch.rand(1, 1, *size), torch.rand(1, 1, *size))
    matrix = affine_from_normalized(params.view(1, -1), size, exponential=diffeomorphic)
    a = math.radians(15.0)
    rotation = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    torch.testing.assert_close(out["affine_matrices"][0][:, :, :2], rotation.unsqueeze(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["affine_matrices"][0], matrix)
    centre = torch.tensor([15.5, 15.5])
    torch.testing.assert_close(matrix[0, :, :2] @ centre + matrix[0, :, 2] - centre, torch.tensor([1.6, -3.2]))
    coarse = model.level_sizes(size)[0]
    torch.testing.assert_close(out["level_ddfs"][0], affine_to_ddf(rescale_affine(matrix, size, coarse), coarse),
                               atol=1e-5, rtol=0)
    # linear upsampling reproduces an affine field except where it extrapolates: half a cell at each of the three
    # upsamplings, i.e. 1 + 3 + 7 voxels of the input grid at the border
    interior = (..., slice(8, -8), slice(8, -8))
    torch.testing.assert_close(out["ddf"][interior], affine_to_ddf(matrix, size)[interior], atol=1e-4, rtol=0)
    for later in out["affine_matrices"][1:]:
        torch.testing.assert_close(later, identity_affine(1, 2), atol=1e-6, rtol=0)


def test_affine_correction_composes_inside_the_incoming_field():
    """phi_a = phi_in o A: u_a(x) = a(x) + u_in(x + a(x)), not u_in(x) + a(x) (the affine acting after phi_in)."""
    model = _model(2)
    size = (32, 32)
    grids = model.level_sizes(size)
    ramp = torch.linspace(-1.0, 1.0, grids[0][0]).view(1, 1, -1, 1).expand(1, 2, *grids[0]).clone()
    _set_increment(model, 0, ramp)  # a coarse field that varies along axis 0
    with torch.no_grad():
        model.affine_heads[1].dense.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.25, 0.0]))  # 4 input voxels
        out = model(torch.rand(1, 1, *size), torch.rand(1, 1, *size))
    incoming = resize_field(out["level_ddfs"][0], size=grids[1])
    translation = _constant([1.0, 0.0], grids[1])  # 4 input voxels = 1 voxel of the 8-grid
    torch.testing.assert_close(out["level_ddfs"][1], compose_ddf(incoming, translation), atol=1e-5, rtol=0)
    assert (out["level_ddfs"][1] - (incoming + translation)).abs().max() > 0.1


def test_diffeomorphic_version_does_not_fold_where_the_displacement_version_does():
    """A large random increment at the finest level (and a rotation + shear affine): det J > 0 everywhere."""
    size = (32, 32)
    increment = _smooth((16, 16), amplitude=5.0, sigma=2.0)
    dets = {}
    for diffeomorphic in (False, True):
        model = _model(2, diffeomorphic=diffeomorphic)
        _set_increment(model, 2, increment)
        with torch.no_grad():
            model.affine_heads[1].dense.bias.copy_(torch.tensor([0.1, -0.3, 0.2, -0.1, 0.05, 0.0]))
            out = model(torch.rand(1, 1, *size), torch.rand(1, 1, *size))
        dets[diffeomorphic] = jacobian_determinant(out["ddf"])
        assert out["ddf"].abs().max() > 5.0
    assert dets[True].min() > 0
    assert dets[False].min() < 0  # the same increment folds when added


@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_inverse_composes_to_the_identity(diffeomorphic):
    size = (32, 32)
    model = _model(2, diffeomorphic=diffeomorphic)
    _set_increment(model, 1, _smooth((8, 8), amplitude=0.5, sigma=1.5, seed=1))
    _set_increment(model, 2, _smooth((16, 16), amplitude=1.0, sigma=3.0, seed=2))
    with torch.no_grad():
        model.affine_heads[0].dense.bias.copy_(torch.tensor([0.05, -0.1, 0.1, 0.02, 0.05, -0.05]))
        out = model(torch.rand(1, 1, *size), torch.rand(1, 1, *size))
    ddf, inverse = out["ddf"], out["inverse_ddf"]
    assert ddf.abs().max() > 2.0
    interior = (..., slice(8, -8), slice(8, -8))  # away from the upsamplings' extrapolated border (see above)
    for residual in (compose_ddf(ddf, inverse), compose_ddf(inverse, ddf)):
        assert residual[interior].abs().max() < 0.03
    assert compose_ddf(ddf, -ddf)[interior].abs().max() > 0.3  # so the check is not vacuous


@pytest.mark.parametrize("flags", [{}, {"diffeomorphic": True}, {"norm": "instance", "normalize_features": True}],
                         ids=["displacement", "diffeomorphic", "instance-normalised"])
def test_gradients_reach_every_parameter(flags):
    torch.manual_seed(0)
    model = _model(2, **flags).train()
    with torch.no_grad():  # leave the zero initialisation, which blocks gradients behind the heads for one step
        for block in model.deform_blocks:
            block.out.weight.normal_(0.0, 1e-2)
        for head in model.affine_heads:
            head.dense.weight.normal_(0.0, 1e-2)
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    labels = (torch.rand(1, 3, 32, 32) > 0.5).float()
    RegistrationPyramidLoss()(model(moving, fixed), fixed, moving, labels, labels.flip(2))["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_zero_initialisation_still_trains_the_heads():
    model = _model(2).train()
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    RegistrationPyramidLoss()(model(moving, fixed))["loss"].backward()
    for block in model.deform_blocks:
        assert block.out.weight.grad.abs().sum() > 0
    for head in model.affine_heads:
        assert head.dense.weight.grad.abs().sum() > 0


def test_contract_and_displacements_match_forward():
    model = _model(3, diffeomorphic=True)
    assert isinstance(model, RegistrationNetwork) and isinstance(model, MultiLevelNetwork)
    for block in model.deform_blocks:
        torch.nn.init.normal_(block.out.weight, 0.0, 0.05)
    pair = torch.rand(1, 1, 17, 20, 18), torch.rand(1, 1, 17, 20, 18)
    with torch.no_grad():
        full, lean, forward_only = model(*pair), model.displacements(*pair), model.displacements(*pair, inverse=False)
    assert set(lean) == {"ddf", "inverse_ddf"} and set(forward_only) == {"ddf"}
    assert torch.equal(full["ddf"], lean["ddf"]) and torch.equal(full["inverse_ddf"], lean["inverse_ddf"])
    assert torch.equal(full["ddf"], forward_only["ddf"])
    assert full["ddf"].abs().max() > 1e-3


def test_learns_a_translation_2d(fit_blob_translation):
    """A few Adam steps on one pair: the loss falls and the field moves the right way."""
    torch.manual_seed(0)
    model = _model(2).train()
    loss_fn = RegistrationPyramidLoss(ncc_window=5)
    # moving(x + (2, -1.5)) == fixed(x)
    fixed, moving, first = fit_blob_translation(model, loss_fn, 32, (16, 16), (18, 14.5), 30.0, 40)
    with torch.no_grad():
        out = model.eval()(moving, fixed)
    centre = out["ddf"][0, :, 12:20, 12:20].mean(dim=(1, 2))
    assert float(loss_fn(out)["similarity"]) < first - 0.1
    assert 1.5 < centre[0] < 2.8 and -2.2 < centre[1] < -0.7, centre


@pytest.mark.parametrize("kwargs,match", [
    ({"spatial_dims": 4}, r"RegistrationPyramid\(\): 'spatial_dims' must be 2 or 3, got 4"),
    ({"in_channels": 0}, r"'in_channels' must be an integer >= 1, got 0"),
    ({"filters": ()}, r"'filters' must be a sequence of integers >= 1 \(at least one\)"),
    ({"filters": (4, 0)}, r"'filters'"),
    ({"deform_filters": (8, -1)}, r"'deform_filters' must be a sequence of integers >= 1"),
    ({"search_range": -1}, r"'search_range' must be an integer >= 0"),
    ({"affine": 1}, r"'affine' must be True or False, got 1"),
    ({"diffeomorphic": "yes"}, r"'diffeomorphic' must be True or False"),
    ({"residual": None}, r"'residual' must be True or False"),
    ({"cost_volume": 0}, r"'cost_volume'"),
    ({"normalize_features": 0}, r"'normalize_features'"),
    ({"num_steps": -1}, r"'num_steps' must be an integer >= 0"),
    ({"inverse_iterations": 1.5}, r"'inverse_iterations' must be an integer >= 0"),
    ({"norm": "batch"}, r"RegistrationPyramid\(\): 'norm' must be one of \['instance'\], got 'batch'"),
    ({"image_scale": 0}, r"RegistrationPyramid\(\): 'image_scale' must be a finite number > 0, got 0"),
    ({"image_scale": -0.5}, r"'image_scale' must be a finite number > 0"),
    ({"image_scale": "0.5"}, r"'image_scale' must be a finite number > 0, got '0.5'"),
    ({"image_scale": True}, r"'image_scale'"),
    ({"image_scale": float("nan")}, r"'image_scale'"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegistrationPyramid(**{**SMALL, **kwargs})


def test_bad_inputs():
    model = _model(3)
    with pytest.raises(ValueError, match=r"RegistrationPyramid\(\): 'moving' must be 5D"):
        model(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"'moving' and 'fixed' must have the same shape"):
        model(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 17))
    with pytest.raises(ValueError, match=r"'fixed' must have 1 channel\(s\) on axis 1"):
        model(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        _model(3, norm="instance")(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8))
    _model(3, norm="instance")(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))  # 2x2x2 coarsest cells
    with pytest.raises(ValueError, match=r"resampled to \(8, 8, 8\) by image_scale=0.5\) are too small"):
        _model(3, norm="instance", image_scale=0.5)(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))


# ----------------------------------------------------------------------------------------------- image_scale
def _nontrivial(model, seed=0):
    """Random (small) deform and affine heads, so that every output is non-trivial."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for block in model.deform_blocks:
            block.out.weight.normal_(0.0, 0.05)
        for head in model.affine_heads:
            head.dense.weight.normal_(0.0, 0.05)
            head.dense.bias.normal_(0.0, 0.05)
    return model


@pytest.mark.parametrize("spatial_dims,size", [(2, (33, 27)), (3, (19, 21, 17))])
@pytest.mark.parametrize("flags", [{}, {"diffeomorphic": True}, {"affine": False}], ids=["default", "diffeo", "no-affine"])
def test_image_scale_runs_the_pyramid_on_area_resampled_images(spatial_dims, size, flags):
    """image_scale 0.5 == the same weights at 1.0 on the area-resized pair, the input-grid outputs brought back to S:
    fields with resize_field, matrices with rescale_affine, images warped from the ORIGINAL moving image; the level
    outputs stay on the scaled level grids."""
    scaled = _nontrivial(_model(spatial_dims, image_scale=0.5, **flags))
    reference = _model(spatial_dims, **flags)
    reference.load_state_dict(scaled.state_dict())
    moving, fixed = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    small = scaled_size(size, 0.5)
    assert scaled.network_size(size) == small and scaled.level_sizes(size) == reference.level_sizes(small)
    with torch.no_grad():
        out = scaled(moving, fixed)
        ref = reference(resize_image(moving, size=small, mode="area"), resize_image(fixed, size=small, mode="area"))
        lean = scaled.displacements(moving, fixed)
        levels, ref_levels = scaled.level_displacements(moving, fixed), reference.level_displacements(
            resize_image(moving, size=small, mode="area"), resize_image(fixed, size=small, mode="area"))
        images = scaled.warped_level_images(moving, fixed)
    assert set(out) == KEYS
    for key in ("ddf", "inverse_ddf"):
        assert out[key].shape == (2, spatial_dims, *size)
        assert torch.equal(out[key], resize_field(ref[key], size=size))
        assert torch.equal(lean[key], out[key])
    assert out["ddf"].abs().max() > 0.05  # not vacuous
    assert torch.equal(out["warped"], warp(moving, out["ddf"]))
    for mine, theirs in zip(out["affine_matrices"], ref["affine_matrices"]):
        assert torch.equal(mine, rescale_affine(theirs, small, size))
    for key in ("level_ddfs", "level_increments", "fixed_levels", "moving_levels", "warped_levels"):
        for index in range(2 if key.endswith("_levels") else 3):  # the level grids: as the network at 1.0 on S'
            assert torch.equal(out[key][index], ref[key][index]), (key, index)
    assert out["fixed_levels"][-1] is fixed and out["moving_levels"][-1] is moving
    assert out["warped_levels"][-1] is out["warped"]
    assert len(levels) == 3 and torch.equal(levels[-1], out["ddf"])
    for mine, theirs in zip(levels, ref_levels):
        assert mine.shape == (2, spatial_dims, *size) and torch.equal(mine, resize_field(theirs, size=size))
    assert images.shape == (2, 3, *size)
    torch.testing.assert_close(images[:, :1], warp(moving, levels[0]))
    torch.testing.assert_close(images[:, 2:], out["warped"])


def test_image_scale_at_initialisation_is_the_identity_on_the_input_grid():
    """The warped image is the ORIGINAL moving image warped by ddf (= 0), not a low-resolution image upsampled."""
    model = _model(3, image_scale=0.5)
    moving, fixed = torch.rand(1, 1, 20, 18, 22), torch.rand(1, 1, 20, 18, 22)
    with torch.no_grad():
        out = model(moving, fixed)
    assert torch.equal(out["ddf"], torch.zeros_like(out["ddf"]))
    torch.testing.assert_close(out["warped"], moving, atol=1e-5, rtol=0)
    for matrix in out["affine_matrices"]:
        torch.testing.assert_close(matrix, identity_affine(1, 3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_image_scale_keeps_physical_units(diffeomorphic):
    """Constant increments c_i in voxels of the scaled level grids: at image_scale 0.5 on 64x64 (S' = 32x32) the output
    displacement is twice that of the network at 1.0 on 32x32, in input voxels; a known affine bias is the same
    physical transform, i.e. its input-grid matrix is affine_from_normalized on the input grid."""
    model = _model(2, image_scale=0.5, diffeomorphic=diffeomorphic)
    increments = [(0.5, -0.25), (0.25, 0.5), (-0.5, 0.125)]
    size = (64, 64)
    assert model.level_sizes(size) == [(4, 4), (8, 8), (16, 16)]
    for index, (values, grid) in enumerate(zip(increments, model.level_sizes(size))):
        _set_increment(model, index, _constant(values, grid))
    with torch.no_grad():
        out = model(torch.rand(1, 1, *size), torch.rand(1, 1, *size))
    c = [torch.tensor(v) for v in increments]
    expected = 4 * (4 * c[0] + 2 * c[1] + c[2])  # finest grid (16) -> S' (x2) -> S (x2)
    torch.testing.assert_close(out["ddf"], expected.view(1, 2, 1, 1).expand_as(out["ddf"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["inverse_ddf"], -out["ddf"], atol=1e-4, rtol=0)

    model = _model(2, image_scale=0.5, diffeomorphic=diffeomorphic)
    params = torch.tensor([0.05, -0.1, 0.1, 0.02, 0.1, -0.2])
    with torch.no_grad():
        model.affine_heads[0].dense.bias.copy_(params)
        size = (66, 50)  # S' = (33, 25): odd network grids
        out = model(torch.rand(1, 1, *size), torch.rand(1, 1, *size))
    expected = affine_from_normalized(params.view(1, -1), size, exponential=diffeomorphic)
    torch.testing.assert_close(out["affine_matrices"][0], expected, atol=1e-4, rtol=1e-5)


def test_the_loss_reads_scaled_outputs():
    """Training uses image_scale 1.0 (class docstring); the loss still evaluates and differentiates the scaled outputs:
    the finest term on the input grid, the coarser ones on the scaled level grids."""
    model = _model(2, image_scale=0.5).train()
    moving, fixed = torch.rand(1, 1, 48, 40), torch.rand(1, 1, 48, 40)
    labels = (torch.rand(1, 3, 48, 40) > 0.5).float()
    out = model(moving, fixed)
    assert out["warped_levels"][-1].shape[2:] == (48, 40) and out["warped_levels"][-2].shape[2:] == (6, 5)
    terms = RegistrationPyramidLoss()(out, fixed, moving, labels, labels.flip(2))
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    assert all(block.out.weight.grad.abs().sum() > 0 for block in model.deform_blocks)
