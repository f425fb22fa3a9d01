"""Loss combinators: symmetric (bidirectional) image terms and deep supervision over resolutions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn.modules.loss import _Loss

from ..validation import check_positive

__all__ = ["BidirectionalLoss", "MultiResolutionLoss"]


def _check_loss(loss: object, caller: str) -> Callable[..., torch.Tensor]:
    if not callable(loss):
        raise TypeError(f"{caller}(): 'loss' must be a callable loss (e.g. a _Loss module), got {type(loss).__name__}")
    return loss


class BidirectionalLoss(_Loss):
    """Average of an image loss in both directions of a diffeomorphic registration.

    ``forward(fixed, moving, moving_warped, fixed_warped)`` returns::

        0.5 * (loss(moving_warped, fixed) + loss(fixed_warped, moving))

    with ``moving_warped = moving o phi`` and ``fixed_warped = fixed o phi^-1`` (for an SVF
    ``v``: ``phi = exp(v)``, ``phi^-1 = exp(-v)``). With
    :class:`~monai_diffreg.losses.MSELoss` (``1 / (2 sigma^2)`` per direction) this is the
    ``1 / (4 sigma^2) (||x - y o phi||^2 + ||y - x o phi^-1||^2)`` of improved probabilistic
    VoxelMorph (Dalca et al. 2018, eq. 2, per voxel); with
    :class:`~monai_diffreg.losses.LocalNCCLoss` it is MDReg-Net's two-way NCC (eq. 4) halved.

    The inner loss is called as ``loss(pred, target)`` and decides the reduction; both calls
    must return tensors of the same shape (scalars for the usual ``"mean"``).

    Args:
        loss: the image loss, any callable ``loss(pred, target) -> Tensor`` (usually a ``_Loss``).
    """

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.loss = _check_loss(loss, "BidirectionalLoss")

    def forward(
        self, fixed: torch.Tensor, moving: torch.Tensor, moving_warped: torch.Tensor, fixed_warped: torch.Tensor
    ) -> torch.Tensor:
        """Args: ``(B, C, *spatial)`` images: the fixed and moving images, the moving image warped
        to the fixed grid, and the fixed image warped back to the moving grid."""
        return 0.5 * (self.loss(moving_warped, fixed) + self.loss(fixed_warped, moving))


class MultiResolutionLoss(_Loss):
    """Weighted sum of a loss over resolution levels (deep supervision).

    ``forward(*inputs)`` takes one sequence per argument of the inner loss, each with one entry
    per level, and returns ``sum_l weights[l] * loss(inputs[0][l], inputs[1][l], ...)``; e.g.
    ``forward(preds, targets)`` for ``loss(pred, target)``, or
    ``forward(fixeds, movings, moving_warpeds, fixed_warpeds)`` around a
    :class:`BidirectionalLoss` (MDReg-Net, eq. 4: the similarity summed over the levels).

    Args:
        loss: the per-level loss, any callable returning a tensor (usually a ``_Loss``).
        weights: one non-negative weight per level; default: every level weighted 1 (a plain sum,
            as MDReg-Net's eq. 4), for any number of levels.
    """

    def __init__(self, loss: Callable[..., torch.Tensor], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        caller = "MultiResolutionLoss"
        self.loss = _check_loss(loss, caller)
        if weights is not None:
            if isinstance(weights, (str, torch.Tensor)) or not isinstance(weights, Sequence) or len(weights) == 0:
                raise ValueError(
                    f"{caller}(): 'weights' must be a non-empty sequence of numbers or None, got {weights!r}"
                )
            weights = [check_positive(w, "weights", caller, allow_zero=True) for w in weights]
        self.weights = weights

    def forward(self, *inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Args: one sequence per argument of the inner loss, each with one tensor per level."""
        caller = "MultiResolutionLoss.forward"
        if not inputs:
            raise ValueError(f"{caller}(): expected one sequence per argument of the loss, got none")
        for position, seq in enumerate(inputs):
            if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence):
                raise ValueError(
                    f"{caller}(): argument {position} must be a sequence (list/tuple) with one tensor per level, "
                    f"got {type(seq).__name__}"
                )
        lengths = [len(seq) for seq in inputs]
        if len(set(lengths)) != 1 or lengths[0] == 0:
            raise ValueError(
                f"{caller}(): every argument must hold the same number (>= 1) of levels, got lengths {lengths}"
            )
        weights = [1.0] * lengths[0] if self.weights is None else self.weights
        if len(weights) != lengths[0]:
            raise ValueError(f"{caller}(): got {lengths[0]} levels but {len(weights)} 'weights' {weights}")
        return sum(w * self.loss(*level) for w, level in zip(weights, zip(*inputs)))

    def extra_repr(self) -> str:
        return f"weights={self.weights}"
