"""Learned affine registration through keypoints (the affine stage of SynthMorph 2024, KeyMorph).

Hoffmann et al., "Anatomy-aware and acquisition-agnostic joint registration with SynthMorph"
(Imaging Neuroscience 2024); Wang et al., "A robust and interpretable deep learning framework for
multi-modal registration via keypoints" (MedIA 2023). One feature network sees each image alone
(siamese: the same weights for the moving and the fixed image, single-channel each) and gives
``K`` non-negative feature maps per image; the centre of mass of map ``k`` is keypoint ``k``
(:func:`~monai_diffreg.functional.keypoints.feature_centroids`), and the affine transform is the
weighted least-squares fit of the moving keypoints to the fixed ones
(:func:`~monai_diffreg.functional.keypoints.fit_affine`). Since no image is compared with the other,
nothing ties the network to a contrast pairing; trained on synthetic images with random contrasts and
a Dice loss on their label maps (:class:`~monai_diffreg.losses.synthmorph.SynthMorphLoss`, with
``regularization_weight=0``: the affine needs no smoothness term) it becomes contrast-agnostic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..functional.affine import affine_to_ddf, invert_affine, rescale_affine
from ..functional.keypoints import MASS_EPS, feature_centroids, fit_affine
from ..functional.resize import resize_image
from ..functional.warp import warp
from ..validation import check_integer, check_positive, check_spatial_tensor
from .blocks import convolution
from .pair_geometry import check_registration_pair, crop_spatial, pad_to_multiple, scaled_size
from .vxm_unet import VxmUNet

__all__ = ["KeypointAffine"]


class KeypointAffine(nn.Module):
    """Affine registration from ``K`` learned keypoints per image (module docstring).

    Each image ``(B, 1, *S)`` is resampled by ``image_scale`` (area) to ``S'`` and padded at the end
    (edge values) to a multiple of ``2**len(enc_channels)``; a :class:`VxmUNet` (full resolution,
    ``int_downsize=1``), a 3x3(x3) convolution to ``K`` channels and a ReLU give the feature maps,
    cropped back to ``S'`` (so that the padding does not move the keypoints). ReLU rather than
    softplus: a map can be exactly zero away from its structure, where softplus would leave a floor
    of ``log 2`` per voxel pulling every keypoint towards the image centre. Keypoint ``k`` has the
    weight ``m_f m_m / (m_f + m_m)`` (half the harmonic mean of its masses in the two images: zero when
    the map is empty in either, differentiable everywhere, unlike ``sqrt(m_f m_m)`` at zero). The fit
    is made on the grid ``S'`` and taken to the input grid by
    :func:`~monai_diffreg.functional.affine.rescale_affine`.

    Args:
        spatial_dims: 2 or 3.
        num_keypoints: ``K`` (>= 1; the fit needs ``D + 1`` keypoints with weight to determine every
            direction, the identity fills in the others).
        enc_channels, dec_channels: U-Net widths (see :class:`VxmUNet`; the keypoint convolution sees
            ``dec_channels[-1] + enc_channels[0]`` channels with ``len(dec_channels) == len(enc_channels)``).
        image_scale: resampling factor of the images before the network (1.0: none).
        norm: U-Net normalisation, ``None`` or ``"instance"`` (default: features invariant to a linear
            rescaling of the intensities, which a contrast-agnostic network should ignore).

    ``forward(moving, fixed)``, both ``(B, 1, *S)``, returns:

    * ``"affine"``: ``(B, D, D + 1)`` ``[A | t]`` mapping fixed-grid voxel indices to moving-grid voxel
      indices of the input grid (:mod:`~monai_diffreg.functional.affine`).
    * ``"ddf"``: ``(B, D, *S)`` its displacement in input voxels (warps moving onto fixed).
    * ``"inverse_ddf"``: ``(B, D, *S)`` the displacement of the inverse matrix.
    * ``"warped"``: ``(B, 1, *S)`` moving warped by ``ddf``.
    """

    learns_affine = True  # networks.contract: its outputs include "affine"

    def __init__(self, spatial_dims: int = 3, num_keypoints: int = 64, enc_channels: Sequence[int] = (16, 32, 32, 32),
                 dec_channels: Sequence[int] = (32, 32, 32, 32), image_scale: float = 0.5,
                 norm: str | None = "instance") -> None:
        super().__init__()
        caller = "KeypointAffine"
        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"{caller}(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
        self.spatial_dims = spatial_dims
        self.num_keypoints = check_integer(num_keypoints, "num_keypoints", caller, 1)
        self.image_scale = check_positive(image_scale, "image_scale", caller)
        self.norm = norm
        self.unet = VxmUNet(spatial_dims, 1, enc_channels, dec_channels, int_downsize=1, norm=norm)
        self.keypoint_head = convolution(spatial_dims, self.unet.out_channels, num_keypoints)

    def extra_repr(self) -> str:
        return (f"spatial_dims={self.spatial_dims}, num_keypoints={self.num_keypoints}, "
                f"image_scale={self.image_scale}, norm={self.norm!r}")

    def network_size(self, spatial_size: Sequence[int]) -> tuple[int, ...]:
        """Image size ``S'`` seen by the U-Net for an input of size ``S`` (after ``image_scale``)."""
        return scaled_size(spatial_size, self.image_scale)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Keypoint feature maps ``(B, K, *S')`` (non-negative) of single-channel images ``(B, 1, *S)``."""
        check_spatial_tensor(image, "image", "KeypointAffine.features", spatial_dims=self.spatial_dims, channels=1)
        size = self.network_size(image.shape[2:])
        x = pad_to_multiple(resize_image(image, size=size, mode="area"), self.unet.divisor)
        return crop_spatial(F.relu(self.keypoint_head(self.unet(x))), size)

    def affine_matrix(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The matrix ``(B, D, D + 1)`` on the input grid (class docstring), both images through one U-Net pass."""
        caller = "KeypointAffine"
        check_spatial_tensor(moving, "moving", caller, spatial_dims=self.spatial_dims, channels=1)
        check_spatial_tensor(fixed, "fixed", caller, spatial_dims=self.spatial_dims, channels=1)
        check_registration_pair(caller, moving, fixed, self.spatial_dims, 2)
        batch = moving.shape[0]
        features = self.features(torch.cat([moving, fixed]))
        points, masses = feature_centroids(features)
        moving_mass, fixed_mass = masses[:batch], masses[batch:]
        weights = moving_mass * fixed_mass / (moving_mass + fixed_mass).clamp_min(MASS_EPS)
        matrix = fit_affine(points[batch:], points[:batch], weights)
        return rescale_affine(matrix, features.shape[2:], moving.shape[2:])

    def displacements(self, moving: torch.Tensor, fixed: torch.Tensor, inverse: bool = True) -> dict[str, torch.Tensor]:
        """``"affine"``, ``"ddf"`` and (``inverse``) ``"inverse_ddf"`` (inference without the warped image)."""
        matrix = self.affine_matrix(moving, fixed)
        return {"affine": matrix, **self._displacements(matrix, moving.shape[2:], inverse)}

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Register ``moving`` to ``fixed``, both ``(B, 1, *S)``; see the class docstring."""
        matrix = self.affine_matrix(moving, fixed)
        out = self._displacements(matrix, moving.shape[2:], inverse=True)
        return {"affine": matrix, **out, "warped": warp(moving, out["ddf"])}

    @staticmethod
    def _displacements(matrix: torch.Tensor, spatial_size: Sequence[int], inverse: bool) -> dict[str, torch.Tensor]:
        out = {"ddf": affine_to_ddf(matrix, spatial_size)}
        if inverse:
            out["inverse_ddf"] = affine_to_ddf(invert_affine(matrix), spatial_size)
        return out
