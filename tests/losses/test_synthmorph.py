"""SynthMorph loss: Dice of warped labels (hand-computed), the gradient penalty, gradients, HyperMorph's Dice unchanged, errors."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.functional.warp import warp
from monai_diffreg.losses import SynthMorphLoss, warped_label_dice_loss
from monai_diffreg.losses.dice import present_label_dice_loss
from monai_diffreg.losses.hypermorph import HyperMorphLoss
from monai_diffreg.losses.regularization import gradient_loss

EPS = 1e-5  # soft_dice_loss's smoothing


def _one_hot(index, labels):
    return torch.zeros(index.shape[0], labels, *index.shape[2:]).scatter_(1, index, 1.0)


def _random_labels(batch=2, labels=3, shape=(12, 10), seed=0):
    g = torch.Generator().manual_seed(seed)
    return _one_hot(torch.randint(0, labels, (batch, 1, *shape), generator=g), labels)


def _squares(size=12):
    """A background + square label map: the moving square (rows 3-7, cols 5-9) is the fixed one (cols 3-7)
    moved by +2 columns, so ``moving(x + (0, 2)) == fixed(x)``; a third label absent from both maps."""
    moving, fixed = torch.zeros(1, 1, size, size, dtype=torch.long), torch.zeros(1, 1, size, size, dtype=torch.long)
    moving[..., 3:8, 5:10] = 1
    fixed[..., 3:8, 3:8] = 1
    return _one_hot(moving, 3), _one_hot(fixed, 3)


def _constant_ddf(*vectors, shape=(12, 12)):
    return torch.tensor(vectors, dtype=torch.float32).view(len(vectors), len(shape), *(1,) * len(shape)).expand(
        -1, -1, *shape).contiguous()


def test_perfect_alignment_is_zero():
    labels = _random_labels()
    outputs = {"ddf": torch.zeros(2, 2, 12, 10), "velocity": torch.full((2, 2, 6, 5), 0.7)}  # a constant field: no penalty
    terms = SynthMorphLoss()(outputs, None, None, labels, labels.clone())
    assert set(terms) == {"loss", "similarity", "regularization"}
    for value in terms.values():
        torch.testing.assert_close(value, torch.tensor(0.0), atol=1e-6, rtol=0)


def test_dice_of_a_known_shift_by_hand():
    """Item 0 is warped one column short of the shift (overlap 5 x 4 = 20 of 25 square voxels), item 1 exactly."""
    moving, fixed = _squares()
    moving, fixed = moving.expand(2, -1, -1, -1), fixed.expand(2, -1, -1, -1)
    ddf = _constant_ddf((0.0, 1.0), (0.0, 2.0))
    square = (2 * 20 + EPS) / (25 + 25 + EPS)
    background = (2 * (144 - 30) + EPS) / (119 + 119 + EPS)  # union of the squares: 25 + 25 - 20
    expected_0 = 1 - (square + background) / 2  # label 2 is absent from both maps: not averaged
    terms = SynthMorphLoss(regularization_weight=0.0, reg_field="ddf")({"ddf": ddf}, None, None, fixed, moving)
    torch.testing.assert_close(terms["similarity"], torch.tensor(expected_0 / 2))
    torch.testing.assert_close(terms["loss"], terms["similarity"])
    per_item = warped_label_dice_loss(moving, fixed, ddf, reduction="none")
    torch.testing.assert_close(per_item, torch.tensor([expected_0, 0.0]), atol=1e-6, rtol=1e-6)
    # the same as present_label_dice_loss on the maps moved by whole voxels
    torch.testing.assert_close(per_item[0], present_label_dice_loss(moving[:1].roll(-1, dims=3), fixed[:1]))
    torch.testing.assert_close(warped_label_dice_loss(moving, fixed, ddf), present_label_dice_loss(warp(moving, ddf), fixed))


@pytest.mark.parametrize("reg_field, penalty", [("velocity", "l2"), ("ddf", "l1")])
def test_regularization_is_the_weighted_gradient_loss(reg_field, penalty):
    g = torch.Generator().manual_seed(1)
    labels = _random_labels(shape=(12, 10, 8))
    outputs = {"ddf": torch.randn(2, 3, 12, 10, 8, generator=g), "velocity": torch.randn(2, 3, 6, 5, 4, generator=g)}
    terms = SynthMorphLoss(0.3, reg_field, penalty)(outputs, None, None, labels, labels.roll(1, dims=2))
    reg = gradient_loss(outputs[reg_field], penalty=penalty)
    assert reg > 0.1
    torch.testing.assert_close(terms["regularization"], reg)
    torch.testing.assert_close(terms["loss"] - terms["similarity"], 0.3 * reg)
    dice_only = SynthMorphLoss(0.0, reg_field, penalty)(outputs, None, None, labels, labels.roll(1, dims=2))
    torch.testing.assert_close(dice_only["loss"], dice_only["similarity"])
    torch.testing.assert_close(dice_only["similarity"], terms["similarity"])
    assert dice_only["similarity"] > 0.1


def test_gradcheck_wrt_ddf_float64():
    g = torch.Generator().manual_seed(2)
    moving = _random_labels(batch=1, labels=2, shape=(5, 6), seed=3).double()
    fixed = moving.roll(1, dims=2)
    ddf = (0.2 + 0.6 * torch.rand(1, 2, 5, 6, generator=g, dtype=torch.float64)).requires_grad_()  # off the voxel grid
    loss = SynthMorphLoss(0.5, reg_field="ddf")

    def total(field):
        return loss({"ddf": field}, None, None, fixed, moving)["loss"]

    assert torch.autograd.gradcheck(total, (ddf,))
    assert torch.autograd.gradcheck(lambda field: warped_label_dice_loss(moving, fixed, field), (ddf,))
    (grad,) = torch.autograd.grad(warped_label_dice_loss(moving, fixed, ddf), ddf)
    assert grad.abs().max() > 1e-3


def test_trains_the_field_towards_the_shift():
    """Gradient descent on the Dice term alone moves a constant field from 1 to the true 2-column shift."""
    moving, fixed = _squares()
    shift = torch.tensor([0.0, 1.0], requires_grad=True)
    optimizer = torch.optim.Adam([shift], lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        ddf = shift.view(1, 2, 1, 1).expand(1, 2, 12, 12)
        SynthMorphLoss(reg_field="ddf")({"ddf": ddf}, None, None, fixed, moving)["loss"].backward()
        optimizer.step()
    torch.testing.assert_close(shift.detach(), torch.tensor([0.0, 2.0]), atol=0.1, rtol=0)


def test_hypermorph_dice_is_unchanged():
    """HyperMorphLoss("dice") goes through warped_label_dice_loss with the same values as before (bit for bit)."""
    g = torch.Generator().manual_seed(4)
    moving, fixed = _random_labels(seed=5), _random_labels(seed=6)
    for dtype in (torch.float32, torch.float64):  # float64 fields warp the labels cast to float64
        outputs = {"ddf": torch.randn(2, 2, 12, 10, generator=g).to(dtype), "velocity": torch.randn(2, 2, 6, 5, generator=g),
                   "reg_weight": torch.tensor([[0.2], [0.7]])}
        terms = HyperMorphLoss("dice")(outputs, None, None, fixed, moving)
        sim = present_label_dice_loss(warp(moving.to(dtype), outputs["ddf"]), fixed, reduction="none")
        reg = gradient_loss(outputs["velocity"], reduction="none")
        lam = outputs["reg_weight"][:, 0].to(sim.dtype)
        assert terms["similarity"].dtype == dtype and torch.equal(terms["similarity"], sim.mean())
        assert torch.equal(terms["loss"], ((1 - lam) * sim + lam * reg).mean())
    with pytest.raises(ValueError, match=r"^HyperMorphLoss\(\): image_loss='dice' needs 'fixed_labels' and "
                                         r"'moving_labels', got None$"):
        HyperMorphLoss("dice")(outputs, None, None, fixed, None)


def test_missing_labels_and_outputs():
    labels = _random_labels()
    outputs = {"ddf": torch.zeros(2, 2, 12, 10), "velocity": torch.zeros(2, 2, 6, 5)}
    for fixed_labels, moving_labels in ((None, labels), (labels, None), (None, None)):
        with pytest.raises(ValueError, match=r"^SynthMorphLoss\(\): needs 'fixed_labels' and 'moving_labels' "
                                             r"\(label maps\), got None$"):
            SynthMorphLoss()(outputs, None, None, fixed_labels, moving_labels)
    with pytest.raises(ValueError, match=r"^SynthMorphLoss\(\): 'outputs' lacks key\(s\) \['velocity'\]"):
        SynthMorphLoss()({"ddf": outputs["ddf"]}, None, None, labels, labels)
    with pytest.raises(ValueError, match=r"^SynthMorphLoss\(\): 'outputs' lacks key\(s\) \['ddf', 'velocity'\]"):
        SynthMorphLoss()({"warped": labels}, None, None, labels, labels)
    with pytest.raises(ValueError, match=r"^SynthMorphLoss\(\): 'outputs' lacks key\(s\) \['ddf'\]"):
        SynthMorphLoss(reg_field="ddf")({"velocity": outputs["velocity"]}, None, None, labels, labels)


@pytest.mark.parametrize("kwargs, match", [
    ({"regularization_weight": -0.1}, r"^SynthMorphLoss\(\): 'regularization_weight' must be a finite number >= 0"),
    ({"regularization_weight": float("nan")}, r"^SynthMorphLoss\(\): 'regularization_weight' must be a finite number"),
    ({"regularization_weight": True}, r"^SynthMorphLoss\(\): 'regularization_weight' must be a finite number"),
    ({"reg_field": "warped"}, r"^SynthMorphLoss\(\): 'reg_field' must be one of"),
    ({"penalty": "l3"}, r"^SynthMorphLoss\(\): 'penalty' must be one of"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthMorphLoss(**kwargs)


def test_bad_label_and_field_shapes():
    labels = _random_labels()
    outputs = {"ddf": torch.zeros(2, 2, 12, 10), "velocity": torch.zeros(2, 2, 6, 5)}
    with pytest.raises(ValueError, match=r"^warped_label_dice_loss\(\): 'moving_labels' must have 3 channel\(s\)"):
        SynthMorphLoss()(outputs, None, None, labels, labels[:, :2])
    with pytest.raises(ValueError, match=r"^warped_label_dice_loss\(\): 'fixed_labels' must be 4D"):
        SynthMorphLoss()(outputs, None, None, labels[:, 0], labels)
    with pytest.raises(ValueError, match=r"^warped_label_dice_loss\(\): 'ddf' must have shape \(2, 2, 12, 10\)"):
        SynthMorphLoss()({**outputs, "ddf": torch.zeros(2, 2, 12, 9)}, None, None, labels, labels)
    with pytest.raises(ValueError, match=r"^present_label_dice_loss\(\): 'reduction'"):
        warped_label_dice_loss(labels, labels, outputs["ddf"], reduction="sum")
