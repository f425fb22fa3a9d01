"""Contrast-independent similarity of two images: normalised mutual information (NMI).

``NMI(A, B) = (H(A) + H(B)) / H(A, B)`` (Studholme et al., Pattern Recognition 1999) from a joint
histogram of ``bins`` equal-width bins over each image's own intensity range; 1 for independent
images, 2 for images that determine each other. It does not care which intensity a tissue has,
so it tells whether a registration made a pair of any two contrasts more or less alike.
"""

from __future__ import annotations

import torch

from ..validation import check_positive

__all__ = ["normalized_mutual_information"]


def _entropy(counts: torch.Tensor) -> torch.Tensor:
    p = counts[counts > 0] / counts.sum()
    return -(p * p.log()).sum()


def normalized_mutual_information(a: torch.Tensor, b: torch.Tensor, bins: int = 32, step: int = 1) -> float:
    """NMI of two images of the same shape (module docstring).

    Args:
        a, b: images of one shape (any layout; every element is a sample).
        bins: histogram bins per image.
        step: use every ``step``-th element along each axis (2: an eighth of a 3D volume; for speed).

    Returns:
        NMI in ``[1, 2]``; 1.0 when either image is constant.
    """
    if a.shape != b.shape:
        raise ValueError(f"normalized_mutual_information(): 'a' and 'b' must have one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    check_positive(bins, "bins", "normalized_mutual_information")
    index = tuple(slice(None, None, step) for _ in a.shape)
    codes = []
    for x in (a[index], b[index]):
        x = x.detach().reshape(-1).float()
        low, high = torch.aminmax(x)
        if not bool(high > low):
            return 1.0
        codes.append(((x - low) / (high - low) * (bins - 1e-3)).long())
    joint = torch.bincount(codes[0] * bins + codes[1], minlength=bins * bins).double().view(bins, bins)
    return float((_entropy(joint.sum(1)) + _entropy(joint.sum(0))) / _entropy(joint))
