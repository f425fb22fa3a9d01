"""Layers are thin wrappers: same result as the functions, options validated at construction."""

import pytest
import torch

from monai_diffreg import functional as F
from monai_diffreg.layers import FieldResize, GaussianSmoothing, VelocityIntegration, Warp


def test_layers_equal_functions():
    image, field = torch.rand(1, 2, 8, 9, 10), torch.randn(1, 3, 8, 9, 10)
    torch.testing.assert_close(Warp("nearest", "zeros")(image, field), F.warp(image, field, "nearest", "zeros"))
    torch.testing.assert_close(VelocityIntegration(5)(field), F.integrate_velocity(field, 5))
    torch.testing.assert_close(FieldResize(2.0)(field), F.resize_field(field, scale=2.0))
    assert FieldResize(2.0)(field, size=(17, 18, 19)).shape == (1, 3, 17, 18, 19)
    torch.testing.assert_close(GaussianSmoothing(1.732, 3)(field), F.gaussian_smooth(field, 1.732, 3))


def test_layers_hold_no_shape_and_follow_the_input_dtype():
    layer = VelocityIntegration()
    for shape in [(6, 7), (5, 6, 7)]:
        v = torch.zeros(2, len(shape), *shape, dtype=torch.float64)
        assert layer(v).shape == v.shape and layer(v).dtype == torch.float64
    assert list(layer.parameters()) == [] and list(GaussianSmoothing(1.0).parameters()) == []


def test_options_are_validated_at_construction():
    with pytest.raises(ValueError, match=r"Warp\(\): 'mode' must be one of \['bilinear', 'nearest'\], got 'linear'"):
        Warp(mode="linear")
    with pytest.raises(ValueError, match=r"VelocityIntegration\(\): 'num_steps' must be an integer >= 0"):
        VelocityIntegration(num_steps=2.5)
    with pytest.raises(ValueError, match=r"FieldResize\(\): 'scale' must be a number > 0"):
        FieldResize(0)
    with pytest.raises(ValueError, match=r"gaussian_kernel1d\(\): 'kernel_size' must be an odd integer"):
        GaussianSmoothing(1.0, kernel_size=2)
    assert "num_steps=7" in repr(VelocityIntegration())
