"""The CNN that predicts FLASH's regularisation ``alpha`` from an image pair (Wang & Zhang, sec. 3.2, Fig. 2).

Two streams of the same shape but separate weights encode the source (moving) and the target (fixed)
image, four blocks each; a fusion stream of three blocks encodes their concatenated features; a fully
connected layer applied at every remaining position (a 1x1 convolution) and a global average pooling give
one number per pair. A block is a ``k x k`` convolution (``k`` = 5, the paper's), batch normalisation, PReLU
and 2x max pooling. The choices the paper leaves open, and why:

* batch normalisation as the paper, with running statistics recomputed over the training pairs after
  training (:func:`recalibrate_batch_norm`, "precise BN"): pairs that differ by a small deformation have
  nearly the same features across a batch, batch statistics amplify the tiny differences, and the moving
  averages of training lag behind the weights; on the 2D bull's-eye pairs the held-out loss in evaluation
  mode was 1.2, 23, 0.37, 256 and 16 at epochs 10 to 50 without the recalibration, 0.11-0.14 with it
  (``benchmarks/flash_regpred_2d.py``, measured); instance normalisation did not learn at all
  there (stuck at the constant predictor: it removes the per-image statistics the deformation shows in);
  ``norm="group"`` (8 groups) normalises each pair alone over groups of channels, with nothing to recalibrate,
  but on the bull's-eye pairs it stayed at the constant predictor for 40 epochs, as instance normalisation,
  and as ``norm="none"`` (no normalisation: the training loss did not move from the constant's in 30 epochs,
  0.4.7): the pairs' images differ by small deformations, and only batch statistics centre the features on
  what differs between pairs (with the images as they are: with the balanced ``difference_gain`` below,
  ``norm="none"`` learns too, to twice batch norm's validation loss); for the same reason the batches must not
  be small: with the paper's 16 pairs a batch's mean is too noisy an estimate of the training set's, and the
  loss in evaluation mode rose after epoch 10 while training went on; with 64 it fell to the end (validation L2
  on log alpha 0.096 vs 0.071 on the same split, ``benchmarks/flash_regpred_2d.py --batch-size``, measured,
  lddmm docs);
* the output is ``log alpha`` (:func:`predicted_alpha` takes its exponential): ``alpha`` spans decades
  (the estimator keeps it in [1e-3, 1e3]), and an L2 loss on ``alpha`` itself would be dominated by the
  stiffest pairs; the L2 loss of the paper is applied to ``log alpha`` (:func:`log_alpha_loss`);
* widths 16, 32, 64, 64 per stream and 64 in the fusion blocks (the paper gives none);
* the fusion blocks pool only while the feature map is larger than 1 voxel per axis, so any input of at
  least ``2^4`` voxels per axis works (the paper's 128^3 inputs leave 16^3 after the streams);
* ``fusion="early"`` (beyond the paper, for experiments): one stream of the same widths encodes the two images
  stacked as channels, so its first convolution sees them side by side at full resolution; the paper's two
  streams (``"late"``, default) each pool their image 16-fold before the features meet, while the deformations
  that tell alphas apart can be a fraction of a voxel;
* ``difference_gain`` (beyond the paper): the fixed image enters the network as ``moving + g (fixed - moving)``, the
  pair's difference amplified ``g``-fold (1: the images as they are, the paper's). Pairs that differ by small
  deformations differ in a few edge voxels by a fraction of the intensity range (on the 2D bull's-eye pairs the
  difference's standard deviation is 1/35 of the images'), so at the start every feature answers the image both
  share, and Adam's bounded steps take most of the training to grow the weights that read the difference;
  :func:`balanced_difference_gain` gives the difference the images' own spread. It is an invertible linear map of
  the input, so nothing the network can represent is lost; the gain is stored with the weights (a buffer). On the
  bull's-eye pairs it cut the validation L2 on log alpha from 0.071 to 0.017 and the cross-validated error from
  19.6 % to 10.5 % of MAP (lddmm docs);
* the fully connected layer's bias starts at ``initial_log_alpha`` (the training labels' mean log, given
  by the caller), its weights at zero, so training starts from the constant predictor that is best in L2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..networks.blocks import convolution, max_pool_half
from ..validation import check_choice, check_positive
from .regularization import LOG_ALPHA_RANGE

__all__ = ["RegularizationPredictor", "PREDICTOR_NORMS", "PREDICTOR_FUSIONS", "recalibrate_batch_norm", "predicted_alpha",
           "log_alpha_loss", "balanced_difference_gain"]

#: the predictor's normalisation layers (module docstring)
PREDICTOR_NORMS = ("batch", "group", "none")
#: where the two images meet (module docstring): the paper's two streams, or one stream of the stacked pair
PREDICTOR_FUSIONS = ("late", "early")
_GROUPS = 8


class _Block(nn.Module):
    """``k x k`` convolution, batch, group or no normalisation, PReLU, then 2x max pooling where the map is still larger
    than 1."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, norm: str) -> None:
        super().__init__()
        self.conv = convolution(spatial_dims, in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        if norm == "batch":
            self.norm = (nn.BatchNorm2d, nn.BatchNorm3d)[spatial_dims - 2](out_channels)
        else:
            self.norm = nn.GroupNorm(math.gcd(_GROUPS, out_channels), out_channels) if norm == "group" else nn.Identity()
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm(self.conv(x)))
        return max_pool_half(x) if min(x.shape[2:]) >= 2 else x


