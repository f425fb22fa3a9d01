"""Smoothness penalty on displacement / velocity fields: mean squared or absolute forward differences."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

from ..validation import check_choice, check_spatial_tensor
from ._utils import check_reduction, promote_float, reduce_loss

__all__ = ["gradient_loss", "GradientLoss", "PENALTIES", "REG_FIELDS"]

PENALTIES = ("l2", "l1")
#: Network outputs a training loss may regularise: the pre-integration velocity or the displacement on the input grid.
REG_FIELDS = ("velocity", "ddf")


def gradient_loss(field: torch.Tensor, penalty: str = "l2", reduction: str = "mean") -> torch.Tensor:
    """Gradient penalty of a field, VoxelMorph ``Grad`` convention.

    For each spatial axis ``a`` take the forward differences ``d_a = u[i + 1] - u[i]`` (all
    channels, no padding, so ``S_a - 1`` of them along that axis), penalise them with
    ``d^2`` (``"l2"``) or ``|d|`` (``"l1"``), average over channels and voxels, then average
    over the axes::

        loss_b = (1 / D) sum_a mean_{c, x} rho(d_a u_{b, c}(x))

    A linear ramp ``u_c(x) = s (x_0 + ... + x_{D-1}) + b_c`` therefore scores exactly ``s^2``
    (``"l2"``) or ``|s|`` (``"l1"``); a constant field scores 0. Differences are in the
    field's units per voxel (no spacing). VoxelMorph uses ``"l2"`` on the displacement;
    MDReg-Net's ``R(v) = sum_n ||grad v(n)||_1`` (eq. 4) is ``"l1"`` on the velocity up to
    the normalisation (a mean here, so the weight does not depend on the image size).

    Args:
        field: ``(B, C, *spatial)`` with 2 or 3 spatial axes of at least 2 voxels each; usually a
            displacement or velocity ``(B, D, *spatial)``, but any channel count is accepted.
        penalty: ``"l2"`` (squared differences) or ``"l1"`` (absolute differences).
        reduction: ``"mean"`` / ``"sum"`` over the batch of per-sample values, or ``"none"``
            for the ``(B,)`` per-sample values (the penalty has no per-voxel map: the
            difference grids differ per axis).

    Returns:
        a scalar, or a ``(B,)`` tensor for ``"none"``.
    """
    caller = "gradient_loss"
    ndim = check_spatial_tensor(field, "field", caller)
    if min(field.shape[2:]) < 2:
        raise ValueError(f"{caller}(): every spatial axis of 'field' needs >= 2 voxels, got shape {tuple(field.shape)}")
    check_choice(penalty, "penalty", caller, PENALTIES)
    reduction = check_reduction(reduction, caller)

    u = promote_float(field)
    per_axis = []
    for axis in range(2, ndim + 2):
        diff = torch.diff(u, dim=axis)
        rho = diff * diff if penalty == "l2" else diff.abs()
        per_axis.append(rho.flatten(1).mean(dim=1))
    return reduce_loss(torch.stack(per_axis).mean(dim=0), reduction)


class GradientLoss(_Loss):
    """Gradient (smoothness) penalty as a MONAI-style loss: ``loss(field)``.

    See :func:`gradient_loss` (VoxelMorph ``Grad``: forward differences, mean over voxels and
    channels, averaged over axes).

    Args:
        penalty: ``"l2"`` or ``"l1"``.
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for ``(B,)`` values.
    """

    def __init__(self, penalty: str = "l2", reduction: str = "mean") -> None:
        super().__init__(reduction=check_reduction(reduction, "GradientLoss"))
        self.penalty = check_choice(penalty, "penalty", "GradientLoss", PENALTIES)

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        """Args: ``field``: ``(B, C, *spatial)``, usually a displacement or velocity ``(B, D, *spatial)``."""
        return gradient_loss(field, self.penalty, self.reduction)

    def extra_repr(self) -> str:
        return f"penalty={self.penalty!r}, reduction={self.reduction!r}"
