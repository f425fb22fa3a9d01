"""What the momentum models share (private): their settings, their energy and the coarse-to-fine Adam loop on ``m``.

A model is a :data:`MomentumFields` function, the map from a momentum to displacement fields; vSVF
(:func:`~.vsvf.vsvf_fields`) and LDDMM shooting (:func:`~.lddmm.lddmm_fields`) differ only there. The
energy of both is::

    E(m) = image_term(moving o (id + ddf), fixed) + regularization_weight * <m, K m>

with ``m`` and ``v = K * m`` in the units of ``spacing`` (millimetres; voxels when it is None).
The momentum and the maps may live on a grid ``map_factor`` times coarser than the images they are
compared on (Mermaid's low-resolution map, ``map_low_res_factor = 1 / map_factor``): the field is then
upsampled to the images' grid before warping, which makes a shooting model affordable on 3D images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..engines._optim_common import ProgressReporter, check_schedule, downsample, level_grid, progress_reporter
from ..engines.similarity import image_dissimilarity
from ..functional import resize_field, resize_image, warp
from ..losses.similarity import similarity_subset
from ..validation import check_positive
from .kernels import apply_kernel, check_kernel, kernel_energy, kernel_multiplier

__all__ = ["MomentumFields", "MOMENTUM_IMAGE_LOSSES", "to_voxels", "check_momentum_settings", "momentum_energy",
           "register_momentum"]

#: ``fields(momentum, velocity, multiplier, spacing, inverse) -> dict``: the model. ``momentum`` ``m`` and
#: ``velocity`` ``v = K * m`` ``(B, D, *S)`` in the units of ``spacing``, ``multiplier`` ``K``'s
#: (:func:`~.kernels.kernel_multiplier` of the grid); returns ``"ddf"`` (voxels, warps the moving image),
#: ``"inverse_ddf"`` when ``inverse`` and any other fields the model reports.
MomentumFields = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Sequence[float], bool], dict]
#: ``(widths, weights)`` of ``K`` (:func:`~.kernels.check_kernel`).
Kernel = tuple[tuple[float, ...], torch.Tensor]

#: The image terms the momentum models offer (a subset of the similarity registry).
MOMENTUM_IMAGE_LOSSES = similarity_subset(("ncc", "mse"), "the momentum models (monai_diffreg.mermaid)")


def to_voxels(field: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """A vector field ``(B, D, *S)`` in the units of ``spacing`` divided by the voxel size, axis by axis."""
    steps = torch.tensor(spacing, dtype=field.dtype, device=field.device).view(1, -1, *([1] * (field.ndim - 2)))
    return field / steps


def check_momentum_settings(caller: str, *, sigmas, weights, regularization_weight, image_loss, levels, iterations,
                            learning_rate, tolerance, map_factor=1.0) -> tuple[Kernel, tuple[float, ...], tuple[int, ...]]:
    """Validate the settings every momentum model has; return the kernel ``(widths, weights)``, the levels'
    factors and their iteration counts."""
    kernel = check_kernel(sigmas, weights, caller)
    check_positive(regularization_weight, "regularization_weight", caller, allow_zero=True)
    if image_loss not in MOMENTUM_IMAGE_LOSSES:
        raise ValueError(f"{caller}(): 'image_loss' must be one of {list(MOMENTUM_IMAGE_LOSSES)}, got {image_loss!r}")
    factors, counts = check_schedule(levels, iterations, caller)
    check_positive(learning_rate, "learning_rate", caller)
    check_positive(tolerance, "tolerance", caller, allow_zero=True)
    if check_positive(map_factor, "map_factor", caller) < 1:
        raise ValueError(f"{caller}(): 'map_factor' must be >= 1 (how many times coarser the momentum's grid is "
                         f"than the images'), got {map_factor!r}")
    return kernel, factors, counts


def momentum_energy(fields: MomentumFields, momentum: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor,
                    multiplier: torch.Tensor, spacing: Sequence[float], *, regularization_weight: float,
                    image_loss: str = "ncc", ncc_window: int = 9, image_sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """The energy of the module docstring at ``momentum`` ``(B, D, *S')``, for the model ``fields``.

    ``multiplier`` and ``spacing`` belong to the momentum's grid ``S'``; the images ``(B, C, *S)`` may be
    on a finer grid (the field is upsampled to it, :func:`~monai_diffreg.functional.resize_field`).

    Returns:
        ``"total"``, ``"image"``, ``"prior"`` (scalars: batch means) and ``"ddf"`` ``(B, D, *S)`` in voxels of ``S``.
    """
    velocity = apply_kernel(momentum, multiplier)
    ddf = resize_field(fields(momentum, velocity, multiplier, spacing, False)["ddf"], size=fixed.shape[2:])
    image = image_dissimilarity(warp(moving, ddf), fixed, image_loss, ncc_window=ncc_window, image_sigma=image_sigma)
    prior = kernel_energy(momentum, velocity).mean()
    return {"total": image + regularization_weight * prior, "image": image, "prior": prior, "ddf": ddf}


def register_momentum(fixed: torch.Tensor, moving: torch.Tensor, fields: MomentumFields, *, caller: str,
                      kernel: Kernel, factors: Sequence[float], counts: Sequence[int],
                      learning_rate: float, tolerance: float, spacing: Sequence[float] | None,
                      initial_momentum: torch.Tensor | None, inverse: bool, callback: ProgressReporter | None,
                      progress: bool, map_factor: float = 1.0, **energy_settings: object) -> dict:
    """Minimise :func:`momentum_energy` over ``m`` coarse to fine with Adam (a validated pair and settings).

    At each level the images are area-downsampled to its grid, ``m`` (physical units) is carried
    linearly onto a grid ``map_factor`` times coarser and Adam takes steps of ``learning_rate`` in the
    units of ``spacing``, stopping early when ten steps lower the energy by less than ``tolerance`` of
    it; the fields are then computed from the final momentum on the full grid's map grid (``map_factor``
    times coarser) and upsampled to the full grid.

    Args:
        fixed, moving: ``(B, C, *S)`` images (checked by the caller).
        fields: the model.
        kernel: ``(widths, weights)`` of ``K``; factors, counts: the levels' downsampling factors and Adam steps.
        map_factor: how many times coarser than each level's images the momentum and maps are (>= 1).
        energy_settings: ``regularization_weight``, ``image_loss``, ``ncc_window``, ``image_sigma``.
        The others: as :func:`~.vsvf.vsvf_register`'s.

    Returns:
        ``fields``'s output on the full grid (with ``inverse``: ``"inverse_ddf"``), plus ``"momentum"`` (on the map grid),
        ``"warped"``, ``"energy"`` (last level) and ``"history"`` (per step: ``level``, ``iteration``,
        ``loss``, ``image``, ``prior``).
    """
    ndim = fixed.ndim - 2
    widths, w = kernel
    fixed32, moving32 = fixed.float(), moving.float()
    shape = tuple(fixed.shape[2:])
    if initial_momentum is not None and (initial_momentum.ndim != ndim + 2
                                         or initial_momentum.shape[:2] != (fixed.shape[0], ndim)):
        raise ValueError(f"{caller}(): 'initial_momentum' must have shape ({fixed.shape[0]}, {ndim}, *spatial), "
                         f"got {tuple(initial_momentum.shape)}")
    momentum = (torch.zeros(fixed.shape[0], ndim, *shape, device=fixed.device) if initial_momentum is None
                else initial_momentum.detach().float().to(fixed.device))

    history, energy = [], None
    with progress_reporter(sum(counts), caller, progress, callback) as report:
        for level, (factor, count) in enumerate(zip(factors, counts)):
            grid = level_grid(shape, factor, spacing)[0]
            map_grid, map_spacing = level_grid(shape, factor * map_factor, spacing)
            multiplier = kernel_multiplier(map_grid, widths, w, map_spacing, device=fixed.device)
            images = (downsample(fixed32, grid), downsample(moving32, grid))
            m = resize_image(momentum, size=map_grid).detach().requires_grad_(True)
            optimizer = torch.optim.Adam([m], lr=learning_rate)
            losses: list[float] = []
            for iteration in range(count):
                optimizer.zero_grad(set_to_none=True)
                out = momentum_energy(fields, m, *images, multiplier, map_spacing, **energy_settings)
                out["total"].backward()
                optimizer.step()
                losses.append(float(out["total"].detach()))
                history.append({"level": level, "iteration": iteration, "loss": losses[-1],
                                "image": float(out["image"].detach()), "prior": float(out["prior"].detach())})
                report(level, iteration, losses[-1])
                if len(losses) > 10 and losses[-11] - losses[-1] < tolerance * abs(losses[-11]):
                    break
            momentum = m.detach()
            energy = losses[-1] if losses else energy

    with torch.no_grad():
        map_grid, map_spacing = level_grid(shape, map_factor, spacing)
        momentum = resize_image(momentum, size=map_grid)
        multiplier = kernel_multiplier(map_grid, widths, w, map_spacing, device=fixed.device)
        out = fields(momentum, apply_kernel(momentum, multiplier), multiplier, map_spacing, inverse)
        out = {key: resize_field(field, size=shape) for key, field in out.items()}  # every output is a field
        out.update(momentum=momentum, warped=warp(moving32, out["ddf"]), energy=energy, history=history)
    return out
