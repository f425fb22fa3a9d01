"""KeypointAffine: keys and shapes, identity for identical images, geometry of the fit, contract, gradients."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.functional.affine import affine_to_ddf, identity_affine, invert_affine
from monai_diffreg.functional.warp import warp
from monai_diffreg.networks import KeypointAffine
from monai_diffreg.networks.contract import RegistrationNetwork

KEYS = {"affine", "ddf", "inverse_ddf", "warped"}
SMALL = {"num_keypoints": 6, "enc_channels": (4, 8), "dec_channels": (8, 8)}


def _net(spatial_dims=2, seed=0, **kwargs):
    torch.manual_seed(seed)
    return KeypointAffine(spatial_dims, **{**SMALL, **kwargs})


def _pair(shape, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 1, *shape), generator=g), torch.rand((batch, 1, *shape), generator=g)


@pytest.mark.parametrize("shape, scale, network_size", [
    ((20, 18), 1.0, (20, 18)),
    ((21, 17), 0.5, (10, 8)),
    ((12, 14, 10), 1.0, (12, 14, 10)),
    ((23, 30, 27), 0.5, (12, 15, 14)),  # odd sizes, padded to (12, 16, 16) for the U-Net
])
def test_keys_and_shapes(shape, scale, network_size):
    dims = len(shape)
    net = _net(dims, image_scale=scale)
    moving, fixed = _pair(shape, batch=2)
    with torch.no_grad():
        out = net(moving, fixed)
        features = net.features(moving)
    assert set(out) == KEYS
    assert out["affine"].shape == (2, dims, dims + 1)
    assert out["ddf"].shape == out["inverse_ddf"].shape == (2, dims, *shape)
    assert out["warped"].shape == moving.shape
    assert net.network_size(shape) == network_size and features.shape == (2, 6, *network_size)
    assert features.min() >= 0 and features.max() > 0  # ReLU
    assert torch.isfinite(out["affine"]).all()


@pytest.mark.parametrize("shape, scale", [((20, 18), 0.5), ((23, 30, 27), 0.5), ((12, 14, 10), 1.0)])
def test_same_image_gives_the_identity(shape, scale):
    net = _net(len(shape), image_scale=scale)
    image, _ = _pair(shape, batch=2)
    with torch.no_grad():
        out = net(image, image)
    torch.testing.assert_close(out["affine"], identity_affine(2, len(shape)), atol=1e-5, rtol=0)
    assert out["ddf"].abs().max() < 1e-4 and out["inverse_ddf"].abs().max() < 1e-4
    torch.testing.assert_close(out["warped"], image, atol=1e-4, rtol=0)


def test_fields_are_those_of_the_matrix_and_displacements_match_forward():
    net = _net(3)
    assert isinstance(net, RegistrationNetwork) and net.spatial_dims == 3
    moving, fixed = _pair((12, 14, 10), batch=2)
    with torch.no_grad():
        full, lean, only = net(moving, fixed), net.displacements(moving, fixed), net.displacements(moving, fixed, False)
    matrix = full["affine"]
    assert (matrix - identity_affine(2, 3)).abs().max() > 1e-3  # different images: not the identity
    torch.testing.assert_close(full["ddf"], affine_to_ddf(matrix, (12, 14, 10)))
    torch.testing.assert_close(full["inverse_ddf"], affine_to_ddf(invert_affine(matrix), (12, 14, 10)))
    torch.testing.assert_close(full["warped"], warp(moving, full["ddf"]))
    assert set(lean) == {"affine", "ddf", "inverse_ddf"} and set(only) == {"affine", "ddf"}
    assert torch.equal(lean["affine"], matrix) and torch.equal(only["affine"], matrix)
    assert torch.equal(lean["ddf"], full["ddf"]) and torch.equal(lean["inverse_ddf"], full["inverse_ddf"])
    assert torch.equal(only["ddf"], full["ddf"])


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_translated_keypoint_features_give_the_translation_on_the_input_grid(scale):
    """With the feature maps given (the moving image's shifted by ``s`` network voxels), the matrix maps fixed to
    moving indices: a translation by ``s / scale`` input voxels (the order of the fit and the rescaling)."""
    net = _net(2, image_scale=scale)
    size, shift = (24, 20), (2, -1)
    network_size = net.network_size(size)
    g = torch.Generator().manual_seed(2)
    fixed_features = torch.zeros(1, 6, *network_size)
    fixed_features[..., 3:8, 3:8] = torch.rand(1, 6, 5, 5, generator=g)
    moving_features = torch.roll(fixed_features, shift, dims=(2, 3))
    net.features = lambda images: torch.cat([moving_features, fixed_features])  # affine_matrix: moving first
    moving, fixed = _pair(size)
    matrix = net.affine_matrix(moving, fixed)
    expected = identity_affine(1, 2)
    expected[0, :, 2] = torch.tensor(shift) / scale
    torch.testing.assert_close(matrix, expected, atol=1e-4, rtol=0)  # float32 centroids


def test_empty_keypoint_maps_are_ignored_and_give_finite_gradients():
    """A map empty in one image (channel 0) or in both (channel 1, a dead ReLU channel) has no weight, and no NaN
    reaches the gradients (``sqrt(m_f m_m)`` would give one where a single mass is zero)."""
    net = _net(2)
    g = torch.Generator().manual_seed(3)
    moving_features, fixed_features = torch.rand(2, 1, 6, 12, 10, generator=g)
    moving_features[0, 1] = 0.0
    fixed_features[0, :2] = 0.0
    moving_features.requires_grad_()
    fixed_features.requires_grad_()
    net.features = lambda images: torch.cat([moving_features, fixed_features])
    matrix = net.affine_matrix(*_pair((12, 10)))
    matrix.square().sum().backward()
    assert torch.isfinite(moving_features.grad).all() and torch.isfinite(fixed_features.grad).all()
    assert moving_features.grad[0, 2:].abs().sum() > 0
    net.features = lambda images: torch.cat([moving_features[:, 2:], fixed_features[:, 2:]])
    torch.testing.assert_close(matrix, net.affine_matrix(*_pair((12, 10))))


def test_gradients_reach_the_feature_network():
    net = _net(2)
    net(*_pair((16, 16), batch=2))["warped"].square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.unet.encoder[0][0].weight.grad.abs().sum() > 0


def test_extra_repr():
    assert "num_keypoints=6, image_scale=0.5, norm='instance'" in repr(_net(2))


@pytest.mark.parametrize("kwargs, match", [
    ({"spatial_dims": 4}, r"KeypointAffine\(\): 'spatial_dims' must be 2 or 3"),
    ({"num_keypoints": 0}, r"KeypointAffine\(\): 'num_keypoints' must be an integer >= 1"),
    ({"image_scale": 0.0}, r"KeypointAffine\(\): 'image_scale' must be a finite number > 0"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KeypointAffine(**{"spatial_dims": 2, **SMALL, **kwargs})


def test_bad_inputs():
    net = _net(3)
    a = torch.rand(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match=r"KeypointAffine\(\): 'moving' must be 5D"):
        net(torch.rand(1, 1, 8, 8), a)
    with pytest.raises(ValueError, match=r"KeypointAffine\(\): 'fixed' must have 1 channel"):
        net.displacements(a, torch.rand(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match=r"KeypointAffine\(\): 'moving' and 'fixed' must share batch and spatial"):
        net(a, torch.rand(1, 1, 8, 8, 9))
    with pytest.raises(ValueError, match=r"KeypointAffine.features\(\): 'image' must have 1 channel"):
        net.features(torch.rand(1, 2, 8, 8, 8))
