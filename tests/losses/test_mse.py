"""Tests for monai_diffreg.losses.mse: hand-computed values, sigma scaling, torch cross-check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_diffreg.losses import MSELoss, mse_loss


def test_hand_computed_2d():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [4.0, 2.0]]]])
    # squared differences 0, 4, 1, 4 -> mean 9/4; sigma 0.5 -> factor 1 / (2 * 0.25) = 2
    assert float(mse_loss(pred, target, image_sigma=0.5)) == pytest.approx(4.5)
    assert float(mse_loss(pred, target, image_sigma=0.5, reduction="sum")) == pytest.approx(18.0)
    torch.testing.assert_close(
        mse_loss(pred, target, image_sigma=0.5, reduction="none"), torch.tensor([[[[0.0, 8.0], [2.0, 8.0]]]])
    )


def test_is_half_the_torch_mse_over_sigma_squared_3d():
    pred, target = torch.rand(2, 1, 6, 7, 5), torch.rand(2, 1, 6, 7, 5)
    sigma = 0.02
    expected = F.mse_loss(pred, target) / (2 * sigma**2)
    torch.testing.assert_close(mse_loss(pred, target, image_sigma=sigma), expected)
    # the reference TensorFlow code's 1/sigma^2 is recovered with sigma / sqrt(2)
    torch.testing.assert_close(mse_loss(pred, target, image_sigma=sigma / 2**0.5), F.mse_loss(pred, target) / sigma**2)


def test_identical_images_give_zero_and_gradcheck():
    x = torch.rand(1, 2, 5, 5)
    assert float(mse_loss(x, x)) == 0.0
    pred = torch.rand(1, 1, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 1, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, t: mse_loss(p, t, image_sigma=0.3), (pred, target))


def test_module_matches_function():
    pred, target = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    loss = MSELoss(image_sigma=0.1, reduction="none")
    torch.testing.assert_close(loss(pred, target), mse_loss(pred, target, 0.1, "none"))
    assert "image_sigma=0.1" in repr(loss)
    assert mse_loss(pred.half(), target.half()).dtype == torch.float32


def test_bad_inputs_raise_clear_errors():
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"mse_loss\(\): 'pred' must be 4D"):
        mse_loss(torch.rand(4, 4), torch.rand(4, 4))
    with pytest.raises(ValueError, match=r"mse_loss\(\): 'pred' and 'target' must have the same shape"):
        mse_loss(x, torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"'image_sigma' must be a finite number > 0, got -1.0"):
        mse_loss(x, x, image_sigma=-1.0)
    with pytest.raises(ValueError, match=r"MSELoss\(\): 'image_sigma'"):
        MSELoss(image_sigma=0)
    with pytest.raises(ValueError, match=r"MSELoss\(\): 'reduction'"):
        MSELoss(reduction="batch")
