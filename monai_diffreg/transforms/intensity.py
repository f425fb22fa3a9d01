"""Robust intensity scaling to [0, 1] by percentiles.

Registration losses such as MSE and the networks' first layers expect intensities of the
same order in both images; min-max scaling is ruined by a single hot voxel, so intensities
are mapped linearly from the ``[p_lower, p_upper]`` percentile range to ``[0, 1]``:
``y = (x - p_lower) / (p_upper - p_lower)``, then clipped to [0, 1] if requested.
Percentiles follow NumPy's default (``"linear"``): the value at fractional rank
``q / 100 * (n - 1)`` of the sorted voxels, interpolated between neighbours.
"""

from __future__ import annotations

import math

import torch

from ..validation import check_finite, check_not_constant

__all__ = ["percentile", "normalize_intensity_percentile"]


def percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile (0..100) of all elements of ``x``, as NumPy's ``percentile(method="linear")``.

    Uses ``torch.kthvalue`` rather than ``torch.quantile``, which refuses tensors of more than
    2**24 elements (a 256^3 volume).
    """
    flat = x.flatten()
    rank = q / 100.0 * (flat.numel() - 1)
    low, high = math.floor(rank), math.ceil(rank)
    value_low = torch.kthvalue(flat, low + 1).values
    if high == low:
        return value_low
    # the next order statistic: value_low again if it repeats, else the smallest larger element
    # (two cheap passes instead of a second selection)
    if int((flat <= value_low).sum()) >= high + 1:
        return value_low
    value_high = torch.where(flat > value_low, flat, torch.full_like(flat, math.inf)).min()
    return value_low + (rank - low) * (value_high - value_low)


def normalize_intensity_percentile(
    image: torch.Tensor,
    lower: float = 0.5,
    upper: float = 99.5,
    clip: bool = True,
    *,
    name: str = "image",
    caller: str = "normalize_intensity_percentile",
) -> torch.Tensor:
    """Map intensities linearly from their ``[lower, upper]`` percentiles to [0, 1].

    Percentiles are taken over all elements of ``image`` (every channel together).

    Args:
        image: any float or integer tensor (e.g. ``(C, *spatial)`` or ``(B, C, *spatial)``).
        lower: lower percentile in [0, 100).
        upper: upper percentile in (lower, 100].
        clip: clip the result to [0, 1] (values beyond the percentiles saturate).
        name: the argument's name in error messages (dictionary transforms pass the key).
        caller: the public callable's name in error messages.

    Returns:
        float tensor of the same shape (float64 stays float64, anything else becomes float32).

    Raises:
        ValueError: if ``image`` holds NaN/Inf, is constant, or its two percentiles are equal
            (e.g. a mostly blank image with tight percentiles), or the percentiles are invalid.
    """
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lower, upper))
    if not ok or not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"{caller}(): percentiles must satisfy 0 <= lower < upper <= 100, "
                         f"got lower={lower!r}, upper={upper!r}")
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{caller}(): '{name}' must be a torch.Tensor, got {type(image).__name__}")
    if image.numel() == 0:
        raise ValueError(f"{caller}(): '{name}' is empty, got shape {tuple(image.shape)}")
    data = image.to(torch.float64 if image.dtype == torch.float64 else torch.float32)
    check_finite(data, name, caller)
    check_not_constant(data, name, caller)
    low, high = percentile(data, lower), percentile(data, upper)
    if not bool(high > low):
        raise ValueError(f"{caller}(): '{name}' has equal {lower}th and {upper}th percentiles ({float(low)}); "
                         f"most voxels share one value: widen the percentiles (e.g. lower=0, upper=100)")
    out = (data - low) / (high - low)
    return out.clamp(0.0, 1.0) if clip else out
