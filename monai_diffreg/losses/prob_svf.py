"""Training loss of probabilistic diffeomorphic VoxelMorph (improved posterior, bidirectional, Dice).

Dalca et al., "Improved probabilistic diffeomorphic registration with CNNs" (2018):

    L = image term + KL[q(z | x, y) || p(z)] + alpha * L_seg

* **image term** for a posterior sample ``z_k`` (one sample per step, ``K = 1``): with
  ``image_loss="mse"`` the Gaussian likelihood ``1 / (2 sigma^2) ||x - y o phi_z||^2``
  (:func:`~monai_diffreg.losses.mse.mse_loss`, a per-voxel mean); ``bidirectional=True``
  averages it with the inverse direction ``||y - x o phi_z^-1||^2`` (the ``"mean"`` of
  :func:`~monai_diffreg.losses.wrappers.combine_directions`), which is eq. 2's
  ``1 / (4 sigma^2) (...)``. ``image_loss="ncc"`` uses local squared NCC
  (:func:`~monai_diffreg.losses.ncc.local_ncc_loss`) instead, as VoxelMorph offers. Both are
  names of the similarity registry (:mod:`~monai_diffreg.losses.similarity`). Either is
  multiplied by ``image_weight``.
* **KL** from the Laplacian prior ``N(0, (lambda L)^-1)``,
  :func:`~monai_diffreg.losses.kl.kl_svf_laplacian` (the reference code's normalisation).
  For the smoothed posterior ``Sigma = C D D^T C^T`` the exact KL is the diagonal one with
  the neighbour count ``2n`` replaced by ``c = (C^T L C)_jj``
  (:func:`~monai_diffreg.functional.posterior.smoothed_posterior_degree`); we evaluate it by
  shifting the log variance by ``log(c / 2n)`` before the diagonal formula, which equals the
  exact value up to an additive constant (border voxels keep their own degree).
  Without this the optimum ``D^2 = 1 / (2n lambda)`` would be shrunk again by the smoothing
  and the smoothed samples would carry almost no variance.
* **segmentation term** ``alpha (1 - mean_l Dice_l)`` between the moving one-hot labels
  warped (linear interpolation) by ``phi`` and the fixed labels (and, when bidirectional,
  the fixed labels warped by ``phi^-1`` against the moving ones), averaged over the labels
  present in either map (:func:`~monai_diffreg.losses.dice.soft_dice_loss`). The paper's
  ``-sum_l Dice_l`` has the same minimiser. Labels are needed only for training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch.nn.modules.loss import _Loss

from ..functional.warp import warp
from ..functional.posterior import POSTERIORS, posterior_degree
from ..validation import check_choice, check_positive, check_spatial_tensor
from .dice import present_label_dice_loss
from .kl import kl_svf_laplacian
from .similarity import image_similarity_loss, similarity_subset
from .wrappers import combine_directions

__all__ = ["ProbabilisticSVFLoss", "IMAGE_LOSSES"]

#: The image terms this loss offers: the registry's names with a per-voxel likelihood.
IMAGE_LOSSES = similarity_subset(("mse", "ncc"), "ProbabilisticSVFLoss")
_REQUIRED_OUTPUTS = ("warped", "warped_fixed", "ddf", "inverse_ddf", "velocity_mean", "velocity_log_var")


class ProbabilisticSVFLoss(_Loss):
    """Composite training loss of probabilistic VoxelMorph; see the module docstring.

    Args:
        image_loss: ``"mse"`` (the paper's Gaussian likelihood) or ``"ncc"`` (local NCC, window ``ncc_window``).
        image_sigma: image noise standard deviation for ``"mse"`` (intensity units).
        prior_lambda: prior precision scale ``lambda`` (must match the network's).
        bidirectional: add the inverse-direction image (and Dice) terms (eq. 2).
        dice_weight: ``alpha`` of the segmentation term (0 disables it; labels then optional).
        posterior: ``"diagonal"`` or ``"smoothed"`` (must match the network's), selects the KL.
        image_weight: multiplies the image term.
        ncc_window: window of the NCC image term.

    ``forward(outputs, fixed, moving, fixed_labels=None, moving_labels=None)`` takes the
    network's output dict (keys ``warped``, ``warped_fixed``, ``ddf``, ``inverse_ddf``,
    ``velocity_mean``, ``velocity_log_var``), the images ``(B, C, *S)`` and optional one-hot
    labels ``(B, L, *S)``, and returns a dict of scalars: ``"image"``, ``"kl"``, ``"dice"``
    (0 when ``dice_weight = 0``) and ``"loss" = image + kl + dice_weight * dice``.
    """

    #: With ``bidirectional``, eq. 2 averages the two directions (image and Dice terms alike).
    bidirectional_reduction = "mean"

    def __init__(self, image_loss: str = "mse", image_sigma: float = 0.02, prior_lambda: float = 10.0,
                 bidirectional: bool = True, dice_weight: float = 0.0, posterior: str = "diagonal",
                 image_weight: float = 1.0, ncc_window: int = 9) -> None:
        super().__init__()
        caller = "ProbabilisticSVFLoss"
        self.image_loss = check_choice(image_loss, "image_loss", caller, IMAGE_LOSSES)
        self.image_sigma = check_positive(image_sigma, "image_sigma", caller)
        self.prior_lambda = check_positive(prior_lambda, "prior_lambda", caller)
        self.bidirectional = bool(bidirectional)
        self.dice_weight = check_positive(dice_weight, "dice_weight", caller, allow_zero=True)
        self.posterior = check_choice(posterior, "posterior", caller, POSTERIORS)
        self.image_weight = check_positive(image_weight, "image_weight", caller)
        self.ncc_window = ncc_window

    def image_term(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The (unweighted) image dissimilarity between a warped image and its target."""
        return image_similarity_loss(pred, target, self.image_loss, image_sigma=self.image_sigma,
                                     ncc_window=self.ncc_window)

    def kl_term(self, velocity_mean: torch.Tensor, velocity_log_var: torch.Tensor) -> torch.Tensor:
        """KL from the prior for this posterior type (up to a constant for ``"smoothed"``)."""
        if self.posterior == "smoothed":
            ndim = velocity_mean.ndim - 2
            degree = posterior_degree(self.posterior, self.prior_lambda, ndim)
            velocity_log_var = velocity_log_var + math.log(degree / (2 * ndim))
        return kl_svf_laplacian(velocity_mean, velocity_log_var, self.prior_lambda)

    def refinement_terms(self, context: Mapping[str, torch.Tensor]):
        """Test-time refinement's terms (:class:`~monai_diffreg.engines.refinement.RefinementLoss`).

        The weighted image term, the KL with the network's log variance held fixed
        (``context["velocity_log_var"]``, :meth:`ProbabilisticVoxelMorph.refinement_start`) and
        how the directions are combined: :attr:`bidirectional_reduction` when ``bidirectional``,
        else None (forward only); the Dice term is left out (no labels at test time).
        """
        if "velocity_log_var" not in context:
            raise ValueError("ProbabilisticSVFLoss.refinement_terms(): the refinement context lacks "
                             "'velocity_log_var' (a probabilistic network's refinement_start provides it)")
        log_var = context["velocity_log_var"]
        return (lambda warped, target: self.image_weight * self.image_term(warped, target),
                lambda velocity: self.kl_term(velocity, log_var),
                self.bidirectional_reduction if self.bidirectional else None)

    def forward(self, outputs: Mapping[str, torch.Tensor], fixed: torch.Tensor, moving: torch.Tensor,
                fixed_labels: torch.Tensor | None = None,
                moving_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        caller = "ProbabilisticSVFLoss"
        missing = [k for k in _REQUIRED_OUTPUTS if k not in outputs]
        if missing:
            raise ValueError(f"{caller}(): 'outputs' lacks key(s) {missing}; expected the network's dict {list(_REQUIRED_OUTPUTS)}")
        image = self.image_term(outputs["warped"], fixed)
        if self.bidirectional:
            backward = self.image_term(outputs["warped_fixed"], moving)
            image = combine_directions(image, backward, self.bidirectional_reduction)
        kl = self.kl_term(outputs["velocity_mean"], outputs["velocity_log_var"])
        dice = torch.zeros((), dtype=kl.dtype, device=kl.device)
        if self.dice_weight > 0:
            if fixed_labels is None or moving_labels is None:
                raise ValueError(f"{caller}(): dice_weight={self.dice_weight} needs 'fixed_labels' and 'moving_labels', got None")
            check_spatial_tensor(fixed_labels, "fixed_labels", caller)
            check_spatial_tensor(moving_labels, "moving_labels", caller, channels=fixed_labels.shape[1])
            dice = present_label_dice_loss(warp(moving_labels, outputs["ddf"]), fixed_labels)
            if self.bidirectional:
                backward = present_label_dice_loss(warp(fixed_labels, outputs["inverse_ddf"]), moving_labels)
                dice = combine_directions(dice, backward, self.bidirectional_reduction)
        image = self.image_weight * image
        return {"image": image, "kl": kl, "dice": dice, "loss": image + kl + self.dice_weight * dice}
