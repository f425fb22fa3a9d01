"""The image similarity registry: one list of names, evaluated by one function, subsets checked against it."""

from __future__ import annotations

import pytest
import torch
from monai.losses import GlobalMutualInformationLoss

from monai_diffreg.losses import (
    SIMILARITY_METRICS,
    ProbabilisticSVFLoss,
    image_similarity_loss,
    local_ncc_loss,
    mse_loss,
    similarity_subset,
)
from monai_diffreg.losses.prob_svf import IMAGE_LOSSES


def _pair(shape=(2, 1, 10, 12)):
    target = torch.rand(*shape, dtype=torch.float64)
    return 0.6 * target + 0.4 * torch.rand(*shape, dtype=torch.float64), target


def test_registry_names():
    assert SIMILARITY_METRICS == ("ncc", "mse", "mi")
    assert set(IMAGE_LOSSES) <= set(SIMILARITY_METRICS)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_terms_are_the_losses(reduction):
    pred, target = _pair()
    torch.testing.assert_close(image_similarity_loss(pred, target, "ncc", ncc_window=5, reduction=reduction),
                               local_ncc_loss(pred, target, 5, reduction=reduction))
    torch.testing.assert_close(image_similarity_loss(pred, target, "mse", image_sigma=0.3, reduction=reduction),
                               mse_loss(pred, target, 0.3, reduction=reduction))
    per_item = GlobalMutualInformationLoss(num_bins=11, reduction="none")(pred, target)
    expected = {"mean": per_item.mean(), "sum": per_item.sum(), "none": per_item}[reduction]
    torch.testing.assert_close(image_similarity_loss(pred, target, "mi", mi_bins=11, reduction=reduction), expected)


def test_probabilistic_loss_uses_the_registry():
    pred, target = _pair()
    for name in IMAGE_LOSSES:
        loss = ProbabilisticSVFLoss(name, image_sigma=0.1, ncc_window=3)
        assert torch.equal(loss.image_term(pred, target),
                           image_similarity_loss(pred, target, name, image_sigma=0.1, ncc_window=3))


def test_bad_names():
    pred, target = _pair()
    with pytest.raises(ValueError, match=r"image_similarity_loss\(\): 'metric' must be one of \['ncc', 'mse', 'mi'\], got 'nmi'"):
        image_similarity_loss(pred, target, "nmi")
    with pytest.raises(ValueError, match=r"image_similarity_loss\(\): 'pred' and 'target' must have the same shape"):
        image_similarity_loss(pred, target[:1], "mi")
    assert similarity_subset(["mse", "ncc"], "m") == ("mse", "ncc")
    with pytest.raises(ValueError, match=r"my_engine: image similarity names must be a non-empty subset of "
                                         r"\['ncc', 'mse', 'mi'\], got \['ncc', 'lncc'\]"):
        similarity_subset(("ncc", "lncc"), "my_engine")
    with pytest.raises(ValueError, match=r"non-empty subset"):
        similarity_subset((), "my_engine")
    with pytest.raises(ValueError, match=r"ProbabilisticSVFLoss\(\): 'image_loss' must be one of \['mse', 'ncc'\]"):
        ProbabilisticSVFLoss("mi")
