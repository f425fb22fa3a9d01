"""Tests for monai_diffreg.losses.dice: hand-computed one-hot maps and a MONAI DiceLoss cross-check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from monai_diffreg.losses import SoftDiceLoss, soft_dice_loss


def one_hot(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(B, *spatial) integer labels -> (B, L, *spatial) float one-hot."""
    return F.one_hot(labels, num_labels).movedim(-1, 1).float()


# target labels [[0, 1], [2, 1]], prediction [[0, 1], [1, 1]]:
# label 0: Dice 2*1/(1+1) = 1; label 1: 2*2/(2+3) = 0.8; label 2: 0/(1+0) = 0
TARGET = one_hot(torch.tensor([[[0, 1], [2, 1]]]), 3)
PRED = one_hot(torch.tensor([[[0, 1], [1, 1]]]), 3)


def test_hand_computed_one_hot_2d():
    eps = 1e-12
    assert float(soft_dice_loss(PRED, TARGET, eps=eps)) == pytest.approx(1 - (1 + 0.8 + 0) / 3)
    assert float(soft_dice_loss(PRED, TARGET, eps=eps, include_background=False)) == pytest.approx(1 - 0.4)
    torch.testing.assert_close(soft_dice_loss(PRED, TARGET, eps=eps, reduction="none"), torch.tensor([[0.0, 0.2, 1.0]]))
    assert float(soft_dice_loss(PRED, TARGET, eps=eps, reduction="sum")) == pytest.approx(1.2)


def test_hand_computed_soft_3d():
    target = torch.zeros(1, 2, 1, 1, 2)
    target[0, 0, 0, 0, 0] = target[0, 1, 0, 0, 1] = 1.0
    pred = torch.tensor([[0.75, 0.5], [0.25, 0.5]]).view(1, 2, 1, 1, 2)
    # label 0: 2*0.75 / (1.25 + 1) = 2/3; label 1: 2*0.5 / (0.75 + 1) = 4/7
    expected = torch.tensor([[1 - 2 / 3, 1 - 4 / 7]])
    torch.testing.assert_close(soft_dice_loss(pred, target, eps=1e-12, reduction="none"), expected)


def test_perfect_overlap_and_absent_labels_give_zero():
    labels = torch.randint(0, 3, (2, 6, 6, 6))
    maps = one_hot(labels, 5)  # labels 3 and 4 are absent from both maps
    assert float(soft_dice_loss(maps, maps)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("shape", [(2, 4, 9, 8), (2, 3, 5, 6, 4)])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_agrees_with_monai_dice_loss(shape, include_background, reduction):
    pred = torch.softmax(torch.randn(shape), dim=1)
    target = one_hot(torch.randint(0, shape[1], (shape[0], *shape[2:])), shape[1])
    monai_loss = DiceLoss(include_background=include_background, smooth_nr=1e-5, smooth_dr=1e-5, reduction=reduction)
    expected = monai_loss(pred, target)
    got = soft_dice_loss(pred, target, eps=1e-5, reduction=reduction, include_background=include_background)
    torch.testing.assert_close(got, expected.reshape(got.shape))


def test_gradcheck_float64():
    pred = torch.rand(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 3, 3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: soft_dice_loss(p, target, include_background=False), (pred,))


def test_module_matches_function():
    loss = SoftDiceLoss(include_background=False, reduction="none")
    expected = soft_dice_loss(PRED, TARGET, include_background=False, reduction="none")
    torch.testing.assert_close(loss(PRED, TARGET), expected)
    assert "include_background=False" in repr(loss)
    assert soft_dice_loss(PRED.half(), TARGET.long()).dtype == torch.float32


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"soft_dice_loss\(\): 'pred' and 'target' must have the same shape"):
        soft_dice_loss(PRED, TARGET[:, :2])
    with pytest.raises(ValueError, match=r"soft_dice_loss\(\): 'pred' must be 4D"):
        soft_dice_loss(PRED[0], TARGET[0])
    with pytest.raises(ValueError, match=r"include_background=False needs >= 2 label channels"):
        soft_dice_loss(PRED[:, :1], TARGET[:, :1], include_background=False)
    with pytest.raises(ValueError, match=r"'include_background' must be True or False, got 0"):
        soft_dice_loss(PRED, TARGET, include_background=0)
    with pytest.raises(ValueError, match=r"'eps' must be a finite number > 0"):
        soft_dice_loss(PRED, TARGET, eps=float("nan"))
    with pytest.raises(ValueError, match=r"SoftDiceLoss\(\): 'reduction'"):
        SoftDiceLoss(reduction="macro")


def test_present_label_dice_per_sample_ignores_labels_absent_from_both_maps():
    """reduction="none": each sample's mean over its own present labels; "mean" over all present pairs."""
    from monai_diffreg.losses import present_label_dice_loss

    pred = torch.zeros(2, 3, 4, 4)
    target = torch.zeros(2, 3, 4, 4)
    pred[0, 0], target[0, 0] = 1.0, 1.0  # sample 0: label 0 only, perfect
    pred[1, 0, :2], target[1, 0, :2] = 1.0, 1.0  # sample 1: label 0 perfect, label 1 predicted, absent in the target
    pred[1, 1, 2:] = 1.0
    target[1, 2, 2:] = 1.0  # ... and label 2 missed
    per_sample = present_label_dice_loss(pred, target, reduction="none")
    torch.testing.assert_close(per_sample[0], torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(per_sample[1], torch.tensor(2.0 / 3.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(present_label_dice_loss(pred, target), torch.tensor(2.0 / 4.0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="'reduction' must be one of"):
        present_label_dice_loss(pred, target, reduction="sum")
