"""What the momentum models share (private): their settings, their energy and the coarse-to-fine Adam loop on ``m``.

A model is a :data:`MomentumFields` function, the map from a momentum to displacement fields; vSVF
(:func:`~.vsvf.vsvf_fields`) and LDDMM shooting (:func:`~.lddmm.lddmm_fields`) differ only there. The
energy of both is::

    E(m) = image_term(moving o (id + ddf), fixed) + regularization_weight * <m, K m>

with ``m`` and ``v = K * m`` in the units of ``spacing`` (millimetres; voxels when it is None).
The momentum and the maps may live on a grid ``map_factor`` times coarser than the images they are
compared on (Mermaid's low-resolution map, ``map_low_res_factor = 1 / map_factor``): the field is then
upsampled to the images' grid before warping, which makes a shooting model affordable on 3D images.

The loop itself (:func:`optimise_momentum`) takes a :class:`MomentumModel` (its operators on a grid, its
energy, its fields) and optionally a second parameter tensor: RDMM (:mod:`.rdmm`) optimises its pre-weights
there with its own energy; :func:`register_momentum` is the loop for the models above.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ..engines._optim_common import ProgressReporter, check_schedule, downsample, level_grid, progress_reporter
from ..engines.similarity import image_dissimilarity
from ..functional import resize_field, resize_image, warp
from ..losses.similarity import similarity_subset
from ..validation import NonFiniteError, check_positive
from .kernels import apply_kernel, check_kernel, kernel_energy, kernel_multiplier

__all__ = ["MomentumFields", "MOMENTUM_IMAGE_LOSSES", "FULL_RESOLUTION_STEPS_2D", "default_schedule", "to_voxels",
           "check_momentum_settings", "image_energy",
           "momentum_energy", "MomentumModel", "register_momentum", "optimise_momentum"]

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


#: Adam steps of the full-resolution level that the default schedule adds in 2D (:func:`default_schedule`).
FULL_RESOLUTION_STEPS_2D = 40


def default_schedule(ndim: int, steps: Sequence[int]) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """The momentum models' pyramid when none is given: ``(levels, iterations)``.

    Levels 4 and 2 (downsampling factors) with ``steps`` Adam steps in 3D, where the full-resolution
    field comes from the half-resolution momentum (a full-resolution level would cost several times the
    whole registration); in 2D also the full-resolution level, :data:`FULL_RESOLUTION_STEPS_2D` steps,
    a few seconds there and more accurate on the 2D validation pairs (docs).
    """
    if ndim == 3:
        return (4.0, 2.0), tuple(steps)
    return (4.0, 2.0, 1.0), (*steps, FULL_RESOLUTION_STEPS_2D)


def check_momentum_settings(caller: str, *, sigmas, weights, regularization_weight, image_loss, levels, iterations,
                            learning_rate, tolerance, default_steps, map_factor=1.0, ndim: int | None = None
                            ) -> tuple[Kernel, tuple[float, ...], tuple[int, ...]]:
    """Validate the settings every momentum model has; return the kernel ``(widths, weights)``, the levels'
    factors and their iteration counts (``levels`` / ``iterations`` None: :func:`default_schedule` of ``ndim``
    spatial dimensions with ``default_steps``; ``ndim`` None, before the images are known: ``iterations`` may
    fit the default levels of either 2D or 3D)."""
    kernel = check_kernel(sigmas, weights, caller)
    check_positive(regularization_weight, "regularization_weight", caller, allow_zero=True)
    if image_loss not in MOMENTUM_IMAGE_LOSSES:
        raise ValueError(f"{caller}(): 'image_loss' must be one of {list(MOMENTUM_IMAGE_LOSSES)}, got {image_loss!r}")
    schedules = [default_schedule(n, default_steps) for n in ((3, 2) if ndim is None else (ndim,))]
    default_levels, default_counts = next(
        (schedule for schedule in schedules if isinstance(iterations, Sequence) and len(iterations) == len(schedule[0])),
        schedules[0])
    factors, counts = check_schedule(default_levels if levels is None else levels,
                                     default_counts if iterations is None else iterations, caller)
    check_positive(learning_rate, "learning_rate", caller)
    check_positive(tolerance, "tolerance", caller, allow_zero=True)
    if check_positive(map_factor, "map_factor", caller) < 1:
        raise ValueError(f"{caller}(): 'map_factor' must be >= 1 (how many times coarser the momentum's grid is "
                         f"than the images'), got {map_factor!r}")
    return kernel, factors, counts


def image_energy(ddf: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, *, image_loss: str = "ncc",
                 ncc_window: int = 9, image_sigma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The image term of a displacement ``(B, D, *S')`` in voxels of a grid at most as fine as the images'
    ``(B, C, *S)``: the field upsampled to ``S`` (:func:`~monai_diffreg.functional.resize_field`) and the term."""
    ddf = resize_field(ddf, size=fixed.shape[2:])
    return ddf, image_dissimilarity(warp(moving, ddf), fixed, image_loss, ncc_window=ncc_window, image_sigma=image_sigma)


