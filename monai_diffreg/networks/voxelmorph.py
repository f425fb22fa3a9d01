"""Deterministic diffeomorphic VoxelMorph, the registration network of SynthMorph.

Dalca, Balakrishnan, Guttag, Sabuncu: "Unsupervised learning of probabilistic diffeomorphic
registration for images and surfaces" (MedIA 2019), without the variance head; Hoffmann et al.:
"SynthMorph: learning contrast-invariant registration without acquired images" (IEEE TMI
2022) train this network on synthetic images (:class:`~monai_diffreg.losses.synthmorph.SynthMorphLoss`).
A U-Net maps (moving, fixed) to a stationary velocity field ``v``, integrated by scaling and
squaring to ``phi = exp(v)`` and ``phi^-1 = exp(-v)``. It is the deterministic counterpart of
:class:`~monai_diffreg.networks.prob_voxelmorph.ProbabilisticVoxelMorph` (same U-Net, geometry
and velocity head, whose weights start ~ N(0, 1e-5), so ``v`` is ~0 at initialisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..functional.resize import resize_image
from ..functional.warp import warp
from ..validation import check_field, check_positive, check_spatial_tensor
from .blocks import convolution, init_flow_head
from .contract import VelocityRefinementStart
from .pair_geometry import (
    check_pair_network_settings,
    check_registration_pair,
    crop_spatial,
    pad_to_multiple,
    scaled_size,
    velocity_displacements,
    velocity_grid_size,
    velocity_to_input_ddf,
)
from .vxm_unet import VxmUNet

__all__ = ["VoxelMorph"]


class VoxelMorph(nn.Module):
    """Diffeomorphic VoxelMorph: one velocity field per pair, bidirectional outputs.

    Geometry as :class:`~monai_diffreg.networks.prob_voxelmorph.ProbabilisticVoxelMorph`: the
    images ``(B, C, *S)`` are resampled by ``image_scale`` (area) to ``S'``, padded at the end
    (edge values) to a multiple of ``2**len(enc_channels)``; the velocity lives on the grid
    ``n = ceil(S' / int_downsize)`` (its voxels are ``int_downsize / image_scale`` input voxels
    wide) and is integrated there by ``num_steps`` scaling-and-squaring steps, then upsampled with
    vector rescaling, cropped to ``S'`` and resized to ``S``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of moving + fixed (2 for single-channel images).
        enc_channels, dec_channels: U-Net widths (VoxelMorph's default).
        int_downsize: the velocity grid is ``1 / int_downsize`` of the network's input grid (a power of two).
        image_scale: resampling factor of the images before the network (1.0: none).
        num_steps: scaling-and-squaring steps (7).
        norm: U-Net normalisation, ``None`` (VoxelMorph) or ``"instance"`` (see :class:`VxmUNet`).

    ``forward(moving, fixed)`` returns (``n`` = velocity grid):

    * ``"ddf"``: ``(B, D, *S)`` displacement of ``exp(velocity)`` (warps moving onto fixed), input voxels.
    * ``"inverse_ddf"``: ``(B, D, *S)`` displacement of ``exp(-velocity)``.
    * ``"velocity"``: ``(B, D, *n)``, in velocity-grid voxels.
    * ``"warped"``: ``(B, C_moving, *S)`` moving warped by ``ddf``.
    * ``"warped_fixed"``: ``(B, C_fixed, *S)`` fixed warped by ``inverse_ddf`` (for bidirectional losses).

    :meth:`refinement_start` and :meth:`refined_outputs` let
    :func:`~monai_diffreg.engines.refinement.refine_network` optimise the velocity for one pair.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 2, enc_channels: Sequence[int] = (16, 32, 32, 32),
                 dec_channels: Sequence[int] = (32, 32, 32, 32, 32, 16, 16), int_downsize: int = 2,
                 image_scale: float = 1.0, num_steps: int = 7, norm: str | None = None) -> None:
        super().__init__()
        caller = "VoxelMorph"
        check_pair_network_settings(caller, in_channels, num_steps)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.int_downsize = int_downsize
        self.image_scale = check_positive(image_scale, "image_scale", caller)
        self.num_steps = num_steps
        self.unet = VxmUNet(spatial_dims, in_channels, enc_channels, dec_channels, int_downsize, norm)
        self.flow_head = convolution(spatial_dims, self.unet.out_channels, spatial_dims)
        init_flow_head(self.flow_head)

    def network_size(self, spatial_size: Sequence[int]) -> tuple[int, ...]:
        """Image size ``S'`` seen by the U-Net for an input of size ``S`` (after ``image_scale``)."""
        return scaled_size(spatial_size, self.image_scale)

    def velocity_size(self, spatial_size: Sequence[int]) -> tuple[int, ...]:
        """Velocity grid ``n = ceil(S' / int_downsize)`` for an input of size ``S``."""
        return velocity_grid_size(self.network_size(spatial_size), self.int_downsize)

    def velocity(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Velocity ``(B, D, *n)`` for the pair, in velocity-grid voxels."""
        check_registration_pair("VoxelMorph", moving, fixed, self.spatial_dims, self.in_channels)
        x = torch.cat([moving, fixed], dim=1)
        x = resize_image(x, size=self.network_size(x.shape[2:]), mode="area")
        features = self.unet(pad_to_multiple(x, self.unet.divisor))
        return crop_spatial(self.flow_head(features), self.velocity_size(moving.shape[2:]))

    def velocity_to_ddf(self, velocity: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
        """Displacement ``(B, D, *S)`` of ``exp(velocity)`` on the input grid of size ``S``.

        Args:
            velocity: ``(B, D, *n)`` with ``n = self.velocity_size(spatial_size)``.
            spatial_size: ``S``, the input images' spatial shape.
        """
        check_field(velocity, "velocity", "VoxelMorph.velocity_to_ddf")
        expected = self.velocity_size(spatial_size)
        if tuple(velocity.shape[2:]) != expected:
            raise ValueError(f"VoxelMorph.velocity_to_ddf(): 'velocity' must have spatial shape {expected} for "
                             f"images of shape {tuple(spatial_size)}, got {tuple(velocity.shape[2:])}")
        return velocity_to_input_ddf(velocity, self.num_steps, self.int_downsize, self.network_size(spatial_size),
                                     spatial_size)

    def _displacements(self, velocity: torch.Tensor, spatial_size: Sequence[int], inverse: bool) -> dict[str, torch.Tensor]:
        return velocity_displacements(velocity, self.num_steps, self.int_downsize, self.network_size(spatial_size),
                                      spatial_size, inverse)

    def outputs_from_velocity(self, moving: torch.Tensor, fixed: torch.Tensor,
                              velocity: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output dict (see the class docstring) for a given velocity field."""
        out = self._displacements(velocity, moving.shape[2:], inverse=True)
        return {**out, "velocity": velocity, "warped": warp(moving, out["ddf"]),
                "warped_fixed": warp(fixed, out["inverse_ddf"])}

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Register ``moving`` ``(B, C_m, *S)`` to ``fixed`` ``(B, C_f, *S)``; see the class docstring."""
        return self.outputs_from_velocity(moving, fixed, self.velocity(moving, fixed))

    def displacements(self, moving: torch.Tensor, fixed: torch.Tensor, inverse: bool = True) -> dict[str, torch.Tensor]:
        """Only ``"ddf"`` and (``inverse``) ``"inverse_ddf"`` (inference without the warped images)."""
        return self._displacements(self.velocity(moving, fixed), moving.shape[2:], inverse)

    def images_on_network_grid(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` resampled by ``image_scale`` (area) and padded at the end (edge values) to ``n * int_downsize``,
        the grid on which the network sees the images (voxel block ``j``, ``int_downsize`` wide, is velocity cell ``j``)."""
        check_spatial_tensor(image, "image", "VoxelMorph.images_on_network_grid", spatial_dims=self.spatial_dims)
        return pad_to_multiple(resize_image(image, size=self.network_size(image.shape[2:]), mode="area"), self.int_downsize)

    def refinement_start(self, moving: torch.Tensor, fixed: torch.Tensor) -> VelocityRefinementStart:
        """Test-time refinement from the network's velocity (:mod:`~monai_diffreg.networks.contract`).

        The velocity stays on its grid and the image term is evaluated on the grid the network
        sees (:meth:`images_on_network_grid`). ``smoothing_sigma`` is None: the updates are
        voxel-wise unless :func:`~monai_diffreg.engines.refinement.refine_network` is given one
        (the loss's regulariser keeps the field smooth); the context is empty (no posterior).
        """
        return VelocityRefinementStart(self.images_on_network_grid(fixed), self.images_on_network_grid(moving),
                                       self.velocity(moving, fixed), self.int_downsize, self.num_steps)

    def refined_outputs(self, moving: torch.Tensor, fixed: torch.Tensor, velocity: torch.Tensor,
                        start: VelocityRefinementStart) -> dict[str, torch.Tensor]:
        """The dict of :meth:`forward` for a refined velocity."""
        return self.outputs_from_velocity(moving, fixed, velocity)

    def refined_displacements(self, moving: torch.Tensor, fixed: torch.Tensor, velocity: torch.Tensor,
                              start: VelocityRefinementStart, inverse: bool = True) -> dict[str, torch.Tensor]:
        """Only ``"ddf"`` and (``inverse``) ``"inverse_ddf"`` of a refined velocity (no warped images)."""
        return self._displacements(velocity, moving.shape[2:], inverse)
