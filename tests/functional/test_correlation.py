"""local_correlation: brute-force definition, channel order, shifted maps peak at their shift, zero outside, gradcheck."""

from __future__ import annotations

import itertools

import pytest
import torch

from monai_diffreg.functional.correlation import (
    correlation_displacements,
    local_correlation,
    num_correlation_channels,
)


def _brute_force(fixed, moving, d, normalize=False, eps=1e-5):
    """The definition, one voxel and one displacement at a time."""
    if normalize:
        norm = lambda a: (a - a.mean(1, keepdim=True)) / ((a - a.mean(1, keepdim=True)).pow(2).mean(1, keepdim=True) + eps).sqrt()  # noqa: E731
        fixed, moving = norm(fixed), norm(moving)
    batch, channels, *spatial = fixed.shape
    offsets = list(itertools.product(range(-d, d + 1), repeat=len(spatial)))
    out = torch.zeros(batch, len(offsets), *spatial, dtype=fixed.dtype)
    for b in range(batch):
        for j, k in enumerate(offsets):
            for x in itertools.product(*[range(n) for n in spatial]):
                y = tuple(xi + ki for xi, ki in zip(x, k))
                if all(0 <= yi < n for yi, n in zip(y, spatial)):
                    out[(b, j, *x)] = (fixed[(b, slice(None), *x)] * moving[(b, slice(None), *y)]).sum() / channels
    return out


@pytest.mark.parametrize("shape,d", [((2, 3, 6, 5), 2), ((1, 2, 4, 5, 3), 1), ((1, 4, 3, 3), 0)])
@pytest.mark.parametrize("normalize", [False, True])
def test_equals_the_brute_force_definition(shape, d, normalize):
    generator = torch.Generator().manual_seed(0)
    fixed = torch.randn(shape, generator=generator, dtype=torch.float64)
    moving = torch.randn(shape, generator=generator, dtype=torch.float64)
    out = local_correlation(fixed, moving, d, normalize=normalize)
    assert out.shape == (shape[0], (2 * d + 1) ** (len(shape) - 2), *shape[2:])
    torch.testing.assert_close(out, _brute_force(fixed, moving, d, normalize), atol=1e-12, rtol=0)


def test_channel_counts_and_order():
    assert num_correlation_channels(2, 2) == 25 and num_correlation_channels(3, 2) == 125
    offsets = correlation_displacements(3, 2)
    assert len(offsets) == 125 and offsets[0] == (-2, -2, -2) and offsets[1] == (-2, -2, -1)
    assert offsets[62] == (0, 0, 0) and offsets[-1] == (2, 2, 2)
    # the formula of the module docstring
    assert all(offsets[sum((k + 2) * 5 ** (2 - i) for i, k in enumerate(kk))] == kk for kk in offsets)
    out = local_correlation(torch.randn(1, 4, 6, 6, 6), torch.randn(1, 4, 6, 6, 6))
    assert out.shape == (1, 125, 6, 6, 6)
    out = local_correlation(torch.randn(1, 4, 6, 7), torch.randn(1, 4, 6, 7))
    assert out.shape == (1, 25, 6, 7)


@pytest.mark.parametrize("shift", [(1, -2), (0, 2), (2, 1, -1)])
def test_a_shifted_map_peaks_at_its_shift(shift):
    """moving(x + k) = fixed(x) (pull-back, package convention): channel k holds the best match."""
    ndim = len(shift)
    generator = torch.Generator().manual_seed(1)
    fixed = torch.randn(1, 8, *[12] * ndim, generator=generator)
    moving = torch.roll(fixed, shifts=shift, dims=tuple(range(2, 2 + ndim)))  # moving[y] = fixed[y - k]
    assert torch.equal(moving[(0, slice(None), *[3 + k for k in shift])], fixed[(0, slice(None), *[3] * ndim)])
    channel = correlation_displacements(ndim, 2).index(tuple(shift))
    interior = (slice(None), slice(None), *[slice(2, -2)] * ndim)
    # normalised: the Pearson correlation, 1 exactly at k and below 1 elsewhere, at every interior voxel
    cv = local_correlation(fixed, moving, 2, normalize=True)[interior]
    centred = fixed[interior] - fixed[interior].mean(dim=1, keepdim=True)
    variance = centred.pow(2).mean(dim=1)
    torch.testing.assert_close(cv[:, channel], variance / (variance + 1e-5))  # 1 up to eps
    assert cv[:, channel].min() > 0.99
    assert torch.equal(cv.argmax(dim=1), torch.full_like(cv.argmax(dim=1), channel))
    assert cv.abs().max() <= 1 + 1e-5
    # raw: the channel mean of the products; on average over the interior it peaks at k as well
    raw = local_correlation(fixed, moving, 2)[interior]
    assert int(raw.flatten(2).mean(dim=2).argmax()) == channel
    torch.testing.assert_close(raw[:, channel], fixed[interior].pow(2).mean(dim=1))


def test_zero_outside_the_grid():
    fixed, moving = torch.ones(1, 2, 5, 5), torch.ones(1, 2, 5, 5)
    cv = local_correlation(fixed, moving, 2)
    offsets = correlation_displacements(2, 2)
    assert cv[0, offsets.index((-1, 0)), 0, 3] == 0 and cv[0, offsets.index((1, 0)), 0, 3] == 1
    assert cv[0, offsets.index((2, 2)), 3, 2] == 0 and cv[0, offsets.index((1, 2)), 3, 2] == 1


def test_normalised_constant_vectors_are_finite():
    """One channel, or constant feature vectors: the centred vectors vanish and correlate to 0 (eps)."""
    cv = local_correlation(torch.rand(1, 1, 5, 5), torch.rand(1, 1, 5, 5), 1, normalize=True)
    assert torch.isfinite(cv).all() and cv.abs().max() < 1e-6


@pytest.mark.parametrize("shape", [(1, 3, 5, 4), (1, 2, 3, 4, 3)])
@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck_float64(shape, normalize):
    generator = torch.Generator().manual_seed(2)
    fixed = torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
    moving = torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, m: local_correlation(f, m, 1, normalize=normalize), (fixed, moving))


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((torch.rand(1, 2, 5, 5), torch.rand(1, 2, 5, 6)), {}, ValueError, r"local_correlation\(\): 'fixed_features' and 'moving_features' must have the same shape"),
    ((torch.rand(1, 2, 5, 5), torch.rand(1, 2, 5, 5, 5)), {}, ValueError, r"'moving_features' must be 4D"),
    ((torch.rand(2, 5), torch.rand(2, 5)), {}, ValueError, r"'fixed_features' must be"),
    ((torch.rand(1, 2, 5, 5), torch.rand(1, 2, 5, 5)), {"search_range": -1}, ValueError, r"'search_range' must be an integer >= 0, got -1"),
    ((torch.rand(1, 2, 5, 5), torch.rand(1, 2, 5, 5)), {"search_range": True}, ValueError, r"'search_range'"),
    ((torch.rand(1, 2, 5, 5), torch.rand(1, 2, 5, 5)), {"normalize": 1}, ValueError, r"'normalize' must be True or False"),
    ((torch.rand(1, 2, 5, 5), torch.rand(1, 2, 5, 5)), {"eps": 0.0}, ValueError, r"'eps'"),
    (("a", torch.rand(1, 2, 5, 5)), {}, TypeError, r"'fixed_features' must be a torch.Tensor"),
])
def test_bad_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        local_correlation(*args, **kwargs)
    with pytest.raises(ValueError, match=r"num_correlation_channels\(\): 'spatial_dims' must be 2 or 3"):
        num_correlation_channels(4, 2)
