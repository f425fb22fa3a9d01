"""Percentile intensity scaling: NumPy cross-check, clipping, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_diffreg.transforms.array import NormalizeIntensityPercentile
from monai_diffreg.transforms.dictionary import NormalizeIntensityPercentiled
from monai_diffreg.transforms.intensity import (
    min_max_normalize,
    normalize_intensity_percentile,
    order_statistics,
    percentile,
)


@pytest.mark.parametrize("q", [0.0, 0.5, 13.7, 50.0, 99.5, 100.0])
def test_percentile_matches_numpy(q):
    x = torch.randn(3, 17, 11, dtype=torch.float64)
    assert float(percentile(x, q)) == pytest.approx(float(np.percentile(x.numpy(), q)), abs=1e-12)
    ties = torch.randint(0, 4, (997,)).double()  # repeated values: the next order statistic may equal this one
    assert float(percentile(ties, q)) == pytest.approx(float(np.percentile(ties.numpy(), q)), abs=1e-12)


@pytest.mark.parametrize("data", [
    torch.rand(600_000),
    torch.randint(0, 5, (600_000,)).float(),  # heavy ties
    torch.cat([torch.zeros(550_000), torch.rand(50_000) * 1e6]),  # a blank background and a long tail
    torch.cat([torch.rand(50_000), torch.ones(550_000)]),  # saturated: most ranks in a run of ties at the top
    torch.cat([torch.zeros(200_000), torch.rand(200_000), torch.ones(200_000)]),  # tie runs at both ends
    torch.exp(torch.randn(600_000) * 5),
])
@pytest.mark.parametrize("q", [0.0, 0.5, 50.0, 99.5, 99.9999, 100.0])
def test_large_percentiles_are_exact(data, q):
    """The sample-bracketed selection (large tensors) gives numpy's value exactly."""
    assert float(percentile(data, q)) == pytest.approx(float(np.percentile(data.numpy(), q)), rel=1e-6, abs=0)


def test_order_statistics_fall_back_when_the_bracket_misses():
    """A sample that lies about the distribution (sorted data, stride hits one end) must not break exactness."""
    data = torch.cat([torch.zeros(599_999), torch.ones(1)])
    data[::9] = 5.0  # every sampled element is 5, the rest mostly 0
    expected = torch.sort(data).values
    for k in (0, 300_000, 599_999):
        first, last = order_statistics(data, k, min(k + 1, 599_999))
        assert float(first) == float(expected[k]) and float(last) == float(expected[min(k + 1, 599_999)])


def test_normalization_maps_percentiles_to_unit_range():
    x = torch.arange(1001.0)  # values 0..1000, shuffled onto a 7 x 11 x 13 grid
    x = x[torch.randperm(x.numel())].view(1, 7, 11, 13)
    y = normalize_intensity_percentile(x, 10.0, 90.0, clip=False)
    low, high = np.percentile(x.numpy(), [10.0, 90.0])
    torch.testing.assert_close(y, ((x - low) / (high - low)).float())
    clipped = normalize_intensity_percentile(x, 10.0, 90.0)
    assert float(clipped.min()) == 0.0 and float(clipped.max()) == 1.0
    assert float((clipped == 0).float().mean()) == pytest.approx(0.1, abs=0.002)
    assert normalize_intensity_percentile(x.double()).dtype == torch.float64
    assert normalize_intensity_percentile(x.to(torch.int16)).dtype == torch.float32


def test_robust_to_a_hot_voxel():
    x = torch.rand(1, 20, 20, generator=torch.Generator().manual_seed(0))
    x[0, 3, 3] = 1e6
    y = normalize_intensity_percentile(x)
    assert float(y[x < 1].median()) > 0.3  # min-max would squash everything to ~0


def test_errors():
    with pytest.raises(ValueError, match=r"normalize_intensity_percentile\(\): 'image' is constant"):
        normalize_intensity_percentile(torch.full((1, 4, 4), 3.0))
    nan = torch.rand(1, 4, 4)
    nan[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="'image' contains 1 NaN/Inf value"):
        normalize_intensity_percentile(nan)
    with pytest.raises(ValueError, match="percentiles must satisfy 0 <= lower < upper <= 100"):
        normalize_intensity_percentile(torch.rand(1, 4, 4), 50.0, 50.0)
    mostly_blank = torch.zeros(1, 20, 20)
    mostly_blank[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="equal 0.5th and 99.5th percentiles"):
        normalize_intensity_percentile(mostly_blank)


def test_array_and_dictionary_transforms():
    image = MetaTensor(torch.rand(1, 9, 8, 7) * 50 + 10, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = NormalizeIntensityPercentile(1.0, 99.0)(image)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, image.affine)
    torch.testing.assert_close(out.as_tensor(), normalize_intensity_percentile(image.as_tensor(), 1.0, 99.0))
    d = NormalizeIntensityPercentiled(("fixed", "moving"))({"fixed": image, "moving": image * 3})
    torch.testing.assert_close(d["fixed"].as_tensor(), d["moving"].as_tensor())
    with pytest.raises(ValueError, match=r"NormalizeIntensityPercentile\(\): 'moving' is constant"):
        NormalizeIntensityPercentiled(("fixed", "moving"))({"fixed": image, "moving": torch.ones(1, 4, 4)})


# ---------------------------------------------------------------- min-max


def test_min_max_normalize_analytic():
    image = torch.tensor([[[[1.0, 2.0], [3.0, 2.0]]]])
    assert torch.equal(min_max_normalize(image), torch.tensor([[[[0.0, 0.5], [1.0, 0.5]]]]))


def test_min_max_normalize_per_item_over_channels():
    image = torch.stack([torch.linspace(-2, 6, 20), torch.linspace(10, 11, 20)]).view(2, 1, 4, 5)
    out = min_max_normalize(image)
    assert torch.equal(out.flatten(1).min(1).values, torch.zeros(2))
    assert torch.equal(out.flatten(1).max(1).values, torch.ones(2))
    torch.testing.assert_close(out[0], (image[0] + 2) / 8)
    two_channels = torch.stack([torch.zeros(3, 3), torch.full((3, 3), 4.0)])[None]  # (1, 2, 3, 3): one range
    assert torch.equal(min_max_normalize(two_channels), two_channels / 4)
    doubles = torch.rand(2, 1, 3, 4, 5, dtype=torch.float64)
    assert min_max_normalize(doubles).dtype == torch.float64


def test_min_max_normalize_constant_item_is_zero():
    """A constant item has no range: it becomes 0 (documented result, no division by zero); others are scaled."""
    image = torch.cat([torch.full((1, 1, 3, 3), 7.0), torch.arange(9.0).view(1, 1, 3, 3)])
    out = min_max_normalize(image)
    assert torch.equal(out[0], torch.zeros(1, 3, 3)) and bool(torch.isfinite(out).all())
    assert torch.equal(out[1], torch.arange(9.0).view(1, 3, 3) / 8)


def test_min_max_normalize_bad_input():
    with pytest.raises(ValueError, match=r"min_max_normalize\(\): 'image' must be"):
        min_max_normalize(torch.rand(5, 5))
