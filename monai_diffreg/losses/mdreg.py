"""MDReg-Net's training loss (Li and Fan, eq. 4): NCC at every level in both directions + L1 velocity gradients.

    L = sum_l w_l [ -NCC(I_f^l, I_m^l o phi^l) - NCC(I_m^l, I_f^l o (phi^l)^-1) ]
        + lambda * sum_l R(v^l),          R(v) = mean_x ||grad v(x)||_1

with ``phi^l = exp(v~^l)`` the accumulated field of level ``l`` and ``v^l`` its increment.
The images of each level, warped both ways, come from :class:`~monai_diffreg.networks.MDRegNet`'s
output dict. ``-NCC`` is the local squared NCC of :func:`~monai_diffreg.losses.ncc.local_ncc_loss`
(window 9, as VoxelMorph; the paper says only "NCC"). ``R`` is the paper's sum over voxels
taken as a mean (:func:`~monai_diffreg.losses.regularization.gradient_loss` with ``"l1"``), so
``lambda`` does not depend on the image size; ``lambda = 0.35`` is the paper's choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.nn.modules.loss import _Loss

from ..validation import check_positive
from .ncc import LocalNCCLoss
from .regularization import gradient_loss
from .wrappers import BidirectionalLoss, MultiResolutionLoss

__all__ = ["MDRegNetLoss"]

_REQUIRED_OUTPUTS = ("fixed_levels", "moving_levels", "warped_levels", "warped_fixed_levels", "velocity_levels")


class MDRegNetLoss(_Loss):
    """MDReg-Net's deep self-supervision loss (module docstring).

    Args:
        regularization_weight: ``lambda`` of the L1 gradient penalty on every level's velocity increment.
        ncc_window: window of the local NCC (odd, in voxels of each level's grid).
        level_weights: ``w_l`` per level, coarse to fine; default all 1 (eq. 4's plain sum).

    ``forward(outputs, fixed=None, moving=None, fixed_labels=None, moving_labels=None)`` takes
    the network's output dict (the images are read from its ``*_levels`` entries; the other
    arguments exist to match :func:`~monai_diffreg.engines.training.registration_step` and are
    unused: MDReg-Net trains without labels) and returns scalars ``"similarity"`` (the NCC
    terms, summed over levels and both directions), ``"regularization"`` (``lambda`` times the
    summed penalties) and ``"loss"``, their sum.
    """

    #: Eq. 4 sums the two directions (:func:`~monai_diffreg.losses.wrappers.combine_directions`).
    bidirectional_reduction = "sum"

    def __init__(self, regularization_weight: float = 0.35, ncc_window: int = 9,
                 level_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.regularization_weight = check_positive(regularization_weight, "regularization_weight", "MDRegNetLoss",
                                                    allow_zero=True)
        self.ncc = LocalNCCLoss(window=ncc_window)
        self.similarity = MultiResolutionLoss(BidirectionalLoss(self.ncc, self.bidirectional_reduction), level_weights)

    def finest_image_term(self, warped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One direction's similarity term of the finest level, ``w_L * -NCC(target, warped)`` (test-time refinement)."""
        weight = 1.0 if self.similarity.weights is None else self.similarity.weights[-1]
        return weight * self.ncc(warped, target)

    def regularization_term(self, velocity: torch.Tensor) -> torch.Tensor:
        """``lambda * R(velocity)``, the penalty of one velocity field."""
        return self.regularization_weight * gradient_loss(velocity, penalty="l1")

    def refinement_terms(self, context: Mapping[str, torch.Tensor]):
        """Test-time refinement's terms (:class:`~monai_diffreg.engines.refinement.RefinementLoss`).

        The finest level's one-direction similarity (both directions are summed, as eq. 4 does:
        :attr:`bidirectional_reduction`) and ``lambda * R`` of the whole velocity; ``context`` is unused.
        """
        return self.finest_image_term, self.regularization_term, self.bidirectional_reduction

    def forward(self, outputs: Mapping[str, Sequence[torch.Tensor]], fixed: torch.Tensor | None = None,
                moving: torch.Tensor | None = None, fixed_labels: torch.Tensor | None = None,
                moving_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        missing = [k for k in _REQUIRED_OUTPUTS if k not in outputs]
        if missing:
            raise ValueError(f"MDRegNetLoss(): 'outputs' lacks key(s) {missing}; expected MDRegNet's dict")
        similarity = self.similarity(outputs["fixed_levels"], outputs["moving_levels"],
                                     outputs["warped_levels"], outputs["warped_fixed_levels"])
        regularization = sum(self.regularization_term(v) for v in outputs["velocity_levels"])
        return {"similarity": similarity, "regularization": regularization, "loss": similarity + regularization}
