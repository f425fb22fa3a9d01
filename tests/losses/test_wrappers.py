"""Tests for monai_diffreg.losses.wrappers with hand-computable inner losses."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.losses import (
    BidirectionalLoss,
    LocalNCCLoss,
    MDRegNetLoss,
    MSELoss,
    MultiResolutionLoss,
    ProbabilisticSVFLoss,
    combine_directions,
)


def mean_difference(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Signed inner loss: swapping pred and target changes the sign, so argument order is tested."""
    return (pred - target).mean()


def test_bidirectional_argument_order_and_half_factor():
    fixed, moving = torch.full((1, 1, 4, 4), 1.0), torch.full((1, 1, 4, 4), 10.0)
    moving_warped, fixed_warped = torch.full((1, 1, 4, 4), 3.0), torch.full((1, 1, 4, 4), 7.0)
    loss = BidirectionalLoss(mean_difference)
    # 0.5 * ((moving_warped - fixed) + (fixed_warped - moving)) = 0.5 * (2 + (-3))
    assert float(loss(fixed, moving, moving_warped, fixed_warped)) == pytest.approx(-0.5)


def test_bidirectional_mse_is_paper_eq2_per_voxel():
    fixed, moving, moving_warped, fixed_warped = (torch.rand(2, 1, 5, 6, 4) for _ in range(4))
    sigma = 0.1
    expected = (
        ((fixed - moving_warped) ** 2).mean() + ((moving - fixed_warped) ** 2).mean()
    ) / (4 * sigma**2)
    got = BidirectionalLoss(MSELoss(image_sigma=sigma))(fixed, moving, moving_warped, fixed_warped)
    torch.testing.assert_close(got, expected)


def test_multiresolution_weighted_sum_hand_computed():
    preds = [torch.full((1, 1, 8, 8), 2.0), torch.full((1, 1, 4, 4), 5.0), torch.full((1, 1, 2, 2), 1.0)]
    targets = [torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)]
    # per-level losses 2, 4, 1
    assert float(MultiResolutionLoss(mean_difference)(preds, targets)) == pytest.approx(7.0)
    weighted = MultiResolutionLoss(mean_difference, weights=[0.5, 0.25, 2.0])
    assert float(weighted(preds, targets)) == pytest.approx(1.0 + 1.0 + 2.0)
    assert "weights=[0.5, 0.25, 2.0]" in repr(weighted)


def test_multiresolution_around_bidirectional_ncc_gradients_reach_every_level():
    levels = [(1, 1, 16, 16), (1, 1, 8, 8)]
    fixeds = [torch.rand(s) for s in levels]
    movings = [torch.rand(s) for s in levels]
    moving_warpeds = [torch.rand(s, requires_grad=True) for s in levels]
    fixed_warpeds = [torch.rand(s, requires_grad=True) for s in levels]
    ncc = LocalNCCLoss(window=3)
    loss = MultiResolutionLoss(BidirectionalLoss(ncc), weights=[1.0, 0.5])
    value = loss(fixeds, movings, moving_warpeds, fixed_warpeds)
    expected = sum(
        w * 0.5 * (ncc(mw, f) + ncc(fw, m))
        for w, f, m, mw, fw in zip([1.0, 0.5], fixeds, movings, moving_warpeds, fixed_warpeds)
    )
    torch.testing.assert_close(value, expected)
    value.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in moving_warpeds + fixed_warpeds)
    assert isinstance(loss.loss.loss, LocalNCCLoss)  # inner modules are registered submodules


def test_bad_inputs_raise_clear_errors():
    x = [torch.zeros(1, 1, 4, 4)]
    with pytest.raises(TypeError, match=r"BidirectionalLoss\(\): 'loss' must be a callable"):
        BidirectionalLoss("ncc")
    with pytest.raises(TypeError, match=r"MultiResolutionLoss\(\): 'loss' must be a callable"):
        MultiResolutionLoss(None)
    with pytest.raises(ValueError, match=r"'weights' must be a non-empty sequence"):
        MultiResolutionLoss(mean_difference, weights=[])
    with pytest.raises(ValueError, match=r"'weights' must be a finite number >= 0, got -1"):
        MultiResolutionLoss(mean_difference, weights=[1.0, -1])
    loss = MultiResolutionLoss(mean_difference)
    with pytest.raises(ValueError, match=r"same number \(>= 1\) of levels, got lengths \[1, 2\]"):
        loss(x, x * 2)
    with pytest.raises(ValueError, match=r"argument 1 must be a sequence"):
        loss(x, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"got 1 levels but 2 'weights'"):
        MultiResolutionLoss(mean_difference, weights=[1.0, 1.0])(x, x)
    with pytest.raises(ValueError, match=r"expected one sequence per argument"):
        loss()


def test_bidirectional_sum_and_the_one_convention():
    """reduction="sum" adds the directions (MDReg-Net's eq. 4); combine_directions is the one statement of both."""
    fixed, moving = torch.full((1, 1, 4, 4), 1.0), torch.full((1, 1, 4, 4), 10.0)
    moving_warped, fixed_warped = torch.full((1, 1, 4, 4), 3.0), torch.full((1, 1, 4, 4), 7.0)
    summed = BidirectionalLoss(mean_difference, reduction="sum")
    assert float(summed(fixed, moving, moving_warped, fixed_warped)) == pytest.approx(-1.0)  # 2 + (-3)
    assert "reduction='sum'" in repr(summed) and "reduction='mean'" in repr(BidirectionalLoss(mean_difference))
    f, b = torch.tensor(2.0), torch.tensor(-3.0)
    assert float(combine_directions(f, b)) == -0.5 and float(combine_directions(f, b, "sum")) == -1.0
    # each composite loss states its convention once; refinement takes the same one
    assert (MDRegNetLoss.bidirectional_reduction, ProbabilisticSVFLoss.bidirectional_reduction) == ("sum", "mean")
    with pytest.raises(ValueError, match=r"BidirectionalLoss\(\): 'reduction' must be one of \['mean', 'sum'\]"):
        BidirectionalLoss(mean_difference, reduction="none")
    with pytest.raises(ValueError, match=r"combine_directions\(\): 'reduction' must be one of"):
        combine_directions(f, b, "max")
