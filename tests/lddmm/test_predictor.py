"""The alpha predictor (Wang & Zhang's two-stream CNN): shapes, its start, separate streams, that it learns."""

from __future__ import annotations

import math

import pytest
import torch

from monai_diffreg.lddmm import (RegularizationPredictor, balanced_difference_gain, log_alpha_loss, predicted_alpha,
                                 recalibrate_batch_norm)


@pytest.mark.parametrize("fusion", ["late", "early"])
@pytest.mark.parametrize("spatial_dims, shape", [(2, (20, 24)), (3, (16, 16, 18))])
def test_starts_at_the_given_constant_for_any_pair(spatial_dims, shape, fusion):
    net = RegularizationPredictor(spatial_dims, initial_log_alpha=math.log(3.0), fusion=fusion).eval()
    pairs = torch.rand(2, 3, 1, *shape, generator=torch.Generator().manual_seed(0))
    out = net(pairs[0], pairs[1])
    assert out.shape == (3, 1)
    torch.testing.assert_close(predicted_alpha(out), torch.full((3, 1), 3.0))


def test_the_two_streams_are_separate():
    """Source and target have their own weights: swapping them changes the prediction."""
    torch.manual_seed(0)
    net = RegularizationPredictor(2, stream_channels=(4, 4, 4, 4), fusion_channels=(4,)).eval()
    torch.nn.init.normal_(net.head.weight)
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    assert net.moving_stream[0].conv.weight.data_ptr() != net.fixed_stream[0].conv.weight.data_ptr()
    assert not torch.allclose(net(a, b), net(b, a))


def test_early_fusion_is_one_stream_of_the_stacked_pair():
    """One stream whose first convolution takes both images as channels (moving first); order still matters."""
    torch.manual_seed(0)
    net = RegularizationPredictor(2, stream_channels=(4, 4, 4, 4), fusion_channels=(4,), fusion="early").eval()
    torch.nn.init.normal_(net.head.weight)
    assert net.pair_stream[0].conv.in_channels == 2 and not hasattr(net, "fixed_stream")
    assert net.fusion[0].conv.in_channels == 4  # the stream's width, not twice it
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    assert torch.allclose(net(a, b), net.head(net.fusion(net.pair_stream(torch.cat([b, a], 1)))).mean((2, 3)))
    assert not torch.allclose(net(a, b), net(b, a))


@pytest.mark.parametrize("fusion", ["late", "early"])
def test_learns_log_alpha_from_the_pair(fusion):
    """A toy regression: alpha is the moving image's contrast relative to the fixed one; 150 Adam steps bring the
    L2 loss on log alpha below a tenth of the constant predictor's, in evaluation mode after recalibrating the
    batch statistics, one pair at a time too."""
    torch.manual_seed(0)
    fixed = torch.rand(32, 1, 16, 16)
    alpha = torch.exp(torch.empty(32).uniform_(-1.0, 1.0))
    moving = fixed * alpha.view(-1, 1, 1, 1)
    net = RegularizationPredictor(2, stream_channels=(8, 8, 8, 8), fusion_channels=(8,), kernel_size=3,
                                  initial_log_alpha=float(alpha.log().mean()), fusion=fusion)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    with torch.no_grad():
        start = float(log_alpha_loss(net(fixed, moving), alpha))
    for _ in range(150):
        optimizer.zero_grad()
        loss = log_alpha_loss(net(fixed, moving), alpha)
        loss.backward()
        optimizer.step()
    recalibrate_batch_norm(net, fixed, moving)
    assert not net.training and net.fusion[0].norm.momentum == 0.1
    with torch.no_grad():
        assert float(log_alpha_loss(net(fixed, moving), alpha)) < 0.1 * start
        one_at_a_time = torch.cat([net(fixed[i:i + 1], moving[i:i + 1]) for i in range(len(fixed))])
        assert float(log_alpha_loss(one_at_a_time, alpha)) < 0.1 * start


@pytest.mark.parametrize("fusion", ["late", "early"])
def test_the_difference_gain_amplifies_the_pairs_difference_and_travels_with_the_weights(fusion):
    """With gain g the network sees ``(moving + g (fixed - moving), moving)``; a network built with the default gain
    that loads the weights predicts as the one that saved them."""
    torch.manual_seed(0)
    net = RegularizationPredictor(2, stream_channels=(4, 4, 4, 4), fusion_channels=(4,), fusion=fusion,
                                  difference_gain=30.0).eval()
    torch.nn.init.normal_(net.head.weight)
    fixed, moving = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    plain = RegularizationPredictor(2, stream_channels=(4, 4, 4, 4), fusion_channels=(4,), fusion=fusion).eval()
    plain.load_state_dict({**net.state_dict(), "difference_gain": torch.tensor(1.0)})
    torch.testing.assert_close(net(fixed, moving), plain(moving + 30.0 * (fixed - moving), moving))
    assert not torch.allclose(net(fixed, moving), plain(fixed, moving))
    plain.load_state_dict(net.state_dict())
    assert float(plain.difference_gain) == 30.0
    torch.testing.assert_close(plain(fixed, moving), net(fixed, moving))


