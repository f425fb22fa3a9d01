"""Tests for monai_diffreg.losses.regularization: analytic ramps and hand-computed values."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.losses import GradientLoss, gradient_loss


def ramp(shape, slopes, offsets):
    """Field (1, C, *shape) with channel c = sum_a slopes[a] * x_a + offsets[c]."""
    axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij")
    base = sum(s * x for s, x in zip(slopes, axes))
    return torch.stack([base + o for o in offsets])[None]


@pytest.mark.parametrize("shape", [(5, 7), (4, 5, 6)])
def test_ramp_along_every_axis_gives_slope_squared(shape):
    ndim = len(shape)
    field = ramp(shape, [0.3] * ndim, offsets=[1.0, -2.0, 0.5][:ndim])
    assert float(gradient_loss(field, "l2")) == pytest.approx(0.09, rel=1e-12)
    assert float(gradient_loss(-field, "l1")) == pytest.approx(0.3, rel=1e-12)


@pytest.mark.parametrize("shape", [(5, 7), (4, 5, 6)])
def test_ramp_along_one_axis_is_averaged_over_axes(shape):
    ndim = len(shape)
    slopes = [0.0] * ndim
    slopes[-1] = 2.0
    field = ramp(shape, slopes, offsets=[0.0] * ndim)
    assert float(gradient_loss(field, "l2")) == pytest.approx(4.0 / ndim, rel=1e-12)
    assert float(gradient_loss(field, "l1")) == pytest.approx(2.0 / ndim, rel=1e-12)


def test_constant_field_gives_zero():
    field = torch.full((2, 3, 4, 5, 6), 1.7)
    assert float(gradient_loss(field)) == 0.0
    assert float(gradient_loss(field, "l1")) == 0.0


def test_hand_computed_2d():
    field = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]]])
    # axis 0 differences: 2, 1, -1; axis 1 differences: 1, 2, 0, 0
    assert float(gradient_loss(field, "l2")) == pytest.approx(((4 + 1 + 1) / 3 + (1 + 4) / 4) / 2)
    assert float(gradient_loss(field, "l1")) == pytest.approx(((2 + 1 + 1) / 3 + (1 + 2) / 4) / 2)


def test_reductions_are_over_the_batch():
    fields = torch.cat([ramp((4, 4), [1.0, 1.0], [0.0, 0.0]), ramp((4, 4), [2.0, 2.0], [0.0, 0.0])])
    torch.testing.assert_close(gradient_loss(fields, reduction="none"), torch.tensor([1.0, 4.0], dtype=torch.float64))
    assert float(gradient_loss(fields, reduction="mean")) == pytest.approx(2.5)
    assert float(gradient_loss(fields, reduction="sum")) == pytest.approx(5.0)


@pytest.mark.parametrize("penalty", ["l2", "l1"])
def test_gradcheck_float64(penalty):
    field = torch.randn(2, 3, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: gradient_loss(f, penalty), (field,))


def test_module_matches_function():
    field = torch.randn(2, 2, 8, 9)
    loss = GradientLoss(penalty="l1", reduction="none")
    torch.testing.assert_close(loss(field), gradient_loss(field, "l1", "none"))
    assert "penalty='l1'" in repr(loss)
    assert gradient_loss(field.half()).dtype == torch.float32


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"gradient_loss\(\): 'field' must be 4D"):
        gradient_loss(torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match=r"needs >= 2 voxels"):
        gradient_loss(torch.zeros(1, 2, 8, 1))
    with pytest.raises(ValueError, match=r"'penalty' must be one of \['l2', 'l1'\], got 'l3'"):
        gradient_loss(torch.zeros(1, 2, 8, 8), penalty="l3")
    with pytest.raises(ValueError, match=r"GradientLoss\(\): 'penalty'"):
        GradientLoss(penalty="L2")
    with pytest.raises(ValueError, match=r"GradientLoss\(\): 'reduction'"):
        GradientLoss(reduction=None)