def momentum_energy(fields: MomentumFields, momentum: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor,
                    multiplier: torch.Tensor, spacing: Sequence[float], *, regularization_weight: float,
                    image_loss: str = "ncc", ncc_window: int = 9, image_sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """The energy of the module docstring at ``momentum`` ``(B, D, *S')``, for the model ``fields``.

    ``multiplier`` and ``spacing`` belong to the momentum's grid ``S'``; the images ``(B, C, *S)`` may be
    on a finer grid (the field is upsampled to it, :func:`image_energy`).

    Returns:
        ``"total"``, ``"image"``, ``"prior"`` (scalars: batch means) and ``"ddf"`` ``(B, D, *S)`` in voxels of ``S``.
    """
    velocity = apply_kernel(momentum, multiplier)
    ddf, image = image_energy(fields(momentum, velocity, multiplier, spacing, False)["ddf"], fixed, moving,
                              image_loss=image_loss, ncc_window=ncc_window, image_sigma=image_sigma)
    prior = kernel_energy(momentum, velocity).mean()
    return {"total": image + regularization_weight * prior, "image": image, "prior": prior, "ddf": ddf}


class MomentumModel(NamedTuple):
    """What :func:`optimise_momentum` needs of a model whose parameters are a momentum ``m`` and, optionally,
    an extra tensor ``e`` (RDMM's pre-weights; None for vSVF and LDDMM).

    Attributes:
        operators: ``operators(grid, spacing, device)``: the model's operators on a grid (e.g. ``K``'s multiplier).
        energy: ``energy(m, e, fixed, moving, operators, spacing) -> dict`` with ``"total"``, ``"ddf"`` and the
            scalar terms reported in the history (as :func:`momentum_energy`'s).
        fields: ``fields(m, e, operators, spacing, inverse) -> dict`` of displacement fields in voxels of the grid.
    """

    operators: Callable[[Sequence[int], Sequence[float], torch.device], object]
    energy: Callable[..., dict]
    fields: Callable[..., dict]


def register_momentum(fixed: torch.Tensor, moving: torch.Tensor, fields: MomentumFields, *, kernel: Kernel,
                      regularization_weight: float, image_loss: str, ncc_window: int, image_sigma: float,
                      **loop_settings: object) -> dict:
    """Minimise :func:`momentum_energy` over ``m`` for the model ``fields`` and the kernel ``(widths, weights)``
    (:func:`optimise_momentum`, which takes ``loop_settings``)."""
    widths, w = kernel
    settings = {"regularization_weight": regularization_weight, "image_loss": image_loss, "ncc_window": ncc_window,
                "image_sigma": image_sigma}
    model = MomentumModel(
        operators=lambda grid, grid_spacing, device: kernel_multiplier(grid, widths, w, grid_spacing, device=device),
        energy=lambda m, extra, *args: momentum_energy(fields, m, *args, **settings),
        fields=lambda m, extra, multiplier, grid_spacing, inverse: fields(m, apply_kernel(m, multiplier), multiplier,
                                                                          grid_spacing, inverse))
    return optimise_momentum(fixed, moving, model, **loop_settings)


def optimise_momentum(fixed: torch.Tensor, moving: torch.Tensor, model: MomentumModel, *, caller: str,
                      factors: Sequence[float], counts: Sequence[int], learning_rate: float, tolerance: float,
                      spacing: Sequence[float] | None, initial_momentum: torch.Tensor | None, inverse: bool,
                      callback: ProgressReporter | None, progress: bool, map_factor: float = 1.0,
                      extra: torch.Tensor | None = None, extra_learning_rate: float = 0.0) -> dict:
    """Minimise ``model.energy`` over ``m`` (and ``extra``) coarse to fine with Adam (a validated pair and settings).

    At each level the images are area-downsampled to its grid, ``m`` (physical units) is carried
    linearly onto a grid ``map_factor`` times coarser and Adam takes steps of ``learning_rate`` in the
    units of ``spacing``, stopping early when ten steps lower the energy by less than ``tolerance`` of
    it; the fields are then computed from the final momentum on the last level's map grid, the grid whose
    energy was minimised, and upsampled to the full grid (shooting once more on a finer grid would cost
    several times a step of the last level, return a field that was never optimised, and an explicit
    shooting can be unstable there: RDMM's was).

    Args:
        fixed, moving: ``(B, C, *S)`` images (checked by the caller).
        model: the model (:class:`MomentumModel`).
        factors, counts: the levels' downsampling factors and Adam steps.
        map_factor: how many times coarser than each level's images the momentum and maps are (>= 1).
        extra: optional ``(B, C', *S'')`` tensor (any grid), optimised with ``m`` by Adam steps of
            ``extra_learning_rate`` when that is > 0 (carried to each level's map grid like ``m``), else fixed
            (resized from the given one at each level).
        The others: as :func:`~.vsvf.vsvf_register`'s.

    Returns:
        ``model.fields``'s output upsampled to the full grid (with ``inverse``: ``"inverse_ddf"``), plus ``"momentum"``
        (on the last level's map grid), ``"extra"`` (with ``extra``: the final one, on that grid), ``"warped"``,
        ``"energy"`` (last level) and ``"history"`` (per step: ``level``, ``iteration``, ``loss`` and the energy's
        scalar terms, e.g. ``image``, ``prior``).
    """
    ndim = fixed.ndim - 2
    fixed32, moving32 = fixed.float(), moving.float()
    shape = tuple(fixed.shape[2:])
    if initial_momentum is not None and (initial_momentum.ndim != ndim + 2
                                         or initial_momentum.shape[:2] != (fixed.shape[0], ndim)):
        raise ValueError(f"{caller}(): 'initial_momentum' must have shape ({fixed.shape[0]}, {ndim}, *spatial), "
                         f"got {tuple(initial_momentum.shape)}")
    momentum = (torch.zeros(fixed.shape[0], ndim, *shape, device=fixed.device) if initial_momentum is None
                else initial_momentum.detach().float().to(fixed.device))
    if extra is not None:
        extra = extra.detach().float().to(fixed.device)

    history, energy = [], None
    with progress_reporter(sum(counts), caller, progress, callback) as report:
        for level, (factor, count) in enumerate(zip(factors, counts)):
            grid = level_grid(shape, factor, spacing)[0]
            map_grid, map_spacing = level_grid(shape, factor * map_factor, spacing)
            operators = model.operators(map_grid, map_spacing, fixed.device)
            images = (downsample(fixed32, grid), downsample(moving32, grid))
            m = resize_image(momentum, size=map_grid).detach().requires_grad_(True)
            optimizer = torch.optim.Adam([m], lr=learning_rate)
            e = None if extra is None else resize_image(extra, size=map_grid).detach()
            if e is not None and extra_learning_rate > 0:
                optimizer.add_param_group({"params": [e.requires_grad_(True)], "lr": extra_learning_rate})
            losses: list[float] = []
            for iteration in range(count):
                optimizer.zero_grad(set_to_none=True)
                try:  # warp() refuses non-finite fields (functional.warp)
                    out = model.energy(m, e, *images, operators, map_spacing)
                    reason = None if bool(torch.isfinite(out["total"])) else "non-finite energy"
                except NonFiniteError as error:
                    reason = str(error)
                if reason is not None:
                    raise NonFiniteError(
                        f"{caller}(): the optimisation diverged at level {level + 1} of {len(factors)}, step "
                        f"{iteration + 1} ({reason}): use a larger 'regularization_weight', more 'num_steps', a smaller "
                        f"'learning_rate' or a larger 'map_factor' (a coarser momentum grid)")
                out["total"].backward()
                optimizer.step()
                losses.append(float(out["total"].detach()))
                history.append({"level": level, "iteration": iteration, "loss": losses[-1],
                                **{key: float(value.detach()) for key, value in out.items() if key not in ("total", "ddf")}})
                report(level, iteration, losses[-1])
                if len(losses) > 10 and losses[-11] - losses[-1] < tolerance * abs(losses[-11]):
                    break
            momentum = m.detach()
            if e is not None and extra_learning_rate > 0:  # a fixed one comes from the given one at every level
                extra = e.detach()
            energy = losses[-1] if losses else energy

    with torch.no_grad():  # the last level's map grid, operators and parameters: where the energy was minimised
        extra = None if e is None else e.detach()
        out = model.fields(momentum, extra, operators, map_spacing, inverse)
        out = {key: resize_field(field, size=shape) for key, field in out.items()}  # every output is a field
        out.update(momentum=momentum, warped=warp(moving32, out["ddf"]), energy=energy, history=history)
        if extra is not None:
            out["extra"] = extra
    return out
