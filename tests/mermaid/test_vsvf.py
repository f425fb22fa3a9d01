"""vSVF: identity at m = 0, exact translations from constant momenta, a recovered shift, gradients, the method contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import monai_diffreg as md
from monai_diffreg.functional import warp
from monai_diffreg.mermaid import VSVFRegistration, kernel_multiplier, momentum_to_velocity, vsvf_energy, vsvf_register


def _blob(shape, centre, width=4.0):
    grids = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return torch.exp(-r2 / (2 * width**2))[None, None]


def test_zero_momentum_is_the_identity():
    fixed = _blob((20, 24), (10, 12))
    out = vsvf_register(fixed, fixed.clone(), levels=(1,), iterations=(0,))
    assert torch.equal(out["ddf"], torch.zeros(1, 2, 20, 24))
    assert torch.equal(out["inverse_ddf"], torch.zeros(1, 2, 20, 24))
    torch.testing.assert_close(out["warped"], fixed)


def test_constant_momentum_is_an_exact_translation_in_physical_units():
    """K * constant = constant, so exp(v) is the translation by m / spacing voxels (border padding integrates it exactly)."""
    shape, spacing = (12, 10, 8), (2.0, 1.0, 0.5)
    momentum = torch.tensor([3.0, -1.0, 0.25]).view(1, 3, 1, 1, 1).expand(1, 3, *shape).clone()
    multiplier = kernel_multiplier(shape, (2.0, 6.0), None, spacing)
    _, voxels = momentum_to_velocity(momentum, multiplier, spacing)
    torch.testing.assert_close(voxels, torch.tensor([1.5, -1.0, 0.5]).view(1, 3, 1, 1, 1).expand(1, 3, *shape))
    out = vsvf_register(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape), levels=(1,), iterations=(0,),
                        spacing=spacing, initial_momentum=momentum, sigmas=(2.0, 6.0))
    torch.testing.assert_close(out["ddf"], voxels, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["inverse_ddf"], -voxels, atol=1e-5, rtol=0)


def test_recovers_a_known_shift():
    """A blob moved by 3 voxels along the first axis: the field at the blob is about 3 voxels, the images match."""
    shape = (48, 40)
    fixed, moving = _blob(shape, (22, 20)), _blob(shape, (25, 20))
    out = vsvf_register(fixed, moving, sigmas=(4.0, 8.0), image_loss="mse", image_sigma=0.1, regularization_weight=1e-3,
                        levels=(2, 1), iterations=(150, 50), learning_rate=0.3)
    centre = out["ddf"][0, :, 20:25, 18:23].mean(dim=(1, 2))
    assert abs(float(centre[0]) - 3.0) < 0.3 and abs(float(centre[1])) < 0.3, centre
    assert float((out["warped"] - fixed).abs().max()) < 0.25 * float((moving - fixed).abs().max())
    first, last = out["history"][0]["loss"], out["history"][-1]["loss"]
    assert last < 0.2 * first


def test_energy_gradient_float64():
    """Autograd through the kernel, the scaling and squaring and the warp: gradcheck in float64."""
    gen = torch.Generator().manual_seed(0)
    shape, spacing = (7, 6), (1.0, 1.5)
    fixed = torch.rand(1, 1, *shape, dtype=torch.float64, generator=gen)
    moving = torch.rand(1, 1, *shape, dtype=torch.float64, generator=gen)
    multiplier = kernel_multiplier(shape, (1.5, 3.0), (0.3, 0.7), spacing, dtype=torch.float64)
    momentum = (0.3 * torch.randn(1, 2, *shape, dtype=torch.float64, generator=gen)).requires_grad_(True)

    def energy(m):
        return vsvf_energy(m, fixed, moving, multiplier, spacing, regularization_weight=0.1, image_loss="mse",
                           num_steps=3)["total"]

    assert torch.autograd.gradcheck(energy, (momentum,), eps=1e-6, atol=1e-5)


def test_builtin_method_through_register_3d():
    """`register(..., bundle="vsvf")`: the method contract, a smaller image difference, no folding."""
    shape = (24, 20, 16)
    fixed = _blob(shape, (12, 10, 8), width=3.0)[0, 0].numpy()
    moving = _blob(shape, (13, 11, 8), width=3.0)[0, 0].numpy()
    result = md.register(fixed, moving, bundle="vsvf", levels=[2, 1], iterations=[40, 10], regularization_weight=0.01)
    assert result.info["method"] == "vsvf"
    assert result.inverse_ddf is None  # not asked for
    before = np.abs(moving - fixed).mean()
    after = np.abs(result.warped[0, 0].numpy() - fixed).mean()
    assert after < 0.6 * before
    assert result.metrics["folding_percent"] == 0.0


@pytest.mark.parametrize("options, match", [
    ({"regularization_weight": -1.0}, "'regularization_weight' must be a finite number >= 0"),
    ({"image_loss": "mi"}, "'image_loss' must be one of"),
    ({"levels": (2, 1), "iterations": (5,)}, "'iterations' must be 2 integers"),
    ({"sigmas": (2.0,), "weights": (0.5,)}, "'weights' must be 1 numbers >= 0 summing to 1"),
])
def test_bad_settings(options, match):
    with pytest.raises(ValueError, match=r"VSVFRegistration\(\): " + match):
        VSVFRegistration(**options)  # refused when built, before any work
    with pytest.raises(ValueError, match=r"vsvf_register\(\): " + match):
        vsvf_register(_blob((16, 16), (8, 8)), _blob((16, 16), (8, 8)), **options)


def test_default_pyramid_adds_full_resolution_in_2d_only():
    from monai_diffreg.mermaid._momentum import FULL_RESOLUTION_STEPS_2D, default_schedule
    from monai_diffreg.mermaid.lddmm import lddmm_register
    from monai_diffreg.mermaid.rdmm import DEFAULT_ITERATIONS as RDMM_STEPS
    from monai_diffreg.mermaid.rdmm import rdmm_register

    assert default_schedule(3, (60, 30)) == ((4.0, 2.0), (60, 30))
    assert default_schedule(2, (60, 25)) == ((4.0, 2.0, 1.0), (60, 25, FULL_RESOLUTION_STEPS_2D))
    fixed = torch.zeros(1, 1, 24, 24)
    fixed[..., 8:16, 8:16] = 1.0
    moving = torch.roll(fixed, 1, dims=2)
    for register, steps in ((vsvf_register, (60, 30)), (lddmm_register, (60, 30)), (rdmm_register, RDMM_STEPS)):
        levels = {h["level"] for h in register(fixed, moving, iterations=(2, 2, 2), inverse=False)["history"]}
        assert levels == {0, 1, 2}, register.__name__  # 2D: three levels by default
        levels = {h["level"] for h in register(fixed, moving, levels=(2,), iterations=(2,), inverse=False)["history"]}
        assert levels == {0}, register.__name__  # a given pyramid is kept
        with pytest.raises(ValueError, match="'iterations' must be 3 integers"):
            register(fixed, moving, iterations=steps, inverse=False)  # the default pyramid of 2D has three levels
    history = vsvf_register(fixed[..., None].expand(-1, -1, -1, -1, 24).contiguous(),
                            moving[..., None].expand(-1, -1, -1, -1, 24).contiguous(), iterations=(1, 1),
                            inverse=False)["history"]
    assert {h["level"] for h in history} == {0, 1}  # 3D: levels 4 and 2
