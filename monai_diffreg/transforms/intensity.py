"""Intensity scaling to [0, 1]: robust (by percentiles) and plain min-max.

:func:`min_max_normalize` is the package's one min-max scaling, ``(x - min) / (max - min)`` per
batch item (a constant item becomes 0); synthesis, the training streams, the mutual-information
metric of the engines and the dataset loaders use it.

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

from ..validation import check_finite, check_not_constant, check_spatial_tensor

__all__ = ["percentile", "order_statistics", "normalize_intensity_percentile", "min_max_normalize"]


def min_max_normalize(image: torch.Tensor) -> torch.Tensor:
    """Scale each batch item of ``(B, C, *spatial)`` linearly to [0, 1]: ``(x - min) / (max - min)``.

    ``min`` and ``max`` are taken over the item's channels and voxels together. A constant
    item (``max == min``) has no range to scale: it becomes all 0, a defined result and not an
    error (a synthesised or masked training image may be constant, and the training stream must
    not stop on it). Callers for which a constant image is an input error check before calling
    (:func:`~monai_diffreg.validation.check_not_constant`, as the engines and dataset loaders do).
    Not robust to outliers (one hot voxel sets ``max``): for real scans prefer
    :func:`normalize_intensity_percentile`.

    Args:
        image: ``(B, C, *spatial)`` float tensor, 2 or 3 spatial axes.

    Returns:
        tensor of the same shape and dtype, each item in [0, 1] (its minimum 0 and, unless
        constant, its maximum 1).
    """
    check_spatial_tensor(image, "image", "min_max_normalize")
    flat = image.flatten(1)
    low = flat.min(dim=1).values.view(-1, *([1] * (image.ndim - 1)))
    span = (flat.max(dim=1).values - flat.min(dim=1).values).view_as(low)
    return (image - low) / torch.where(span > 0, span, torch.ones_like(span))


def percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile (0..100) of all elements of ``x``, as NumPy's ``percentile(method="linear")``.

    Exact; large tensors are not sorted (:func:`order_statistics`). ``torch.quantile`` sorts
    everything and refuses tensors of more than 2**24 elements (a 256^3 volume).
    """
    flat = x.flatten()
    rank = q / 100.0 * (flat.numel() - 1)
    low, high = math.floor(rank), math.ceil(rank)
    value_low, value_high = order_statistics(flat, low, high)
    return value_low + (rank - low) * (value_high - value_low)


def order_statistics(flat: torch.Tensor, first: int, last: int, sample_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``first``-th and ``last``-th smallest (0-based, ``first <= last``, close together) elements of a 1D tensor, exactly.

    For a large tensor, a strided sample of about ``sample_size`` elements gives a value range
    ``[lower, upper]`` that almost surely brackets both ranks (6 binomial standard deviations of
    margin). Counting the elements below, equal to ``lower``, strictly inside and equal to
    ``upper`` places every rank: ranks in a run of ties at either end need no selection at all
    (an image's blank background), and only the elements strictly inside are ranked. The counts
    prove the bracket (if it ever fails, the whole tensor is ranked), so the result is always
    exact; a whole-brain volume costs a few elementwise passes instead of two full selections.
    """
    n = flat.numel()
    stride = n // sample_size
    if stride < 8:
        value_first = torch.kthvalue(flat, first + 1).values
        return value_first, value_first if last == first else torch.kthvalue(flat, last + 1).values
    sample = flat[::stride].contiguous()
    m = sample.numel()
    p_first, p_last = first / max(n - 1, 1), last / max(n - 1, 1)
    margin = int(6 * math.sqrt(m * max(p_first * (1 - p_first), p_last * (1 - p_last), 1.0 / m))) + 8
    j_first = math.floor(p_first * (m - 1)) - margin
    j_last = math.ceil(p_last * (m - 1)) + margin
    lower = torch.kthvalue(sample, j_first + 1).values if j_first >= 0 else flat.new_tensor(-math.inf)
    upper = torch.kthvalue(sample, j_last + 1).values if j_last < m else flat.new_tensor(math.inf)
    below = int(torch.count_nonzero(flat < lower))
    at_lower = int(torch.count_nonzero(flat == lower))
    at_upper = int(torch.count_nonzero(flat == upper)) if bool(upper > lower) else 0
    strictly_inside = flat[(flat > lower) & (flat < upper)]
    end = below + at_lower + strictly_inside.numel() + at_upper
    if not below <= first <= last < end:
        return torch.kthvalue(flat, first + 1).values, torch.kthvalue(flat, last + 1).values

    def value_at(rank: int) -> torch.Tensor:
        if rank < below + at_lower:
            return lower
        if rank >= end - at_upper:
            return upper
        return torch.kthvalue(strictly_inside, rank - below - at_lower + 1).values

    return value_at(first), value_at(last)


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
