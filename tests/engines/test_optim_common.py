"""Tests for the engines' shared plumbing: schedules, level grids, masks, pair checks."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.engines._optim_common import (
    check_pair,
    check_schedule,
    check_weight_mask,
    downsample,
    level_shape,
    progress_reporter,
)


def test_level_shape_rounds_and_keeps_a_minimum():
    assert level_shape((160, 192, 224), 4) == (40, 48, 56)
    assert level_shape((160, 192, 224), 2) == (80, 96, 112)
    assert level_shape((33, 64), 2) == (16, 32)  # round(16.5) = 16 (banker's rounding)
    assert level_shape((32, 6), 8) == (8, 6)  # never below min(n, 8)


def test_downsample_is_average_pooling():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    expected = torch.tensor([[2.5, 4.5], [10.5, 12.5]]).view(1, 1, 2, 2)
    assert torch.allclose(downsample(image, (2, 2)), expected)


def test_check_schedule():
    assert check_schedule((4, 2, 1), (10, 5, 0), "f") == ((4.0, 2.0, 1.0), (10, 5, 0))
    with pytest.raises(ValueError, match=r"f\(\): 'levels' must be a non-empty sequence"):
        check_schedule((), (), "f")
    with pytest.raises(ValueError, match=r"f\(\): 'levels'"):
        check_schedule(4, (1,), "f")
    with pytest.raises(ValueError, match=r"f\(\): 'iterations' must be 2 integers >= 0"):
        check_schedule((2, 1), (5, -1), "f")
    with pytest.raises(ValueError, match=r"f\(\): 'iterations' must be 2 integers >= 0"):
        check_schedule((2, 1), (5, 2.5), "f")


def test_check_pair_per_sample_constant():
    images = torch.rand(2, 1, 8, 8)
    images[1] = 3.0
    with pytest.raises(ValueError, match=r"f\(\): 'moving\[1\]' is constant"):
        check_pair(torch.rand(2, 1, 8, 8), images, "f")
    assert check_pair(images[:1], images[:1] * 2, "f") == 2


def test_check_weight_mask():
    fixed = torch.rand(2, 1, 6, 6)
    assert check_weight_mask(torch.ones(1, 1, 6, 6, dtype=torch.bool), fixed, "f").dtype == torch.float32
    with pytest.raises(ValueError, match=r"f\(\): 'fixed_mask' must hold weights in \[0, 1\]"):
        check_weight_mask(torch.full((2, 1, 6, 6), 2.0), fixed, "f")
    with pytest.raises(ValueError, match=r"f\(\): 'fixed_mask' must have 1 channel"):
        check_weight_mask(torch.ones(2, 2, 6, 6), fixed, "f")
    empty = torch.ones(2, 1, 6, 6)
    empty[1] = 0
    with pytest.raises(ValueError, match=r"f\(\): 'fixed_mask' is empty"):
        check_weight_mask(empty, fixed, "f")


def test_progress_reporter_calls_back(capsys):
    calls = []
    with progress_reporter(2, "demo", True, lambda *a: calls.append(a)) as report:
        report(0, 0, 1.0)
        report(0, 1, 0.5)
    assert calls == [(0, 0, 1.0), (0, 1, 0.5)]
    assert "demo" in capsys.readouterr().err
    with progress_reporter(1, "quiet", False, None) as report:
        report(0, 0, 1.0)
    assert "quiet" not in capsys.readouterr().err
