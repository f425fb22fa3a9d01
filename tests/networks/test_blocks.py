"""conv_block / init_flow_head / convolution / max_pool_half: exact halving and doubling of sizes, norm option, identity start, oneDNN path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monai_diffreg.networks import conv_block, convolution, init_flow_head
from monai_diffreg.networks.blocks import max_pool_half


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


def _profiled_ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_convolution_takes_onednn_path_and_matches_pytorch(spatial_dims):
    """A batch-1 two-channel pair is where PyTorch's heuristic picks its slow reference kernel:
    ours runs oneDNN instead, with the same outputs and gradients as the plain module."""
    torch.manual_seed(0)
    ours = convolution(spatial_dims, 2, 5)
    plain = (torch.nn.Conv2d, torch.nn.Conv3d)[spatial_dims - 2](2, 5, 3, padding=1)
    plain.load_state_dict(ours.state_dict())  # same keys and shapes
    x = torch.randn(1, 2, *([9] * spatial_dims), requires_grad=True)
    assert "aten::mkldnn_convolution" in _profiled_ops(lambda: ours(x))
    grad = torch.randn(1, 5, *([9] * spatial_dims))
    mine = torch.autograd.grad(ours(x), (x, ours.weight, ours.bias), grad)
    theirs = torch.autograd.grad(plain(x), (x, plain.weight, plain.bias), grad)
    torch.testing.assert_close(ours(x), plain(x), atol=1e-5, rtol=1e-5)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_convolution_keeps_pytorch_path_for_float64():
    """float64 (gradchecks) is not a oneDNN type: the module falls back and stays exact."""
    ours = convolution(3, 2, 3).double()
    x = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    assert "aten::mkldnn_convolution" not in _profiled_ops(lambda: ours(x))
    assert torch.autograd.gradcheck(lambda t: ours(t), (x,))


def test_convolution_behaves_like_pytorch_on_unbatched_and_wrong_inputs():
    """nn.Conv3d accepts an unbatched (C, D, H, W) input and explains a wrong one; so must ours."""
    ours = convolution(3, 2, 4)
    plain = torch.nn.Conv3d(2, 4, 3, padding=1)
    plain.load_state_dict(ours.state_dict())
    unbatched = torch.randn(2, 6, 7, 8)
    torch.testing.assert_close(ours(unbatched), plain(unbatched), atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="Expected 4D \\(unbatched\\) or 5D \\(batched\\) input"):
        ours(torch.randn(2, 6, 7))
    with pytest.raises(RuntimeError, match="to have 2 channels, but got 3 channels"):
        ours(torch.randn(1, 3, 6, 7, 8))


def test_convolution_rejects_bad_dims():
    with pytest.raises(ValueError, match="spatial_dims"):
        convolution(4, 2, 3)


@pytest.mark.parametrize("shape", [(2, 3, 7, 9, 10), (1, 2, 8, 8, 8), (1, 1, 5, 6), (3, 2, 4, 3)])
def test_max_pool_half_equals_max_pool(shape):
    """Values equal nn.MaxPool(2) (floor sizes, odd sizes included); the gradient reaches each block's maximum."""
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    reference = (F.max_pool2d if len(shape) == 4 else F.max_pool3d)(x, 2)
    pooled = max_pool_half(x)
    assert torch.equal(pooled, reference)
    (grad,) = torch.autograd.grad(pooled.sum(), x)
    (expected,) = torch.autograd.grad(reference.sum(), x)
    torch.testing.assert_close(grad, expected)  # no ties in random data: the same voxels


def test_conv_block_in_place_activation_backpropagates():
    """The in-place LeakyReLU after a convolution / instance norm leaves autograd a valid graph (float64 gradcheck)."""
    torch.manual_seed(0)
    for norm in (None, "instance"):
        block = conv_block(2, 2, 3, norm=norm).double()
        x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(block, (x,))
