"""Tests for monai_diffreg.losses.ncc: brute-force reference, MONAI cross-check, edge cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss

from monai_diffreg.losses import LocalNCCLoss, local_ncc_loss


def brute_force_ncc(pred: np.ndarray, target: np.ndarray, sizes, eps: float) -> np.ndarray:
    """Per-voxel squared NCC of one (*spatial) image pair by explicit loops over zero-padded windows."""
    half = [s // 2 for s in sizes]
    p = np.pad(pred.astype(np.float64), [(h, h) for h in half])
    t = np.pad(target.astype(np.float64), [(h, h) for h in half])
    out = np.zeros(pred.shape)
    for idx in itertools.product(*(range(n) for n in pred.shape)):
        window = tuple(slice(i, i + s) for i, s in zip(idx, sizes))
        pw, tw = p[window].ravel(), t[window].ravel()
        cross = np.sum((pw - pw.mean()) * (tw - tw.mean()))
        var_p, var_t = np.sum((pw - pw.mean()) ** 2), np.sum((tw - tw.mean()) ** 2)
        out[idx] = cross**2 / (var_t * var_p + eps)
    return out


@pytest.mark.parametrize(
    "shape, window",
    [((6, 7), 3), ((6, 7), (3, 5)), ((5, 6, 4), 3), ((4, 5, 6), (1, 3, 5))],
)
def test_matches_brute_force_loops(shape, window):
    pred, target = torch.rand(1, 1, *shape, dtype=torch.float64), torch.rand(1, 1, *shape, dtype=torch.float64)
    sizes = [window] * len(shape) if isinstance(window, int) else window
    expected = brute_force_ncc(pred[0, 0].numpy(), target[0, 0].numpy(), sizes, eps=1e-5)
    got = local_ncc_loss(pred, target, window=window, reduction="none")
    np.testing.assert_allclose(-got[0, 0].numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(local_ncc_loss(pred, target, window=window)), -expected.mean(), rtol=1e-9)


def test_centre_voxel_is_squared_pearson_correlation():
    # a 3x3 window centred on the middle of a 3x3 image sees the whole image, no padding
    pred = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 4.0], [2.0, 2.0, 5.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 1.0, 1.0], [2.0, 3.0, 3.0], [1.0, 0.0, 4.0]], dtype=torch.float64)
    r = np.corrcoef(pred.ravel().numpy(), target.ravel().numpy())[0, 1]
    got = local_ncc_loss(pred[None, None], target[None, None], window=3, eps=1e-12, reduction="none")
    assert float(-got[0, 0, 1, 1]) == pytest.approx(r**2, rel=1e-9)


@pytest.mark.parametrize("shape, window", [((32, 32), 9), ((16, 16, 16), 5)])
def test_identical_and_affinely_related_images_give_minus_one(shape, window):
    x = torch.rand(2, 1, *shape)
    assert float(local_ncc_loss(x, x, window=window)) == pytest.approx(-1.0, abs=1e-4)
    # scaling keeps the zero padding zero, so every window (border ones too) stays affinely related
    assert float(local_ncc_loss(3.0 * x, x, window=window)) == pytest.approx(-1.0, abs=1e-4)
    # squared coefficient (VoxelMorph, MONAI): anti-correlated images also score -1
    assert float(local_ncc_loss(-x, x, window=window)) == pytest.approx(-1.0, abs=1e-4)
    # with an offset the zero padding breaks the relation at the border: check windows inside
    inside = (Ellipsis, *[slice(window // 2, -(window // 2))] * len(shape))
    for pred in (3.0 * x + 0.5, -x + 2.0):
        loss_map = local_ncc_loss(pred, x, window=window, reduction="none")[inside]
        torch.testing.assert_close(loss_map, torch.full_like(loss_map, -1.0), atol=1e-4, rtol=0)


def test_independent_images_score_near_zero():
    x, y = torch.rand(4, 1, 64, 64), torch.rand(4, 1, 64, 64)
    inside = local_ncc_loss(x, y, window=9, reduction="none")[..., 4:-4, 4:-4]
    # the squared correlation of N independent samples has mean 1 / (N - 1) = 1 / 80
    assert float(-inside.mean()) == pytest.approx(1 / 80, rel=0.15)


@pytest.mark.parametrize(
    "spatial_dims, shape, window", [(2, (2, 2, 24, 20), 9), (2, (1, 1, 24, 20), 3), (3, (2, 1, 12, 10, 14), 5)]
)
def test_agrees_with_monai_rectangular(spatial_dims, shape, window):
    pred, target = torch.rand(shape), torch.rand(shape)
    for reduction in ("mean", "sum", "none"):
        monai_loss = LocalNormalizedCrossCorrelationLoss(
            spatial_dims=spatial_dims, kernel_size=window, kernel_type="rectangular", reduction=reduction
        )
        expected = monai_loss(pred, target)
        got = local_ncc_loss(pred, target, window=window, reduction=reduction)
        assert got.shape == expected.shape
        scale = 1.0 if reduction != "sum" else pred.numel()
        torch.testing.assert_close(got, expected, atol=1e-4 * scale, rtol=1e-4)


def test_constant_images_are_finite_with_zero_ncc_inside():
    pred = torch.full((1, 1, 20, 20), 0.7, requires_grad=True)
    target = torch.full((1, 1, 20, 20), 0.7)
    ncc_map = local_ncc_loss(pred, target, window=5, reduction="none")
    assert torch.isfinite(ncc_map).all()
    # windows wholly inside a constant image carry no correlation evidence: ncc = 0
    assert ncc_map[..., 2:-2, 2:-2].abs().max() < 1e-6
    # at the border the zero padding makes both windows "textured" and identical: ncc ~ 1
    assert float(ncc_map[0, 0, 0, 0].detach()) == pytest.approx(-1.0, abs=1e-4)
    ncc_map.mean().backward()
    assert torch.isfinite(pred.grad).all()


def test_constant_against_textured_image_has_finite_gradients():
    pred = torch.full((1, 1, 16, 16, 16), 0.3, requires_grad=True)
    target = torch.rand(1, 1, 16, 16, 16, requires_grad=True)
    loss_map = local_ncc_loss(pred, target, window=3, reduction="none")
    assert loss_map[..., 1:-1, 1:-1, 1:-1].abs().max() < 1e-5
    loss_map.mean().backward()
    assert torch.isfinite(pred.grad).all() and torch.isfinite(target.grad).all()


def test_image_constant_in_one_half():
    x = torch.rand(1, 1, 32, 32)
    x[..., :, 16:] = 0.5
    pred = x.clone().requires_grad_(True)
    loss_map = local_ncc_loss(pred, x, window=5, reduction="none")
    assert torch.isfinite(loss_map).all()
    torch.testing.assert_close(loss_map[..., 2:-2, 2:14], torch.full((1, 1, 28, 12), -1.0), atol=1e-4, rtol=0)
    assert loss_map[..., 2:-2, 18:-2].abs().max() < 1e-6
    loss_map.mean().backward()
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("shape, window", [((1, 1, 5, 6), 3), ((1, 1, 3, 4, 3), (3, 1, 3))])
def test_gradcheck_float64(shape, window):
    pred = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    target = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, t: local_ncc_loss(p, t, window=window), (pred, target))


def test_second_derivatives_float64():
    """The box sum's own (self-adjoint) backward stays differentiable: gradgradcheck of the loss map."""
    pred = torch.rand((1, 2, 4, 5, 3), dtype=torch.float64, requires_grad=True)
    target = torch.rand((1, 2, 4, 5, 3), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda p, t: local_ncc_loss(p, t, window=(3, 5, 3), reduction="none"),
                                        (pred, target))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_evaluated_in_float32(dtype):
    pred, target = torch.rand(1, 1, 24, 24).to(dtype), torch.rand(1, 1, 24, 24).to(dtype)
    got = local_ncc_loss(pred, target)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, local_ncc_loss(pred.float(), target.float()))


