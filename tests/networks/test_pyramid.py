"""coarse_to_fine: levels accumulate on their grids, coarser fields warp the input of finer levels, finish on the finest."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.functional import integrate_velocity, resize_field, warp
from monai_diffreg.networks.pyramid import coarse_to_fine


def _constant(values, size, seen):
    """A level that records its input and returns the constant field ``values`` on a ``size`` grid."""
    def level(warped, fixed):
        seen.append(warped.clone())
        return torch.tensor(values, dtype=torch.float32).view(1, -1, *[1] * len(size)).expand(1, len(values), *size).clone()
    return level


def test_constant_increments_accumulate_with_vector_rescaling():
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    seen = []
    levels = [_constant([1.0, 0.0], (8, 8), seen), _constant([0.0, 0.5], (16, 16), seen)]
    run = coarse_to_fine(levels, moving, fixed, to_displacement=lambda v: v)
    # the coarse field (1 voxel of the 8-grid) is 2 voxels of the 16-grid, plus the finer increment
    torch.testing.assert_close(run.fields[1], torch.tensor([2.0, 0.5]).view(1, 2, 1, 1).expand(1, 2, 16, 16))
    assert len(run.displacements) == 1 and len(run.increments) == 2
    torch.testing.assert_close(seen[0], moving)  # the coarsest level sees the moving image itself
    torch.testing.assert_close(seen[1], warp(moving, resize_field(run.fields[0], size=(32, 32))))


def test_velocities_are_integrated_for_the_finer_levels_and_the_finest_is_finished():
    moving, fixed = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    velocity = torch.randn(1, 3, 4, 4, 4) * 0.2
    seen = []
    levels = [lambda w, f: velocity, _constant([0.1, 0.0, 0.0], (8, 8, 8), seen)]
    run = coarse_to_fine(levels, moving, fixed, to_displacement=lambda v: integrate_velocity(v, 7), finish=lambda v: 3 * v)
    torch.testing.assert_close(run.displacements[0], integrate_velocity(velocity, 7))
    expected = 3 * (resize_field(velocity, size=(8, 8, 8)) + 0.1 * torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1, 1))
    torch.testing.assert_close(run.fields[-1], expected)
    torch.testing.assert_close(seen[0], warp(moving, resize_field(integrate_velocity(velocity, 7), size=(16, 16, 16))))


def test_a_single_level_is_just_finished():
    run = coarse_to_fine([lambda w, f: torch.ones(1, 2, 4, 4)], torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8),
                         to_displacement=lambda v: v, finish=lambda v: -v)
    assert run.displacements == [] and torch.equal(run.fields[0], -torch.ones(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"coarse_to_fine\(\): 'levels' must hold at least one level"):
        coarse_to_fine([], torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), to_displacement=lambda v: v)
