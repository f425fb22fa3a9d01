"""MDReg-Net: multi-resolution diffeomorphic registration with deep self-supervision.

Li and Fan, "MDReg-Net: Multi-resolution diffeomorphic image registration using fully
convolutional networks with deep self-supervision" (arXiv 2010.01465). One small U-Net per
level predicts an incremental stationary velocity field ``v^l`` from (fixed, moving warped by
the coarser levels); the velocities are accumulated (eq. 3, ``v~^l = sum_{i<=l} v^i``, each
coarser sum upsampled with its vectors rescaled), a Gaussian smoothing layer smooths the
finest accumulated velocity, and ``phi = exp(v~^L)``, ``phi^-1 = exp(-v~^L)`` by scaling and
squaring. No public code exists; the choices the paper leaves open are listed in
``bundles/mdregnet/docs/README.md`` and below.

Geometry (``L`` levels, encoder depth ``E = len(enc_channels)``). The images ``(B, C, *S)``
are resampled by ``image_scale`` to ``S'`` (area averaging) and padded at the end of every
axis (edge values) to ``P``, a multiple of ``2**E``. Level ``l = 0 .. L-1`` (coarse to fine)
works on the grid ``P / 2**(L - l)``: 1/8, 1/4, 1/2 for ``L = 3``. Every sub-network sees the
full-resolution pair: its encoder has ``E`` stride-2 convolutions (to ``1 / 2**E``), its
decoder ``E - L + l`` stride-2 transposed convolutions back to its level, each followed by
the encoder's features at that resolution (U-Net skip connections), then two convolutions
(32 and 16 filters) and a 3x3(x3) output convolution giving ``D`` velocity channels.
Choices the paper does not fix: skip connections (it says "U-Net"), the output convolution
initialised ~ N(0, 1e-5) as in VoxelMorph (training starts at the identity), the finest
velocity integrated on its 1/2 grid and the displacement linearly upsampled with vector
rescaling (VoxelMorph's approach; integrating at full resolution costs 8x more), and the
image pyramid made of 2-cell averages (the paper's 3-wide stride-2 pooling centres coarse
voxel ``j`` on fine voxel ``2j``, while linear upsampling, as our fields use, centres it on
``2j + 1/2``; 2-cell averages keep the per-level losses on the fields' own geometry).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..functional.integrate import integrate_velocity
from ..functional.resize import resize_field, resize_image
from ..functional.smoothing import gaussian_smooth
from ..functional.warp import warp
from ..validation import check_positive
from .blocks import conv_block, convolution, init_flow_head
from .contract import VelocityRefinementStart
from .pair_geometry import check_pair_network_settings, check_registration_pair, crop_spatial, pad_to_multiple, scaled_size
from .pyramid import coarse_to_fine

__all__ = ["MDRegSubNetwork", "MDRegNet"]


class MDRegSubNetwork(nn.Module):
    """One MDReg-Net level: a U-Net from the full-resolution pair to a velocity field at ``1 / 2**(E - num_up)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of (moving, fixed) concatenated.
        enc_channels: widths of the ``E`` stride-2 encoder convolutions (the paper: 16, 32, 32, 32).
        num_up: number of stride-2 transposed convolutions (the paper: 1, 2, 3 for 1/8, 1/4, 1/2).
        up_channels: width of the transposed convolutions (32).
        out_channels: widths of the convolutions before the output convolution (32, 16).
        norm: ``None`` (the paper) or ``"instance"`` (see :func:`~monai_diffreg.networks.blocks.conv_block`).

    ``forward(x)``: ``(B, in_channels, *P)`` with ``P`` divisible by ``2**E`` ->
    ``(B, spatial_dims, *(P / 2**(E - num_up)))`` velocity in voxels of that grid.
    """

    def __init__(self, spatial_dims: int, in_channels: int, enc_channels: Sequence[int], num_up: int,
                 up_channels: int = 32, out_channels: Sequence[int] = (32, 16), norm: str | None = None) -> None:
        super().__init__()
        enc = [int(c) for c in enc_channels]
        if not 0 <= num_up < len(enc):
            raise ValueError(f"MDRegSubNetwork(): 'num_up' must be in [0, {len(enc) - 1}], got {num_up!r}")
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in enc:
            self.encoder.append(conv_block(spatial_dims, channels, width, norm, stride=2))
            channels = width
        self.decoder = nn.ModuleList()
        for i in range(num_up):
            self.decoder.append(conv_block(spatial_dims, channels, up_channels, norm, stride=2, transposed=True))
            channels = up_channels + enc[len(enc) - 2 - i]
        layers = []
        for width in out_channels:
            layers.append(conv_block(spatial_dims, channels, int(width), norm))
            channels = int(width)
        self.head = nn.Sequential(*layers)
        self.flow = init_flow_head(convolution(spatial_dims, channels, spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        for i, block in enumerate(self.decoder):
            x = torch.cat([block(x), skips[len(skips) - 2 - i]], dim=1)
        return self.flow(self.head(x))


class _LevelPass(NamedTuple):
    """What one pass through the levels computes, on the padded network grid ``P``."""

    increments: list[torch.Tensor]  # v^l on the level grids
    velocities: list[torch.Tensor]  # accumulated v~^l (the finest one smoothed)
    coarse_ddfs: list[torch.Tensor]  # exp(v~^l) on the level grids, every level but the finest
    moving: torch.Tensor  # the resampled, padded images
    fixed: torch.Tensor


class MDRegNet(nn.Module):
    """MDReg-Net (module docstring): per-level incremental SVFs, accumulated, smoothed, integrated.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of moving + fixed (2 for single-channel images).
        levels: number of levels ``L`` (3: velocities at 1/8, 1/4, 1/2); ``1 <= L <= len(enc_channels)``.
        enc_channels: encoder widths of every sub-network (16, 32, 32, 32).
        up_channels: width of the transposed convolutions (32).
        out_channels: widths of the two convolutions before the output one (32, 16).
        num_steps: scaling-and-squaring steps (7).
        smoothing: apply the Gaussian smoothing layer to the finest accumulated velocity.
        smoothing_sigma: its standard deviation in velocity voxels (1.732).
        smoothing_kernel_size: its odd number of taps per axis (3).
        image_scale: resampling factor applied to the images first (1.0: none; 0.5 runs the
            network on 2 mm images given 1 mm ones). Use a network at the scale it was trained at.
        norm: ``None`` (the paper) or ``"instance"``.

    ``forward(moving, fixed)`` returns a dict with always the same keys (``S`` input size,
    ``n_l`` the level-``l`` grid cropped to the image: ``ceil(S' / 2**(L - l))``):

    * ``"ddf"``, ``"inverse_ddf"``: ``(B, D, *S)`` displacements of ``phi = exp(v~^L)`` and
      ``phi^-1 = exp(-v~^L)`` in input voxels; ``ddf`` warps the moving image onto the fixed one.
    * ``"velocity"``: ``(B, D, *n_{L-1})`` the finest accumulated (and smoothed) velocity.
    * ``"warped"``, ``"warped_fixed"``: ``(B, C, *S)`` moving warped by ``ddf``, fixed by ``inverse_ddf``.
    * ``"velocity_levels"``: tuple of the incremental velocities ``v^l`` ``(B, D, *n_l)``, coarse to fine.
    * ``"fixed_levels"``, ``"moving_levels"``: tuples of the image pyramids the per-level
      losses compare with: 2-cell averages on the grids ``n_0 .. n_{L-2}``, then the input images.
    * ``"warped_levels"``, ``"warped_fixed_levels"``: the moving (fixed) pyramid image of each
      level warped by that level's ``exp(v~^l)`` (``exp(-v~^l)``); the last entries are
      ``"warped"`` and ``"warped_fixed"``. Save them to inspect what every level does.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 2, levels: int = 3,
                 enc_channels: Sequence[int] = (16, 32, 32, 32), up_channels: int = 32,
                 out_channels: Sequence[int] = (32, 16), num_steps: int = 7, smoothing: bool = True,
                 smoothing_sigma: float = 1.732, smoothing_kernel_size: int = 3, image_scale: float = 1.0,
                 norm: str | None = None) -> None:
        super().__init__()
        caller = "MDRegNet"
        if spatial_dims not in (2, 3):
            raise ValueError(f"{caller}(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
        check_pair_network_settings(caller, in_channels, num_steps)
        depth = len(enc_channels)
        if not isinstance(levels, int) or not 1 <= levels <= depth:
            raise ValueError(f"{caller}(): 'levels' must be an integer in [1, len(enc_channels)={depth}], got {levels!r}")
        if not isinstance(smoothing, bool):
            raise ValueError(f"{caller}(): 'smoothing' must be True or False, got {smoothing!r}")
        if not isinstance(smoothing_kernel_size, int) or smoothing_kernel_size < 1 or smoothing_kernel_size % 2 == 0:
            raise ValueError(f"{caller}(): 'smoothing_kernel_size' must be an odd integer >= 1, got {smoothing_kernel_size!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.levels = levels
        self.num_steps = num_steps
        self.smoothing = smoothing
        self.smoothing_sigma = check_positive(smoothing_sigma, "smoothing_sigma", caller)
        self.smoothing_kernel_size = smoothing_kernel_size
        self.image_scale = check_positive(image_scale, "image_scale", caller)
        self.divisor = 2**depth
        self.norm = norm
        self.subnetworks = nn.ModuleList(
            MDRegSubNetwork(spatial_dims, in_channels, enc_channels, depth - levels + level, up_channels,
                            out_channels, norm)
            for level in range(levels)
        )

    def level_sizes(self, spatial_size: Sequence[int]) -> list[tuple[int, ...]]:
        """Level grids ``n_l = ceil(S' / 2**(L - l))`` (cropped to the image) for an input of size ``S``."""
        size = scaled_size(spatial_size, self.image_scale)
        return [tuple(-(-s // 2 ** (self.levels - level)) for s in size) for level in range(self.levels)]

    def _run_levels(self, moving: torch.Tensor, fixed: torch.Tensor) -> _LevelPass:
        """Run the levels on the padded grid ``P`` (see :class:`_LevelPass` for what comes back): the images
        resampled and padded, then :func:`~monai_diffreg.networks.pyramid.coarse_to_fine` with velocities
        integrated by scaling and squaring and the smoothing layer on the finest."""
        check_registration_pair("MDRegNet", moving, fixed, self.spatial_dims, self.in_channels)
        size = scaled_size(moving.shape[2:], self.image_scale)
        moving_p = pad_to_multiple(resize_image(moving, size=size, mode="area"), self.divisor)
        fixed_p = pad_to_multiple(resize_image(fixed, size=size, mode="area"), self.divisor)
        if self.norm is not None and math.prod(s // self.divisor for s in fixed_p.shape[2:]) < 2:
            raise ValueError(
                f"MDRegNet(): with norm={self.norm!r} the coarsest features (1/{self.divisor} of the network grid) need "
                f"more than one voxel for the normalisation statistics; images of shape {tuple(moving.shape)} "
                f"(network grid {size}) are too small"
            )
        levels = [lambda warped, fixed, sub=subnetwork: sub(torch.cat([warped, fixed], dim=1))
                  for subnetwork in self.subnetworks]
        run = coarse_to_fine(
            levels, moving_p, fixed_p, to_displacement=lambda velocity: integrate_velocity(velocity, self.num_steps),
            finish=(lambda v: gaussian_smooth(v, self.smoothing_sigma, self.smoothing_kernel_size)) if self.smoothing else None,
        )
        return _LevelPass(run.increments, run.fields, run.displacements, moving_p, fixed_p)

    def _on_input_grid(self, ddf: torch.Tensor, padded_size: Sequence[int], spatial_size: Sequence[int]) -> torch.Tensor:
        """A displacement on a level grid of the padded network grid -> ``(B, D, *S)`` in input voxels."""
        ddf = crop_spatial(resize_field(ddf, size=padded_size), scaled_size(spatial_size, self.image_scale))
        return resize_field(ddf, size=spatial_size)

    def _full_ddf(self, velocity: torch.Tensor, padded_size: Sequence[int], spatial_size: Sequence[int]) -> torch.Tensor:
        """``exp(velocity)`` of a level-grid velocity -> displacement ``(B, D, *S)`` in input voxels."""
        return self._on_input_grid(integrate_velocity(velocity, self.num_steps), padded_size, spatial_size)

    def displacements(self, moving: torch.Tensor, fixed: torch.Tensor, inverse: bool = True) -> dict[str, torch.Tensor]:
        """Only ``"ddf"`` and (``inverse``) ``"inverse_ddf"`` (inference without the images and levels of :meth:`forward`)."""
        run = self._run_levels(moving, fixed)
        return self._displacements(run.velocities[-1], run.moving.shape[2:], moving.shape[2:], inverse)

    def _displacements(self, velocity: torch.Tensor, padded: Sequence[int], size: Sequence[int],
                       inverse: bool) -> dict[str, torch.Tensor]:
        out = {"ddf": self._full_ddf(velocity, padded, size)}
        if inverse:
            out["inverse_ddf"] = self._full_ddf(-velocity, padded, size)
        return out

    def level_displacements(self, moving: torch.Tensor, fixed: torch.Tensor) -> list[torch.Tensor]:
        """Displacement ``(B, D, *S)`` of every level's accumulated field ``exp(v~^l)`` on the input grid, coarse to fine.

        The last one is :meth:`forward`'s ``"ddf"``; the others show what the coarser levels alone achieve.
        """
        run = self._run_levels(moving, fixed)
        size, padded = moving.shape[2:], run.moving.shape[2:]
        coarse = [self._on_input_grid(ddf, padded, size) for ddf in run.coarse_ddfs]
        return [*coarse, self._full_ddf(run.velocities[-1], padded, size)]

    def warped_level_images(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The moving image warped by every level's accumulated field, on the input grid, for inspection.

        Returns:
            ``(B, L * C, *S)``: channel block ``l`` is ``moving`` warped by
            ``level_displacements(moving, fixed)[l]`` (coarse to fine; the last equals ``"warped"``).
        """
        return torch.cat([warp(moving, ddf) for ddf in self.level_displacements(moving, fixed)], dim=1)

    def refinement_start(self, moving: torch.Tensor, fixed: torch.Tensor) -> VelocityRefinementStart:
        """Test-time refinement of the finest smoothed velocity ``v~^L`` (:mod:`~monai_diffreg.networks.contract`).

        As in training, the images are those the network sees (``image_scale``, padded) and the
        velocity stays on the 1/2 grid; the default preconditioning is the smoothing layer (its
        sigma and kernel, so the refined velocity stays that layer's output as the network's is),
        voxel-wise without it (refined fields then fold sooner). The paper has no test-time
        optimisation; :class:`~monai_diffreg.losses.mdreg.MDRegNetLoss` refines with its finest
        level's terms, the regulariser on the whole velocity (the coarser levels' share is no
        longer separate once the velocity is optimised).
        """
        run = self._run_levels(moving, fixed)
        sigma, kernel = (self.smoothing_sigma, self.smoothing_kernel_size) if self.smoothing else (None, None)
        return VelocityRefinementStart(run.fixed, run.moving, run.velocities[-1], 2, self.num_steps, sigma, kernel)

    def refined_outputs(self, moving: torch.Tensor, fixed: torch.Tensor, velocity: torch.Tensor,
                        start: VelocityRefinementStart) -> dict[str, torch.Tensor]:
        """``"ddf"``, ``"inverse_ddf"`` ``(B, D, *S)``, ``"velocity"`` ``(B, D, *n_{L-1})`` and ``"warped"`` for a refined velocity."""
        size, padded = moving.shape[2:], start.moving.shape[2:]
        ddf = self._full_ddf(velocity, padded, size)
        return {"ddf": ddf, "inverse_ddf": self._full_ddf(-velocity, padded, size),
                "velocity": crop_spatial(velocity, self.level_sizes(size)[-1]), "warped": warp(moving, ddf)}

    def refined_displacements(self, moving: torch.Tensor, fixed: torch.Tensor, velocity: torch.Tensor,
                              start: VelocityRefinementStart, inverse: bool = True) -> dict[str, torch.Tensor]:
        """Only ``"ddf"`` and (``inverse``) ``"inverse_ddf"`` of a refined velocity (no warped image)."""
        return self._displacements(velocity, start.moving.shape[2:], moving.shape[2:], inverse)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor | tuple[torch.Tensor, ...]]:
        """Register ``moving`` ``(B, C_m, *S)`` to ``fixed`` ``(B, C_f, *S)``; see the class docstring."""
        run = self._run_levels(moving, fixed)
        size, padded = moving.shape[2:], run.moving.shape[2:]
        sizes = self.level_sizes(size)
        ddf = self._full_ddf(run.velocities[-1], padded, size)
        inverse_ddf = self._full_ddf(-run.velocities[-1], padded, size)
        warped, warped_fixed = warp(moving, ddf), warp(fixed, inverse_ddf)
        fixed_levels, moving_levels, warped_levels, warped_fixed_levels = [], [], [], []
        for level, forward_l in enumerate(run.coarse_ddfs):
            grid = forward_l.shape[2:]
            moving_l = resize_image(run.moving, size=grid, mode="area")
            fixed_l = resize_image(run.fixed, size=grid, mode="area")
            inverse_l = integrate_velocity(-run.velocities[level], self.num_steps)
            fixed_levels.append(crop_spatial(fixed_l, sizes[level]))
            moving_levels.append(crop_spatial(moving_l, sizes[level]))
            warped_levels.append(crop_spatial(warp(moving_l, forward_l), sizes[level]))
            warped_fixed_levels.append(crop_spatial(warp(fixed_l, inverse_l), sizes[level]))
        return {
            "ddf": ddf,
            "inverse_ddf": inverse_ddf,
            "velocity": crop_spatial(run.velocities[-1], sizes[-1]),
            "warped": warped,
            "warped_fixed": warped_fixed,
            "velocity_levels": tuple(crop_spatial(v, n) for v, n in zip(run.increments, sizes)),
            "fixed_levels": (*fixed_levels, fixed),
            "moving_levels": (*moving_levels, moving),
            "warped_levels": (*warped_levels, warped),
            "warped_fixed_levels": (*warped_fixed_levels, warped_fixed),
        }
