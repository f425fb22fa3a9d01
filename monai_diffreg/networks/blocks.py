"""Convolution blocks shared by the registration networks: convolution, optional instance norm, LeakyReLU(0.2)."""

from __future__ import annotations

import torch
from torch import nn

from ..validation import check_choice

__all__ = ["NORMS", "OneDNNConv2d", "OneDNNConv3d", "convolution", "conv_block", "max_pool_half", "init_flow_head"]

NORMS = ("instance",)


class _OneDNNForward:
    """Convolution forward that always uses oneDNN (MKL-DNN) on CPU float32, otherwise unchanged.

    PyTorch sends a batch-1 input whose ``C x D x H`` (``C x H`` in 2D) is at most 20480 (a
    2-channel image pair, the deep levels of a U-Net) to its reference ``slow_conv3d`` instead of
    oneDNN. On 2 CPU threads that is 2.3x slower for VoxelMorph's first layer (2 -> 16 channels,
    80x112x96: 100 vs 44 ms) and 8x for 32 -> 32 channels at 20x28x24 (27 vs 3.2 ms), and a
    whole training step ~18% slower. Unbatched inputs, other devices and dtypes (float64
    gradchecks), and string or non-zero padding modes take PyTorch's usual path (and its errors).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == self.weight.dim() and x.device.type == "cpu" and x.dtype == torch.float32
                and self.padding_mode == "zeros"
                and not isinstance(self.padding, str) and torch.backends.mkldnn.is_available()
                and torch.backends.mkldnn.enabled):
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return self._conv_forward(x, self.weight, self.bias)


class OneDNNConv3d(_OneDNNForward, nn.Conv3d):
    """``nn.Conv3d`` (same parameters and ``state_dict`` keys) on oneDNN's fast CPU path (see ``_OneDNNForward``)."""


class OneDNNConv2d(_OneDNNForward, nn.Conv2d):
    """``nn.Conv2d`` (same parameters and ``state_dict`` keys) on oneDNN's fast CPU path (see ``_OneDNNForward``)."""


def convolution(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                padding: int = 1) -> nn.Module:
    """A ``spatial_dims``-D convolution that takes oneDNN's fast path on CPU (:class:`OneDNNConv3d`)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"convolution(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
    return (OneDNNConv2d, OneDNNConv3d)[spatial_dims - 2](in_channels, out_channels, kernel_size, stride=stride,
                                                          padding=padding)


def conv_block(spatial_dims: int, in_channels: int, out_channels: int, norm: str | None = None, stride: int = 1,
               transposed: bool = False) -> nn.Sequential:
    """``k=3`` convolution (+ instance norm) + LeakyReLU(0.2), the block of VoxelMorph and MDReg-Net.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channel counts.
        norm: ``None`` (the papers) or ``"instance"`` (instance normalisation with affine parameters).
        stride: 1, or 2 to halve (``transposed=False``) / double (``transposed=True``) every spatial size exactly.
        transposed: a transposed convolution ("deconvolution"), ``padding=1, output_padding=stride-1``.
    """
    if norm is not None:
        check_choice(norm, "norm", "conv_block", NORMS)
    if transposed:
        conv = (nn.ConvTranspose2d, nn.ConvTranspose3d)[spatial_dims - 2](
            in_channels, out_channels, 3, stride=stride, padding=1, output_padding=stride - 1)
    else:
        conv = convolution(spatial_dims, in_channels, out_channels, 3, stride=stride, padding=1)
    layers = [conv]
    if norm is not None:
        layers.append((nn.InstanceNorm2d, nn.InstanceNorm3d)[spatial_dims - 2](out_channels, affine=True))
    layers.append(nn.LeakyReLU(0.2, inplace=True))  # in place: neither op before it needs its output to backpropagate
    return nn.Sequential(*layers)


def max_pool_half(x: torch.Tensor) -> torch.Tensor:
    """2x max pooling of ``(B, C, *S)`` (2D or 3D; sizes floor-halved, as ``nn.MaxPool3d(2)``).

    The maximum of each 2-voxel block as chained reductions over a reshaped view: on CPU several
    times faster than ``max_pool3d``, which also computes indices. Where a block's maximum is tied,
    the gradient is shared among the tied voxels (``max_pool3d`` gives it to one of them).
    """
    spatial = x.shape[2:]
    x = x[(..., *(slice(0, 2 * (s // 2)) for s in spatial))]
    blocks = x.reshape(*x.shape[:2], *(n for s in spatial for n in (s // 2, 2)))
    for axis in range(2 * len(spatial) + 1, 2, -2):  # the block axes, last first
        blocks = blocks.amax(axis)
    return blocks


def init_flow_head(head: nn.Module, std: float = 1e-5) -> nn.Module:
    """VoxelMorph's initialisation of a field-predicting convolution: weights ~ N(0, std), zero bias.

    The network then starts at (almost exactly) the identity transformation.
    """
    nn.init.normal_(head.weight, 0.0, std)
    nn.init.zeros_(head.bias)
    return head
