"""Shared input checks produce messages naming the callable, the argument, expected and actual."""

import pytest
import torch

from monai_diffreg.validation import (
    check_choice,
    check_field,
    check_finite,
    check_not_constant,
    check_positive,
    check_spatial_tensor,
)


def test_spatial_tensor_checks():
    assert check_spatial_tensor(torch.zeros(1, 1, 4, 4), "x", "f") == 2
    assert check_spatial_tensor(torch.zeros(1, 2, 4, 4, 4), "x", "f", channels=2) == 3
    with pytest.raises(ValueError, match=r"f\(\): 'x' must be 5D \(B, C, \*, \*, \*\), got shape \(1, 4, 4, 4\)"):
        check_spatial_tensor(torch.zeros(1, 4, 4, 4), "x", "f", spatial_dims=3)
    with pytest.raises(ValueError, match=r"f\(\): 'x' must have 1 channel\(s\) on axis 1, got shape \(1, 3, 4, 4\)"):
        check_spatial_tensor(torch.zeros(1, 3, 4, 4), "x", "f", channels=1)
    with pytest.raises(ValueError, match=r"f\(\): 'x' is empty"):
        check_spatial_tensor(torch.zeros(1, 1, 0, 4), "x", "f")


def test_field_checks():
    image = torch.zeros(2, 1, 4, 5, 6)
    assert check_field(torch.zeros(2, 3, 4, 5, 6), "ddf", "f", like=image) == 3
    with pytest.raises(ValueError, match=r"f\(\): 'ddf' must have shape \(2, 3, 4, 5, 6\) to match the image"):
        check_field(torch.zeros(1, 3, 4, 5, 6), "ddf", "f", like=image)


def test_value_checks():
    x = torch.ones(1, 1, 3, 3)
    with pytest.raises(ValueError, match=r"f\(\): 'img' is constant \(every voxel = 1.0\)"):
        check_not_constant(x, "img", "f")
    x[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"f\(\): 'img' contains 1 NaN/Inf value\(s\) out of 9"):
        check_finite(x, "img", "f")
    assert check_choice("ncc", "loss", "f", ("ncc", "mse")) == "ncc"
    with pytest.raises(ValueError, match=r"f\(\): 'loss' must be one of \['ncc', 'mse'\], got 'mi'"):
        check_choice("mi", "loss", "f", ("ncc", "mse"))
    assert check_positive(0, "w", "f", allow_zero=True) == 0.0
    for bad in (-1, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match=r"f\(\): 'w' must be a finite number > 0"):
            check_positive(bad, "w", "f")
