"""Local (windowed) normalised cross-correlation loss, in VoxelMorph's squared form.

For every voxel ``x`` and a box window ``W(x)`` of ``N`` voxels centred on it, with window sums
``S_a = sum_W a``::

    cross(x) = S_tp - S_t S_p / N          (N x local covariance)
    var_t(x) = S_tt - S_t^2 / N            (N x local variance of the target)
    var_p(x) = S_pp - S_p^2 / N
    ncc(x)   = cross^2 / (var_t var_p + eps)  in [0, 1)
    loss     = -mean_x ncc(x)                 in (-1, 0]

This is the local NCC of VoxelMorph (Balakrishnan et al. 2019; ``vxm.losses.NCC``, window 9,
``eps = 1e-5`` added to the product of the variances) and of MDReg-Net (eq. 4), and the squared
form MONAI's :class:`monai.losses.LocalNormalizedCrossCorrelationLoss` computes. Because the
coefficient is squared, anti-correlated windows (``p = -t + c``) score like correlated ones:
both give ``ncc = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from ..validation import check_positive
from ._utils import check_image_pair, check_reduction, promote_float, reduce_loss

__all__ = ["local_ncc_loss", "LocalNCCLoss"]


def _check_window(window: object, caller: str) -> int | tuple[int, ...]:
    """Validate a window: one odd int >= 1, or a sequence of them (one per spatial axis)."""
    sizes = [window] if isinstance(window, int) else list(window) if isinstance(window, Sequence) else [None]
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 and s % 2 == 1 for s in sizes):
        raise ValueError(f"{caller}(): 'window' must be an odd integer >= 1 or a sequence of them, got {window!r}")
    return window if isinstance(window, int) else tuple(sizes)


def _box_sum_forward(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Sum of every channel over a centred box window, zero outside the image.

    Separable: per axis, the sum of the zero-padded tensor's ``size`` shifted slices. The same
    values as a depthwise convolution with a kernel of ones, and on CPU several times faster
    along the first spatial axis, where PyTorch falls back to a slow convolution.
    """
    for axis, size in enumerate(sizes):
        if size == 1:
            continue
        dim, length = axis + 2, x.shape[axis + 2]
        padding = [0] * (2 * len(sizes))
        padding[2 * (len(sizes) - 1 - axis)] = padding[2 * (len(sizes) - 1 - axis) + 1] = size // 2
        padded = F.pad(x, padding)
        x = padded.narrow(dim, 0, length).clone()
        for shift in range(1, size):
            x += padded.narrow(dim, shift, length)
    return x


class _BoxSum(torch.autograd.Function):
    """The centred box sum with its own backward: the operator is self-adjoint.

    Along one axis ``y_i = sum_{|j - i| <= r, 0 <= j < n} x_j`` has the symmetric matrix
    ``[|i - j| <= r]``, so the gradient is the same box sum of the incoming gradient. This is
    much faster on CPU than autograd's backward of the shifted sums or of a depthwise convolution
    (which dominated each refinement step), and it stays differentiable (the backward calls the Function).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        ctx.sizes = sizes
        return _box_sum_forward(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _BoxSum.apply(grad, ctx.sizes), None


def _box_sum(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Sum of every channel over a centred box window, zero outside the image (:class:`_BoxSum`)."""
    return _BoxSum.apply(x, tuple(sizes))


