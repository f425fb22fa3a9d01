"""conv_block / init_flow_head: exact halving and doubling of sizes, norm option, identity start."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_diffreg.networks import conv_block, init_flow_head


@pytest.mark.parametrize("spatial_dims,size", [(2, (12, 10)), (3, (8, 6, 10))])
def test_stride_halves_and_transposed_doubles(spatial_dims, size):
    x = torch.rand(1, 3, *size)
    down = conv_block(spatial_dims, 3, 5, stride=2)(x)
    assert down.shape == (1, 5, *(s // 2 for s in size))
    up = conv_block(spatial_dims, 5, 4, stride=2, transposed=True)(down)
    assert up.shape == (1, 4, *size)
    assert conv_block(spatial_dims, 3, 2)(x).shape == (1, 2, *size)


def test_instance_norm_normalises_before_the_activation():
    block = conv_block(3, 1, 4, norm="instance")
    assert isinstance(block[1], nn.InstanceNorm3d)
    out = block[:2](torch.rand(2, 1, 6, 6, 6) * 100 + 7)
    assert torch.allclose(out.mean(dim=(2, 3, 4)), torch.zeros(2, 4), atol=1e-5)
    with pytest.raises(ValueError, match="'norm'"):
        conv_block(3, 1, 4, norm="group")


def test_init_flow_head_starts_near_zero():
    head = init_flow_head(nn.Conv3d(8, 3, 3, padding=1))
    assert head.weight.std() < 1e-4 and torch.equal(head.bias, torch.zeros(3))
