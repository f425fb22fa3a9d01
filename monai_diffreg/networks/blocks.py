"""Convolution blocks shared by the registration networks: convolution, optional instance norm, LeakyReLU(0.2)."""

from __future__ import annotations

from torch import nn

from ..validation import check_choice

__all__ = ["NORMS", "conv_block", "init_flow_head"]

NORMS = ("instance",)


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
        conv = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2](in_channels, out_channels, 3, stride=stride, padding=1)
    layers = [conv]
    if norm is not None:
        layers.append((nn.InstanceNorm2d, nn.InstanceNorm3d)[spatial_dims - 2](out_channels, affine=True))
    layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


def init_flow_head(head: nn.Module, std: float = 1e-5) -> nn.Module:
    """VoxelMorph's initialisation of a field-predicting convolution: weights ~ N(0, std), zero bias.

    The network then starts at (almost exactly) the identity transformation.
    """
    nn.init.normal_(head.weight, 0.0, std)
    nn.init.zeros_(head.bias)
    return head
