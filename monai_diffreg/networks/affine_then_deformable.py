"""An affine registration network followed by a deformable one, as one registration network.

The two-stage model of SynthMorph 2024 (Hoffmann et al., "Anatomy-aware and acquisition-agnostic
joint registration with SynthMorph", Imaging Neuroscience 2024): the affine stage (e.g.
:class:`~monai_diffreg.networks.keypoint_affine.KeypointAffine`) aligns the moving image to the fixed
one, the deformable stage (e.g. :class:`~monai_diffreg.networks.voxelmorph.VoxelMorph`) registers the
affinely moved image to the fixed one, and the total transform is ``phi_affine o phi_deformable``
(the deformable field acts on the fixed grid first), as
:func:`monai_diffreg.api.register`'s affine stage composes with a method's fields. The recipe of the
paper trains the affine stage first, then the deformable stage on its outputs with the affine stage
frozen (``freeze_affine=True``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..functional.affine import compose_affine_ddf
from ..functional.compose import compose_ddf
from ..functional.warp import warp
from ..validation import check_flag
from .contract import RegistrationNetwork

__all__ = ["AffineThenDeformable"]


class AffineThenDeformable(nn.Module):
    """``phi = phi_affine o phi_deformable`` from an affine and a deformable registration network.

    Args:
        affine: a :class:`~monai_diffreg.networks.contract.RegistrationNetwork` whose ``forward`` and
            ``displacements`` also return ``"affine"`` ``(B, D, D + 1)`` (e.g. :class:`~monai_diffreg.networks.keypoint_affine.KeypointAffine`).
        deformable: a :class:`~monai_diffreg.networks.contract.RegistrationNetwork` of the same ``spatial_dims``.
        freeze_affine: run the affine stage without gradients, its parameters with ``requires_grad=False``
            and the stage in eval mode whatever :meth:`train` is asked (training the deformable stage on a
            trained affine stage).

    ``forward(moving, fixed)`` (``a``, ``d``: the two stages' outputs, the deformable stage seeing
    ``warp(moving, a["ddf"])`` and ``fixed``) returns:

    * ``"ddf"``: ``(B, D, *S)`` the displacement of ``phi_affine o phi_deformable``, in input voxels: the
      affine applied to the deformed grid in closed form (:func:`~monai_diffreg.functional.affine.compose_affine_ddf`
      of ``a["affine"]`` and ``d["ddf"]``; no interpolation of the affine field).
    * ``"inverse_ddf"``: ``(B, D, *S)`` ``compose_ddf(d["inverse_ddf"], a["inverse_ddf"])``.
    * ``"affine"``: ``a["affine"]``.
    * ``"warped"``: ``(B, C, *S)`` moving warped by ``"ddf"`` (one interpolation).
    * ``"velocity"``: ``d["velocity"]`` when the deformable stage gives one (for a smoothness loss on
      it, e.g. :class:`~monai_diffreg.losses.synthmorph.SynthMorphLoss`). The deformable stage's other
      outputs describe the affinely moved image and are not passed on.
    """

    learns_affine = True  # networks.contract: its outputs include "affine"

    def __init__(self, affine: nn.Module, deformable: nn.Module, freeze_affine: bool = False) -> None:
        super().__init__()
        caller = "AffineThenDeformable"
        for name, stage in (("affine", affine), ("deformable", deformable)):
            if not isinstance(stage, nn.Module) or not isinstance(stage, RegistrationNetwork):
                raise TypeError(f"{caller}(): '{name}' must be an nn.Module with forward(moving, fixed), "
                                f"displacements(moving, fixed, inverse) and spatial_dims, got {type(stage).__name__}")
        if affine.spatial_dims != deformable.spatial_dims:
            raise ValueError(f"{caller}(): 'affine' and 'deformable' must have the same spatial_dims, "
                             f"got {affine.spatial_dims} and {deformable.spatial_dims}")
        self.freeze_affine = check_flag(freeze_affine, "freeze_affine", caller)
        self.spatial_dims = affine.spatial_dims
        self.affine = affine
        self.deformable = deformable
        if freeze_affine:
            affine.requires_grad_(False)
            affine.eval()

    def extra_repr(self) -> str:
        """Both stages with their own settings (what ``summary.json``'s ``method_settings`` records)."""
        stages = ", ".join(f"{name}={type(stage).__name__}({stage.extra_repr()})"
                           for name, stage in (("affine", self.affine), ("deformable", self.deformable)))
        return f"{stages}, freeze_affine={self.freeze_affine}"

    def train(self, mode: bool = True) -> AffineThenDeformable:
        """As :meth:`nn.Module.train`, except that a frozen affine stage stays in eval mode."""
        super().train(mode)
        if self.freeze_affine:
            self.affine.eval()
        return self

    def _affine_stage(self, moving: torch.Tensor, fixed: torch.Tensor, inverse: bool | None) -> dict[str, torch.Tensor]:
        """The affine stage's ``forward`` (``inverse`` None) or ``displacements``, checked to give ``"affine"``."""
        with torch.no_grad() if self.freeze_affine else contextlib.nullcontext():
            a = self.affine(moving, fixed) if inverse is None else self.affine.displacements(moving, fixed, inverse)
        if "affine" not in a:
            raise ValueError(f"AffineThenDeformable(): the affine stage ({type(self.affine).__name__}) must return "
                             f"an 'affine' matrix, got keys {sorted(a)}")
        return a

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Register ``moving`` ``(B, C, *S)`` to ``fixed``; see the class docstring."""
        a = self._affine_stage(moving, fixed, None)
        d = self.deformable(warp(moving, a["ddf"]), fixed)
        ddf = compose_affine_ddf(a["affine"], d["ddf"])
        out = {"ddf": ddf, "inverse_ddf": compose_ddf(d["inverse_ddf"], a["inverse_ddf"]), "affine": a["affine"],
               "warped": warp(moving, ddf)}
        if "velocity" in d:
            out["velocity"] = d["velocity"]
        return out

    def displacements(self, moving: torch.Tensor, fixed: torch.Tensor, inverse: bool = True) -> dict[str, torch.Tensor]:
        """``"ddf"``, (``inverse``) ``"inverse_ddf"`` and the affine stage's ``"affine"`` ``(B, D, D + 1)``
        (inference: the fields without the warped image; the matrix for ``affine.tfm``)."""
        a = self._affine_stage(moving, fixed, inverse)
        d = self.deformable.displacements(warp(moving, a["ddf"]), fixed, inverse)
        out = {"ddf": compose_affine_ddf(a["affine"], d["ddf"]), "affine": a["affine"]}
        if inverse:
            out["inverse_ddf"] = compose_ddf(d["inverse_ddf"], a["inverse_ddf"])
        return out
