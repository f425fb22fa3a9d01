"""HyperMorph's training loss and the sampler of the regularisation weight (its training step:
:func:`monai_diffreg.engines.training.hypermorph_step`).

Hoopes et al., "HyperMorph: amortized hyperparameter learning for image registration" (IPMI
2021): for batch item ``b`` with regularisation weight ``lambda_b`` (an input of the network,
:class:`~monai_diffreg.networks.hypermorph.HyperMorph`)::

    L_b = (1 - lambda_b) L_sim,b + lambda_b L_reg,b,        loss = mean_b L_b

``lambda`` is drawn afresh for every item of every step (:func:`sample_reg_weight`), so the
hypernetwork learns the whole family of trade-offs at once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.nn.modules.loss import _Loss

from ..validation import check_choice, check_positive
from .dice import warped_label_dice_loss
from .regularization import PENALTIES, REG_FIELDS, gradient_loss
from .similarity import image_similarity_loss

__all__ = ["HyperMorphLoss", "sample_reg_weight", "HYPERMORPH_IMAGE_LOSSES", "REG_WEIGHT_DISTRIBUTIONS"]

#: Similarity terms of :class:`HyperMorphLoss`: two image terms, and soft Dice on warped labels.
HYPERMORPH_IMAGE_LOSSES = ("ncc", "mse", "dice")
#: Distributions of :func:`sample_reg_weight`.
REG_WEIGHT_DISTRIBUTIONS = ("uniform", "small")


def sample_reg_weight(batch: int, generator: torch.Generator | None = None, distribution: str = "uniform",
                      concentration: float = 3.0, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Draw one regularisation weight ``lambda in [0, 1]`` per batch item, shape ``(batch, 1)``.

    * ``"uniform"``: ``lambda ~ U[0, 1]`` (the paper's default).
    * ``"small"``: ``lambda ~ Beta(1, k)`` with ``k = concentration``, density ``k (1 - lambda)^(k-1)``,
      mean ``1 / (k + 1)``, drawn as ``1 - (1 - u)^(1/k)`` from ``u ~ U[0, 1]`` (so the ``generator`` is
      honoured). The paper notes that the useful trade-offs of a loss can crowd into a small part
      of ``[0, 1]`` (for NCC / Dice the accurate models sit at small ``lambda``) and that sampling
      that range more often spends the model's capacity there; ``k = 1`` is uniform, ``k = 3``
      puts half the draws below 0.21.

    Args:
        batch: number of weights (>= 1).
        generator: a :class:`torch.Generator` for reproducible draws (None: the global RNG).
        distribution: ``"uniform"`` or ``"small"``.
        concentration: ``k >= 1`` of ``"small"``.
        device, dtype: of the result (the generator must live on ``device``).
    """
    caller = "sample_reg_weight"
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"{caller}(): 'batch' must be an integer >= 1, got {batch!r}")
    check_choice(distribution, "distribution", caller, REG_WEIGHT_DISTRIBUTIONS)
    k = check_positive(concentration, "concentration", caller)
    if k < 1:
        raise ValueError(f"{caller}(): 'concentration' must be >= 1, got {concentration!r}")
    u = torch.rand((batch, 1), generator=generator, device=device, dtype=dtype)
    return u if distribution == "uniform" else 1.0 - (1.0 - u) ** (1.0 / k)


