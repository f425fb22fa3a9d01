"""ProbabilisticSVFLoss against hand-computed combinations of its component losses."""

from __future__ import annotations

import math

import pytest
import torch

from monai_diffreg.functional import warp
from monai_diffreg.losses.dice import soft_dice_loss
from monai_diffreg.losses.kl import kl_svf_laplacian
from monai_diffreg.losses.mse import mse_loss
from monai_diffreg.losses.ncc import local_ncc_loss
from monai_diffreg.losses import present_label_dice_loss
from monai_diffreg.losses.prob_svf import ProbabilisticSVFLoss
from monai_diffreg.functional.posterior import posterior_smoothing_sigma
from monai_diffreg.functional.posterior import optimal_log_variance, smoothed_posterior_degree


def _outputs(size=(12, 14), velocity_size=(6, 7)):
    d = len(size)
    return {
        "warped": torch.rand(2, 1, *size),
        "warped_fixed": torch.rand(2, 1, *size),
        "ddf": torch.randn(2, d, *size),
        "inverse_ddf": torch.randn(2, d, *size),
        "velocity": torch.randn(2, d, *velocity_size),
        "velocity_mean": torch.randn(2, d, *velocity_size),
        "velocity_log_var": torch.randn(2, d, *velocity_size) - 3,
    }


def _one_hot(labels, n):
    return torch.nn.functional.one_hot(labels, n).movedim(-1, 1).float()


def test_mse_bidirectional_is_eq2_plus_kl():
    out, fixed, moving = _outputs(), torch.rand(2, 1, 12, 14), torch.rand(2, 1, 12, 14)
    terms = ProbabilisticSVFLoss("mse", image_sigma=0.1, prior_lambda=5.0)(out, fixed, moving)
    image = 0.5 * (mse_loss(out["warped"], fixed, 0.1) + mse_loss(out["warped_fixed"], moving, 0.1))
    # eq. 2: 1 / (4 sigma^2) (||x - y o phi||^2 + ||y - x o phi^-1||^2), per voxel
    by_hand = ((out["warped"] - fixed) ** 2 + (out["warped_fixed"] - moving) ** 2).mean() / (4 * 0.1**2)
    kl = kl_svf_laplacian(out["velocity_mean"], out["velocity_log_var"], 5.0)
    torch.testing.assert_close(terms["image"], image)
    torch.testing.assert_close(terms["image"], by_hand)
    torch.testing.assert_close(terms["kl"], kl)
    assert float(terms["dice"]) == 0.0
    torch.testing.assert_close(terms["loss"], image + kl)


def test_unidirectional_ncc_with_weight():
    out, fixed, moving = _outputs((10, 10, 10), (5, 5, 5)), torch.rand(2, 1, 10, 10, 10), torch.rand(2, 1, 10, 10, 10)
    loss = ProbabilisticSVFLoss("ncc", prior_lambda=2.0, bidirectional=False, image_weight=3.0, ncc_window=5)
    terms = loss(out, fixed, moving)
    torch.testing.assert_close(terms["image"], 3.0 * local_ncc_loss(out["warped"], fixed, window=5))
    torch.testing.assert_close(terms["loss"], terms["image"] + kl_svf_laplacian(out["velocity_mean"], out["velocity_log_var"], 2.0))


def test_dice_term_on_warped_labels_both_directions():
    size = (12, 14)
    out, fixed, moving = _outputs(size), torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    fixed_labels = _one_hot(torch.randint(0, 4, (2, *size)), 5)  # label 4 absent everywhere
    moving_labels = _one_hot(torch.randint(0, 4, (2, *size)), 5)
    terms = ProbabilisticSVFLoss("mse", image_sigma=0.05, prior_lambda=1.0, dice_weight=0.7)(
        out, fixed, moving, fixed_labels, moving_labels)
    forward = soft_dice_loss(warp(moving_labels, out["ddf"]), fixed_labels, reduction="none")[:, :4].mean()
    backward = soft_dice_loss(warp(fixed_labels, out["inverse_ddf"]), moving_labels, reduction="none")[:, :4].mean()
    torch.testing.assert_close(terms["dice"], 0.5 * (forward + backward))
    torch.testing.assert_close(terms["loss"], terms["image"] + terms["kl"] + 0.7 * terms["dice"])


