"""The momentum models' shared coarse-to-fine loop (monai_diffreg.mermaid._momentum.optimise_momentum)."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.functional import resize_field
from monai_diffreg.mermaid import (LDDMMRegistration, RDMMRegistration, VSVFRegistration, apply_kernel, kernel_multiplier,
                                   lddmm_register, rdmm_register, vsvf_register)
from monai_diffreg.mermaid.vsvf import vsvf_fields

SETTINGS = {"sigmas": (4.0, 8.0), "image_loss": "mse", "image_sigma": 0.1, "regularization_weight": 1e-3,
            "levels": (2,), "iterations": (60,), "inverse": False, "map_factor": 1.0}


def _blob(shape, centre, width=4.0):
    grids = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return torch.exp(-r2 / (2 * width**2))[None, None]


@pytest.mark.parametrize("register", [vsvf_register, lddmm_register, rdmm_register])
def test_fields_come_from_the_last_levels_grid(register):
    """Optimised on a half-size grid only, the momentum stays there and the returned fields (on the full grid)
    still move the blob by its 3 voxels: they are the last level's fields, upsampled."""
    shape = (48, 40)
    fixed, moving = _blob(shape, (22, 20)), _blob(shape, (25, 20))
    out = register(fixed, moving, **SETTINGS)
    assert out["momentum"].shape == (1, 2, 24, 20)
    assert out["ddf"].shape == (1, 2, *shape)
    centre = out["ddf"][0, :, 20:25, 18:23].mean(dim=(1, 2))
    assert abs(float(centre[0]) - 3.0) < 0.5 and abs(float(centre[1])) < 0.3, centre


def test_vsvf_fields_are_the_last_levels_exactly():
    """vSVF's returned field is exp(K * m) on the half-size grid (voxels of 2 full voxels), upsampled: not a new
    integration on the full grid."""
    shape = (48, 40)
    fixed, moving = _blob(shape, (22, 20)), _blob(shape, (25, 20))
    out = vsvf_register(fixed, moving, **SETTINGS)
    m, spacing = out["momentum"], (2.0, 2.0)
    half = vsvf_fields(m, apply_kernel(m, kernel_multiplier((24, 20), (4.0, 8.0), torch.tensor([0.5, 0.5]), spacing)),
                       None, spacing, False)
    torch.testing.assert_close(out["ddf"], resize_field(half["ddf"], size=shape))


@pytest.mark.parametrize("holder", [VSVFRegistration, LDDMMRegistration, RDMMRegistration])
def test_iterations_alone_fit_the_default_levels_of_the_images(holder):
    """Given ``iterations`` only, a settings holder (built before the images are known) accepts counts for the
    default levels of 2D (three) or 3D (two) images, runs the 2D schedule on 2D images, and names the levels
    when the images' dimensionality does not fit them; any other count is refused at once."""
    image = _blob((24, 20), (12, 10))
    out = holder(iterations=[1, 1, 2])(image, image.clone(), inverse=False)
    assert [step["level"] for step in out["history"]] == [0, 1, 2, 2]
    with pytest.raises(ValueError, match=r"'iterations' must be 2 integers >= 0 \(one per level in 'levels' = \(4.0, 2.0\)\)"):
        holder(iterations=[1, 1, 2])(_blob((12, 10, 8), (6, 5, 4)), _blob((12, 10, 8), (6, 5, 4)))
    with pytest.raises(ValueError, match=r"'iterations' must be 2 integers >= 0"):
        holder(iterations=[1, 1, 2, 2])
