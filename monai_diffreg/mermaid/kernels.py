"""Smoothing kernels of the momentum models: (multi-)Gaussian ``K`` applied in Fourier space.

The velocity of a momentum ``m`` is ``v = K * m`` with ``K = sum_i w_i G_{sigma_i}`` (``w_i >= 0``,
``sum_i w_i = 1``), each ``G_sigma`` a normalised Gaussian of standard deviation ``sigma`` in
millimetres. Convolution is periodic over the grid (a momentum near one border acts, damped by the
Gaussian, at the opposite one; the images' borders are background in practice) and done by real
FFTs, so its cost does not grow with ``sigma``.

The multiplier of ``G_sigma`` at DFT frequency ``k`` (cycles per voxel) of an axis with voxel size
``h`` is the continuous Gaussian's Fourier transform ``exp(-2 pi^2 sigma^2 (k / h)^2)``; it equals
the circular convolution with the sampled, normalised Gaussian up to aliasing, largest at the Nyquist
frequency, of order ``exp(-pi^2 sigma^2 / (2 h^2))``: below 1e-8 for ``sigma >= 2 h``, about 7e-3 at
``sigma = h`` (tested).

:func:`omt_penalty` is the optimal-mass-transport penalty of metric learning (Niethammer, Kwitt,
Vialard, CVPR 2019) on the weights: ``|log(s_max / s_min)|^-r sum_i w_i |log(s_max / s_i)|^r``,
zero when all weight sits on the widest Gaussian, largest on the narrowest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..validation import check_positive

__all__ = ["gaussian_multiplier", "gaussian_multipliers", "kernel_multiplier", "apply_kernel", "kernel_energy", "check_kernel",
           "check_simplex", "omt_penalty"]


def _spacing(spacing: Sequence[float] | None, ndim: int, caller: str) -> tuple[float, ...]:
    values = (1.0,) * ndim if spacing is None else tuple(float(h) for h in spacing)
    if len(values) != ndim or not all(math.isfinite(h) and h > 0 for h in values):
        raise ValueError(f"{caller}(): 'spacing' must be {ndim} voxel sizes > 0, got {spacing!r}")
    return values


def gaussian_multiplier(shape: Sequence[int], sigma: float, spacing: Sequence[float] | None = None, *,
                        device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fourier multiplier of ``G_sigma`` on a grid, laid out for ``torch.fft.rfftn`` over the last ``len(shape)`` axes.

    Args:
        shape: spatial grid ``(n_0, ..., n_{D-1})``.
        sigma: standard deviation in the units of ``spacing`` (millimetres; voxels when ``spacing`` is None).
        spacing: voxel size per axis.

    Returns:
        real ``(n_0, ..., n_{D-1} // 2 + 1)`` tensor, 1 at frequency 0.
    """
    sigma = check_positive(sigma, "sigma", "gaussian_multiplier")
    steps = _spacing(spacing, len(shape), "gaussian_multiplier")
    exponent = torch.zeros((), dtype=torch.float64, device=device)
    for axis, (n, h) in enumerate(zip(shape, steps)):
        k = torch.fft.rfftfreq(n, device=device, dtype=torch.float64) if axis == len(shape) - 1 else \
            torch.fft.fftfreq(n, device=device, dtype=torch.float64)
        view = [1] * len(shape)
        view[axis] = k.numel()
        exponent = exponent + (k / h).view(view) ** 2
    return torch.exp(-2.0 * math.pi**2 * sigma**2 * exponent).to(dtype)


