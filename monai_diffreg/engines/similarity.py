"""Image dissimilarity terms of the optimisation engines, with an optional fixed-image mask.

One function chooses the term by name, so the affine and deformable engines share it:

* ``"ncc"``: negative local squared NCC (:func:`monai_diffreg.losses.local_ncc_loss`, box
  window), in ``(-1, 0]``; for images of the same contrast (robust to smooth intensity changes).
* ``"mse"``: :func:`monai_diffreg.losses.mse_loss`, ``mean (w - f)^2 / (2 sigma^2)``; same
  contrast and intensity scale.
* ``"mi"``: negative global mutual information with Gaussian Parzen windows
  (:class:`monai.losses.GlobalMutualInformationLoss`), for different contrasts. That loss
  clamps intensities to ``[0, 1]``: the engines min-max normalise each image before calling it
  (:func:`normalise_intensity`).

With a mask ``m`` (weights in ``[0, 1]`` on the fixed grid), NCC and MSE become weighted means
of their per-voxel maps, ``sum m l / sum m``; MI is estimated from the voxels with ``m >= 0.5``.
"""

from __future__ import annotations

import torch
from monai.losses import GlobalMutualInformationLoss

from ..losses import local_ncc_loss, mse_loss

__all__ = ["SIMILARITY_METRICS", "image_dissimilarity", "normalise_intensity"]

SIMILARITY_METRICS = ("ncc", "mse", "mi")


def normalise_intensity(image: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each batch element to ``[0, 1]`` (``image`` must not be constant)."""
    flat = image.flatten(1)
    low = flat.min(dim=1).values.view(-1, *([1] * (image.ndim - 1)))
    high = flat.max(dim=1).values.view(-1, *([1] * (image.ndim - 1)))
    return (image - low) / (high - low)


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
        metric: ``"ncc"``, ``"mse"`` or ``"mi"`` (module docstring); options are validated by the
            calling engine.
        mask: optional ``(B or 1, 1, *spatial)`` weights in ``[0, 1]`` on the fixed grid.
        ncc_window: odd box width of the local NCC, in voxels.
        image_sigma: noise standard deviation of the MSE term, in intensity units.
        mi_bins: number of Parzen-window bins of the mutual information (intensities in ``[0, 1]``).

    Returns:
        scalar tensor, averaged over the batch.
    """
    if metric == "mi":
        mi = GlobalMutualInformationLoss(num_bins=mi_bins, reduction="none")
        if mask is None:
            return mi(warped, fixed).mean()
        keep = (mask >= 0.5).expand_as(fixed)
        return torch.stack([mi(w[k].view(1, -1), f[k].view(1, -1)) for w, f, k in zip(warped, fixed, keep)]).mean()
    if metric == "ncc":
        voxelwise = local_ncc_loss(warped, fixed, window=ncc_window, reduction="none" if mask is not None else "mean")
    else:
        voxelwise = mse_loss(warped, fixed, image_sigma=image_sigma, reduction="none" if mask is not None else "mean")
    if mask is None:
        return voxelwise
    weights = mask.expand_as(voxelwise)
    return (voxelwise * weights).flatten(1).sum(1).div(weights.flatten(1).sum(1)).mean()
