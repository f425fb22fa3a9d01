"""Warp: exact translations, identity, MONAI Warp agreement, gradcheck, the symmetric displacement gradient,
bad input."""

import warnings

import pytest
import torch
from monai.networks.blocks import Warp as MonaiWarp

from monai_diffreg.functional import warp


def _constant_field(shape, vector, dtype=torch.float32):
    ndim = len(shape)
    return torch.tensor(vector, dtype=dtype).view(1, ndim, *([1] * ndim)).expand(1, ndim, *shape).clone()


@pytest.mark.parametrize("shape", [(12, 10), (8, 9, 7)])
def test_identity_field_returns_image(shape):
    image = torch.rand(2, 3, *shape)
    ddf = torch.zeros(2, len(shape), *shape)
    torch.testing.assert_close(warp(image, ddf), image, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape,shift", [((12, 10), (2, -3)), ((8, 9, 7), (1, 2, -1))])
def test_integer_translation_is_exact(shape, shift):
    """warped(x) = image(x + t): the interior equals the image rolled by -t, exactly."""
    image = torch.rand(1, 1, *shape, dtype=torch.float64)
    warped = warp(image, _constant_field(shape, shift, torch.float64))
    expected = torch.roll(image, shifts=[-s for s in shift], dims=list(range(2, 2 + len(shape))))
    interior = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, shape))
    torch.testing.assert_close(warped[(..., *interior)], expected[(..., *interior)], atol=1e-12, rtol=0)


def test_fractional_translation_of_linear_ramp_is_exact():
    """Linear interpolation reproduces a linear function exactly: ramp(x + 0.3) = ramp(x) + 0.3."""
    shape = (6, 7, 8)
    ramp = torch.arange(8, dtype=torch.float64).view(1, 1, 1, 1, 8).expand(1, 1, *shape)
    warped = warp(ramp, _constant_field(shape, (0.0, 0.0, 0.3), torch.float64))
    torch.testing.assert_close(warped[..., :-1], ramp[..., :-1] + 0.3, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["border", "zeros", "reflection"])
@pytest.mark.parametrize("shape", [(11, 13), (7, 9, 8)])
def test_matches_monai_warp(mode, padding_mode, shape):
    image = torch.rand(2, 2, *shape)
    ddf = torch.randn(2, len(shape), *shape) * 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = MonaiWarp(mode=mode, padding_mode=padding_mode)(image, ddf)
    torch.testing.assert_close(warp(image, ddf, mode=mode, padding_mode=padding_mode), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(5, 6), (4, 5, 3)])
def test_gradcheck_float64(shape):
    image = torch.rand(1, 2, *shape, dtype=torch.float64, requires_grad=True)
    # keep sample points away from voxel boundaries, where linear interpolation has kinks
    ddf = (torch.rand(1, len(shape), *shape, dtype=torch.float64) * 0.6 + 0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda i, d: warp(i, d), (image, ddf), eps=1e-6, atol=1e-5)


def _ddf_gradient(image, ddf, weights, displacement_gradient, padding_mode="border"):
    ddf = ddf.clone().requires_grad_(True)
    (warp(image, ddf, padding_mode=padding_mode, displacement_gradient=displacement_gradient) * weights).sum().backward()
    return ddf.grad


def test_displacement_gradient_at_the_identity_exact_is_one_sided_symmetric_is_central():
    """Along a quadratic ramp x^2 the exact derivative at the identity is 2x + 1 at some voxels and 2x - 1 at
    others (float rounding of the sampling coordinates); the symmetric one is 2x at every inner voxel."""
    x = torch.arange(40.0)
    image = (x ** 2).expand(1, 1, 6, 40).contiguous()
    ddf, ones = torch.zeros(1, 2, 6, 40), torch.ones(1, 1, 6, 40)
    exact = _ddf_gradient(image, ddf, ones, "exact")[0, 1, 0, 1:-1] - 2 * x[1:-1]
    assert {-1.0, 1.0} <= set(exact.round().tolist())
    symmetric = _ddf_gradient(image, ddf, ones, "symmetric")
    assert torch.allclose(symmetric[0, 1, :, 1:-1], 2 * x[1:-1].expand(6, 38), atol=1e-3)
    assert torch.count_nonzero(symmetric[0, 0]) == 0  # no change along the other axis