def test_channels_are_independent_and_window_may_exceed_image():
    pred, target = torch.rand(2, 3, 6, 5), torch.rand(2, 3, 6, 5)
    joint = local_ncc_loss(pred, target, window=9, reduction="none")
    for c in range(3):
        single = local_ncc_loss(pred[:, c : c + 1], target[:, c : c + 1], window=9, reduction="none")
        torch.testing.assert_close(joint[:, c : c + 1], single)
    assert torch.isfinite(joint).all()


def test_module_matches_function_and_reductions():
    pred, target = torch.rand(2, 1, 12, 12, 12), torch.rand(2, 1, 12, 12, 12)
    loss = LocalNCCLoss(window=5)
    torch.testing.assert_close(loss(pred, target), local_ncc_loss(pred, target, window=5))
    loss_map = LocalNCCLoss(window=5, reduction="none")(pred, target)
    assert loss_map.shape == pred.shape
    torch.testing.assert_close(LocalNCCLoss(window=5, reduction="sum")(pred, target), loss_map.sum())
    assert "window=5" in repr(loss)


def test_bad_inputs_raise_clear_errors():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"local_ncc_loss\(\): 'pred' must be 4D"):
        local_ncc_loss(torch.rand(1, 1, 8), torch.rand(1, 1, 8))
    with pytest.raises(ValueError, match=r"'pred' and 'target' must have the same shape"):
        local_ncc_loss(x, torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match=r"'window' must be an odd integer"):
        local_ncc_loss(x, x, window=4)
    with pytest.raises(ValueError, match=r"'window' must give 1 or 2 sizes"):
        local_ncc_loss(x, x, window=(3, 3, 3))
    with pytest.raises(ValueError, match=r"'eps' must be a finite number > 0"):
        local_ncc_loss(x, x, eps=0.0)
    with pytest.raises(ValueError, match=r"'reduction' must be one of"):
        local_ncc_loss(x, x, reduction="max")
    with pytest.raises(ValueError, match=r"LocalNCCLoss\(\): 'window'"):
        LocalNCCLoss(window=0)
    with pytest.raises(ValueError, match=r"LocalNCCLoss\(\): 'reduction'"):
        LocalNCCLoss(reduction="avg")
    with pytest.raises(TypeError, match=r"'target' must be a torch.Tensor"):
        local_ncc_loss(x, x.numpy())
