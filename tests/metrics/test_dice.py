"""Tests for monai_diffreg.metrics.dice: hand-computed values, skipping rules, MONAI cross-check."""

from __future__ import annotations

import math

import pytest
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from monai_diffreg.metrics import DiceOverlapMetric, dice_per_label, mean_dice


def _maps_2d():
    """pred/target 4x4: label 1 overlaps 2 of (3 + 3) voxels, label 2 only in pred, label 3 identical."""
    pred = torch.tensor([[1, 1, 1, 0], [0, 0, 2, 0], [3, 3, 0, 0], [0, 0, 0, 0]])
    target = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0], [3, 3, 0, 0], [0, 0, 0, 0]])
    return pred[None, None], target[None, None]


def test_hand_computed_2d():
    pred, target = _maps_2d()
    d = dice_per_label(pred, target)  # labels found: 1, 2, 3
    assert d.shape == (1, 3) and d.dtype == torch.float32
    assert d[0, 0].item() == pytest.approx(2 * 2 / 6)
    assert math.isnan(d[0, 1].item())  # label 2 absent from target: skipped
    assert d[0, 2].item() == 1.0
    assert mean_dice(pred, target).item() == pytest.approx((2 / 3 + 1) / 2)


def test_skip_if_absent_from_target_scores_lost_label_as_zero():
    pred, target = _maps_2d()
    # label 2 is absent from target: skipped either way; label 3 lost from pred: 0 with "target"
    pred = torch.where(pred == 3, torch.zeros_like(pred), pred)
    either = dice_per_label(pred, target, labels=[1, 2, 3])
    only_target = dice_per_label(pred, target, labels=[1, 2, 3], skip_if_absent_from="target")
    assert math.isnan(either[0, 2].item()) and only_target[0, 2].item() == 0.0
    assert math.isnan(either[0, 1].item()) and math.isnan(only_target[0, 1].item())


def test_explicit_labels_order_background_and_unknown_label():
    pred, target = _maps_2d()
    d = dice_per_label(pred, target, labels=torch.tensor([3, 0, 7]))
    assert d[0, 0].item() == 1.0
    # background: pred has 10 zeros, target 11, 9 in common
    assert d[0, 1].item() == pytest.approx(2 * 9 / 21)
    assert math.isnan(d[0, 2].item())  # a label in neither map


def test_batch_3d_and_float_maps_with_integer_values():
    a = torch.zeros(2, 1, 6, 6, 6)
    b = torch.zeros(2, 1, 6, 6, 6)
    a[0, :, :3] = 1  # 108 voxels
    b[0, :, 1:4] = 1  # 108 voxels, 72 shared
    a[1, :, :, :2] = 2
    b[1, :, :, :2] = 2
    d = dice_per_label(a, b)
    assert d.shape == (2, 2)
    assert d[0, 0].item() == pytest.approx(2 * 72 / 216)
    assert math.isnan(d[0, 1].item()) and math.isnan(d[1, 0].item())
    assert d[1, 1].item() == 1.0
    assert torch.allclose(mean_dice(a, b), torch.tensor([2 / 3, 1.0]))


def test_cross_check_monai_compute_dice():
    pred = torch.randint(0, 5, (2, 1, 10, 9, 8))
    target = torch.randint(0, 5, (2, 1, 10, 9, 8))
    ours = dice_per_label(pred, target, labels=[1, 2, 3, 4])
    theirs = compute_dice(one_hot(pred, 5), one_hot(target, 5), include_background=False)
    torch.testing.assert_close(ours, theirs.float())


def test_no_foreground_gives_empty_and_nan_mean():
    zeros = torch.zeros(1, 1, 5, 5, dtype=torch.int64)
    assert dice_per_label(zeros, zeros).shape == (1, 0)
    assert math.isnan(mean_dice(zeros, zeros).item())


@pytest.mark.parametrize(
    "pred, target, kwargs, match",
    [
        (torch.full((1, 1, 4, 4), 1.5), torch.zeros(1, 1, 4, 4), {}, "'pred' must be an integer label map.*1.5"),
        (torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), float("nan")), {}, "'target' must be an integer label map"),
        (torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), {}, "dice_per_label\\(\\): 'pred' must have 1 channel"),
        (torch.zeros(4, 4), torch.zeros(4, 4), {}, "'pred' must be 4D"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5), {}, "same shape"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), {"labels": [1, 1]}, "must not repeat"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), {"labels": [1.5]}, "'labels' must hold integers"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), {"labels": []}, "non-empty"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), {"skip_if_absent_from": "pred"}, "'skip_if_absent_from' must be one of"),
    ],
)
def test_bad_input(pred, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dice_per_label(pred, target, **kwargs)


def test_metric_accumulates_and_reduces_like_monai():
    pred, target = _maps_2d()
    metric = DiceOverlapMetric(labels=[1, 2, 3], get_not_nans=True)
    metric(y_pred=pred, y=target)
    metric(y_pred=[pred[0], target[0]], y=[target[0], target[0]])  # list of channel-first maps
    buffer = metric.get_buffer()
    assert buffer.shape == (3, 3)
    torch.testing.assert_close(buffer[2], torch.tensor([1.0, float("nan"), 1.0]), equal_nan=True)
    value, not_nans = metric.aggregate()
    per_case = torch.nanmean(buffer, dim=1)
    assert value.item() == pytest.approx(per_case.mean().item())
    assert not_nans.item() == 3
    per_label, counts = metric.aggregate("mean_batch")
    # label 2 is skipped in every case: MONAI's convention reports 0 with a count of 0
    torch.testing.assert_close(per_label, torch.tensor([(2 / 3 + 2 / 3 + 1) / 3, 0.0, 1.0]))
    torch.testing.assert_close(counts, torch.tensor([3.0, 0.0, 3.0]))
    # aggregating twice must not corrupt the buffer (MONAI's reduction zeroes NaNs in place)
    assert torch.isnan(metric.get_buffer()).sum() == 3
    metric.reset()
    with pytest.raises(ValueError, match="no values accumulated"):
        metric.aggregate()


def test_metric_without_labels_stores_case_means():
    pred, target = _maps_2d()
    metric = DiceOverlapMetric()
    out = metric(y_pred=pred, y=target)
    assert out.shape == (1, 1)
    assert metric.aggregate().item() == pytest.approx(mean_dice(pred, target).item())


def test_metric_bad_options():
    with pytest.raises(ValueError, match="DiceOverlapMetric\\(\\): 'reduction' must be one of"):
        DiceOverlapMetric(reduction="median")
    with pytest.raises(ValueError, match="DiceOverlapMetric\\(\\): 'skip_if_absent_from'"):
        DiceOverlapMetric(skip_if_absent_from="both")
    with pytest.raises(ValueError, match="DiceOverlapMetric\\(\\): 'labels'"):
        DiceOverlapMetric(labels=[0.5])