@pytest.mark.parametrize("shape", [(16, 14), (10, 9, 8)])
def test_symmetric_displacement_gradient_is_the_exact_one_inside_cells_with_the_same_value(shape):
    torch.manual_seed(0)
    image = torch.rand(2, 2, *shape, dtype=torch.float64)
    # sampling positions away from voxels (fractional parts in [0.2, 0.8]), some outside the image
    ddf = torch.randint(-3, 3, (2, len(shape), *shape)).double() + torch.rand(2, len(shape), *shape, dtype=torch.float64) * 0.6 + 0.2
    weights = torch.rand(2, 2, *shape, dtype=torch.float64)
    results = {}
    for kind in ("exact", "symmetric"):
        moving, field = image.clone().requires_grad_(True), ddf.clone().requires_grad_(True)
        value = warp(moving, field, padding_mode="zeros", displacement_gradient=kind)
        (value * weights).sum().backward()
        results[kind] = (value.detach(), moving.grad, field.grad)
    for exact, symmetric in zip(results["exact"], results["symmetric"]):  # 3D: up to offset^2 x a mixed difference
        assert torch.allclose(exact, symmetric, rtol=0, atol=1e-9 if len(shape) == 2 else 1e-5)


def test_symmetric_displacement_gradient_is_equivariant_under_flips_and_transposes():
    torch.manual_seed(1)
    image = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 32, 32), 5, 1, 2)
    ddf, weights = torch.zeros(1, 2, 32, 32), torch.rand(1, 1, 32, 32)
    for kind in ("exact", "symmetric"):
        reference = _ddf_gradient(image, ddf, weights, kind)
        flipped = _ddf_gradient(image.flip(3), ddf, weights.flip(3), kind).flip(3)
        transposed = _ddf_gradient(image.transpose(2, 3), ddf, weights.transpose(2, 3), kind).transpose(2, 3)
        equivariant = (torch.allclose(flipped[:, 0], reference[:, 0], atol=1e-3)    # largest derivative ~0.14
                       and torch.allclose(-flipped[:, 1], reference[:, 1], atol=1e-3)
                       and torch.allclose(transposed.flip(1), reference, atol=1e-3))
        assert equivariant == (kind == "symmetric")


def test_labels_keep_their_values_with_nearest():
    labels = torch.randint(0, 5, (1, 1, 9, 9, 9)).float()
    warped = warp(labels, torch.randn(1, 3, 9, 9, 9), mode="nearest")
    assert set(warped.unique().tolist()) <= set(labels.unique().tolist())


def test_bad_input_messages():
    image = torch.rand(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match=r"warp\(\): 'ddf' must have shape \(1, 3, 8, 8, 8\)"):
        warp(image, torch.zeros(1, 3, 8, 8, 7))
    with pytest.raises(ValueError, match=r"warp\(\): 'ddf' must have 3 channels"):
        warp(image, torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match=r"warp\(\): 'image' must be 4D .* or 5D"):
        warp(torch.rand(8, 8, 8), torch.zeros(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match=r"warp\(\): 'mode' must be one of"):
        warp(image, torch.zeros(1, 3, 8, 8, 8), mode="cubic")
    with pytest.raises(ValueError, match=r"warp\(\): 'displacement_gradient' must be one of"):
        warp(image, torch.zeros(1, 3, 8, 8, 8), displacement_gradient="central")
    with pytest.raises(TypeError, match=r"warp\(\): 'image' must be a torch.Tensor, got ndarray"):
        warp(image.numpy(), torch.zeros(1, 3, 8, 8, 8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_field_is_an_error_not_a_crash(bad):
    """grid_sample's CPU kernels read and write memory at non-finite coordinates unchecked: warp refuses them."""
    image, ddf = torch.rand(1, 1, 6, 7), torch.zeros(1, 2, 6, 7)
    ddf[0, 1, 2, 3] = bad
    with pytest.raises(FloatingPointError, match=r"warp\(\): 'ddf' has non-finite values"):
        warp(image, ddf)


@pytest.mark.parametrize("shape", [(12, 10), (8, 7, 6)])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_symmetric_displacement_gradient_near_and_away_from_kinks_is_the_mean_of_the_shifted_exact_ones(shape, padding_mode):
    """The symmetric derivative is the mean of the exact ones at the positions moved by +-1e-3 voxel along every
    axis, wherever the positions are: on voxel planes (some axes, some batch items), inside cells and outside the
    image; whether few or most positions lie on a plane (the backward's two paths). In 3D away from planes the
    exact derivative differs from that mean by offset^2 x a mixed difference."""
    torch.manual_seed(2)
    image, weights = torch.rand(2, 2, *shape, dtype=torch.float64), torch.rand(2, 2, *shape, dtype=torch.float64)
    inside = torch.randint(-2, 3, (2, len(shape), *shape)).double() + torch.rand(2, len(shape), *shape, dtype=torch.float64)
    shift = 1e-3
    for share_on_planes in (0.1, 0.9):
        on_plane = torch.rand(2, len(shape), *shape) < 1 - (1 - share_on_planes) ** (1 / len(shape))
        ddf = torch.where(on_plane, inside.floor(), inside)
        reference = 0.5 * sum(_ddf_gradient(image, ddf + sign * shift, weights, "exact", padding_mode) for sign in (1, -1))
        assert torch.allclose(_ddf_gradient(image, ddf, weights, "symmetric", padding_mode), reference,
                              rtol=0, atol=1e-12 if len(shape) == 2 else 1e-5)