class HyperMorphLoss(_Loss):
    """``mean_b [(1 - lambda_b) L_sim,b + lambda_b L_reg,b]``, with ``lambda`` read from the network's outputs.

    Args:
        image_loss: ``"ncc"`` (local squared NCC, :func:`~monai_diffreg.losses.local_ncc_loss`),
            ``"mse"`` (:func:`~monai_diffreg.losses.mse_loss`) of the warped moving image against
            the fixed one, averaged per item; or ``"dice"``: ``1 -`` soft Dice averaged over the labels
            present in either map (:func:`~monai_diffreg.losses.dice.present_label_dice_loss`, the
            convention of the other bundles' training) of the moving one-hot labels warped (linear
            interpolation) against the fixed ones, the SynthMorph way
            (:func:`~monai_diffreg.losses.dice.warped_label_dice_loss`; needs labels; the images are
            then not compared).
        reg_field: ``"velocity"`` (default; the reference VoxelMorph/HyperMorph code penalises the
            pre-integration field) or ``"ddf"`` (the displacement on the input grid).
        penalty: ``"l2"`` or ``"l1"`` of :func:`~monai_diffreg.losses.gradient_loss`.
        ncc_window: NCC box width (odd).
        image_sigma: ``sigma`` of ``"mse"``.

    ``forward(outputs, fixed, moving, fixed_labels=None, moving_labels=None)`` (the trainer's
    signature) reads ``outputs["reg_weight"]`` ``(B, 1)``, ``outputs["warped"]`` (image losses) or
    ``outputs["ddf"]`` (Dice) and ``outputs[reg_field]``; returns ``{"loss", "similarity",
    "regularization"}``, the last two batch means of the unweighted terms (for logging).
    """

    def __init__(self, image_loss: str = "ncc", reg_field: str = "velocity", penalty: str = "l2",
                 ncc_window: int = 9, image_sigma: float = 1.0) -> None:
        super().__init__()
        caller = "HyperMorphLoss"
        self.image_loss = check_choice(image_loss, "image_loss", caller, HYPERMORPH_IMAGE_LOSSES)
        self.reg_field = check_choice(reg_field, "reg_field", caller, REG_FIELDS)
        self.penalty = check_choice(penalty, "penalty", caller, PENALTIES)
        self.ncc_window = ncc_window
        self.image_sigma = check_positive(image_sigma, "image_sigma", caller)

    def similarity(self, outputs: Mapping[str, torch.Tensor], fixed: torch.Tensor,
                   fixed_labels: torch.Tensor | None, moving_labels: torch.Tensor | None) -> torch.Tensor:
        """The per-item similarity term ``(B,)``."""
        caller = "HyperMorphLoss"
        if self.image_loss == "dice":
            if fixed_labels is None or moving_labels is None:
                raise ValueError(f"{caller}(): image_loss='dice' needs 'fixed_labels' and 'moving_labels', got None")
            return warped_label_dice_loss(moving_labels, fixed_labels, outputs["ddf"], reduction="none")
        per_voxel = image_similarity_loss(outputs["warped"], fixed, self.image_loss, reduction="none",
                                          ncc_window=self.ncc_window, image_sigma=self.image_sigma)
        return per_voxel.flatten(1).mean(dim=1)

    def forward(self, outputs: Mapping[str, torch.Tensor], fixed: torch.Tensor, moving: torch.Tensor,
                fixed_labels: torch.Tensor | None = None,
                moving_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        caller = "HyperMorphLoss"
        needed = ["reg_weight", self.reg_field, "ddf" if self.image_loss == "dice" else "warped"]
        missing = [k for k in needed if k not in outputs]
        if missing:
            raise ValueError(f"{caller}(): 'outputs' lacks key(s) {missing}; expected a HyperMorph output dict")
        sim = self.similarity(outputs, fixed, fixed_labels, moving_labels)
        reg = gradient_loss(outputs[self.reg_field], penalty=self.penalty, reduction="none")
        lam = outputs["reg_weight"]
        if lam.shape != (sim.shape[0], 1):
            raise ValueError(f"{caller}(): outputs['reg_weight'] must have shape ({sim.shape[0]}, 1), "
                             f"got {tuple(lam.shape)}")
        lam = lam[:, 0].to(sim.dtype)
        loss = ((1.0 - lam) * sim + lam * reg).mean()
        return {"loss": loss, "similarity": sim.mean(), "regularization": reg.mean()}