class RegularizationPredictor(nn.Module):
    """``log alpha`` of FLASH for each pair: ``(B, 1)`` from fixed and moving images ``(B, C, *S)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each image.
        stream_channels: widths of the four blocks of each stream.
        fusion_channels: widths of the fusion blocks.
        kernel_size: convolution size (odd).
        initial_log_alpha: the output before training (module docstring).
        norm: ``"batch"`` (the paper's), ``"group"`` or ``"none"`` (module docstring).
        fusion: ``"late"`` (the paper's two streams) or ``"early"`` (one stream of the stacked pair; module docstring).
        difference_gain: the fixed image enters as ``moving + difference_gain * (fixed - moving)``; 1 is the paper's
            (module docstring, :func:`balanced_difference_gain`).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, stream_channels: Sequence[int] = (16, 32, 64, 64),
                 fusion_channels: Sequence[int] = (64, 64, 64), kernel_size: int = 5,
                 initial_log_alpha: float = 0.0, norm: str = "batch", fusion: str = "late",
                 difference_gain: float = 1.0) -> None:
        super().__init__()
        check_choice(norm, "norm", "RegularizationPredictor", PREDICTOR_NORMS)
        check_choice(fusion, "fusion", "RegularizationPredictor", PREDICTOR_FUSIONS)
        if spatial_dims not in (2, 3):
            raise ValueError(f"RegularizationPredictor(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"RegularizationPredictor(): 'kernel_size' must be an odd integer >= 1, got {kernel_size!r}")
        gain = check_positive(difference_gain, "difference_gain", "RegularizationPredictor")
        self.register_buffer("difference_gain", torch.tensor(gain))
        self.spatial_dims = spatial_dims

        def stream(widths: Sequence[int], first: int) -> nn.Sequential:
            return nn.Sequential(*(_Block(spatial_dims, c_in, c_out, kernel_size, norm)
                                   for c_in, c_out in zip((first, *widths[:-1]), widths)))

        if fusion == "late":
            self.moving_stream = stream(stream_channels, in_channels)
            self.fixed_stream = stream(stream_channels, in_channels)
            self.fusion = stream(fusion_channels, 2 * stream_channels[-1])
        else:
            self.pair_stream = stream(stream_channels, 2 * in_channels)
            self.fusion = stream(fusion_channels, stream_channels[-1])
        self.early = fusion == "early"
        self.head = convolution(spatial_dims, fusion_channels[-1], 1, kernel_size=1, padding=0)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, float(initial_log_alpha))
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)) and module is not self.head:
                nn.init.kaiming_normal_(module.weight)  # He normal, the paper's
                nn.init.zeros_(module.bias)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``(B, 1)`` predicted ``log alpha`` for ``(B, C, *S)`` fixed (target) and moving (source) images."""
        if fixed.shape != moving.shape or fixed.ndim != self.spatial_dims + 2:
            raise ValueError(f"RegularizationPredictor: fixed and moving must be two (B, C, *spatial) tensors of one "
                             f"shape with {self.spatial_dims} spatial axes, got {tuple(fixed.shape)} and {tuple(moving.shape)}")
        fixed = moving + self.difference_gain * (fixed - moving)
        if self.early:
            features = self.pair_stream(torch.cat([moving, fixed], dim=1))
        else:
            features = torch.cat([self.moving_stream(moving), self.fixed_stream(fixed)], dim=1)
        return self.head(self.fusion(features)).flatten(2).mean(dim=2)


def recalibrate_batch_norm(net: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, batch_size: int = 16) -> None:
    """Set every batch norm's running statistics to their average over the given training pairs ``(N, C, *S)``
    at the current weights ("precise BN", module docstring); leaves ``net`` in evaluation mode."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    net.train()
    with torch.no_grad():
        for batch in torch.arange(len(fixed)).split(batch_size):
            net(fixed[batch], moving[batch])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.eval()


def predicted_alpha(log_alpha: torch.Tensor) -> torch.Tensor:
    """``alpha`` from the network's ``log alpha``, within the estimator's range [1e-3, 1e3]."""
    return log_alpha.clamp(*LOG_ALPHA_RANGE).exp()


def log_alpha_loss(predicted_log_alpha: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The paper's L2 loss on ``log alpha``: mean of ``(predicted - log alpha)^2`` over the batch."""
    return F.mse_loss(predicted_log_alpha.reshape(-1), alpha.reshape(-1).log())


def balanced_difference_gain(fixed: torch.Tensor, moving: torch.Tensor) -> float:
    """``std(moving) / std(fixed - moving)`` over pairs ``(N, C, *S)`` (training pairs): the
    :class:`RegularizationPredictor` ``difference_gain`` that gives the pairs' difference the spread of the images."""
    if fixed.shape != moving.shape:
        raise ValueError(f"balanced_difference_gain(): fixed and moving must have one shape, got {tuple(fixed.shape)} "
                         f"and {tuple(moving.shape)}")
    spread, difference = float(moving.double().std()), float((fixed.double() - moving.double()).std())
    if not (difference > 0 and spread > 0 and math.isfinite(spread / difference)):
        raise ValueError(f"balanced_difference_gain(): the images (std {spread:.3g}) and their difference (std "
                         f"{difference:.3g}) must both vary and be finite")
    return spread / difference
