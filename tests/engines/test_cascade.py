"""Cascaded network passes: each pass sees the moving image warped by the earlier ones; fields compose."""

import pytest
import torch

from monai_diffreg.engines.network_inference import NetworkRegistration, cascade_displacements
from monai_diffreg.api import register
from monai_diffreg.methods import load_method
from monai_diffreg.sample import load_sample


class HalfwayNetwork(torch.nn.Module):
    """Predicts half of the translation between the images' intensity centroids (a known, imperfect network)."""

    spatial_dims = 3

    @staticmethod
    def _centroid(image):
        grids = torch.meshgrid(*[torch.arange(n, dtype=image.dtype) for n in image.shape[2:]], indexing="ij")
        return torch.stack([(g * image[0, 0]).sum() / image[0, 0].sum() for g in grids])

    def forward(self, moving, fixed):
        return self.displacements(moving, fixed)

    def displacements(self, moving, fixed, inverse=True):
        shift = 0.5 * (self._centroid(moving) - self._centroid(fixed))  # pull-back: warped(x) = moving(x + u)
        ddf = shift.view(1, 3, 1, 1, 1).expand(1, 3, *moving.shape[2:]).clone()
        return {"ddf": ddf, "inverse_ddf": -ddf} if inverse else {"ddf": ddf}


def blob(center, shape=(32, 32, 32), sigma=3.0):
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    squared = sum((g - c) ** 2 for g, c in zip(grids, center))
    return torch.exp(-squared / (2 * sigma**2))[None, None]


@pytest.mark.parametrize("passes, expected", [(1, 2.0), (2, 3.0), (3, 3.5)])
def test_each_pass_registers_what_the_earlier_ones_left(passes, expected):
    """True shift 4 voxels; each pass recovers half of what is left: 2, 2 + 1, 2 + 1 + 0.5 voxels (to 1e-3:
    the blob's tails cut by the grid move its centroid by ~3e-5 voxels)."""
    fixed, moving = blob((14, 16, 16)), blob((18, 16, 16))
    out = cascade_displacements(HalfwayNetwork(), moving, fixed, passes)
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6), slice(6, -6))  # away from the border padding
    want = torch.tensor([expected, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(out["ddf"][inner], want.expand_as(out["ddf"][inner]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["inverse_ddf"][inner], -want.expand_as(out["ddf"][inner]), atol=1e-3, rtol=0)
    assert set(cascade_displacements(HalfwayNetwork(), moving, fixed, passes, inverse=False)) == {"ddf"}


def test_one_pass_is_the_network_alone():
    network = HalfwayNetwork()
    fixed, moving = blob((14, 16, 16)), blob((17, 15, 16))
    alone, cascaded = network.displacements(moving, fixed), cascade_displacements(network, moving, fixed, 1)
    assert torch.equal(alone["ddf"], cascaded["ddf"]) and torch.equal(alone["inverse_ddf"], cascaded["inverse_ddf"])


def test_cascade_of_a_trained_bundle_through_register_on_the_sample():
    """The shipped vxm_prob on the built-in brain pair through register(cascade=2): the method carries the
    option, a second pass raises the labels' Dice, and the composed field does not fold."""
    sample = load_sample(with_fields=False)
    paths = sample["paths"]
    dice = []
    for passes in (1, 2):
        assert load_method("vxm_prob", device="cpu", cascade=passes).cascade == passes
        result = register(paths["fixed"], paths["moving"], "vxm_prob", fixed_labels=paths["fixed_labels"],
                          moving_labels=paths["moving_labels"], device="cpu", qc=False, cascade=passes)
        assert result.metrics["folding_percent"] == 0.0
        dice.append(result.metrics["dice_after"]["mean"])
    assert dice[1] > dice[0] + 0.005, dice


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_cascade_values(bad):
    with pytest.raises(ValueError, match="'cascade' must be an integer >= 1"):
        NetworkRegistration(HalfwayNetwork(), device="cpu", cascade=bad)


def test_cascade_is_not_combined_with_per_pass_options():
    with pytest.raises(ValueError, match="cannot be combined"):
        load_method("vxm_prob", device="cpu", cascade=2, refine="fast")
    with pytest.raises(ValueError, match="cannot be combined"):
        load_method("vxm_prob", device="cpu", cascade=2, num_samples=4)
