"""SynthMorph's training loss: Dice of the warped label maps plus a smoothness penalty.

Hoffmann, Billot, Greve, Iglesias, Fischl, Dalca: "SynthMorph: learning contrast-invariant
registration without acquired images" (IEEE TMI 2022). The network
(:class:`~monai_diffreg.networks.voxelmorph.VoxelMorph`) sees images synthesised from label
maps with random contrasts, noise and artefacts; the loss only compares the label maps::

    L = L_dis(s_m o phi, s_f) + lambda L_reg(u),    L_dis = 1 - mean_j Dice_j(s_m o phi, s_f)

with ``s_m``, ``s_f`` the one-hot moving and fixed label maps and ``phi = Id + u``. The images
are never compared: the contrast invariance comes from the data (every pair has new random
contrasts), not from the loss.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.nn.modules.loss import _Loss

from ..validation import check_choice, check_positive
from .dice import warped_label_dice_loss
from .regularization import PENALTIES, REG_FIELDS, gradient_loss

__all__ = ["SynthMorphLoss"]


class SynthMorphLoss(_Loss):
    """``mean_b [L_dis,b + regularization_weight * L_reg,b]`` (module docstring).

    ``L_dis`` is ``1 -`` soft Dice averaged over the labels present in either map
    (:func:`~monai_diffreg.losses.dice.warped_label_dice_loss`) of the moving one-hot labels
    warped by ``outputs["ddf"]`` (linear interpolation, so differentiable in the field) against
    the fixed ones; ``L_reg`` is :func:`~monai_diffreg.losses.gradient_loss` of
    ``outputs[reg_field]`` (the mean of the squared / absolute forward differences, in the field's
    voxels per voxel; the paper's ``1/2 ||grad u||^2`` up to that normalisation).

    Args:
        regularization_weight: ``lambda >= 0`` (0: Dice only).
        reg_field: ``"velocity"`` (default; the pre-integration field, as the reference VoxelMorph
            code penalises) or ``"ddf"`` (the displacement ``u`` on the input grid).
        penalty: ``"l2"`` or ``"l1"`` of :func:`~monai_diffreg.losses.gradient_loss`.

    ``forward(outputs, fixed, moving, fixed_labels=None, moving_labels=None)`` (the trainer's
    signature; the images are unused) reads ``outputs["ddf"]`` ``(B, D, *S)`` (input voxels) and
    ``outputs[reg_field]``, and needs one-hot labels ``(B, L, *S)``; returns scalars ``"loss"``,
    ``"similarity"`` (the batch mean of ``L_dis``) and ``"regularization"`` (the batch mean of the
    unweighted ``L_reg``).
    """

    def __init__(self, regularization_weight: float = 1.0, reg_field: str = "velocity", penalty: str = "l2") -> None:
        super().__init__()
        caller = "SynthMorphLoss"
        self.regularization_weight = check_positive(regularization_weight, "regularization_weight", caller,
                                                    allow_zero=True)
        self.reg_field = check_choice(reg_field, "reg_field", caller, REG_FIELDS)
        self.penalty = check_choice(penalty, "penalty", caller, PENALTIES)

    def forward(self, outputs: Mapping[str, torch.Tensor], fixed: torch.Tensor, moving: torch.Tensor,
                fixed_labels: torch.Tensor | None = None,
                moving_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        caller = "SynthMorphLoss"
        missing = [k for k in dict.fromkeys(("ddf", self.reg_field)) if k not in outputs]
        if missing:
            raise ValueError(f"{caller}(): 'outputs' lacks key(s) {missing}; expected a registration network's dict")
        if fixed_labels is None or moving_labels is None:
            raise ValueError(f"{caller}(): needs 'fixed_labels' and 'moving_labels' (label maps), got None")
        sim = warped_label_dice_loss(moving_labels, fixed_labels, outputs["ddf"], reduction="none")
        reg = gradient_loss(outputs[self.reg_field], penalty=self.penalty, reduction="none")
        loss = (sim + self.regularization_weight * reg).mean()
        return {"loss": loss, "similarity": sim.mean(), "regularization": reg.mean()}

    def extra_repr(self) -> str:
        return f"regularization_weight={self.regularization_weight}, reg_field={self.reg_field!r}, penalty={self.penalty!r}"
