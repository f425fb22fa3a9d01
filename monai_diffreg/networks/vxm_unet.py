"""VoxelMorph's U-Net backbone, able to stop its decoder at a coarser resolution.

VoxelMorph (Balakrishnan et al. 2019; Dalca et al. 2019) uses a U-Net whose encoder has one
3x3(x3) convolution (LeakyReLU 0.2) per level followed by 2x max pooling, and whose decoder
has one convolution per level followed by nearest-neighbour upsampling and concatenation
with the encoder's skip connection, then a few extra convolutions at the output resolution.
The probabilistic, diffeomorphic VoxelMorph predicts the velocity field at half the input
resolution by leaving out the decoder's last upsampling (``int_downsize=2``); this module
generalises that to any power of two.

MONAI's :class:`monai.networks.nets.VoxelMorphUNet` always decodes back to full resolution,
which is where most of its cost lies; stopping early is what makes the velocity head cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..validation import check_choice, check_spatial_tensor
from .blocks import NORMS, conv_block, max_pool_half

__all__ = ["VxmUNet", "NORMS"]


class VxmUNet(nn.Module):
    """VoxelMorph U-Net returning features at ``1 / int_downsize`` of the input resolution.

    Encoder level ``i`` (``i = 0 .. L-1``, ``L = len(enc_channels)``) runs at ``1 / 2**i`` and
    is followed by max pooling; decoder convolution ``i`` (``i = 0 .. L-1``) runs at
    ``1 / 2**max(L - i, s)`` with ``int_downsize = 2**s``, and is followed by upsampling and
    concatenation with encoder level ``L - i - 1`` only while that level is not finer than
    ``1 / 2**s``. The remaining ``dec_channels[L:]`` convolutions run at ``1 / 2**s``.
    With the defaults (VoxelMorph's ``enc=(16, 32, 32, 32)``, ``dec=(32, 32, 32, 32, 32, 16, 16)``,
    ``int_downsize=2``) this is VoxelMorph's "half resolution" U-Net.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the (concatenated) input.
        enc_channels: one width per encoder level.
        dec_channels: one width per decoder level (``len(enc_channels)`` of them), then the
            widths of the extra convolutions at the output resolution.
        int_downsize: output resolution divisor, a power of two ``<= 2**len(enc_channels)``.
        norm: ``None`` (VoxelMorph: convolution + LeakyReLU) or ``"instance"`` (instance
            normalisation with affine parameters between them). Not in VoxelMorph; it makes
            training converge in far fewer iterations (overfitting one 2D pair: local NCC
            -0.56 without vs -0.80 with it after 200 Adam steps), which matters on a CPU budget.
        block: ``block(spatial_dims, in_channels, out_channels) -> module`` building every
            convolution block, called as ``block(x, *context)`` by :meth:`forward`; default the
            package's :func:`~monai_diffreg.networks.blocks.conv_block` with ``norm`` (e.g.
            :class:`~monai_diffreg.networks.hypermorph.HyperVxmUNet` passes hyper-convolutions).

    Input ``(B, in_channels, *spatial)`` with every spatial size divisible by :attr:`divisor`;
    output ``(B, dec_channels[-1], *(spatial // int_downsize))``.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 2, enc_channels: Sequence[int] = (16, 32, 32, 32),
                 dec_channels: Sequence[int] = (32, 32, 32, 32, 32, 16, 16), int_downsize: int = 2,
                 norm: str | None = None, block: Callable[[int, int, int], nn.Module] | None = None) -> None:
        super().__init__()
        caller = type(self).__name__
        if spatial_dims not in (2, 3):
            raise ValueError(f"{caller}(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
        enc, dec = [int(c) for c in enc_channels], [int(c) for c in dec_channels]
        levels = len(enc)
        if levels < 1 or len(dec) < levels or min(enc + dec) < 1:
            raise ValueError(
                f"{caller}(): need >= 1 encoder width and >= len(enc_channels) positive decoder widths, "
                f"got enc_channels={tuple(enc_channels)}, dec_channels={tuple(dec_channels)}"
            )
        shift = math.log2(int_downsize) if isinstance(int_downsize, int) and int_downsize >= 1 else -1
        if shift != int(shift) or not 0 <= shift <= levels:
            raise ValueError(
                f"{caller}(): 'int_downsize' must be a power of two between 1 and {2**levels}, got {int_downsize!r}"
            )
        if norm is not None:
            check_choice(norm, "norm", caller, NORMS)
        if block is None:
            def block(dims: int, in_channels: int, out_channels: int) -> nn.Module:
                return conv_block(dims, in_channels, out_channels, norm)
        self.spatial_dims = spatial_dims
        self.norm = norm
        self.int_downsize = int_downsize
        self.divisor = 2**levels
        self._shift = int(shift)
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in enc:
            self.encoder.append(block(spatial_dims, channels, width))
            channels = width
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoder = nn.ModuleList()
        for i, width in enumerate(dec[:levels]):
            self.decoder.append(block(spatial_dims, channels, width))
            channels = width + (enc[levels - i - 1] if self._upsamples_after(i) else 0)
        self.extra = nn.ModuleList()
        for width in dec[levels:]:
            self.extra.append(block(spatial_dims, channels, width))
            channels = width
        self.out_channels = channels

    def _upsamples_after(self, i: int) -> bool:
        """Whether decoder level ``i`` is followed by upsampling and a skip connection."""
        return len(self.encoder) - i - 1 >= self._shift

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, in_channels, *S)``; ``context``: extra inputs every block receives (``block(x, *context)``,
        e.g. the hypernetwork's embedding of :class:`~monai_diffreg.networks.hypermorph.HyperVxmUNet`)."""
        caller = f"{type(self).__name__}.forward"
        check_spatial_tensor(x, "x", caller, spatial_dims=self.spatial_dims)
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(
                f"{caller}(): spatial sizes must be divisible by {self.divisor}, got shape {tuple(x.shape)}"
            )
        if self.norm is not None and math.prod(s // self.divisor for s in x.shape[2:]) < 2:
            raise ValueError(
                f"{caller}(): with norm={self.norm!r} the coarsest level (1/{self.divisor}) needs more than one "
                f"voxel for the normalisation statistics, got shape {tuple(x.shape)}"
            )
        skips = []
        for block in self.encoder:
            x = block(x, *context)
            skips.append(x)
            x = max_pool_half(x)
        for i, block in enumerate(self.decoder):
            x = block(x, *context)
            if self._upsamples_after(i):
                x = torch.cat([self.upsample(x), skips[len(self.encoder) - i - 1]], dim=1)
        for block in self.extra:
            x = block(x, *context)
        return x
