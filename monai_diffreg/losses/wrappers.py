"""Loss combinators: symmetric (bidirectional) image terms and deep supervision over resolutions.

**Bidirectional convention**, stated once here (:func:`combine_directions`) and used by every
loss and engine that matches both directions of a registration: the forward term
``f = loss(moving o phi, fixed)`` and the inverse term ``b = loss(fixed o phi^-1, moving)`` are
combined with a reduction named by the loss that owns them:

* ``"mean"``: ``0.5 * (f + b)``; probabilistic VoxelMorph (Dalca et al. 2018, eq. 2's
  ``1 / (4 sigma^2)`` with the per-direction ``1 / (2 sigma^2)`` of the MSE term):
  :class:`~monai_diffreg.losses.ProbabilisticSVFLoss`, and the default of :class:`BidirectionalLoss`;
* ``"sum"``: ``f + b``; MDReg-Net (Li and Fan, eq. 4): :class:`~monai_diffreg.losses.MDRegNetLoss`.

Test-time refinement (:func:`~monai_diffreg.engines.refinement.refine_network`) takes the
reduction from the loss's ``refinement_terms`` and combines the two directions with the same
function, so a refinement minimises the training loss's terms as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn.modules.loss import _Loss

from ..validation import check_choice, check_positive

__all__ = ["BIDIRECTIONAL_REDUCTIONS", "combine_directions", "BidirectionalLoss", "MultiResolutionLoss"]

#: How the forward and inverse terms of a bidirectional loss are combined (module docstring).
BIDIRECTIONAL_REDUCTIONS = ("mean", "sum")


def combine_directions(forward: torch.Tensor, backward: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The two directions' terms of a bidirectional loss combined: ``"mean"`` ``0.5 * (f + b)``, ``"sum"`` ``f + b``.

    Args:
        forward: the forward term ``loss(moving o phi, fixed)``.
        backward: the inverse term ``loss(fixed o phi^-1, moving)``, of the same shape.
        reduction: one of :data:`BIDIRECTIONAL_REDUCTIONS`.
    """
    check_choice(reduction, "reduction", "combine_directions", BIDIRECTIONAL_REDUCTIONS)
    if reduction == "sum":
        return forward + backward
    return 0.5 * (forward + backward)


def _check_loss(loss: object, caller: str) -> Callable[..., torch.Tensor]:
    if not callable(loss):
        raise TypeError(f"{caller}(): 'loss' must be a callable loss (e.g. a _Loss module), got {type(loss).__name__}")
    return loss


class BidirectionalLoss(_Loss):
    """An image loss in both directions of a diffeomorphic registration, averaged or summed.

    ``forward(fixed, moving, moving_warped, fixed_warped)`` returns::

        combine_directions(loss(moving_warped, fixed), loss(fixed_warped, moving), reduction)

    that is ``0.5 * (f + b)`` for ``reduction="mean"`` and ``f + b`` for ``"sum"`` (module
    docstring), with ``moving_warped = moving o phi`` and ``fixed_warped = fixed o phi^-1`` (for
    an SVF ``v``: ``phi = exp(v)``, ``phi^-1 = exp(-v)``). With
    :class:`~monai_diffreg.losses.MSELoss` (``1 / (2 sigma^2)`` per direction) and ``"mean"``
    this is the ``1 / (4 sigma^2) (||x - y o phi||^2 + ||y - x o phi^-1||^2)`` of improved
    probabilistic VoxelMorph (Dalca et al. 2018, eq. 2, per voxel); with
    :class:`~monai_diffreg.losses.LocalNCCLoss` and ``"sum"`` it is MDReg-Net's two-way NCC (eq. 4).

    The inner loss is called as ``loss(pred, target)`` and decides the reduction over voxels and
    batch; both calls must return tensors of the same shape (scalars for the usual ``"mean"``).

    Args:
        loss: the image loss, any callable ``loss(pred, target) -> Tensor`` (usually a ``_Loss``).
        reduction: how the two directions are combined, ``"mean"`` (default) or ``"sum"``.
    """

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], reduction: str = "mean") -> None:
        super().__init__(reduction=check_choice(reduction, "reduction", "BidirectionalLoss", BIDIRECTIONAL_REDUCTIONS))
        self.loss = _check_loss(loss, "BidirectionalLoss")

    def forward(
        self, fixed: torch.Tensor, moving: torch.Tensor, moving_warped: torch.Tensor, fixed_warped: torch.Tensor
    ) -> torch.Tensor:
        """Args: ``(B, C, *spatial)`` images: the fixed and moving images, the moving image warped
        to the fixed grid, and the fixed image warped back to the moving grid."""
        return combine_directions(self.loss(moving_warped, fixed), self.loss(fixed_warped, moving), self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


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
