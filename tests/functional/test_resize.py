"""Field resizing rescales vectors by N/n over the same extent."""

import pytest
import torch

from monai_diffreg.functional import integrate_velocity, resize_field, resize_image, warp


def test_constant_field_vectors_scale_with_the_size_ratio():
    field = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1, 1).expand(1, 3, 8, 10, 12).clone()
    up = resize_field(field, size=(16, 15, 6))
    expected = torch.tensor([2.0, -3.0, 0.25]).view(1, 3, 1, 1, 1).expand_as(up)
    torch.testing.assert_close(up, expected)


def test_scale_argument_and_identity():
    field = torch.randn(2, 2, 6, 8)
    assert resize_field(field, scale=2.0).shape == (2, 2, 12, 16)
    assert resize_field(field, size=(6, 8)) is field


def test_upsampled_half_resolution_field_moves_the_same_physical_amount():
    """Warping a full-res image by the upsampled half-res exp(v) ~ warping the half-res image by exp(v)."""
    full = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    full[..., 24:40, 20:44] = 1.0
    half = resize_image(full, scale=0.5, mode="area")
    v_half = torch.zeros(1, 2, 32, 32, dtype=torch.float64)
    v_half[:, 0] = 2.0  # 2 half-res voxels = 4 full-res voxels along axis 0
    ddf_full = resize_field(integrate_velocity(v_half), scale=2.0)
    torch.testing.assert_close(ddf_full[:, 0], torch.full_like(ddf_full[:, 0], 4.0))
    warped_full_then_down = resize_image(warp(full, ddf_full), scale=0.5, mode="area")
    warped_half = warp(half, integrate_velocity(v_half))
    assert (warped_full_then_down - warped_half)[..., 4:-4, 4:-4].abs().max() < 1e-6


def test_resize_image_modes_and_errors():
    labels = torch.randint(0, 4, (1, 1, 10, 10)).float()
    assert set(resize_image(labels, scale=1.7, mode="nearest").unique().tolist()) <= set(labels.unique().tolist())
    with pytest.raises(ValueError, match=r"resize_image\(\): give exactly one of 'size' or 'scale'"):
        resize_image(labels)
    with pytest.raises(ValueError, match=r"resize_field\(\): 'size' must be 2 positive integers"):
        resize_field(torch.zeros(1, 2, 4, 4), size=(4, 4, 4))
    with pytest.raises(ValueError, match=r"resize_image\(\): 'mode' must be one of"):
        resize_image(labels, scale=2.0, mode="cubic")
