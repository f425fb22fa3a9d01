"""HyperMorph loss: interpolation between the terms, per-item weighting, sampler, training step, bad inputs."""

from __future__ import annotations

import functools

import pytest
import torch

from monai_diffreg.functional.warp import warp
from monai_diffreg.engines.training import hypermorph_step
from monai_diffreg.losses.dice import present_label_dice_loss, soft_dice_loss
from monai_diffreg.losses.hypermorph import HyperMorphLoss, sample_reg_weight
from monai_diffreg.losses.regularization import gradient_loss
from monai_diffreg.losses.similarity import image_similarity_loss
from monai_diffreg.networks.hypermorph import HyperMorph


def _outputs(batch=3, shape=(12, 10), lams=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = len(shape)
    lams = torch.linspace(0, 1, batch) if lams is None else torch.as_tensor(lams, dtype=torch.float32)
    return {
        "warped": torch.rand((batch, 1, *shape), generator=g),
        "ddf": torch.randn((batch, dims, *shape), generator=g),
        "velocity": torch.randn((batch, dims, *(s // 2 for s in shape)), generator=g),
        "reg_weight": lams.reshape(-1, 1),
    }, torch.rand((batch, 1, *shape), generator=g)


@pytest.mark.parametrize("image_loss", ["ncc", "mse"])
@pytest.mark.parametrize("reg_field", ["velocity", "ddf"])
def test_endpoints_are_pure_terms(image_loss, reg_field):
    loss = HyperMorphLoss(image_loss, reg_field=reg_field, ncc_window=5, image_sigma=0.5)
    out, fixed = _outputs(batch=2, lams=[0.0, 0.0])
    sim = image_similarity_loss(out["warped"], fixed, image_loss, ncc_window=5, image_sigma=0.5)
    reg = gradient_loss(out[reg_field])
    terms = loss(out, fixed, fixed)
    torch.testing.assert_close(terms["loss"], sim)
    torch.testing.assert_close(terms["similarity"], sim)
    torch.testing.assert_close(terms["regularization"], reg)
    out["reg_weight"] = torch.ones(2, 1)
    torch.testing.assert_close(loss(out, fixed, fixed)["loss"], reg)


def test_per_item_weighting_3d():
    out, fixed = _outputs(batch=3, shape=(8, 6, 6), lams=[0.0, 0.25, 0.9])
    terms = HyperMorphLoss("mse")(out, fixed, fixed)
    sim = ((out["warped"] - fixed) ** 2 / 2).flatten(1).mean(1)
    reg = gradient_loss(out["velocity"], reduction="none")
    lam = torch.tensor([0.0, 0.25, 0.9])
    torch.testing.assert_close(terms["loss"], ((1 - lam) * sim + lam * reg).mean())


def test_dice_on_warped_labels():
    out, fixed = _outputs(batch=2, lams=[0.0, 0.5])
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 3, (2, 1, 12, 10), generator=g)
    moving_labels = torch.zeros(2, 3, 12, 10).scatter_(1, idx, 1.0)
    fixed_labels = torch.roll(moving_labels, 1, dims=2)
    terms = HyperMorphLoss("dice")(out, fixed, fixed, fixed_labels, moving_labels)
    sim = present_label_dice_loss(warp(moving_labels, out["ddf"]), fixed_labels, reduction="none")
    # per item: the mean over the labels present in either map (all three here)
    torch.testing.assert_close(sim, soft_dice_loss(warp(moving_labels, out["ddf"]), fixed_labels, reduction="none").mean(1))
    reg = gradient_loss(out["velocity"], reduction="none")
    torch.testing.assert_close(terms["loss"], (sim[0] + 0.5 * sim[1] + 0.5 * reg[1]) / 2)
    with pytest.raises(ValueError, match="labels"):
        HyperMorphLoss("dice")(out, fixed, fixed)


def test_sample_reg_weight():
    a = sample_reg_weight(1000, torch.Generator().manual_seed(0))
    b = sample_reg_weight(1000, torch.Generator().manual_seed(0))
    assert a.shape == (1000, 1) and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert abs(a.mean().item() - 0.5) < 0.05
    small = sample_reg_weight(4000, torch.Generator().manual_seed(1), "small", concentration=3.0)
    assert small.min() >= 0 and small.max() <= 1 and abs(small.mean().item() - 0.25) < 0.02
    assert abs(small.median().item() - (1 - 0.5 ** (1 / 3))) < 0.03
    one = sample_reg_weight(10, torch.Generator().manual_seed(2), "small", concentration=1.0)
    torch.testing.assert_close(one, sample_reg_weight(10, torch.Generator().manual_seed(2)))


def test_step_uses_batch_weight_or_generator():
    torch.manual_seed(0)
    net = HyperMorph(2, enc_channels=(4, 4), dec_channels=(4, 4))
    g = torch.Generator().manual_seed(0)
    batch = {"moving": torch.rand(2, 1, 8, 8, generator=g), "fixed": torch.rand(2, 1, 8, 8, generator=g)}
    seen = []

    def spy(outputs, *args):
        seen.append(outputs["reg_weight"].detach().clone())
        return HyperMorphLoss("mse")(outputs, *args)

    hypermorph_step(net, spy, {**batch, "reg_weight": torch.tensor([0.3, 0.6])})
    torch.testing.assert_close(seen[-1], torch.tensor([[0.3], [0.6]]))
    step = functools.partial(hypermorph_step, generator=torch.Generator().manual_seed(5))
    terms = step(net, spy, batch)
    torch.testing.assert_close(seen[-1], sample_reg_weight(2, torch.Generator().manual_seed(5)))
    assert set(terms) == {"loss", "similarity", "regularization"} and terms["loss"].requires_grad


def test_training_over_random_lambdas_trades_accuracy_for_smoothness():
    """A tiny model trained with lambda ~ U[0, 1] gives smoother, less exact fields at high lambda."""
    torch.manual_seed(0)
    s = 16
    yy, xx = torch.meshgrid(torch.arange(float(s)), torch.arange(float(s)), indexing="ij")

    def blob(c, width):
        return torch.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / width).view(1, 1, s, s)

    fixed, moving = blob((8, 8), 12.0), blob((7, 9), 3.0)  # shift + growth: needs a non-uniform field
    net = HyperMorph(2, enc_channels=(8, 8), dec_channels=(8, 8, 8))
    loss = HyperMorphLoss("mse", image_sigma=0.1)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    step = functools.partial(hypermorph_step, generator=torch.Generator().manual_seed(0))
    batch = {"moving": moving.expand(4, -1, -1, -1), "fixed": fixed.expand(4, -1, -1, -1)}
    for _ in range(300):
        optimizer.zero_grad()
        step(net, loss, batch)["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        low, high = net(moving, fixed, 0.1), net(moving, fixed, 0.9)
    energy_low, energy_high = gradient_loss(low["ddf"]), gradient_loss(high["ddf"])
    error_low, error_high = ((low["warped"] - fixed) ** 2).mean(), ((high["warped"] - fixed) ** 2).mean()
    assert energy_high < 0.7 * energy_low, (energy_high, energy_low)
    assert error_low < error_high and error_low < 0.2 * ((moving - fixed) ** 2).mean()


def test_bad_inputs():
    with pytest.raises(ValueError, match="image_loss"):
        HyperMorphLoss("mi")
    with pytest.raises(ValueError, match="reg_field"):
        HyperMorphLoss(reg_field="momentum")
    with pytest.raises(ValueError, match="penalty"):
        HyperMorphLoss(penalty="l3")
    out, fixed = _outputs()
    del out["reg_weight"]
    with pytest.raises(ValueError, match="reg_weight"):
        HyperMorphLoss()(out, fixed, fixed)
    out, fixed = _outputs()
    out["reg_weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="reg_weight"):
        HyperMorphLoss()(out, fixed, fixed)
    with pytest.raises(ValueError, match="distribution"):
        sample_reg_weight(2, distribution="beta")
    with pytest.raises(ValueError, match="concentration"):
        sample_reg_weight(2, distribution="small", concentration=0.5)
    with pytest.raises(ValueError, match="batch"):
        sample_reg_weight(0)