def local_ncc_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    window: int | Sequence[int] = 9,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    """Negative local squared normalised cross-correlation (VoxelMorph's ``NCC``).

    ``ncc(x) = cross^2 / (var_t var_p + eps)`` over a box window centred on each voxel, computed
    per channel from window sums (module docstring), and ``loss = -ncc``. Perfectly (or
    perfectly anti-) correlated windows give ``-1``; uncorrelated ones ``0``.

    Conventions and edge cases:

    * **Border**: windows that reach outside the image count the outside as zeros (``N`` is
      always the full window size), as VoxelMorph (TF ``"SAME"`` convolution) and MONAI do.
      Near the border, a constant image therefore looks textured (its values against the zero
      padding); on zero-background scans (brain MRI) this is immaterial.
    * **Constant windows**: if either window is constant, ``cross = 0`` and ``ncc = 0`` (no
      evidence of alignment); the variances are clamped at 0 before adding ``eps`` so rounding
      cannot make the denominator vanish, and values and gradients stay finite.
    * **Precision**: integer / float16 / bfloat16 inputs are evaluated (and returned) in float32;
      float64 stays float64. Intensities are expected to be normalised (e.g. to [0, 1]);
      variances come from ``E[a^2] - E[a]^2`` and lose digits for large offsets.
    * **Difference from MONAI**: ``LocalNormalizedCrossCorrelationLoss`` (``smooth_nr=0``,
      ``smooth_dr=1e-5``) clamps each variance at ``smooth_dr`` and adds nothing to their
      product; here ``eps`` is added to the product (VoxelMorph). The two agree wherever
      ``var_t var_p >> eps`` (any textured window); they differ on constant windows, where
      MONAI's value is rounding noise amplified by ``1 / smooth_dr^2``.

    Args:
        pred: ``(B, C, *spatial)`` image, 2 or 3 spatial axes (e.g. the warped moving image).
        target: image of the same shape (e.g. the fixed image).
        window: odd box width in voxels, one for all axes or one per axis (VoxelMorph: 9).
        eps: positive constant added to ``var_t * var_p`` (units: intensity^4 x N^2).
        reduction: ``"mean"`` (over batch, channels and voxels), ``"sum"`` or ``"none"``.

    Returns:
        a scalar for ``"mean"`` / ``"sum"``; the ``(B, C, *spatial)`` map ``-ncc`` for ``"none"``.
    """
    caller = "local_ncc_loss"
    ndim = check_image_pair(pred, target, caller)
    window = _check_window(window, caller)
    sizes = [window] * ndim if isinstance(window, int) else list(window)
    if len(sizes) != ndim:
        raise ValueError(f"{caller}(): 'window' must give 1 or {ndim} sizes for {ndim}D images, got {window!r}")
    eps = check_positive(eps, "eps", caller)
    reduction = check_reduction(reduction, caller)

    p, t = promote_float(pred), promote_float(target)
    dtype = torch.promote_types(p.dtype, t.dtype)
    p, t = p.to(dtype), t.to(dtype)
    channels = p.shape[1]
    sums = _box_sum(torch.cat([t, p, t * t, p * p, t * p], dim=1), sizes)
    s_t, s_p, s_tt, s_pp, s_tp = sums.split(channels, dim=1)
    count = math.prod(sizes)
    cross = s_tp - s_t * s_p / count
    var_t = (s_tt - s_t * s_t / count).clamp(min=0)
    var_p = (s_pp - s_p * s_p / count).clamp(min=0)
    ncc = cross * cross / (var_t * var_p + eps)
    return reduce_loss(-ncc, reduction)


class LocalNCCLoss(_Loss):
    """Negative local squared NCC as a MONAI-style loss: ``loss(pred, target)``.

    See :func:`local_ncc_loss` for the maths, border and constant-window conventions.
    MDReg-Net uses it at every pyramid level in both directions (eq. 4); probabilistic
    VoxelMorph offers it as an alternative to the MSE image term.

    Args:
        window: odd box width in voxels, one for all axes or one per spatial axis (default 9).
        eps: positive constant added to the product of the local variances.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-voxel map).
    """

    def __init__(self, window: int | Sequence[int] = 9, eps: float = 1e-5, reduction: str = "mean") -> None:
        super().__init__(reduction=check_reduction(reduction, "LocalNCCLoss"))
        self.window = _check_window(window, "LocalNCCLoss")
        self.eps = check_positive(eps, "eps", "LocalNCCLoss")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: ``pred``, ``target``: ``(B, C, *spatial)`` images of the same shape."""
        return local_ncc_loss(pred, target, self.window, self.eps, self.reduction)

    def extra_repr(self) -> str:
        return f"window={self.window}, eps={self.eps}, reduction={self.reduction!r}"
