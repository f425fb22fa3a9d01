"""Pair checks, image_scale sizes, padding to a divisor with edge values and cropping back."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.networks.pair_geometry import check_registration_pair, crop_spatial, pad_to_multiple, scaled_size


def test_pad_to_multiple_replicates_edges_and_crop_undoes_it():
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).view(1, 2, 5, 7)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (1, 2, 8, 8)
    assert torch.equal(padded[:, :, 5:, :7], x[:, :, 4:5, :].expand(1, 2, 3, 7))
    assert torch.equal(padded[:, :, :5, 7:], x[:, :, :, 6:7])
    assert torch.equal(crop_spatial(padded, (5, 7)), x)
    assert pad_to_multiple(x, 1) is x


def test_scaled_size_rounds_and_keeps_one_voxel():
    assert scaled_size((160, 192, 225), 0.5) == (80, 96, 112)  # 112.5 rounds half to even
    assert scaled_size((1, 3), 0.1) == (1, 1)


def test_check_registration_pair_errors_name_the_caller():
    with pytest.raises(ValueError, match="Net\\(\\): 'fixed' must be 4D"):
        check_registration_pair("Net", torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4, 4), 2, 2)
    with pytest.raises(ValueError, match="Net\\(\\): 'moving' and 'fixed' must share batch"):
        check_registration_pair("Net", torch.rand(2, 1, 4, 4), torch.rand(1, 1, 4, 4), 2, 2)
    with pytest.raises(ValueError, match="add up to in_channels=2"):
        check_registration_pair("Net", torch.rand(1, 2, 4, 4), torch.rand(1, 1, 4, 4), 2, 2)
    check_registration_pair("Net", torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), 2, 2)