def gaussian_multipliers(shape: Sequence[int], sigmas: Sequence[float], spacing: Sequence[float] | None = None, *,
                         device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The multipliers ``(N, *F)`` of ``N`` Gaussians on one grid, one :func:`gaussian_multiplier` per width."""
    return torch.stack([gaussian_multiplier(shape, s, spacing, device=device, dtype=dtype) for s in sigmas])


def check_kernel(sigmas: Sequence[float], weights: Sequence[float] | torch.Tensor | None, caller: str,
                 name: str = "weights") -> tuple[tuple[float, ...], torch.Tensor]:
    """Validate Gaussian widths (> 0) and weights (>= 0, summing to 1; None: equal; ``name`` in messages) and return them."""
    if not isinstance(sigmas, Sequence) or len(sigmas) == 0:
        raise ValueError(f"{caller}(): 'sigmas' must be a non-empty sequence of widths > 0, got {sigmas!r}")
    widths = tuple(check_positive(s, "sigmas", caller) for s in sigmas)
    if weights is None:
        return widths, torch.full((len(widths),), 1.0 / len(widths), dtype=torch.float64)
    return widths, check_simplex(weights, len(widths), name, caller)


def check_simplex(weights: Sequence[float] | torch.Tensor, n: int, name: str, caller: str) -> torch.Tensor:
    """Validate ``n`` finite weights >= 0 summing to 1 (one per Gaussian); a tensor is returned as given, numbers
    as a float64 tensor."""
    w = weights if isinstance(weights, torch.Tensor) else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (n,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) \
            or abs(float(w.detach().sum()) - 1.0) > 1e-6:
        raise ValueError(f"{caller}(): '{name}' must be {n} numbers >= 0 summing to 1 (one per Gaussian), got {weights!r}")
    return w


def kernel_multiplier(shape: Sequence[int], sigmas: Sequence[float], weights: Sequence[float] | torch.Tensor | None = None,
                      spacing: Sequence[float] | None = None, *, device: torch.device | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fourier multiplier of ``K = sum_i w_i G_{sigma_i}`` (:func:`gaussian_multiplier`; ``weights`` None: equal).

    ``weights`` may be a tensor that requires grad (global metric learning): the result then does too.
    """
    widths, w = check_kernel(sigmas, weights, "kernel_multiplier")
    w = w.to(device=device, dtype=dtype)
    multipliers = torch.stack([gaussian_multiplier(shape, s, spacing, device=device, dtype=dtype) for s in widths])
    return torch.tensordot(w, multipliers, dims=1)


def apply_kernel(field: torch.Tensor, multiplier: torch.Tensor, ndim: int | None = None) -> torch.Tensor:
    """``K * field`` for ``(B, C, *S)`` (every channel), by real FFTs with ``multiplier`` from :func:`kernel_multiplier`.

    ``ndim``: the number of spatial axes when ``multiplier`` has leading axes that broadcast against the
    field's (e.g. ``(N, 1, *F)`` applying ``N`` kernels to a ``(B, N, C, *S)`` field in one transform);
    default ``multiplier.ndim``.
    """
    ndim = multiplier.ndim if ndim is None else ndim
    axes = tuple(range(-ndim, 0))
    spectrum = torch.fft.rfftn(field, dim=axes)
    return torch.fft.irfftn(spectrum * multiplier, s=field.shape[-ndim:], dim=axes)


def kernel_energy(momentum: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """``<m, K m>`` per batch item, as the mean over voxels of ``m . v`` (``v = K * m``): ``(B,)``.

    A mean, not a sum: with ``m`` and ``v`` in millimetres it is the same number for the same fields
    sampled on any grid.
    """
    return (momentum * velocity).sum(dim=1).flatten(1).mean(dim=1)


def omt_penalty(weights: torch.Tensor, sigmas: Sequence[float], power: float = 1.0) -> torch.Tensor:
    """``|log(s_max / s_min)|^-r sum_i w_i |log(s_max / s_i)|^r`` (module docstring); needs two distinct widths.

    Args:
        weights: ``(..., N)`` non-negative weights (summing to 1 over the last axis).
        sigmas: the ``N`` widths.
        power: ``r`` (> 0).
    """
    power = check_positive(power, "power", "omt_penalty")
    s = torch.as_tensor(sigmas, dtype=weights.dtype, device=weights.device)
    if s.numel() != weights.shape[-1] or float(s.max()) == float(s.min()):
        raise ValueError(f"omt_penalty(): 'sigmas' must be {weights.shape[-1]} widths, not all equal, got {sigmas!r}")
    distance = torch.log(s.max() / s).abs() ** power
    return (weights * distance).sum(dim=-1) / float(torch.log(s.max() / s.min()).abs() ** power)
