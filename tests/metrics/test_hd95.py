"""Tests for monai_diffreg.metrics.hd95: known offsets with anisotropic spacing, MONAI cross-check."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from monai.networks.utils import one_hot
from scipy import ndimage

from monai_diffreg.metrics import Hausdorff95Metric, hausdorff95_per_label, mean_hausdorff95


def _box_pair(ndim: int, axis: int, k: int):
    """target: a box of side 8 in a 16^ndim grid; pred: the same box grown by k voxels at both ends of `axis`.

    Every pred voxel beyond the target lies k or fewer voxels along `axis` from the target's end faces;
    the two grown end faces (over 5% of pred's surface) are exactly k voxels away, so HD95 = k * spacing[axis].
    """
    target = torch.zeros((1, 1) + (16,) * ndim, dtype=torch.int64)
    target[(0, 0) + (slice(4, 12),) * ndim] = 1
    pred = target.clone()
    grown = [slice(4, 12)] * ndim
    grown[axis] = slice(4 - k, 12 + k)
    pred[(0, 0, *grown)] = 1
    return pred, target


@pytest.mark.parametrize("ndim, spacing", [(2, (0.7, 1.3)), (3, (2.0, 0.5, 0.7))])
@pytest.mark.parametrize("k", [1, 3])
def test_known_offset_times_spacing_each_axis(ndim, spacing, k):
    for axis in range(ndim):
        pred, target = _box_pair(ndim, axis, k)
        expected = k * spacing[axis]
        assert hausdorff95_per_label(pred, target, spacing=spacing).item() == pytest.approx(expected, rel=1e-6)
        assert hausdorff95_per_label(target, pred, spacing=spacing).item() == pytest.approx(expected, rel=1e-6)
        assert hausdorff95_per_label(pred, target).item() == pytest.approx(k)  # no spacing: voxels


def test_concentric_squares_one_voxel_apart():
    target = torch.zeros(1, 1, 40, 40, dtype=torch.int64)
    target[..., 10:30, 10:30] = 1
    pred = torch.zeros_like(target)
    pred[..., 9:31, 9:31] = 1
    # 4 outer corners (sqrt 2 away) are < 5% of the 84 outer surface voxels; every other distance is 1
    assert hausdorff95_per_label(pred, target, spacing=0.5).item() == pytest.approx(0.5)


def test_identical_maps_give_zero_and_float_integer_maps_work():
    x = torch.zeros(1, 1, 12, 12, 12)
    x[..., 2:6, 3:9, 4:7] = 2.0
    assert hausdorff95_per_label(x, x, spacing=(1, 2, 3)).tolist() == [[0.0]]


def _blobs(shape, levels=(-0.05, 0.0, 0.05)):
    noise = ndimage.gaussian_filter(torch.randn(1, 1, *shape).numpy(), 2.0)
    return torch.bucketize(torch.from_numpy(noise), torch.tensor(levels)).long()


@pytest.mark.parametrize("shape, spacing", [((24, 20, 18), (1.5, 0.8, 1.2)), ((40, 36), (0.7, 1.3))])
def test_cross_check_monai_hausdorff_95(shape, spacing):
    pred, target = _blobs(shape), _blobs(shape)
    ours = hausdorff95_per_label(pred, target, labels=[1, 2, 3], spacing=spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = compute_hausdorff_distance(one_hot(pred, 4), one_hot(target, 4), percentile=95, spacing=spacing)
    assert torch.all(ours > 0)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


def test_absent_labels_nan_or_inf_and_mean():
    pred, target = _box_pair(2, 0, 2)
    target[..., 0, 0] = 5  # label 5 only in target
    pred[..., 15, 15] = 7  # label 7 only in pred
    hd = hausdorff95_per_label(pred, target, labels=[1, 5, 7])
    assert hd[0, 0].item() == pytest.approx(2.0)
    assert math.isnan(hd[0, 1].item()) and math.isnan(hd[0, 2].item())
    hd_t = hausdorff95_per_label(pred, target, labels=[1, 5, 7], skip_if_absent_from="target")
    assert hd_t[0, 1].item() == math.inf and math.isnan(hd_t[0, 2].item())
    assert mean_hausdorff95(pred, target, labels=[1, 5, 7]).item() == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spacing": (1.0, 1.0)}, "hausdorff95_per_label\\(\\): 'spacing' must be a number or 3 numbers"),
        ({"spacing": (1.0, -1.0, 1.0)}, "'spacing' must be a finite number > 0"),
        ({"spacing": "1"}, "'spacing' must be"),
        ({"labels": [2, 2]}, "must not repeat"),
        ({"skip_if_absent_from": "neither"}, "'skip_if_absent_from' must be one of"),
    ],
)
def test_bad_input(kwargs, match):
    x = torch.zeros(1, 1, 6, 6, 6, dtype=torch.int64)
    with pytest.raises(ValueError, match=match):
        hausdorff95_per_label(x, x, **kwargs)
    with pytest.raises(ValueError, match="'pred' must be an integer label map"):
        hausdorff95_per_label(x + 0.5, x)


def test_metric_spacing_default_and_per_call():
    pred, target = _box_pair(3, 0, 1)
    metric = Hausdorff95Metric(labels=[1], spacing=(3.0, 1.0, 1.0), reduction="none")
    metric(y_pred=pred, y=target)
    metric(y_pred=pred, y=target, spacing=(0.5, 1.0, 1.0))
    torch.testing.assert_close(metric.aggregate(), torch.tensor([[3.0], [0.5]]))
    mean_metric = Hausdorff95Metric()
    mean_metric(y_pred=pred, y=target)
    assert mean_metric.aggregate().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="Hausdorff95Metric\\(\\): 'spacing'"):
        Hausdorff95Metric(spacing=0.0)
    with pytest.raises(ValueError, match="'y' \\(the target label map\\) is required"):
        mean_metric(y_pred=pred)
