"""Band-limited fields: exact synthesis/analysis, symbols equal to their stencils, alias-free products."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.lddmm.fourier import (band_product, band_shape, band_to_spatial, derivative_symbols, hermitian_part,
                                         laplacian_symbol, product_grid_size, spatial_to_band)


def random_band(band, channels=1, seed=0):
    """Hermitian coefficients of a random real band-limited field ``(1, channels, *band)`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, channels, *band, generator=g, dtype=torch.float64)
    dims = tuple(range(2, 2 + len(band)))
    return torch.fft.fftshift(torch.fft.fftn(noise, dim=dims, norm="forward"), dim=dims)


def test_band_shape_is_odd_and_fits_the_grid():
    assert band_shape((64, 64, 64), 16) == (15, 15, 15)
    assert band_shape((64, 64), 15) == (15, 15)
    assert band_shape((10, 7), 15) == (9, 7)
    assert band_shape((32, 32), (5, 8)) == (5, 7)
    for bad in (0, -3, 2.5, (5,), True):
        with pytest.raises(ValueError, match="truncation"):
            band_shape((32, 32), bad)


@pytest.mark.parametrize("shape", [(12, 10), (9, 11, 8)])
def test_synthesis_matches_the_inverse_fft_and_analysis_inverts_it(shape):
    band = band_shape(shape, 5)
    c = random_band(band, channels=2)
    values = band_to_spatial(c, shape)
    # reference: place the band into a full spectrum and inverse-FFT (Fourier-series normalisation)
    full = torch.zeros(1, 2, *shape, dtype=torch.complex128)
    index = [slice(None), slice(None)]
    for t, n in zip(band, shape):
        index.append(torch.arange(t) - t // 2)
    grids = torch.meshgrid(*[torch.remainder(i, n) for i, n in zip(index[2:], shape)], indexing="ij")
    full[(slice(None), slice(None), *grids)] = c
    reference = torch.fft.ifftn(full, dim=tuple(range(2, 2 + len(shape))), norm="forward")
    assert torch.allclose(values, reference.real, atol=1e-12)
    assert reference.imag.abs().max() < 1e-12  # Hermitian coefficients: a real field
    assert torch.allclose(spatial_to_band(values, band), c, atol=1e-13)


def test_analysis_is_the_orthogonal_projection_onto_the_band():
    shape, band = (16, 14), (5, 5)
    g = torch.Generator().manual_seed(3)
    f = torch.randn(1, 1, *shape, generator=g, dtype=torch.float64)
    c = spatial_to_band(f, band)
    residual = f - band_to_spatial(c, shape)
    assert spatial_to_band(residual, band).abs().max() < 1e-13  # residual orthogonal to the band
    assert torch.allclose(hermitian_part(c), c, atol=1e-15)


@pytest.mark.parametrize("shape", [(20, 18), (16, 12, 14)])
def test_product_is_the_truncated_spatial_product_without_aliasing(shape):
    band = band_shape(shape, 7 if len(shape) == 2 else 5)
    a, b = random_band(band, seed=1), random_band(band, seed=2)
    expected = spatial_to_band(band_to_spatial(a, shape) * band_to_spatial(b, shape), band)
    assert torch.allclose(band_product(a, b), expected, atol=1e-14)
    # the padded grid is the 3/2 rule, smaller than twice the band
    assert all(3 * (t // 2) + 1 <= p < 2 * t for t, p in zip(band, product_grid_size(band)))


def test_symbols_are_the_spectra_of_the_finite_difference_stencils():
    shape, band, spacing = (16, 12, 10), (7, 5, 5), (1.0, 2.0, 0.5)
    c = random_band(band, seed=4)
    f = band_to_spatial(c, shape)
    laplacian = sum((torch.roll(f, 1, 2 + d) + torch.roll(f, -1, 2 + d) - 2 * f) / h ** 2 for d, h in enumerate(spacing))
    assert torch.allclose(spatial_to_band(-laplacian, band), laplacian_symbol(shape, band, spacing) * c, atol=1e-12)
    symbols = derivative_symbols(shape, band, spacing)
    for d, h in enumerate(spacing):
        central = (torch.roll(f, -1, 2 + d) - torch.roll(f, 1, 2 + d)) / (2 * h)
        assert torch.allclose(spatial_to_band(central, band), symbols[d] * c, atol=1e-13)
    assert laplacian_symbol(shape, band)[3, 2, 2] == 0  # k = 0 (the centre of the band)
