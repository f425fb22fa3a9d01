"""The registry of image similarity terms chosen by name: each name stated and evaluated once.

Wherever a user picks an image term by name (the engines' ``metric`` / ``image_loss``,
:class:`~monai_diffreg.losses.ProbabilisticSVFLoss`'s ``image_loss``, the API's affine metric)
the names come from :data:`SIMILARITY_METRICS` and are evaluated by :func:`image_similarity_loss`.
A place that offers only some of them declares its subset with :func:`similarity_subset`, which
checks it against this registry, so no second list of names or second dispatch exists.

Each term is a dissimilarity (lower is better):

* ``"ncc"``: negative local squared NCC (:func:`~monai_diffreg.losses.local_ncc_loss`, box
  window ``ncc_window``), in ``[-1, 0]``; for images of the same contrast (robust to smooth
  intensity changes).
* ``"mse"``: :func:`~monai_diffreg.losses.mse_loss`, ``(p - t)^2 / (2 sigma^2)`` with
  ``sigma = image_sigma``; same contrast and intensity scale.
* ``"mi"``: negative global mutual information with Gaussian Parzen windows of ``mi_bins`` bins
  (:class:`monai.losses.GlobalMutualInformationLoss`), for different contrasts. That loss clamps
  intensities to ``[0, 1]``: scale the images first
  (:func:`~monai_diffreg.transforms.intensity.min_max_normalize`).

Reductions: ``"ncc"`` and ``"mse"`` are per-voxel maps (``"none"`` returns the map, ``"mean"``
/ ``"sum"`` reduce every element); ``"mi"`` is one value per batch item (``"none"`` returns
``(B,)``, ``"mean"`` / ``"sum"`` reduce over the batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..validation import check_choice
from ._utils import check_image_pair, check_reduction, reduce_loss
from .mse import mse_loss
from .ncc import local_ncc_loss

__all__ = ["SIMILARITY_METRICS", "image_similarity_loss", "similarity_subset"]


def _ncc(pred: torch.Tensor, target: torch.Tensor, reduction: str, *, ncc_window: int, **_: object) -> torch.Tensor:
    return local_ncc_loss(pred, target, window=ncc_window, reduction=reduction)


def _mse(pred: torch.Tensor, target: torch.Tensor, reduction: str, *, image_sigma: float, **_: object) -> torch.Tensor:
    return mse_loss(pred, target, image_sigma=image_sigma, reduction=reduction)


def _mi(pred: torch.Tensor, target: torch.Tensor, reduction: str, *, mi_bins: int, **_: object) -> torch.Tensor:
    from monai.losses import GlobalMutualInformationLoss  # on first use: importing MONAI's losses takes seconds

    check_image_pair(pred, target, "image_similarity_loss")
    return reduce_loss(GlobalMutualInformationLoss(num_bins=mi_bins, reduction="none")(pred, target), reduction)


_TERMS: dict[str, Callable[..., torch.Tensor]] = {"ncc": _ncc, "mse": _mse, "mi": _mi}

#: Every image similarity name the package knows, in its documented order.
SIMILARITY_METRICS: tuple[str, ...] = tuple(_TERMS)


def similarity_subset(names: Iterable[str], owner: str) -> tuple[str, ...]:
    """``names`` as a tuple, after checking that each is in :data:`SIMILARITY_METRICS`.

    Args:
        names: the similarity names a method or engine offers.
        owner: who offers them, for the message (e.g. ``"optimise_svf"``).

    Raises:
        ValueError: a name the registry does not know (a typo, or a term added in one place only).
    """
    subset = tuple(names)
    unknown = [n for n in subset if n not in _TERMS]
    if unknown or not subset:
        raise ValueError(f"{owner}: image similarity names must be a non-empty subset of {list(SIMILARITY_METRICS)}, "
                         f"got {list(subset)}")
    return subset


def image_similarity_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    metric: str,
    *,
    reduction: str = "mean",
    ncc_window: int = 9,
    image_sigma: float = 1.0,
    mi_bins: int = 23,
) -> torch.Tensor:
    """The image dissimilarity ``metric`` of ``pred`` (e.g. a warped image) against ``target``.

    Args:
        pred, target: ``(B, C, *spatial)`` images of one shape, 2D or 3D.
        metric: a name of :data:`SIMILARITY_METRICS` (module docstring).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (module docstring for what each term returns).
        ncc_window: box width of ``"ncc"`` in voxels (odd).
        image_sigma: noise standard deviation of ``"mse"``, in intensity units.
        mi_bins: Parzen-window bins of ``"mi"`` (intensities in ``[0, 1]``).

    Returns:
        the dissimilarity (lower is better), reduced as asked.
    """
    caller = "image_similarity_loss"
    check_choice(metric, "metric", caller, SIMILARITY_METRICS)
    reduction = check_reduction(reduction, caller)
    return _TERMS[metric](pred, target, reduction, ncc_window=ncc_window, image_sigma=image_sigma, mi_bins=mi_bins)
