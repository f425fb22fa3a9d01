"""Synthetic images and deformations for the optimisation-engine tests.

The images are analytic ("blob phantoms"): about 30 Gaussian blobs on a plateau inside an
ellipsoid whose smooth (C1) edge reaches exactly zero, so the background is exactly 0 as in a
skull-stripped scan. Being analytic, an image can be evaluated at transformed points without
interpolation error (used to build affinely transformed moving images exactly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from monai_diffreg.functional.grid import identity_grid


def blob_phantom(points: torch.Tensor, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Evaluate the phantom of grid ``shape`` at voxel coordinates ``points`` ``(D, *P)``; returns ``(*P)`` float64."""
    ndim = len(shape)
    view = (-1, *([1] * ndim))
    p = points.double() / (torch.tensor(shape, dtype=torch.float64).view(view) - 1)
    gen = torch.Generator().manual_seed(seed)
    texture = torch.full(points.shape[1:], 0.3, dtype=torch.float64)
    for _ in range(30):
        centre = (0.28 + 0.44 * torch.rand(ndim, generator=gen, dtype=torch.float64)).view(view)
        sigma = 0.04 + 0.04 * float(torch.rand(1, generator=gen))
        amplitude = 0.3 + 0.7 * float(torch.rand(1, generator=gen))
        texture = texture + amplitude * torch.exp(-((p - centre) ** 2).sum(0) / (2 * sigma**2))
    radii = torch.tensor((0.36, 0.3, 0.33)[:ndim], dtype=torch.float64).view(view)
    z = ((1 - (((p - 0.5) / radii) ** 2).sum(0).sqrt()) / 0.15).clamp(0, 1)
    return texture * z * z * (3 - 2 * z) / 3.0


def sinusoidal_velocity(shape: Sequence[int], amplitude: float, seed: int = 1) -> torch.Tensor:
    """Smooth velocity ``(1, D, *shape)`` float64: component c is a product of one-period sines along the other axes."""
    ndim = len(shape)
    grid = identity_grid(tuple(shape), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    components = []
    for c in range(ndim):
        phase = 2 * math.pi * torch.rand(ndim, generator=gen, dtype=torch.float64)
        value = torch.ones(tuple(shape), dtype=torch.float64)
        for j in range(ndim):
            if j != c:
                value = value * torch.sin(2 * math.pi * grid[j] / shape[j] + phase[j])
        components.append(value)
    return amplitude * torch.stack(components).unsqueeze(0)


@pytest.fixture
def phantom():
    """``phantom(shape)``: the blob phantom on its own grid, ``(1, 1, *shape)`` float32."""

    def make(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
        return blob_phantom(identity_grid(tuple(shape), dtype=torch.float64), shape, seed)[None, None].float()

    return make


@pytest.fixture
def phantom_at():
    """``phantom_at(points, shape)``: the phantom of grid ``shape`` evaluated at voxel coordinates ``points``."""
    return blob_phantom


@pytest.fixture
def smooth_velocity():
    """``smooth_velocity(shape, amplitude)``: a smooth ``(1, D, *shape)`` float64 velocity field in voxels."""
    return sinusoidal_velocity
