"""Stateless registration maths. Every module of the package builds on these conventions.

Conventions (DESIGN.md section 3; tested in ``tests/functional``):

* **Displacement field (DDF)** ``u``: tensor ``(B, D, *spatial)`` with ``D = len(spatial)``
  (2 or 3), in **voxels of the grid it lives on**. Channel ``i`` moves along tensor axis
  ``i + 2``. Warping pulls back: ``warped(x) = moving(x + u(x))``; the transform
  ``phi(x) = x + u(x)`` maps fixed-grid voxels to moving-grid voxels. This is MONAI
  :class:`monai.networks.blocks.Warp`'s convention, so fields move freely between the two.
* **Velocity field (SVF)** ``v``: same layout and units; ``ddf = exp(v)`` by scaling and
  squaring, and ``exp(-v)`` is the inverse transform.
* **Grid geometry**: voxel ``i`` sits at coordinate ``i`` (MONAI ``Warp``: ``align_corners=True``
  for sampling). Changing resolution treats voxels as cells covering the same extent
  (``align_corners=False``, as average pooling does), so a field resized from ``n`` to ``N``
  voxels along an axis has its vectors multiplied by ``N / n`` (:func:`resize_field`).
* **Composition**: ``compose_ddf(a, b)`` is the displacement of ``phi_a o phi_b``, so that
  ``warp(warp(img, a), b) == warp(img, compose_ddf(a, b))``.
"""

from .affine import (
    affine_from_normalized,
    affine_from_params,
    affine_to_ddf,
    affine_to_normalized,
    identity_affine,
    compose_affine,
    compose_affine_ddf,
    invert_affine,
    num_affine_params,
    rescale_affine,
)
from .compose import compose_ddf
from .correlation import correlation_displacements, local_correlation, num_correlation_channels
from .grid import identity_grid
from .integrate import integrate_velocity
from .invert import invert_ddf
from .jacobian import jacobian_determinant, jacobian_matrix, spatial_gradient
from .keypoints import feature_centroids, fit_affine
from .posterior import POSTERIORS, posterior_smoothing_sigma, sample_velocity
from .resize import resize_field, resize_image
from .smoothing import gaussian_kernel1d, gaussian_smooth
from .warp import warp

__all__ = [
    "affine_from_normalized",
    "affine_from_params",
    "affine_to_ddf",
    "affine_to_normalized",
    "identity_affine",
    "compose_affine",
    "compose_affine_ddf",
    "invert_affine",
    "num_affine_params",
    "rescale_affine",
    "compose_ddf",
    "correlation_displacements",
    "local_correlation",
    "num_correlation_channels",
    "invert_ddf",
    "feature_centroids",
    "fit_affine",
    "identity_grid",
    "integrate_velocity",
    "POSTERIORS",
    "posterior_smoothing_sigma",
    "sample_velocity",
    "jacobian_determinant",
    "jacobian_matrix",
    "spatial_gradient",
    "resize_field",
    "resize_image",
    "gaussian_kernel1d",
    "gaussian_smooth",
    "warp",
]
