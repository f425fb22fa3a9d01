"""VxmUNet: output resolution for every int_downsize, VoxelMorph's default structure, input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_diffreg.networks import VxmUNet


@pytest.mark.parametrize("downsize", [1, 2, 4, 8])
def test_output_resolution(downsize):
    net = VxmUNet(2, 2, enc_channels=(4, 8, 8), dec_channels=(8, 8, 8, 6), int_downsize=downsize)
    out = net(torch.rand(2, 2, 16, 24))
    assert out.shape == (2, 6, 16 // downsize, 24 // downsize)
    assert net.out_channels == 6 and net.divisor == 8


def test_voxelmorph_default_half_resolution_structure():
    """VoxelMorph's widths: 4 encoder convs, 4 decoder convs with 3 skips, 3 extra convs at 1/2."""
    net = VxmUNet(3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 32, 32, 32, 32, 32, 32, 16, 16]
    # decoder inputs: bottleneck 32, then 32 + skip 32 twice, then 32 + skip 32 (level 1); no full-res skip
    assert [c.in_channels for c in convs[4:8]] == [32, 64, 64, 64]
    assert convs[8].in_channels == 32
    assert net(torch.rand(1, 2, 16, 16, 32)).shape == (1, 16, 8, 8, 16)


def test_full_resolution_uses_the_top_skip():
    net = VxmUNet(3, int_downsize=1)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert convs[8].in_channels == 32 + 16


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"'int_downsize' must be a power of two between 1 and 16, got 6"):
        VxmUNet(3, int_downsize=6)
    with pytest.raises(ValueError, match=r"'spatial_dims' must be 2 or 3"):
        VxmUNet(1)
    with pytest.raises(ValueError, match=r"need >= 1 encoder width"):
        VxmUNet(2, enc_channels=(4, 8), dec_channels=(8,))
    net = VxmUNet(2, enc_channels=(4, 8), dec_channels=(8, 8))
    with pytest.raises(ValueError, match=r"spatial sizes must be divisible by 4, got shape \(1, 2, 8, 10\)"):
        net(torch.rand(1, 2, 8, 10))
    with pytest.raises(ValueError, match=r"'x' must be 4D"):
        net(torch.rand(1, 2, 8, 8, 8))


def test_instance_norm_option():
    net = VxmUNet(2, 2, enc_channels=(4, 8), dec_channels=(8, 8, 6), norm="instance")
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in net.modules()) == 5
    out = net(torch.rand(2, 2, 8, 12) * 100 + 50)
    assert out.shape == (2, 6, 4, 6) and bool(torch.isfinite(out).all())
    with pytest.raises(ValueError, match=r"norm='instance' the coarsest level \(1/4\) needs more than one voxel"):
        net(torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"'norm' must be one of \['instance'\], got 'batch'"):
        VxmUNet(2, norm="batch")
