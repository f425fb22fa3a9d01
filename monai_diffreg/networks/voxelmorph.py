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

from ..functional.warp import warp
from .blocks import convolution, init_flow_head
from .contract import VelocityRefinementStart
from .pair_geometry import VelocityGridGeometry, check_registration_pair, crop_spatial
from .vxm_unet import VxmUNet

__all__ = ["VoxelMorph"]


class VoxelMorph(VelocityGridGeometry, nn.Module):
    """Diffeomorphic VoxelMorph: one velocity field per pair, bidirectional outputs.

    Geometry of :class:`~monai_diffreg.networks.pair_geometry.VelocityGridGeometry` (U-Net divisor
    ``2**len(enc_channels)``): the velocity lives on the grid ``n = ceil(S' / int_downsize)`` of the
    images resampled by ``image_scale`` to ``S'``, its voxels ``int_downsize / image_scale`` input voxels wide.

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
        self._init_geometry(spatial_dims, in_channels, int_downsize, image_scale, num_steps)
        self.unet = VxmUNet(spatial_dims, in_channels, enc_channels, dec_channels, int_downsize, norm)
        self.flow_head = convolution(spatial_dims, self.unet.out_channels, spatial_dims)
        init_flow_head(self.flow_head)

    def velocity(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Velocity ``(B, D, *n)`` for the pair, in velocity-grid voxels."""
        check_registration_pair("VoxelMorph", moving, fixed, self.spatial_dims, self.in_channels)
        features = self._unet_features(torch.cat([moving, fixed], dim=1))
        return crop_spatial(self.flow_head(features), self.velocity_size(moving.shape[2:]))

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
