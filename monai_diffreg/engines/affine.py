"""Classical multi-resolution affine registration by gradient descent (Adam).

The transform is the voxel-space affine of :mod:`monai_diffreg.functional.affine`: a matrix
``[A | t]`` mapping fixed-grid voxel indices to moving-grid voxel indices, so that
``warp(moving, affine_to_ddf(matrix, shape))`` is the moving image resampled onto the fixed
grid. Both images must already share a grid (same shape; the caller resamples the moving
image onto the fixed grid first, e.g. with MONAI ``ResampleToMatch``), and the matrix is then
the residual misalignment between them, in voxels of that grid.

Algorithm:

1. **Initialisation** (``initialisation="com"``): the translation that maps the fixed image's
   intensity centre of mass onto the moving image's (intensities shifted so the minimum is
   0), with ``A = I``. This is the classical moment initialisation (ITK's
   ``CenteredTransformInitializer`` in "moments" mode); it assumes the object is brighter than
   the background in both images. ``"identity"`` starts from ``[I | 0]`` instead.
2. **Parameterisation**: :func:`~monai_diffreg.functional.affine.affine_from_params` about the
   image centre ``c``: ``y = (I + L)(x - c) + c + t`` with 12 parameters in 3D (6 in 2D).
   ``t`` is kept in voxels of the full-resolution grid and ``L`` is dimensionless, so the
   parameters carry over between levels unchanged; at each level the matrix is re-expressed on
   the level's grid with :func:`~monai_diffreg.functional.affine.rescale_affine` (a voxel
   translation of ``t`` at full resolution is ``t / f`` voxels at a level downsampled by ``f``).
3. **Multi-resolution**: at each level (factors coarsest first, e.g. ``(4, 2, 1)``) both
   images are average-pooled (``resize_image(..., mode="area")``) to ``round(n / f)`` voxels
   per axis (at least ``min(n, 8)``), and a fresh Adam optimiser runs the level's iterations.
4. **Step sizes**: ``learning_rate`` is the nominal Adam step of the displacement in voxels
   of the current level: the translation's rate is ``learning_rate * f`` (full-resolution
   voxels) and ``L``'s is ``learning_rate / r`` with ``r`` the level's mean half-width in
   voxels, so that a step of either kind moves the image border by about ``learning_rate``
   level voxels.

Defaults: levels ``(4, 2)`` with ``(100, 30)`` iterations. On a 1 mm T1 brain (160x192x224,
VoxelMorph's ``test_scan``) moved by a known affine (rotations 5/-4/3 degrees, scalings
1.05/0.95/1.02, translation (4, -3, 2) voxels; mean displacement 7.6 voxels) they recover the
field to 0.08 voxel mean / 0.23 max inside the brain in 22 s of one CPU thread; adding a
full-resolution level (``(4, 2, 1)``, ``(100, 50, 25)``) reaches 0.04 / 0.07 voxel but costs
about 170 s (``tests/engines/bench_engines_test_scan.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..functional import warp
from ..functional.affine import affine_from_params, affine_to_ddf, num_affine_params, rescale_affine
from ..functional.grid import identity_grid
from ..transforms.intensity import min_max_normalize
from ..validation import check_choice, check_positive
from ._optim_common import EngineSettings, ProgressReporter, check_pair, check_schedule, check_weight_mask, downsample, level_shape, progress_reporter
from .similarity import SIMILARITY_METRICS, image_dissimilarity

__all__ = ["optimise_affine", "AffineRegistration", "centre_of_mass", "AFFINE_INITIALISATIONS"]

AFFINE_INITIALISATIONS = ("com", "identity")


def centre_of_mass(image: torch.Tensor) -> torch.Tensor:
    """Intensity centre of mass in voxel indices, intensities shifted so each image's minimum is 0.

    Args:
        image: ``(B, C, *spatial)``, not constant (channels are summed).

    Returns:
        ``(B, D)`` centre of mass (axis order = tensor axis order).
    """
    ndim = image.ndim - 2
    weights = image.sum(1) - image.sum(1).flatten(1).min(1).values.view(-1, *([1] * ndim))
    grid = identity_grid(image.shape[2:], image.device, image.dtype)
    return torch.einsum("b...,d...->bd", weights, grid) / weights.flatten(1).sum(1, keepdim=True)


def optimise_affine(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    levels: Sequence[float] = (4, 2),
    iterations: Sequence[int] = (100, 30),
    metric: str = "ncc",
    learning_rate: float = 0.1,
    initialisation: str = "com",
    fixed_mask: torch.Tensor | None = None,
    ncc_window: int = 9,
    mi_bins: int = 23,
    callback: ProgressReporter | None = None,
    progress: bool = False,
) -> dict:
    """Affine registration of ``moving`` to ``fixed`` (images on the same grid), multi-resolution Adam.

    See the module docstring for the algorithm. Computation runs in float32 on the images'
    device.

    Args:
        fixed: ``(B, C, *spatial)`` fixed image, 2D or 3D (usually ``B = C = 1``).
        moving: moving image already resampled onto the fixed grid, same shape.
        levels: downsampling factors, coarsest first.
        iterations: Adam iterations per level (0 skips a level).
        metric: ``"ncc"`` (local NCC, same contrast), ``"mse"`` (same contrast and scale) or
            ``"mi"`` (mutual information, different contrasts; images are min-max normalised).
        learning_rate: nominal Adam step in voxels of the current level (module docstring).
        initialisation: ``"com"`` (align intensity centres of mass) or ``"identity"``.
        fixed_mask: optional ``(B or 1, 1, *spatial)`` weights in ``[0, 1]`` restricting the
            metric to a region of the fixed image.
        ncc_window: box width of the local NCC in voxels (every level).
        mi_bins: number of histogram bins of the mutual information.
        callback: called as ``callback(level, iteration, loss)`` after each step (``level`` is
            the index into ``levels``, ``loss`` the metric before the step).
        progress: show a tqdm progress bar.

    Returns:
        dict with ``"matrix"`` ``(B, D, D + 1)`` (fixed voxel -> moving voxel, full resolution),
        ``"ddf"`` ``(B, D, *spatial)`` its displacement in voxels, ``"warped"`` the moving
        image warped onto the fixed grid, and ``"history"``: one dict per iteration with keys
        ``level``, ``factor``, ``iteration``, ``loss``.
    """
    caller = "optimise_affine"
    ndim = check_pair(fixed, moving, caller)
    check_choice(metric, "metric", caller, SIMILARITY_METRICS)
    check_choice(initialisation, "initialisation", caller, AFFINE_INITIALISATIONS)
    factors, counts = check_schedule(levels, iterations, caller)
    learning_rate = check_positive(learning_rate, "learning_rate", caller)
    mask = None if fixed_mask is None else check_weight_mask(fixed_mask, fixed, caller).float()

    fixed32, moving32 = fixed.float(), moving.float()
    if metric == "mi":
        fixed32, moving32 = min_max_normalize(fixed32), min_max_normalize(moving32)  # not constant: check_pair
    shape = tuple(fixed.shape[2:])
    batch, device = fixed.shape[0], fixed.device
    centre = torch.tensor([(n - 1) / 2 for n in shape], device=device)
    linear = torch.zeros(batch, num_affine_params(ndim) - ndim, device=device, requires_grad=True)
    start = centre_of_mass(moving32) - centre_of_mass(fixed32) if initialisation == "com" else torch.zeros(batch, ndim)
    translation = start.to(device).clone().requires_grad_(True)

    def matrix_at(grid_shape: tuple[int, ...]) -> torch.Tensor:
        return rescale_affine(affine_from_params(torch.cat([linear, translation], 1), centre), shape, grid_shape)

    history = []
    with progress_reporter(sum(counts), caller, progress, callback) as report:
        for level, (factor, count) in enumerate(zip(factors, counts)):
            grid_shape = level_shape(shape, factor)
            fixed_l, moving_l = downsample(fixed32, grid_shape), downsample(moving32, grid_shape)
            mask_l = None if mask is None else downsample(mask, grid_shape)
            ratio = sum(n / m for n, m in zip(shape, grid_shape)) / ndim
            optimiser = torch.optim.Adam([
                {"params": [translation], "lr": learning_rate * ratio},
                {"params": [linear], "lr": learning_rate * 2 * ndim / sum(grid_shape)},
            ])
            for iteration in range(count):
                warped = warp(moving_l, affine_to_ddf(matrix_at(grid_shape), grid_shape))
                loss = image_dissimilarity(warped, fixed_l, metric, mask_l, ncc_window=ncc_window, mi_bins=mi_bins)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                value = float(loss.detach())
                history.append({"level": level, "factor": factor, "iteration": iteration, "loss": value})
                report(level, iteration, value)

    with torch.no_grad():
        matrix = matrix_at(shape)
        ddf = affine_to_ddf(matrix, shape)
        return {"matrix": matrix, "ddf": ddf, "warped": warp(moving.float(), ddf), "history": history}


class AffineRegistration(EngineSettings):
    """Settings holder for :func:`optimise_affine`: ``AffineRegistration(metric="mi")(fixed, moving)``.

    Args:
        **settings: any keyword of :func:`optimise_affine` except ``fixed_mask`` and ``callback``,
            which are given per call (unknown names raise ``TypeError``; values are validated
            when called).
    """

    engine = staticmethod(optimise_affine)
    per_call = ("fixed_mask", "callback")

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor, fixed_mask: torch.Tensor | None = None,
                 callback: ProgressReporter | None = None) -> dict:
        """Register ``moving`` to ``fixed``; see :func:`optimise_affine` for shapes and the returned dict."""
        return optimise_affine(fixed, moving, fixed_mask=fixed_mask, callback=callback, **self.settings)
