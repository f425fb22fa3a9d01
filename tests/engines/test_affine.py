"""Tests for the classical affine registration engine."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from monai_diffreg.engines.affine import AffineRegistration, centre_of_mass, optimise_affine
from monai_diffreg.functional.affine import affine_to_ddf
from monai_diffreg.functional.grid import identity_grid


def _rotation_3d(ax: float, ay: float, az: float) -> torch.Tensor:
    ca, sa, cb, sb, cc, sc = (f(math.radians(a)) for a in (ax, ay, az) for f in (math.cos, math.sin))
    rx = torch.tensor([[1, 0, 0], [0, ca, -sa], [0, sa, ca]], dtype=torch.float64)
    ry = torch.tensor([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]], dtype=torch.float64)
    rz = torch.tensor([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]], dtype=torch.float64)
    return rx @ ry @ rz


def _about_centre(linear: torch.Tensor, shift: Sequence, shape) -> torch.Tensor:
    """Matrix of ``y = linear (x - c) + c + shift`` with ``c`` the grid centre, ``(1, D, D + 1)`` float64."""
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64)
    shift = torch.as_tensor(shift, dtype=torch.float64)
    return torch.cat([linear, (centre + shift - linear @ centre).unsqueeze(1)], 1).unsqueeze(0)


def _moving_for(matrix: torch.Tensor, shape, phantom_at) -> torch.Tensor:
    """Exact moving image with ``moving(A x + t) = fixed(x)``: the phantom evaluated at ``A^-1 (y - t)``."""
    ndim = len(shape)
    linear_inv = torch.linalg.inv(matrix[0, :, :ndim])
    grid = identity_grid(shape, dtype=torch.float64)
    points = torch.einsum("ij,j...->i...", linear_inv, grid - matrix[0, :, ndim].view(-1, *([1] * ndim)))
    return phantom_at(points, shape)[None, None].float()


def _ddf_error(result: dict, matrix: torch.Tensor, fixed: torch.Tensor) -> tuple[float, float]:
    """Mean and max end-point error (voxels) of the recovered affine field inside the object."""
    error = (result["ddf"].double() - affine_to_ddf(matrix, fixed.shape[2:])).norm(dim=1)[0]
    inside = fixed[0, 0] > 0
    return float(error[inside].mean()), float(error[inside].max())


# Measured (CPU, float32, default settings): 3D linear-part error 0.021, DDF error inside the
# object mean 0.17 / max 0.31 voxel; 2D 0.017 and 0.21 / 0.53. The bounds leave a margin of 1.5-2.
def test_recovers_3d_affine(phantom, phantom_at):
    shape = (32, 32, 32)
    linear = _rotation_3d(8, -5, 6) @ torch.diag(torch.tensor([1.08, 0.94, 1.03], dtype=torch.float64))
    matrix = _about_centre(linear, [1.5, -2.0, 1.0], shape)
    fixed, moving = phantom(shape), _moving_for(matrix, shape, phantom_at)
    result = optimise_affine(fixed, moving)
    assert result["matrix"].shape == (1, 3, 4) and result["ddf"].shape == (1, 3, *shape)
    assert result["warped"].shape == fixed.shape
    assert (result["matrix"][0, :, :3].double() - linear).abs().max() < 0.05
    mean_error, max_error = _ddf_error(result, matrix, fixed)
    assert mean_error < 0.4 and max_error < 0.8
    before = ((moving - fixed) ** 2).mean()
    assert ((result["warped"] - fixed) ** 2).mean() < before / 20


def test_recovers_2d_affine(phantom, phantom_at):
    shape = (64, 64)
    angle = math.radians(10)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                            dtype=torch.float64)
    linear = rotation @ torch.diag(torch.tensor([1.1, 0.92], dtype=torch.float64))
    matrix = _about_centre(linear, [3.0, -2.5], shape)
    fixed, moving = phantom(shape), _moving_for(matrix, shape, phantom_at)
    result = optimise_affine(fixed, moving)
    assert (result["matrix"][0, :, :2].double() - linear).abs().max() < 0.05
    mean_error, max_error = _ddf_error(result, matrix, fixed)
    assert mean_error < 0.4 and max_error < 0.8


# Mutual information is maximal slightly off the truth here (it prefers a little shrinkage: more
# background overlap), so the centre's translation is checked tightly (measured error < 0.1
# voxel) and the field loosely (measured mean 0.24, max 0.47 voxel).
def test_mutual_information_recovers_translation_of_inverted_image(phantom, phantom_at):
    shape = (64, 64)
    shift = torch.tensor([2.5, -3.0], dtype=torch.float64)
    matrix = _about_centre(torch.eye(2, dtype=torch.float64), shift, shape)
    fixed, moving = phantom(shape), _moving_for(matrix, shape, phantom_at)
    inverted = moving.max() - moving
    result = optimise_affine(fixed, inverted, metric="mi")
    centre = torch.tensor([31.5, 31.5], dtype=torch.float64)
    found = result["matrix"][0].double()
    assert (found[:, :2] @ centre + found[:, 2] - centre - shift).abs().max() < 0.3
    mean_error, max_error = _ddf_error(result, matrix, fixed)
    assert mean_error < 0.6 and max_error < 1.5
    # the inverted warped image anti-correlates with the fixed one inside the object
    inside = fixed > 0
    warped = result["warped"][inside]
    assert torch.corrcoef(torch.stack([warped, fixed[inside]]))[0, 1] < -0.95


def test_centre_of_mass_initialisation(phantom):
    fixed = phantom((40, 40))
    moving = torch.roll(fixed, shifts=(3, -2), dims=(2, 3))  # background is 0, so roll is a translation
    com = centre_of_mass(torch.stack([fixed[0], moving[0]]))
    assert torch.allclose(com[1] - com[0], torch.tensor([3.0, -2.0]), atol=1e-4)
    # no iterations: the result is the centre-of-mass translation alone
    result = optimise_affine(fixed, moving, levels=(1,), iterations=(0,))
    assert torch.allclose(result["matrix"][0, :, 2], torch.tensor([3.0, -2.0]), atol=1e-4)
    assert torch.allclose(result["warped"], fixed, atol=1e-4)
    identity = optimise_affine(fixed, moving, levels=(1,), iterations=(0,), initialisation="identity")
    assert torch.equal(identity["matrix"][0], torch.eye(2, 3))


def test_centre_of_mass_of_a_single_bright_voxel():
    image = torch.zeros(1, 1, 5, 6, 7)
    image[0, 0, 1, 2, 3] = 2.0
    assert torch.allclose(centre_of_mass(image), torch.tensor([[1.0, 2.0, 3.0]]))


def test_mask_ignores_a_corrupted_region(phantom):
    fixed = phantom((64, 64))
    moving = torch.roll(fixed, shifts=(2, 3), dims=(2, 3)).clone()
    moving[..., :, 40:] = torch.rand(1, 1, 64, 24)  # corrupt the right part of the moving image
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, :36] = 1.0
    kwargs = {"levels": (2, 1), "iterations": (60, 30), "metric": "mse", "initialisation": "identity"}
    masked = optimise_affine(fixed, moving, fixed_mask=mask, **kwargs)
    unmasked = optimise_affine(fixed, moving, **kwargs)
    target = torch.tensor([2.0, 3.0])
    masked_error = (masked["ddf"][0, :, :, :36] - target.view(2, 1, 1)).norm(dim=0).max()
    unmasked_error = (unmasked["ddf"][0, :, :, :36] - target.view(2, 1, 1)).norm(dim=0).max()
    assert masked_error < 0.3
    assert unmasked_error > 2 * masked_error


def test_callback_history_and_class(phantom):
    fixed = phantom((32, 32))
    moving = torch.roll(fixed, shifts=(1, 1), dims=(2, 3))
    calls = []
    result = optimise_affine(fixed, moving, levels=(2, 1), iterations=(3, 2), callback=lambda *a: calls.append(a))
    assert [(c[0], c[1]) for c in calls] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert [h["loss"] for h in result["history"]] == [c[2] for c in calls]
    assert [h["factor"] for h in result["history"]] == [2.0, 2.0, 2.0, 1.0, 1.0]
    registration = AffineRegistration(levels=(2, 1), iterations=(3, 2))
    assert "AffineRegistration(levels=(2, 1)" in repr(registration)
    assert torch.equal(registration(fixed, moving)["matrix"], result["matrix"])
    with pytest.raises(TypeError, match=r"AffineRegistration\(\): unknown setting\(s\) \['fixed_mask'\]"):
        AffineRegistration(fixed_mask=None)


def test_bad_inputs(phantom):
    fixed = phantom((16, 16))
    with pytest.raises(ValueError, match=r"optimise_affine\(\): 'moving' must have the shape of 'fixed'"):
        optimise_affine(fixed, phantom((16, 18)))
    with pytest.raises(ValueError, match=r"optimise_affine\(\): 'moving' must be 4D"):
        optimise_affine(fixed, phantom((16, 16, 16)))
    bad = fixed.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"optimise_affine\(\): 'moving' contains 1 NaN/Inf"):
        optimise_affine(fixed, bad)
    with pytest.raises(ValueError, match=r"optimise_affine\(\): 'fixed' is constant"):
        optimise_affine(torch.ones_like(fixed), fixed)
    with pytest.raises(ValueError, match=r"optimise_affine\(\): 'metric' must be one of \['ncc', 'mse', 'mi'\]"):
        optimise_affine(fixed, fixed, metric="nmi")
    with pytest.raises(ValueError, match=r"optimise_affine\(\): 'iterations' must be 2 integers"):
        optimise_affine(fixed, fixed, iterations=(10, 10, 10))
    with pytest.raises(ValueError, match=r"optimise_affine\(\): 'levels' must be a non-empty sequence"):
        optimise_affine(fixed, fixed, levels=(0.5,), iterations=(1,))
    with pytest.raises(ValueError, match=r"optimise_affine\(\): 'fixed_mask' must have shape \(1 or 1, 1, 16, 16\)"):
        optimise_affine(fixed, fixed, fixed_mask=torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"optimise_affine\(\): 'fixed_mask' is empty"):
        optimise_affine(fixed, fixed, fixed_mask=torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"optimise_affine\(\): 'learning_rate' must be a finite number > 0"):
        optimise_affine(fixed, fixed, learning_rate=0)
