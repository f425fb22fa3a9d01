"""Scaling and squaring: exp(0) = id, constant fields, inverse via -v, MONAI DVF2DDF, gradcheck."""

import warnings

import pytest
import torch
from monai.networks.blocks import DVF2DDF

from monai_diffreg.functional import compose_ddf, gaussian_smooth, integrate_velocity


def smooth_velocity(shape, amplitude, sigma=3.0, dtype=torch.float64):
    """A smooth random velocity field with max |v| = amplitude voxels."""
    v = gaussian_smooth(torch.randn(1, len(shape), *shape, dtype=dtype), sigma)
    return v * (amplitude / v.abs().max())


@pytest.mark.parametrize("shape", [(10, 12), (6, 7, 8)])
def test_exp_of_zero_is_identity(shape):
    v = torch.zeros(1, len(shape), *shape)
    assert torch.equal(integrate_velocity(v), v)


@pytest.mark.parametrize("shape", [(10, 12), (6, 7, 8)])
def test_constant_velocity_integrates_to_the_same_translation(shape):
    """exp of a constant field t is the translation by t (exact with border padding)."""
    t = torch.tensor([1.7, -0.4, 0.9][: len(shape)], dtype=torch.float64).view(1, -1, *([1] * len(shape)))
    v = t.expand(1, len(shape), *shape).clone()
    torch.testing.assert_close(integrate_velocity(v), v, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(32, 32), (20, 20, 20)])
def test_exp_v_composed_with_exp_minus_v_is_identity(shape):
    """phi o phi^-1 ~ id for smooth v of up to 2 voxels: max error < 0.05 voxel away from the border."""
    v = smooth_velocity(shape, amplitude=2.0)
    forward, inverse = integrate_velocity(v), integrate_velocity(-v)
    interior = (..., *[slice(4, n - 4) for n in shape])
    for residual in (compose_ddf(forward, inverse), compose_ddf(inverse, forward)):
        assert residual[interior].norm(dim=1).max() < 0.05


@pytest.mark.parametrize("shape", [(9, 11), (7, 8, 9)])
def test_matches_monai_dvf2ddf(shape):
    v = smooth_velocity(shape, amplitude=1.5, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="zeros")(v)
    torch.testing.assert_close(integrate_velocity(v, 7, padding_mode="zeros"), reference, atol=1e-5, rtol=0)


def test_zero_steps_returns_velocity():
    v = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(integrate_velocity(v, num_steps=0), v)


def test_gradcheck_float64():
    v = (smooth_velocity((5, 5, 4), amplitude=0.4)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: integrate_velocity(x, num_steps=3), (v,), eps=1e-6, atol=1e-5)


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"integrate_velocity\(\): 'num_steps' must be an integer >= 0, got -1"):
        integrate_velocity(torch.zeros(1, 2, 4, 4), num_steps=-1)
    with pytest.raises(ValueError, match=r"integrate_velocity\(\): 'velocity' must have 2 channels"):
        integrate_velocity(torch.zeros(1, 3, 4, 4))