def test_balanced_difference_gain_is_the_images_spread_over_the_differences():
    pattern = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    moving = 4.0 * pattern
    assert balanced_difference_gain(moving + pattern, moving) == pytest.approx(4.0, rel=1e-12)
    with pytest.raises(ValueError, match="their difference \\(std 0\\) must both vary"):
        balanced_difference_gain(moving, moving)
    with pytest.raises(ValueError, match="must have one shape"):
        balanced_difference_gain(moving, moving[:2])


def test_the_balanced_gain_learns_what_small_differences_hide():
    """Pairs that share one image and differ by a faint pattern whose strength is log alpha (a thousandth of the
    image's contrast): with the balanced gain 150 Adam steps bring the L2 loss on log alpha below a tenth of the
    constant predictor's, and below a tenth of what the same steps reach with the images as they are (gain 1:
    0.06-0.7 of the constant's, depending on the machine's threads; the balanced gain 7e-4)."""
    generator = torch.Generator().manual_seed(0)
    shared, faint = torch.rand(1, 1, 16, 16, generator=generator), torch.rand(1, 1, 16, 16, generator=generator)
    log_alpha = torch.empty(32).uniform_(-1.0, 1.0, generator=generator)
    moving = shared.expand(32, 1, 16, 16)
    fixed = moving + 1e-3 * log_alpha.view(-1, 1, 1, 1) * faint
    losses = {}
    for gain in (1.0, balanced_difference_gain(fixed, moving)):
        torch.manual_seed(0)
        net = RegularizationPredictor(2, stream_channels=(8, 8, 8, 8), fusion_channels=(8,), kernel_size=3,
                                      fusion="early", difference_gain=gain)
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        with torch.no_grad():
            start = float(log_alpha_loss(net(fixed, moving), log_alpha.exp()))
        for _ in range(150):
            optimizer.zero_grad()
            log_alpha_loss(net(fixed, moving), log_alpha.exp()).backward()
            optimizer.step()
        recalibrate_batch_norm(net, fixed, moving)
        with torch.no_grad():
            losses[gain] = float(log_alpha_loss(net(fixed, moving), log_alpha.exp())) / start
    (plain, balanced), gain = losses.values(), list(losses)[1]
    assert gain > 100 and balanced < 0.1 and balanced < 0.1 * plain


def test_with_group_or_no_norm_a_pair_predicts_the_same_in_any_batch():
    """Batch norm in training mode mixes a batch's pairs; group norm normalises each pair alone (it also removes
    each pair's intensity scale, so the contrast toy above is not learnable with it, as with instance norm)."""
    torch.manual_seed(0)
    fixed, moving = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)
    for norm in ("batch", "group", "none"):
        net = RegularizationPredictor(2, stream_channels=(8, 8, 8, 8), fusion_channels=(8,), norm=norm).train()
        torch.nn.init.normal_(net.head.weight)
        together = net(fixed, moving)
        alone = torch.cat([net(fixed[i:i + 1], moving[i:i + 1]) for i in range(1, 4)])
        assert torch.allclose(together[1:], alone, atol=1e-5) == (norm != "batch")
        if norm == "group":
            assert isinstance(net.fusion[0].norm, torch.nn.GroupNorm) and net.fusion[0].norm.num_groups == 8
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in net.modules())  # "none"


def test_loss_is_the_l2_on_log_alpha_and_alpha_stays_in_range():
    predicted, alpha = torch.tensor([[0.0], [1.0]]), torch.tensor([1.0, 1.0])
    assert float(log_alpha_loss(predicted, alpha)) == pytest.approx(0.5)
    assert float(predicted_alpha(torch.tensor(50.0))) == pytest.approx(1e3)


def test_bad_settings_and_inputs():
    with pytest.raises(ValueError, match="'spatial_dims' must be 2 or 3"):
        RegularizationPredictor(4)
    with pytest.raises(ValueError, match="'kernel_size' must be an odd integer"):
        RegularizationPredictor(2, kernel_size=4)
    with pytest.raises(ValueError, match="'norm' must be one of"):
        RegularizationPredictor(2, norm="instance")
    with pytest.raises(ValueError, match="'fusion' must be one of"):
        RegularizationPredictor(2, fusion="middle")
    for gain in (0, -2.0, math.nan, math.inf, True, "30"):
        with pytest.raises(ValueError, match="'difference_gain' must be a finite number > 0"):
            RegularizationPredictor(2, difference_gain=gain)
    net = RegularizationPredictor(2)
    with pytest.raises(ValueError, match="two \\(B, C, \\*spatial\\) tensors of one shape with 2 spatial axes"):
        net(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 18))
