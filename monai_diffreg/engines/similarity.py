"""Image dissimilarity terms of the optimisation engines, with an optional fixed-image mask.

The terms and their names are the losses' registry (:mod:`monai_diffreg.losses.similarity`:
:data:`SIMILARITY_METRICS`, evaluated by :func:`~monai_diffreg.losses.image_similarity_loss`);
this module adds the fixed-image mask, so the affine and deformable engines share one function:

* ``"ncc"``: negative local squared NCC (box window), in ``(-1, 0]``; same contrast.
* ``"mse"``: ``mean (w - f)^2 / (2 sigma^2)``; same contrast and intensity scale.
* ``"mi"``: negative global mutual information (Gaussian Parzen windows), for different
  contrasts. It clamps intensities to ``[0, 1]``: the engines min-max normalise each image
  before calling it (:func:`~monai_diffreg.transforms.intensity.min_max_normalize`).

With a mask ``m`` (weights in ``[0, 1]`` on the fixed grid), NCC and MSE become weighted means
of their per-voxel maps, ``sum m l / sum m``; MI is estimated from the voxels with ``m >= 0.5``.
An engine that offers only some terms declares them with
:func:`~monai_diffreg.losses.similarity_subset`.
"""

from __future__ import annotations

import torch

from ..losses.similarity import SIMILARITY_METRICS, image_similarity_loss

__all__ = ["SIMILARITY_METRICS", "image_dissimilarity"]


def image_dissimilarity(
    warped: torch.Tensor,
    fixed: torch.Tensor,
    metric: str,
    mask: torch.Tensor | None = None,
    ncc_window: int = 9,
    image_sigma: float = 1.0,
    mi_bins: int = 23,
) -> torch.Tensor:
    """Scalar dissimilarity of ``warped`` against ``fixed`` (lower is better).

    Args:
        warped: ``(B, C, *spatial)`` moving image resampled onto the fixed grid.
        fixed: ``(B, C, *spatial)`` fixed image.
        metric: a name of :data:`SIMILARITY_METRICS`: ``"ncc"``, ``"mse"`` or ``"mi"`` (module
            docstring); the other options are validated by the calling engine.
        mask: optional ``(B or 1, 1, *spatial)`` weights in ``[0, 1]`` on the fixed grid.
        ncc_window: odd box width of the local NCC, in voxels.
        image_sigma: noise standard deviation of the MSE term, in intensity units.
        mi_bins: number of Parzen-window bins of the mutual information (intensities in ``[0, 1]``).

    Returns:
        scalar tensor, averaged over the batch.
    """
    options = dict(ncc_window=ncc_window, image_sigma=image_sigma, mi_bins=mi_bins)
    if mask is None:
        return image_similarity_loss(warped, fixed, metric, **options)
    if metric == "mi":  # one histogram per item, from the voxels the mask keeps
        keep = (mask >= 0.5).expand_as(fixed)
        return torch.stack([image_similarity_loss(w[k].view(1, 1, -1, 1), f[k].view(1, 1, -1, 1), metric,
                                                  reduction="none", **options)
                            for w, f, k in zip(warped, fixed, keep)]).mean()
    voxelwise = image_similarity_loss(warped, fixed, metric, reduction="none", **options)
    weights = mask.expand_as(voxelwise)
    return (voxelwise * weights).flatten(1).sum(1).div(weights.flatten(1).sum(1)).mean()