def test_present_label_dice_skips_absent_labels():
    target = torch.zeros(1, 3, 4, 4)
    target[:, 0, :2] = 1
    target[:, 1, 2:] = 1
    pred = target.clone()
    pred[:, 1] = 0
    pred[:, 1, 3:] = 1  # half overlap: Dice = 2 * 4 / (4 + 8)
    expected = (0.0 + (1 - 8 / 12)) / 2  # label 2 absent from both: not counted
    assert float(present_label_dice_loss(pred, target)) == pytest.approx(expected, abs=1e-5)
    assert float(present_label_dice_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))) == 0.0


def test_smoothed_kl_uses_the_smoothed_degree():
    out = _outputs()
    lam = 4.0
    kl = ProbabilisticSVFLoss(prior_lambda=lam, posterior="smoothed").kl_term(out["velocity_mean"], out["velocity_log_var"])
    degree = smoothed_posterior_degree(posterior_smoothing_sigma(lam, 2), 2)
    shifted = out["velocity_log_var"] + math.log(degree / 4)
    torch.testing.assert_close(kl, kl_svf_laplacian(out["velocity_mean"], shifted, lam))


@pytest.mark.parametrize("posterior", ["diagonal", "smoothed"])
@pytest.mark.parametrize("lam", [3.0, 10.0])
def test_kl_minimum_is_at_the_optimal_log_variance(posterior, lam):
    """d KL / d log_var = 0 at D^2 = 1 / (lambda c) for interior voxels (exact KL up to a constant)."""
    log_var = torch.full((1, 3, 6, 6, 6), optimal_log_variance(posterior, lam, 3), requires_grad=True)
    ProbabilisticSVFLoss(prior_lambda=lam, posterior=posterior).kl_term(torch.zeros(1, 3, 6, 6, 6), log_var).backward()
    assert log_var.grad[:, :, 1:-1, 1:-1, 1:-1].abs().max() < 1e-6
    assert log_var.grad.abs().max() > 1e-4  # border voxels have fewer neighbours
    if posterior == "smoothed":
        degree = smoothed_posterior_degree(posterior_smoothing_sigma(lam, 3), 3)
        assert optimal_log_variance(posterior, lam, 3) == pytest.approx(-math.log(lam * degree))
    else:
        assert optimal_log_variance(posterior, lam, 3) == pytest.approx(-math.log(6 * lam))


def test_errors():
    out, img = _outputs(), torch.rand(2, 1, 12, 14)
    with pytest.raises(ValueError, match=r"'image_loss' must be one of \['mse', 'ncc'\], got 'l1'"):
        ProbabilisticSVFLoss("l1")
    with pytest.raises(ValueError, match=r"'dice_weight' must be a finite number >= 0"):
        ProbabilisticSVFLoss(dice_weight=-1.0)
    with pytest.raises(ValueError, match=r"dice_weight=1.0 needs 'fixed_labels' and 'moving_labels'"):
        ProbabilisticSVFLoss(dice_weight=1.0)(out, img, img)
    with pytest.raises(ValueError, match=r"'outputs' lacks key\(s\) \['warped_fixed'\]"):
        ProbabilisticSVFLoss()({k: v for k, v in out.items() if k != "warped_fixed"}, img, img)
    labels = torch.rand(2, 3, 12, 14)
    with pytest.raises(ValueError, match=r"'moving_labels' must have 3 channel"):
        ProbabilisticSVFLoss(dice_weight=1.0)(out, img, img, labels, torch.rand(2, 2, 12, 14))
