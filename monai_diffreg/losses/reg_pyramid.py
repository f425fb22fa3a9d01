"""Training loss of the learned deformable registration pyramid (Gunnarsson et al. 2020, eqs. 1-2).

    L = lambda (1 - Dice(S_m o phi^(0), S_f))                                            (2a)
        + sum_{l=0}^{L-1} [ -gamma/2^l NCC(I_f^(l), I_m^(l) o phi^(l))                   (2b)
                            + alpha 2^l ||A^(l) - I||^2 + beta/2^l ||grad phi^(l)||^2 ]  (2c)

with the paper's ``lambda = 5``, ``gamma^(l) = 5 / 2^l``, ``alpha^(l) = 2^l``, ``beta^(l) = 1 / 2^l``
(``dice_weight``, ``gamma``, ``alpha``, ``beta`` are the factors in front of the powers of 2).
Level ``l = 0`` is the **finest** (the last entry of the network's coarse-to-fine tuples). The
terms are read from :class:`~monai_diffreg.networks.reg_pyramid.RegistrationPyramid`'s output dict.
The paper sums over ``l = 0 .. 4`` for a four-level pyramid, which suggests that its ``l = 0`` is the
full-resolution output and ``l = 1 .. 4`` the levels at ``1/2^l``; our network's output *is* its
finest level's field upsampled (no learned layer after it), so we have one term per network level,
``l = 0`` evaluated on the output at full resolution (below) and ``l >= 1`` on the coarser grids.

What each term compares (the paper's formulas leave some of it open; these are our readings):

* **(2b) NCC**: the paper compares "downsampled versions" ``I^(l)`` of the images with the level's
  field ``phi^(l)``. For ``l >= 1`` we compare, on the level's own grid, the 2-cell (area)
  averages of the fixed and moving images, the moving one warped by the level's total field
  (``"fixed_levels"`` and ``"warped_levels"``): the field is used where it was estimated. For
  ``l = 0`` the paper's ``phi^(0)`` is the output field (the one (2a) applies to the full-resolution
  label maps), so ``I^(0)`` are the input images and the moving one is warped by ``"ddf"``
  (``"warped"``). NCC is :func:`~monai_diffreg.losses.ncc.local_ncc_loss` (``-`` local squared NCC,
  window ``ncc_window`` voxels of each grid: coarser levels see a wider region; the paper says
  only "NCC"), which already carries the minus sign.
* **(2c) affine**: ``||A^(l) - I||^2`` is the squared Frobenius distance of the level's affine
  correction ``[A_n | t_n]`` from ``[I | 0]`` in normalised coordinates of the input image
  (:func:`~monai_diffreg.functional.affine.affine_to_normalized`: ``A_n`` dimensionless,
  ``t_n`` the centre's displacement as a fraction of the half-extent), averaged over the batch.
  Voxel-index matrices would weigh translations by the image size and rotations by the distance of
  the grid's corner from the centre. The public TF code pulls the matrix towards ``2I``: a defect.
* **(2c) smoothness**: ``||grad phi^(l)||^2`` is :func:`~monai_diffreg.losses.regularization.gradient_loss`
  (``"l2"``: mean squared forward differences, averaged over axes) of the level's **total**
  displacement on its own grid (``"level_ddfs"``), the field (2b) warps with: the paper uses one
  symbol ``phi_d^(l)`` in both. The derivative of a displacement in voxels per voxel is
  dimensionless, so the values of the levels are comparable. A mean rather than the paper's norm
  (a sum) keeps ``beta`` independent of the image size.
* **(2a) Dice**: :func:`~monai_diffreg.losses.dice.present_label_dice_loss` (``1 - Dice`` of the
  soft Dice of Milletari et al., averaged over the labels present in either map, background
  included: the training data's maps have different label counts, so absent channels must not
  count, the convention of the other bundles' losses) between the moving one-hot labels warped by
  ``"ddf"`` (linear interpolation) and the fixed ones; labels are optional (0 without them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.nn.modules.loss import _Loss

from ..functional.affine import affine_to_normalized
from ..functional.warp import warp
from ..validation import check_positive, check_spatial_tensor
from .dice import present_label_dice_loss
from .ncc import LocalNCCLoss
from .regularization import gradient_loss

__all__ = ["RegistrationPyramidLoss", "affine_identity_penalty"]

_REQUIRED_OUTPUTS = ("ddf", "level_ddfs", "affine_matrices", "fixed_levels", "warped_levels")


def affine_identity_penalty(matrix: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """``||[A_n | t_n] - [I | 0]||_F^2`` of voxel-index matrices ``(B, D, D + 1)`` of a grid, averaged over the batch.

    ``[A_n | t_n]`` is the matrix in normalised coordinates of the grid ``spatial_shape``
    (:func:`~monai_diffreg.functional.affine.affine_to_normalized`). Returns a scalar.
    """
    normalized = affine_to_normalized(matrix, spatial_shape)
    ndim = normalized.shape[1]
    eye = torch.eye(ndim, ndim + 1, dtype=normalized.dtype, device=normalized.device)
    return (normalized - eye).pow(2).flatten(1).sum(dim=1).mean()


class RegistrationPyramidLoss(_Loss):
    """The registration pyramid's loss, eqs. 1-2 (module docstring for what every term compares).

    Args:
        dice_weight: ``lambda`` of the Dice term (5).
        gamma: NCC weight at the finest level; level ``l`` gets ``gamma / 2^l`` (5).
        alpha: affine weight at the finest level; level ``l`` gets ``alpha * 2^l`` (1).
        beta: smoothness weight at the finest level; level ``l`` gets ``beta / 2^l`` (1).
        ncc_window: odd window of the local NCC in voxels of every level's grid (9).

    ``forward(outputs, fixed=None, moving=None, fixed_labels=None, moving_labels=None)`` takes the
    network's output dict (images are read from it; ``fixed`` and ``moving`` are accepted to match
    :func:`~monai_diffreg.engines.training.registration_step` and unused) and optional one-hot
    labels ``(B, K, *S)`` (both or neither), and returns scalars ``"segmentation"`` (weighted
    (2a), 0 without labels), ``"similarity"``, ``"affine"``, ``"smoothness"`` (the weighted sums
    over the levels of (2b), and of the two parts of (2c)) and ``"loss"``, their sum.
    """

    def __init__(self, dice_weight: float = 5.0, gamma: float = 5.0, alpha: float = 1.0, beta: float = 1.0,
                 ncc_window: int = 9) -> None:
        super().__init__()
        caller = "RegistrationPyramidLoss"
        self.dice_weight = check_positive(dice_weight, "dice_weight", caller, allow_zero=True)
        self.gamma = check_positive(gamma, "gamma", caller, allow_zero=True)
        self.alpha = check_positive(alpha, "alpha", caller, allow_zero=True)
        self.beta = check_positive(beta, "beta", caller, allow_zero=True)
        self.ncc = LocalNCCLoss(window=ncc_window)

    def level_weights(self, level: int) -> tuple[float, float, float]:
        """``(gamma / 2^l, alpha * 2^l, beta / 2^l)`` of level ``l`` (0: finest)."""
        return self.gamma / 2**level, self.alpha * 2**level, self.beta / 2**level

    def _check_outputs(self, outputs: Mapping[str, object]) -> int:
        caller = "RegistrationPyramidLoss"
        missing = [k for k in _REQUIRED_OUTPUTS if k not in outputs]
        if missing:
            raise ValueError(f"{caller}(): 'outputs' lacks key(s) {missing}; expected RegistrationPyramid's dict")
        lengths = {k: len(outputs[k]) for k in _REQUIRED_OUTPUTS[1:]}
        if len(set(lengths.values())) != 1 or not next(iter(lengths.values())):
            raise ValueError(
                f"{caller}(): the per-level outputs must hold the same number (>= 1) of levels, got {lengths}")
        return next(iter(lengths.values()))

    def segmentation_term(self, ddf: torch.Tensor, fixed_labels: torch.Tensor | None,
                          moving_labels: torch.Tensor | None) -> torch.Tensor:
        """``dice_weight * (1 - Dice(moving_labels o ddf, fixed_labels))``; 0 without labels."""
        caller = "RegistrationPyramidLoss"
        if (fixed_labels is None) != (moving_labels is None):
            raise ValueError(f"{caller}(): give both 'fixed_labels' and 'moving_labels' or neither, got "
                             f"fixed_labels={'None' if fixed_labels is None else 'a tensor'}, "
                             f"moving_labels={'None' if moving_labels is None else 'a tensor'}")
        if fixed_labels is None or self.dice_weight == 0:
            return ddf.new_zeros(())
        check_spatial_tensor(moving_labels, "moving_labels", caller)
        warped = warp(moving_labels.to(ddf.dtype), ddf)
        return self.dice_weight * present_label_dice_loss(warped, fixed_labels)

    def forward(self, outputs: Mapping[str, torch.Tensor | Sequence[torch.Tensor]], fixed: torch.Tensor | None = None,
                moving: torch.Tensor | None = None, fixed_labels: torch.Tensor | None = None,
                moving_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        levels = self._check_outputs(outputs)
        ddf = outputs["ddf"]
        size = tuple(ddf.shape[2:])
        similarity = affine = smoothness = ddf.new_zeros(())
        for level in range(levels):  # l = 0 is the finest, the last entry of the coarse-to-fine tuples
            index = levels - 1 - level
            gamma_l, alpha_l, beta_l = self.level_weights(level)
            warped, target = outputs["warped_levels"][index], outputs["fixed_levels"][index]
            similarity = similarity + gamma_l * self.ncc(warped, target)
            affine = affine + alpha_l * affine_identity_penalty(outputs["affine_matrices"][index], size)
            smoothness = smoothness + beta_l * gradient_loss(outputs["level_ddfs"][index], penalty="l2")
        segmentation = self.segmentation_term(ddf, fixed_labels, moving_labels)
        return {"segmentation": segmentation, "similarity": similarity, "affine": affine, "smoothness": smoothness,
                "loss": segmentation + similarity + affine + smoothness}

    def extra_repr(self) -> str:
        return (f"dice_weight={self.dice_weight}, gamma={self.gamma}, alpha={self.alpha}, beta={self.beta}, "
                f"ncc_window={self.ncc.window}")
