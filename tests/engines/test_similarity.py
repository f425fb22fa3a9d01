"""Tests for the engines' image dissimilarity terms and their masks."""

from __future__ import annotations

import pytest
import torch
from monai.losses import GlobalMutualInformationLoss

from monai_diffreg.engines import SIMILARITY_METRICS, SVF_IMAGE_LOSSES
from monai_diffreg.engines.similarity import image_dissimilarity
from monai_diffreg.losses import local_ncc_loss


def _images(shape=(2, 1, 12, 14)):
    fixed = torch.rand(*shape, dtype=torch.float64)
    warped = 0.7 * fixed + 0.3 * torch.rand(*shape, dtype=torch.float64)
    return warped, fixed


def test_unmasked_terms_match_their_definitions():
    warped, fixed = _images()
    assert torch.allclose(image_dissimilarity(warped, fixed, "mse", image_sigma=0.5),
                          ((warped - fixed) ** 2).mean() / (2 * 0.25))
    assert torch.allclose(image_dissimilarity(warped, fixed, "ncc", ncc_window=5), local_ncc_loss(warped, fixed, 5))
    assert torch.allclose(image_dissimilarity(warped, fixed, "mi"), GlobalMutualInformationLoss()(warped, fixed))


@pytest.mark.parametrize("metric", ["ncc", "mse", "mi"])
def test_mask_of_ones_changes_nothing(metric):
    warped, fixed = _images()
    ones = torch.ones(1, 1, 12, 14, dtype=torch.float64)
    assert torch.allclose(image_dissimilarity(warped, fixed, metric, mask=ones), image_dissimilarity(warped, fixed, metric))


def test_mask_weights_per_sample_mean():
    warped, fixed = _images()
    mask = torch.zeros(2, 1, 12, 14, dtype=torch.float64)
    mask[0, :, :6] = 1.0
    mask[1, :, :, :3] = 0.5
    squared = (warped - fixed) ** 2 / 2
    expected = (squared[0, :, :6].mean() + squared[1, :, :, :3].mean()) / 2  # weights 0.5 cancel in the ratio
    assert torch.allclose(image_dissimilarity(warped, fixed, "mse", mask=mask), expected)
    ncc_map = local_ncc_loss(warped, fixed, 9, reduction="none")
    expected = (ncc_map[0, :, :6].mean() + ncc_map[1, :, :, :3].mean()) / 2
    assert torch.allclose(image_dissimilarity(warped, fixed, "ncc", mask=mask), expected)


def test_mask_for_mutual_information_selects_voxels():
    warped, fixed = _images((1, 1, 10, 10))
    mask = torch.zeros(1, 1, 10, 10, dtype=torch.float64)
    mask[..., 2:7, 1:9] = 0.8  # >= 0.5: kept
    mask[..., 0, 0] = 0.2  # < 0.5: dropped
    expected = GlobalMutualInformationLoss()(warped[..., 2:7, 1:9].reshape(1, -1), fixed[..., 2:7, 1:9].reshape(1, -1))
    assert torch.allclose(image_dissimilarity(warped, fixed, "mi", mask=mask), expected)


def test_engines_offer_the_registry_names():
    """The engines' names are the losses' registry (one list), the SVF engine a subset of it."""
    from monai_diffreg import losses

    assert SIMILARITY_METRICS is losses.SIMILARITY_METRICS == ("ncc", "mse", "mi")
    assert set(SVF_IMAGE_LOSSES) <= set(SIMILARITY_METRICS)
