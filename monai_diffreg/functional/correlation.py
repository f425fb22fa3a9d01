"""Local correlation of two feature maps: the cost volume of PWC-Net and of the registration pyramid.

For feature maps ``f`` (fixed) and ``m`` (moving) ``(B, C, *S)`` on the same grid and a search
range ``d`` (voxels), the cost volume holds, for every voxel ``x`` and every integer displacement
``k`` in ``[-d, d]^D``::

    cv_k(x) = (1 / C) sum_c f_c(x) m_c(x + k)          (m = 0 outside the grid)

that is ``(2d + 1)^D`` channels (25 in 2D, 125 in 3D for ``d = 2``). ``k`` moves along the
tensor axes like a displacement of the package (:mod:`monai_diffreg.functional`): a moving map
that is the fixed one seen through a translation ``k`` (``m(x + k) = f(x)``, pull-back) peaks in
channel ``k``. Sun et al., "PWC-Net" (CVPR 2018), eq. 1, divides by the feature length as here;
Gunnarsson et al., "Learning a deformable registration pyramid" (2020) use it in 3D with ``d = 2``.

**Channel order**: the displacements in lexicographic order of their components, the last
spatial axis varying fastest (``itertools.product(range(-d, d + 1), repeat=D)``), so channel
``sum_i (k_i + d) (2d + 1)^(D - 1 - i)`` holds displacement ``k``; the centre channel
``((2d + 1)^D - 1) / 2`` is ``k = 0``. :func:`correlation_displacements` lists them.

**Normalisation** (``normalize=True``): each feature vector ``a(x)`` (over channels) is first
centred and scaled to unit root-mean-square, ``a^ = (a - mean_c a) / sqrt(mean_c (a - mean_c a)^2 + eps)``,
so that ``cv_k(x)`` is the Pearson correlation of the two vectors, in ``[-1, 1]`` whatever ``C``
(unit RMS rather than unit Euclidean norm keeps the channel mean of the definition above; a unit
norm would divide every value by ``C`` again). ``eps`` keeps constant vectors (and ``C = 1``,
whose centred vector is 0) finite: they correlate to 0. The zero outside the grid is applied after
normalising.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ..validation import check_positive, check_spatial_tensor

__all__ = ["local_correlation", "correlation_displacements", "num_correlation_channels"]


def _check_search_range(search_range: object, caller: str) -> int:
    if not isinstance(search_range, int) or isinstance(search_range, bool) or search_range < 0:
        raise ValueError(f"{caller}(): 'search_range' must be an integer >= 0, got {search_range!r}")
    return search_range


def num_correlation_channels(spatial_dims: int, search_range: int) -> int:
    """Channels of :func:`local_correlation`'s output: ``(2 * search_range + 1) ** spatial_dims``."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"num_correlation_channels(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
    return (2 * _check_search_range(search_range, "num_correlation_channels") + 1) ** spatial_dims


def correlation_displacements(spatial_dims: int, search_range: int) -> list[tuple[int, ...]]:
    """The displacement ``k`` (voxels, tensor axis order) of every channel of :func:`local_correlation`, in order."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"correlation_displacements(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
    d = _check_search_range(search_range, "correlation_displacements")
    return list(itertools.product(range(-d, d + 1), repeat=spatial_dims))


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    centred = x - x.mean(dim=1, keepdim=True)
    return centred * torch.rsqrt(centred.pow(2).mean(dim=1, keepdim=True) + eps)


def local_correlation(fixed_features: torch.Tensor, moving_features: torch.Tensor, search_range: int = 2,
                      normalize: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """Cost volume: channel-mean correlation of ``fixed(x)`` with ``moving(x + k)`` for every ``k`` in ``[-d, d]^D``.

    See the module docstring for the maths, the channel order and the normalisation.

    Args:
        fixed_features: ``(B, C, *S)`` with 2 or 3 spatial axes.
        moving_features: ``(B, C, *S)``, same shape (usually warped by the current estimate).
        search_range: ``d`` in voxels (integer >= 0; the registration pyramid uses 2).
        normalize: centre and scale every feature vector to unit RMS over channels first
            (the values become Pearson correlations in ``[-1, 1]``).
        eps: positive constant added to the variance when normalising (feature units squared).

    Returns:
        ``(B, (2d + 1)^D, *S)`` in the features' dtype; channel order of :func:`correlation_displacements`,
        zero where ``x + k`` leaves the grid. Differentiable with respect to both inputs.
    """
    caller = "local_correlation"
    ndim = check_spatial_tensor(fixed_features, "fixed_features", caller)
    check_spatial_tensor(moving_features, "moving_features", caller, spatial_dims=ndim)
    if fixed_features.shape != moving_features.shape:
        raise ValueError(f"{caller}(): 'fixed_features' and 'moving_features' must have the same shape, "
                         f"got {tuple(fixed_features.shape)} and {tuple(moving_features.shape)}")
    d = _check_search_range(search_range, caller)
    if not isinstance(normalize, bool):
        raise ValueError(f"{caller}(): 'normalize' must be True or False, got {normalize!r}")
    eps = check_positive(eps, "eps", caller)
    fixed, moving = fixed_features, moving_features
    if normalize:
        fixed, moving = _normalize(fixed, eps), _normalize(moving, eps)
    spatial = fixed.shape[2:]
    padded = F.pad(moving, [d] * (2 * ndim)) if d else moving  # zeros outside the grid
    channels = []
    for k in correlation_displacements(ndim, d):
        window = padded[(slice(None), slice(None), *(slice(d + ki, d + ki + n) for ki, n in zip(k, spatial)))]
        channels.append((fixed * window).mean(dim=1))
    return torch.stack(channels, dim=1)
