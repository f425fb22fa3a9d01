"""Band-limited vector fields on a periodic image grid (the Fourier space of FLASH).

A band-limited field on a grid of ``N = (N_1, ..., N_D)`` voxels is stored as its Fourier-series
coefficients on a centred band of ``T_d = 2 K_d + 1`` frequencies per axis (``k_d = -K_d .. K_d``):
a complex tensor ``(B, C, T_1, ..., T_D)`` with index ``j`` holding frequency ``j - K_d``, so that

    f(x) = sum_k c(k) exp(2 pi i k . x / N)        (x in voxels, 0 <= x_d < N_d)

A real field has Hermitian coefficients, ``c(-k) = conj(c(k))``. With this normalisation the
coefficients of a product are the convolution of the coefficients, and Parseval reads
``sum_x |f(x)|^2 = prod(N) sum_k |c(k)|^2``.

Operators are diagonal (symbols on the band, :func:`laplacian_symbol`, :func:`derivative_symbols`,
:func:`regularization_symbol`): ``A(k) = sum_d (2 - 2 cos(2 pi k_d / N_d)) / h_d^2`` (the negative
discrete Laplacian), ``L = (alpha A + 1)^3``, ``K = 1 / L`` and the central difference
``D_d(k) = i sin(2 pi k_d / N_d) / h_d`` (``h``: voxel spacing, 1 by default: voxel units).

Products (:func:`band_product`, and the batched :func:`to_product_grid` / :func:`from_product_grid`
that the shooting uses) multiply on a zero-padded grid of ``P_d >= 3 K_d + 1`` points (Orszag's
3/2 rule): the exact linear convolution of the truncated spectra, truncated back to the band,
with no aliasing. :func:`band_to_spatial` evaluates a field on the full image grid by separable
matrix products (exact, no zero-filled FFT of the whole image), :func:`spatial_to_band` projects
a field onto the band (its inverse on band-limited fields).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch

__all__ = [
    "band_shape",
    "band_frequencies",
    "laplacian_symbol",
    "regularization_symbol",
    "derivative_symbols",
    "product_grid_size",
    "to_product_grid",
    "from_product_grid",
    "band_product",
    "band_to_spatial",
    "spatial_to_band",
    "resize_band",
    "hermitian_part",
]


def band_shape(shape: Sequence[int], truncation: int | Sequence[int] = 15) -> tuple[int, ...]:
    """Odd number of frequencies per axis: ``truncation`` (an even value ``t`` becomes ``t - 1``), at most the grid's.

    Args:
        shape: image grid ``(N_1, ..., N_D)``.
        truncation: frequencies per axis (one number for all axes, or one per axis), at least 1.

    Returns:
        ``(T_1, ..., T_D)``, each odd and ``<= N_d`` (``N_d - 1`` for an even ``N_d``).
    """
    if isinstance(truncation, Sequence):
        values = list(truncation)
    else:
        values = [truncation] * len(shape)
    if len(values) != len(shape) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in values):
        raise ValueError(f"band_shape(): 'truncation' must be an integer >= 1 or {len(shape)} of them, got {truncation!r}")
    return tuple(_odd(min(t, n)) for t, n in zip(values, shape))


def _odd(n: int) -> int:
    return n if n % 2 else n - 1


def band_frequencies(band: Sequence[int], device: torch.device | None = None,
                     dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Integer frequencies ``-K_d .. K_d`` of each axis of a band of shape ``(T_1, ..., T_D)``, as 1D tensors."""
    return [torch.arange(t, device=device, dtype=dtype) - (t // 2) for t in band]


def _axis_angles(shape: Sequence[int], band: Sequence[int], device, dtype) -> list[torch.Tensor]:
    """``2 pi k_d / N_d`` per axis, each broadcastable to the band ``(T_1, ..., T_D)``."""
    ndim = len(band)
    out = []
    for d, (k, n) in enumerate(zip(band_frequencies(band, device, dtype), shape)):
        view = [1] * ndim
        view[d] = -1
        out.append((2 * math.pi / n) * k.view(view))
    return out


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    return (1.0,) * ndim if spacing is None else tuple(float(h) for h in spacing)


def laplacian_symbol(shape: Sequence[int], band: Sequence[int], spacing: Sequence[float] | None = None, *,
                     device: torch.device | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``A(k) = sum_d (2 - 2 cos(2 pi k_d / N_d)) / h_d^2`` on the band: real ``(T_1, ..., T_D)``, ``>= 0``, 0 at k = 0."""
    h = _spacing(spacing, len(shape))
    angles = _axis_angles(shape, band, device, dtype)
    return sum((2 - 2 * torch.cos(w)) / h_d ** 2 for w, h_d in zip(angles, h))


def regularization_symbol(alpha: float | torch.Tensor, laplacian: torch.Tensor, power: int = 3) -> torch.Tensor:
    """``L(k) = (alpha A(k) + 1)^power`` (FLASH: power 3); ``K = 1 / L``. ``alpha`` may be a tensor (autograd)."""
    return (alpha * laplacian + 1) ** power


def derivative_symbols(shape: Sequence[int], band: Sequence[int], spacing: Sequence[float] | None = None, *,
                       device: torch.device | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Central differences ``D_d(k) = i sin(2 pi k_d / N_d) / h_d``: complex ``(D, T_1, ..., T_D)``."""
    h = _spacing(spacing, len(shape))
    angles = _axis_angles(shape, band, device, dtype)
    return torch.stack([torch.broadcast_to(1j * torch.sin(w) / h_d, tuple(band)) for w, h_d in zip(angles, h)])


def product_grid_size(band: Sequence[int]) -> tuple[int, ...]:
    """Points per axis of the padded grid on which band-limited fields are multiplied without aliasing.

    The product of two fields of frequencies ``|k| <= K`` has frequencies ``|k| <= 2K``; on a
    periodic grid of ``P`` points they alias onto the band ``|k| <= K`` only if ``P - K <= 2K``,
    so ``P = 3K + 1`` suffices (rounded up to an even size for the FFT).
    """
    return tuple(3 * (t // 2) + 1 + (3 * (t // 2) + 1) % 2 for t in band)


@lru_cache(maxsize=32)
def _half_spectrum_index(band: tuple[int, ...], size: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Where the band's coefficients with ``k_D >= 0`` sit in the flattened half spectrum
    ``(P_1, ..., P_{D-1}, P_D // 2 + 1)`` of a padded grid (FFT order, ``k mod P``): a ``long`` index over
    ``(T_1, ..., T_{D-1}, K_D + 1)`` flattened, axes before the last in centred order (cached; never modify)."""
    frequencies = band_frequencies(band[:-1], dtype=torch.int64) + [torch.arange(band[-1] // 2 + 1)]
    extents = (*size[:-1], size[-1] // 2 + 1)
    index = torch.zeros((), dtype=torch.int64)
    for k, p, n in zip(frequencies, size, extents):
        index = index[..., None] * n + k % p
    return index.flatten().to(device)


def _embed_half(coefficients: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The half spectrum ``(..., P_1, ..., P_{D-1}, P_D // 2 + 1)`` of a padded grid holding centred band coefficients
    ``(..., T_1, ..., T_D)`` at their FFT indices and zeros elsewhere (what ``irfftn`` reads of a Hermitian field)."""
    band, size = tuple(coefficients.shape[-len(size):]), tuple(size)
    leading = coefficients.shape[:-len(size)]
    index = _half_spectrum_index(band, size, coefficients.device)
    values = coefficients[..., band[-1] // 2:].reshape(*leading, -1)
    flat = coefficients.new_zeros(*leading, math.prod(size[:-1]) * (size[-1] // 2 + 1))
    return flat.index_copy(-1, index, values).view(*leading, *size[:-1], size[-1] // 2 + 1)


def to_product_grid(coefficients: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Real values on the padded grid ``size`` of real band-limited fields (Hermitian ``(..., T_1, ..., T_D)``)."""
    dims = tuple(range(-len(size), 0))
    return torch.fft.irfftn(_embed_half(coefficients, size), s=tuple(size), dim=dims, norm="forward")


def from_product_grid(values: torch.Tensor, band: Sequence[int]) -> torch.Tensor:
    """Band coefficients ``(..., T_1, ..., T_D)`` of real values on a padded grid (the truncated product's spectrum)."""
    ndim = len(band)
    dims = tuple(range(-ndim, 0))
    half = torch.fft.rfftn(values, dim=dims, norm="forward")
    index = _half_spectrum_index(tuple(band), tuple(values.shape[-ndim:]), values.device)
    leading = half.flatten(-ndim).index_select(-1, index).view(*half.shape[:-ndim], *band[:-1], band[-1] // 2 + 1)
    # negative frequencies of the last axis: c(k_1, ..., -k_D) = conj(c(-k_1, ..., k_D))
    negative = torch.flip(leading[..., 1:], dims=dims).conj()
    return torch.cat([negative, leading], dim=-1)


def band_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Coefficients of the product of two band-limited fields, truncated to the band (zero-padded convolution).

    Args:
        a, b: complex ``(B, C, *band)`` coefficients of the same band (broadcastable ``B``, ``C``).

    Returns:
        complex ``(B, C, *band)``: ``c(k) = sum_{k1 + k2 = k} a(k1) b(k2)`` for ``k`` in the band.
    """
    band = tuple(a.shape[2:])
    size = product_grid_size(band)
    return from_product_grid(to_product_grid(a, size) * to_product_grid(b, size), band)


@lru_cache(maxsize=32)
def _synthesis_matrix(n: int, t: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``E[x, j] = exp(2 pi i (j - K) x / n)``: ``(n, t)`` complex (cached; never modify)."""
    x = torch.arange(n, device=device, dtype=torch.float64)
    k = torch.arange(t, device=device, dtype=torch.float64) - t // 2
    return torch.polar(torch.ones(n, t, dtype=torch.float64, device=device), 2 * math.pi * x[:, None] * k[None, :] / n).to(dtype)


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.is_complex else (torch.complex128 if dtype == torch.float64 else torch.complex64)


def band_to_spatial(coefficients: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Real values on the image grid of band-limited fields: ``(B, C, *band)`` complex -> ``(B, C, *shape)`` real.

    Separable synthesis (one ``(N_d, T_d)`` matrix per axis), exact for any grid size. The last axis, where the
    values reach the image's size, is synthesised in real arithmetic: ``Re(X E^T) = [Re X, Im X] [Re E, -Im E]^T``
    (no complex image-sized intermediate).
    """
    out = coefficients
    for axis, n in enumerate(shape[:-1]):
        matrix = _synthesis_matrix(n, out.shape[2 + axis], out.device, _complex_dtype(out.dtype))
        out = torch.movedim(torch.movedim(out, 2 + axis, -1) @ matrix.T, -1, 2 + axis)
    matrix = _synthesis_matrix(shape[-1], out.shape[-1], out.device, _complex_dtype(out.dtype))
    real_matrix = torch.cat([matrix.real, -matrix.imag], dim=1).T  # (2 T_D, N_D)
    return torch.cat([out.real, out.imag], dim=-1) @ real_matrix


def spatial_to_band(values: torch.Tensor, band: Sequence[int]) -> torch.Tensor:
    """Band coefficients of fields on the image grid: ``(B, C, *shape)`` -> complex ``(B, C, *band)``.

    ``c(k) = (1 / prod N) sum_x f(x) exp(-2 pi i k . x / N)``: the orthogonal projection onto the
    band, and the exact inverse of :func:`band_to_spatial` on band-limited fields.
    """
    out = values.to(_complex_dtype(values.dtype))
    for axis, t in enumerate(band):
        n = out.shape[2 + axis]
        matrix = _synthesis_matrix(n, t, out.device, out.dtype)
        out = torch.movedim(torch.movedim(out, 2 + axis, -1) @ matrix.conj(), -1, 2 + axis) / n
    return out


def resize_band(coefficients: torch.Tensor, band: Sequence[int]) -> torch.Tensor:
    """The same field on another band ``(B, C, *band)``: centred crop (dropping the outer frequencies) or zero padding."""
    out = coefficients
    for axis, t in enumerate(band):
        dim = 2 + axis
        current = out.shape[dim]
        if t < current:
            out = out.narrow(dim, (current - t) // 2, t)
        elif t > current:
            pad = list(out.shape)
            pad[dim] = (t - current) // 2
            zeros = out.new_zeros(pad)
            out = torch.cat([zeros, out, zeros], dim=dim)
    return out


def hermitian_part(coefficients: torch.Tensor) -> torch.Tensor:
    """``(c(k) + conj(c(-k))) / 2``: the coefficients of the real part of the field (``(B, C, *band)``)."""
    ndim = coefficients.ndim - 2
    flipped = torch.flip(coefficients, dims=tuple(range(2, 2 + ndim)))
    return 0.5 * (coefficients + flipped.conj())
