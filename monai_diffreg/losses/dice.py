"""Soft multi-label Dice loss on one-hot / probability maps (the segmentation term of VoxelMorph)."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

from ..functional.warp import warp
from ..validation import check_field, check_positive, check_spatial_tensor
from ._utils import check_image_pair, check_reduction, promote_float, reduce_loss

__all__ = ["soft_dice_loss", "present_label_dice_loss", "warped_label_dice_loss", "SoftDiceLoss"]


def _check_include_background(include_background: object, caller: str) -> bool:
    if not isinstance(include_background, bool):
        raise ValueError(f"{caller}(): 'include_background' must be True or False, got {include_background!r}")
    return include_background


def soft_dice_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1e-5,
    reduction: str = "mean",
    include_background: bool = True,
) -> torch.Tensor:
    """Soft Dice loss ``1 - Dice`` per sample and label, averaged over labels by default.

    For sample ``b`` and label ``l`` (sums over voxels)::

        Dice_bl = (2 sum(p_bl t_bl) + eps) / (sum p_bl + sum t_bl + eps)
        loss_bl = 1 - Dice_bl

    This is :class:`monai.losses.DiceLoss` with ``smooth_nr = smooth_dr = eps`` (no activation,
    no one-hot conversion), so a label absent from both maps scores ``Dice = 1`` (loss 0) rather
    than NaN. The segmentation term of improved probabilistic VoxelMorph (Dalca et al. 2018,
    eq. 3) is ``-sum_l Dice_l``; ``1 - mean_l Dice_l`` has the same minimiser and gradients
    scaled by ``1 / L``, and lies in ``[0, 1]``. In registration ``pred`` is usually the moving
    one-hot label map warped with linear interpolation, ``target`` the fixed one-hot map.

    Args:
        pred: ``(B, L, *spatial)`` probability / one-hot maps, 2 or 3 spatial axes, one channel
            per label (values expected in [0, 1]; not checked).
        target: maps of the same shape.
        eps: positive smoothing added to numerator and denominator.
        reduction: ``"mean"`` (over samples and labels), ``"sum"``, or ``"none"`` for the
            ``(B, L)`` per-sample, per-label losses (``(B, L - 1)`` without background).
        include_background: whether channel 0 (background) counts; with ``False`` at least 2
            channels are required.

    Returns:
        a scalar, or a ``(B, L)`` / ``(B, L - 1)`` tensor for ``"none"``.
    """
    caller = "soft_dice_loss"
    check_image_pair(pred, target, caller)
    eps = check_positive(eps, "eps", caller)
    reduction = check_reduction(reduction, caller)
    if not _check_include_background(include_background, caller):
        if pred.shape[1] < 2:
            raise ValueError(
                f"{caller}(): include_background=False needs >= 2 label channels in 'pred', "
                f"got shape {tuple(pred.shape)}"
            )
        pred, target = pred[:, 1:], target[:, 1:]
    p, t = promote_float(pred).flatten(2), promote_float(target).flatten(2)
    dice = (2.0 * (p * t).sum(dim=2) + eps) / (p.sum(dim=2) + t.sum(dim=2) + eps)
    return reduce_loss(1.0 - dice, reduction)


def present_label_dice_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``1 - Dice`` averaged over the (sample, label) pairs where the label appears in either map.

    Args:
        pred, target: ``(B, L, *spatial)`` one-hot / probability maps.
        reduction: ``"mean"`` (over all present pairs) or ``"none"`` (``(B,)``: each sample's mean
            over its present labels).

    Returns:
        scalar or ``(B,)``; 0 where no label is present.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"present_label_dice_loss(): 'reduction' must be one of ['mean', 'none'], got {reduction!r}")
    per_label = soft_dice_loss(pred, target, reduction="none")
    present = (pred.flatten(2).sum(dim=2) > 0) | (target.flatten(2).sum(dim=2) > 0)
    if reduction == "none":
        return (per_label * present).sum(dim=1) / present.sum(dim=1).clamp(min=1)
    return (per_label * present).sum() / present.sum().clamp(min=1)


def warped_label_dice_loss(moving_labels: torch.Tensor, fixed_labels: torch.Tensor, ddf: torch.Tensor,
                           reduction: str = "mean") -> torch.Tensor:
    """:func:`present_label_dice_loss` of the moving labels warped by ``ddf`` against the fixed labels.

    The moving one-hot maps are cast to ``ddf``'s dtype and warped with linear interpolation
    (:func:`~monai_diffreg.functional.warp.warp`, border padding), so the loss is differentiable
    in ``ddf``: the label term of SynthMorph and of HyperMorph's ``"dice"``.

    Args:
        moving_labels: ``(B, L, *S)`` one-hot / probability maps of the moving image.
        fixed_labels: ``(B, L, *S)`` maps of the fixed image (same label channels).
        ddf: ``(B, D, *S)`` pull-back displacement in voxels (warps moving onto fixed).
        reduction: ``"mean"`` (over all present (sample, label) pairs) or ``"none"`` (``(B,)``).

    Returns:
        scalar or ``(B,)``, ``1 - Dice`` averaged over the labels present in either map.
    """
    caller = "warped_label_dice_loss"
    check_spatial_tensor(fixed_labels, "fixed_labels", caller)
    check_spatial_tensor(moving_labels, "moving_labels", caller, channels=fixed_labels.shape[1])
    check_field(ddf, "ddf", caller, like=moving_labels)
    return present_label_dice_loss(warp(moving_labels.to(ddf.dtype), ddf), fixed_labels, reduction=reduction)


class SoftDiceLoss(_Loss):
    """Soft multi-label Dice loss as a MONAI-style loss: ``loss(pred, target)``.

    See :func:`soft_dice_loss` (``1 - Dice`` per sample and label, MONAI ``DiceLoss`` smoothing).

    Args:
        eps: positive smoothing added to numerator and denominator.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(B, L)`` values).
        include_background: whether label channel 0 counts.
    """

    def __init__(self, eps: float = 1e-5, reduction: str = "mean", include_background: bool = True) -> None:
        super().__init__(reduction=check_reduction(reduction, "SoftDiceLoss"))
        self.eps = check_positive(eps, "eps", "SoftDiceLoss")
        self.include_background = _check_include_background(include_background, "SoftDiceLoss")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: ``pred``, ``target``: ``(B, L, *spatial)`` one-hot / probability maps of the same shape."""
        return soft_dice_loss(pred, target, self.eps, self.reduction, self.include_background)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}, include_background={self.include_background}"
