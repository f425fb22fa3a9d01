"""Coarse-to-fine registration as a composition of levels (in the spirit of ICON's combinators).

A **level** is any callable ``level(warped_moving, fixed) -> increment`` that predicts a field
``(B, D, *n_l)`` on its own grid from the moving image already warped by the coarser levels.
:func:`coarse_to_fine` runs the levels coarse to fine::

    field_0 = increment_0 = level_0(moving, fixed)
    field_l = resize_field(field_{l-1}, n_l) + increment_l,   increment_l = level_l(moving o T(field_{l-1}), fixed)

``T(field)`` is the displacement of a field on its grid (``to_displacement``: scaling and
squaring for stationary velocities, as MDReg-Net accumulates them (its eq. 3); the identity for
displacement fields refined level by level, as the registration pyramid's deform blocks do), and
the moving image is warped by it upsampled (vector-rescaled) to the images' grid. ``finish`` is
applied to the finest field (e.g. MDReg-Net's Gaussian smoothing layer). The images are those
the levels see (already resampled and padded by the network); grids and units follow
:mod:`monai_diffreg.functional`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ..functional.resize import resize_field
from ..functional.warp import warp

__all__ = ["CoarseToFinePass", "coarse_to_fine"]

Level = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CoarseToFinePass(NamedTuple):
    """What one coarse-to-fine pass computes (lists coarse to fine)."""

    increments: list[torch.Tensor]  # each level's prediction on its grid
    fields: list[torch.Tensor]  # the accumulated field of each level on its grid (the finest one finished)
    displacements: list[torch.Tensor]  # T(field) of every level but the finest, on the level grids


def coarse_to_fine(levels: Sequence[Level], moving: torch.Tensor, fixed: torch.Tensor, *,
                   to_displacement: Callable[[torch.Tensor], torch.Tensor],
                   finish: Callable[[torch.Tensor], torch.Tensor] | None = None) -> CoarseToFinePass:
    """Run ``levels`` coarse to fine on ``moving`` / ``fixed`` ``(B, C, *N)`` (module docstring).

    Args:
        levels: at least one level, coarsest first.
        moving, fixed: the images every level sees (the network's grid ``N``).
        to_displacement: ``T``, a level's accumulated field -> its displacement on the same grid, in its voxels.
        finish: applied to the finest accumulated field (None: nothing).

    Returns:
        a :class:`CoarseToFinePass`; the finest field is ``fields[-1]`` (not turned into a
        displacement here: the network decides at which resolution to do that).
    """
    if not levels:
        raise ValueError("coarse_to_fine(): 'levels' must hold at least one level")
    increments: list[torch.Tensor] = []
    fields: list[torch.Tensor] = []
    displacements: list[torch.Tensor] = []
    warped = moving
    for index, level in enumerate(levels):
        increment = level(warped, fixed)
        field = increment if not fields else resize_field(fields[-1], size=increment.shape[2:]) + increment
        if index == len(levels) - 1:
            if finish is not None:
                field = finish(field)
        else:
            displacements.append(to_displacement(field))
            warped = warp(moving, resize_field(displacements[-1], size=moving.shape[2:]))
        increments.append(increment)
        fields.append(field)
    return CoarseToFinePass(increments, fields, displacements)
