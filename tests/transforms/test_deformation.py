"""Random smooth diffeomorphisms: replay, bounds, invertibility, det J > 0, label safety."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from monai_diffreg.functional import compose_ddf, jacobian_determinant, warp
from monai_diffreg.transforms.array import RandSmoothDeformation
from monai_diffreg.transforms.control_grid import control_grid_shape
from monai_diffreg.transforms.deformation import (
    deformation_from_params,
    sample_smooth_velocity_params,
    smooth_velocity_from_params,
)
from monai_diffreg.transforms.dictionary import RandSmoothDeformationd

SHAPES = [(40, 36), (24, 20, 22)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _smooth_image(shape):
    """(1, *shape) sum of sines with a 16-voxel period: smooth, yet moved visibly by a few voxels."""
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    return sum(torch.sin(2 * torch.pi * x / 16 + k) for k, x in enumerate(axes))[None]


def _interior(x, margin):
    return x[(...,) + tuple(slice(margin, -margin) for _ in x.shape[1:])]


@pytest.mark.parametrize("shape", SHAPES)
def test_params_layout_and_replay(shape):
    params = sample_smooth_velocity_params(shape, control_spacing=6, max_displacement=2.0, generator=_gen(1))
    assert params["coefficients"].shape == (1, len(shape), *control_grid_shape(shape, 6))
    assert params["spatial_shape"] == shape and params["max_displacement"] == 2.0
    first, second = deformation_from_params(params), deformation_from_params(params)
    for key in ("velocity", "ddf", "inverse_ddf"):
        assert first[key].shape == (1, len(shape), *shape)
        assert torch.equal(first[key], second[key])
    same_seed = sample_smooth_velocity_params(shape, 6, 2.0, generator=_gen(1))
    other_seed = sample_smooth_velocity_params(shape, 6, 2.0, generator=_gen(2))
    assert torch.equal(params["coefficients"], same_seed["coefficients"])
    assert not torch.equal(params["coefficients"], other_seed["coefficients"])


def test_control_grid_shape_rule():
    assert control_grid_shape((32, 33), 8) == (5, 6)
    assert control_grid_shape((4, 4, 4), (8, 2, 100)) == (2, 3, 2)


@pytest.mark.parametrize("shape", SHAPES)
def test_constant_coefficients_give_exact_translation(shape):
    # a constant velocity c (control-grid voxels) is c * n_i / m_i full-grid voxels; exp of a constant is itself
    params = sample_smooth_velocity_params(shape, generator=_gen(0))
    grid = params["coefficients"].shape[2:]
    params["coefficients"] = torch.full_like(params["coefficients"], 0.5)
    fields = deformation_from_params(params)
    for axis, (n, m) in enumerate(zip(shape, grid)):
        expected = 0.5 * n / m
        torch.testing.assert_close(fields["velocity"][0, axis], torch.full(shape, expected), atol=1e-5, rtol=0)
        torch.testing.assert_close(fields["ddf"][0, axis], torch.full(shape, expected), atol=1e-4, rtol=0)
        torch.testing.assert_close(fields["inverse_ddf"][0, axis], torch.full(shape, -expected), atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_magnitude_is_diffeomorphic_and_bounded(shape, seed):
    params = sample_smooth_velocity_params(shape, generator=_gen(seed))
    fields = deformation_from_params(params)
    for key in ("velocity", "ddf", "inverse_ddf"):
        assert float(fields[key].abs().max()) <= params["max_displacement"] + 1e-4
        assert float(fields[key].abs().max()) > 0.5  # not trivially small
    for key in ("ddf", "inverse_ddf"):
        assert float(jacobian_determinant(fields[key]).min()) > 0.2


@pytest.mark.parametrize("shape", SHAPES)
def test_inverse_field_undoes_the_warp(shape):
    params = sample_smooth_velocity_params(shape, generator=_gen(3))
    fields = deformation_from_params(params)
    residual = compose_ddf(fields["ddf"], fields["inverse_ddf"])  # phi o phi^-1 - id
    assert float(_interior(residual[0], 4).abs().max()) < 0.05
    image = _smooth_image(shape)
    there_and_back = warp(warp(image[None], fields["ddf"]), fields["inverse_ddf"])[0]
    error = _interior(there_and_back - image, 4).abs()
    contrast = float(image.max() - image.min())
    assert float(error.max()) < 0.05 * contrast
    moved = _interior(warp(image[None], fields["ddf"])[0] - image, 4).abs()
    assert float(moved.max()) > 0.1 * contrast  # the warp really moved the image


def test_velocity_at_another_resolution_describes_the_same_motion():
    params = sample_smooth_velocity_params((20, 24), generator=_gen(4))
    coarse = smooth_velocity_from_params(params)
    fine = smooth_velocity_from_params(params, (40, 48))
    # fine voxel (2i + 0.5) is coarse voxel i (cell centres); vectors double
    assert torch.allclose(fine.abs().amax(dim=(2, 3)), 2 * coarse.abs().amax(dim=(2, 3)), rtol=0.1)


def test_deformation_bad_input():
    with pytest.raises(ValueError, match=r"sample_smooth_velocity_params\(\): 'spatial_shape' must be 2 or 3"):
        sample_smooth_velocity_params((8,))
    with pytest.raises(ValueError, match="'max_displacement' must be a finite number >= 0"):
        sample_smooth_velocity_params((8, 8), max_displacement=-1.0)
    with pytest.raises(ValueError, match="'control_spacing' must be a number > 0 or 2 numbers"):
        sample_smooth_velocity_params((8, 8), control_spacing=(4, 4, 4))
    with pytest.raises(ValueError, match="'params' must be a dict with keys"):
        deformation_from_params({"coefficients": torch.zeros(1, 2, 3, 3)})
    params = sample_smooth_velocity_params((8, 8))
    with pytest.raises(ValueError, match="'spatial_shape' must have 2 axes"):
        smooth_velocity_from_params(params, (8, 8, 8))


@pytest.mark.parametrize("shape", SHAPES)
def test_array_transform_replay_and_inverse(shape):
    image = MetaTensor(_smooth_image(shape))
    deform = RandSmoothDeformation(max_displacement=3.0).set_random_state(7)
    warped = deform(image)
    assert isinstance(warped, MetaTensor) and warped.shape == image.shape
    assert torch.equal(deform.apply_params(image, deform.params), warped)
    assert torch.equal(deform(image, randomize=False), warped)
    assert torch.equal(RandSmoothDeformation(max_displacement=3.0).set_random_state(7)(image), warped)
    back = deform.inverse(warped)
    assert len(back.applied_operations) == 0
    contrast = float(image.max() - image.min())
    assert float(_interior(back - image, 4).abs().max()) < 0.05 * contrast
    manual = deform.apply_params(warped.as_tensor(), deform.params, inverse=True)
    assert torch.equal(manual.as_tensor(), back.as_tensor())


def test_array_transform_prob_zero_is_identity():
    image = torch.rand(1, 12, 14)
    deform = RandSmoothDeformation(prob=0.0)
    out = deform(image)
    assert torch.equal(out.as_tensor(), image) and deform.params is None
    assert torch.equal(deform.inverse(out).as_tensor(), image)


@pytest.mark.parametrize("shape", SHAPES)
def test_nearest_keeps_label_values_and_dtype(shape):
    labels = torch.randint(0, 5, (1, *shape), generator=_gen(0)) * 3
    out = RandSmoothDeformation(mode="nearest", max_displacement=4.0).set_random_state(0)(labels)
    assert out.dtype == labels.dtype
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    assert not torch.equal(out.as_tensor(), labels)


def test_array_transform_bad_input():
    with pytest.raises(ValueError, match=r"RandSmoothDeformation\(\): 'mode' must be one of"):
        RandSmoothDeformation(mode="cubic")
    with pytest.raises(ValueError, match=r"RandSmoothDeformation\(\): 'max_displacement' must be a finite number"):
        RandSmoothDeformation(max_displacement=float("nan"))
    with pytest.raises(ValueError, match="'num_steps' must be an integer >= 0"):
        RandSmoothDeformation(num_steps=-1)
    with pytest.raises(RuntimeError, match="no parameters were drawn yet"):
        RandSmoothDeformation()(torch.rand(1, 8, 8), randomize=False)
    with pytest.raises(ValueError, match=r"must be channel-first \(C, \*spatial\)"):
        RandSmoothDeformation()(torch.rand(8, 8))
    with pytest.raises(TypeError, match="must be a torch.Tensor or numpy array"):
        RandSmoothDeformation()([1, 2, 3])


@pytest.mark.parametrize("shape", SHAPES)
def test_dictionary_transform_moves_all_keys_together(shape):
    image = _smooth_image(shape)
    labels = (image > image.mean()).long() * 2
    deform = RandSmoothDeformationd(("image", "label", "copy"), mode=("bilinear", "nearest", "bilinear"),
                                    ddf_key="true_ddf", inverse_ddf_key="true_inverse_ddf").set_random_state(0)
    out = deform({"image": image, "label": labels, "copy": image.clone(), "other": 1})
    assert torch.equal(out["image"].as_tensor(), out["copy"].as_tensor())  # one draw for every key
    assert out["other"] == 1 and out["label"].dtype == labels.dtype
    assert set(out["label"].unique().tolist()) <= {0, 2}
    expected = deformation_from_params(deform.params)
    assert out["true_ddf"].shape == (len(shape), *shape)
    assert torch.equal(out["true_ddf"], expected["ddf"][0])
    assert torch.equal(out["true_inverse_ddf"], expected["inverse_ddf"][0])
    # the stored ground truth reproduces the warped image: fixed = warp(moving, true_ddf)
    torch.testing.assert_close(warp(image[None], out["true_ddf"][None])[0], out["image"].as_tensor())
    back = deform.inverse(out)
    assert float(_interior(back["image"] - image, 4).abs().max()) < 0.05 * float(image.max() - image.min())


def test_dictionary_transform_prob_zero_and_bad_input():
    deform = RandSmoothDeformationd("image", prob=0.0, ddf_key="true_ddf")
    out = deform({"image": torch.rand(1, 10, 12)})
    assert deform.params is None and torch.equal(out["true_ddf"], torch.zeros(2, 10, 12))
    with pytest.raises(ValueError, match="all keys must share one spatial shape"):
        RandSmoothDeformationd(("a", "b"))({"a": torch.rand(1, 8, 8), "b": torch.rand(1, 8, 9)})
    with pytest.raises(ValueError, match=r"RandSmoothDeformationd\(\): 'padding_mode' must be one of"):
        RandSmoothDeformationd("a", padding_mode="wrap")


def test_random_affine_is_a_rotation_scaling_and_shift_about_the_centre():
    """Zero limits: the identity; rotation alone: orthonormal with det 1 fixing the centre; limits respected."""
    from monai_diffreg.transforms.deformation import sample_random_affine

    shape = (9, 11, 7)
    identity = sample_random_affine(shape)
    torch.testing.assert_close(identity, torch.cat([torch.eye(3), torch.zeros(3, 1)], 1)[None])
    generator = torch.Generator().manual_seed(0)
    rotation = sample_random_affine(shape, max_rotation_degrees=10.0, generator=generator)[0].double()
    linear = rotation[:, :3]
    torch.testing.assert_close(linear @ linear.T, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert abs(float(torch.linalg.det(linear)) - 1.0) < 1e-6
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64)
    torch.testing.assert_close(linear @ centre + rotation[:, 3], centre, atol=1e-5, rtol=0)
    angle = torch.rad2deg(torch.arccos(((torch.trace(linear) - 1) / 2).clamp(-1, 1)))
    assert 0 < float(angle) <= 10.0 * 3**0.5
    moved = sample_random_affine(shape, max_translation=2.0, max_log_scaling=0.1, generator=generator)[0]
    scales = torch.diagonal(moved[:, :3])
    assert torch.all(scales <= float(torch.exp(torch.tensor(0.1))) + 1e-6) and torch.all(scales >= float(torch.exp(torch.tensor(-0.1))) - 1e-6)
    shift = moved[:, :3].double() @ centre + moved[:, 3].double() - centre
    assert torch.all(shift.abs() <= 2.0 + 1e-5)
    with pytest.raises(ValueError, match="'max_rotation_degrees' must be a finite number >= 0"):
        sample_random_affine(shape, max_rotation_degrees=-1.0)
