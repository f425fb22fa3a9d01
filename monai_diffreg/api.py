"""One-call registration: ``monai_diffreg.register(fixed, moving, bundle=...)``.

Pipeline of :func:`register`:

1. **Inputs** (paths, numpy arrays, torch tensors or MONAI MetaTensors) become ``(1, *S)``
   MetaTensors and are checked, each error naming the argument: one channel, 2D or 3D, same
   dimensionality, finite, not constant, label maps integer-valued; plain arrays carry no
   geometry, so they get an identity affine and must share the fixed image's shape. Then the
   method is loaded (a bad option fails here) and a **memory check** estimates the peak memory
   of the run from the grid sizes (:func:`~monai_diffreg.input_checks.estimate_memory`, calibrated on the shipped methods):
   more than the memory available (:func:`~monai_diffreg.input_checks.available_memory`, Linux) raises
   :class:`InsufficientMemoryError` (a ``MemoryError`` and a ``ValueError``) before any heavy work,
   with the sizes, the estimate and what to do (``MONAI_DIFFREG_MEMORY_CHECK=0`` skips it).
2. **Working grid**: :class:`~monai_diffreg.transforms.dictionary.LoadRegistrationPaird`
   re-orients the images to ``orientation`` (RAS by default, the orientation learned models
   are trained in) and resamples the moving image (linear) and label maps (nearest) onto the
   fixed grid. Re-orienting only permutes/flips axes: the voxel centres are the fixed file's.
3. A **spacing check** (:func:`~monai_diffreg.input_checks.spacing_check`): a fixed image whose voxels are strongly
   anisotropic (largest side more than ``ANISOTROPY_LIMIT`` times the smallest) or, per axis of
   the working grid, more than ``SPACING_FACTOR`` times finer or coarser than the method's
   ``expected_spacing_mm`` (method contract, :mod:`monai_diffreg.methods`; the learned bundles
   expect 1 mm) warns with :class:`SpacingWarning`, suggesting isotropic voxels
   (:func:`monai_diffreg.io.resample_file_to_spacing`); the working grid is never changed
   silently. ``summary.json`` records the spacings (``"spacing"``). Then a **misalignment
   check** (foreground centroids more than ``MISALIGNMENT_MM`` apart, or foreground Dice below
   ``MISALIGNMENT_DICE``) warns with :class:`MisalignmentWarning` suggesting ``affine=True`` when
   the affine stage is off, unless the method aligns the pair affinely itself (its
   ``learns_affine``, e.g. synthmorph's network; :mod:`monai_diffreg.networks.contract`).
4. Optional **affine stage** (:func:`monai_diffreg.engines.affine.optimise_affine`), then the
   **deformable method** (:func:`monai_diffreg.methods.load_method`) on the affinely aligned
   moving image. The total field is the affine applied to the deformed grid, in closed form
   (:func:`~monai_diffreg.functional.affine.compose_affine_ddf`), its inverse
   ``compose_ddf(inverse_deformable, inverse_affine)``.
5. **Back to the fixed file's axes**: fields and maps are permuted/flipped back from the
   working orientation, so every output lies on the fixed image's own grid with its affine.
6. **Outputs**: the warped image and label maps are resampled from the **original** moving
   data (its own grid) through the total field in one interpolation (linear / nearest, zero
   outside the moving field of view), exactly as ITK applies the written ``ddf.nii.gz``
   (:func:`monai_diffreg.io.resample_to_fixed`); data already on the fixed grid (arrays, or
   files sharing the fixed grid) is only warped, never resampled onto the grid it is on. With the
   affine stage or a method that learns an affine part (its output ``"affine"``; both: their
   composition), saving also writes that affine alone as an ITK transform file, ``affine.tfm``
   (:func:`monai_diffreg.io.save_affine_transform`: fixed LPS point -> moving LPS point), for
   tools that want the affine part (it is already composed into ``ddf.nii.gz``).
7. **A similarity check**: the normalised mutual information of the fixed image with the moving
   one, before and after (every second voxel; contrast-independent); a result less similar than
   its input (by more than ``NMI_TOLERANCE``) warns with :class:`DissimilarityWarning`, and
   ``metrics["similarity"]`` records both values.
8. **Metrics**, computed once, on first use of :attr:`RegistrationResult.metrics` (saving asks
   for them; a caller who only wants the field pays nothing): folding percentage and both SDlogJ
   variants from one ``det J`` map (:func:`monai_diffreg.metrics.determinant_statistics`, crop 2;
   the same map the QC picture shows), Dice before/after per label when both label maps are
   given, end-point error (mm) against ``true_ddf`` when given (the built-in sample; over the
   whole grid and over the fixed image's foreground, where the images constrain the field), and
   the time of every stage in seconds (``metrics["seconds"]``, also :attr:`RegistrationResult.timings`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from . import __version__
from .functional import compose_ddf, warp
from .functional.affine import affine_to_ddf, compose_affine, compose_affine_ddf, invert_affine
from .losses.similarity import similarity_subset
from .input_checks import InsufficientMemoryError, SpacingWarning, check_memory, expected_spacing, spacing_check
from .io import resample_to_fixed, save_affine_transform, save_displacement_field, save_image, save_json, spatial_affine
from .methods import MethodInfo, check_method_output, find_method, run_method, shared_method
from .functional.jacobian import jacobian_determinant
from .metrics import determinant_statistics, dice_per_label, endpoint_error, normalized_mutual_information
from .transforms.intensity import normalize_intensity_percentile, percentile
from .transforms.spatial import check_image, load_channel_first, to_source_axes
from .transforms.utils import integer_labels, plain_tensor

__all__ = ["register", "RegistrationResult", "MisalignmentWarning", "DissimilarityWarning", "NMI_TOLERANCE", "misalignment", "check_output_dir", "MISALIGNMENT_MM",
           "MISALIGNMENT_DICE", "AFFINE_METRICS", "OUTPUT_FILES", "SpacingWarning", "InsufficientMemoryError"]

#: Every file :meth:`RegistrationResult.save` may write (a run removes the others' stale copies).
OUTPUT_FILES = frozenset({"warped.nii.gz", "ddf.nii.gz", "inverse_ddf.nii.gz", "warped_labels.nii.gz", "uncertainty.nii.gz",
                          "warped_levels.nii.gz", "affine.tfm", "summary.json", "qc.png"})
MISALIGNMENT_MM = 15.0
MISALIGNMENT_DICE = 0.6
AFFINE_METRICS = similarity_subset(("ncc", "mi", "mse"), "register(affine_metric=)")
_CALLER = "register"


class MisalignmentWarning(UserWarning):
    """The pair looks grossly misaligned: a deformable method alone will likely fail (use ``affine=True``)."""


class DissimilarityWarning(UserWarning):
    """The registered moving image is less like the fixed one than the input was (contrast-independent NMI)."""


#: A result whose NMI with the fixed image falls more than this below the input's is reported.
NMI_TOLERANCE = 0.005




def check_output_dir(output_dir: object, caller: str = _CALLER) -> Path:
    """An output folder that can be written, checked before any work: not empty text, not an existing
    file, and the folder (or its nearest existing parent) writable. Returns it as a Path."""
    if not isinstance(output_dir, (str, os.PathLike)) or not os.fspath(output_dir).strip():
        raise ValueError(f"{caller}(): 'output_dir' must be a folder path, got {output_dir!r}")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{caller}(): 'output_dir' is an existing file, not a folder: {out}")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{caller}(): 'output_dir' cannot be written: {existing} is not a writable folder")
    return out


# ----------------------------------------------------------------------------------------- inputs
def _squeeze_leading(x: torch.Tensor) -> torch.Tensor:
    """Drop leading singleton axes (batch, channel) while more than 2 axes remain: ``(1, 1, *S) -> (*S)``."""
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    return x


def _as_image(value: object, name: str) -> MetaTensor:
    """``(1, *S)`` MetaTensor from a path, array, tensor or MetaTensor (shape rules in :func:`register`)."""
    if isinstance(value, (str, os.PathLike)):
        return load_channel_first(value, name, _CALLER)
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise TypeError(f"{_CALLER}(): '{name}' must hold numbers, got dtype {value.dtype}")
        if not value.dtype.isnative:  # big-endian data (e.g. from a file read by hand): torch needs native order
            value = value.astype(value.dtype.newbyteorder("="))
        if value.dtype.kind == "u" and value.dtype.itemsize > 1:  # torch has no arithmetic on uint16/32/64
            value = value.astype(np.int64 if name.endswith("labels") else np.float32)
        value = torch.as_tensor(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{_CALLER}(): '{name}' must be a file path, numpy array, torch tensor or MetaTensor, "
                        f"got {type(value).__name__}")
    shape = tuple(value.shape)
    data = _squeeze_leading(value)
    if data.ndim not in (2, 3) or min(data.shape) < 2:
        raise ValueError(f"{_CALLER}(): '{name}' must be a single-channel 2D or 3D image: (*S), (1, *S) or "
                         f"(1, 1, *S) with at least 2 voxels per axis, got shape {shape}")
    data = data.unsqueeze(0)
    if data.dtype == torch.bool:
        data = data.to(torch.uint8)
    if isinstance(value, MetaTensor):
        affine = value.affine
        if affine.shape[-1] not in (data.ndim, 4):
            affine = torch.eye(data.ndim, dtype=torch.float64)
        return MetaTensor(plain_tensor(data), affine=affine.clone())
    return MetaTensor(data.detach().cpu(), affine=torch.eye(data.ndim, dtype=torch.float64))


def _check_inputs(images: dict[str, MetaTensor], has_geometry: dict[str, bool]) -> None:
    """Check every input; arrays without geometry are given the fixed image's affine (they lie on its grid)."""
    ndim = images["fixed"].ndim - 1
    fixed_affine = images["fixed"].affine
    for name, image in images.items():
        if image.ndim - 1 != ndim:
            raise ValueError(f"{_CALLER}(): '{name}' is {image.ndim - 1}D (shape {tuple(image.shape[1:])}) but "
                             f"'fixed' is {ndim}D (shape {tuple(images['fixed'].shape[1:])})")
        if not has_geometry[name] and tuple(image.shape) != tuple(images["fixed"].shape):
            raise ValueError(f"{_CALLER}(): '{name}' is an array without an affine, so it must be on the fixed grid "
                             f"(shape {tuple(images['fixed'].shape[1:])}), got shape {tuple(image.shape[1:])}; "
                             f"pass files or MetaTensors with affines to resample it")
        if not has_geometry[name]:
            image.affine = fixed_affine.clone()
        elif not has_geometry["fixed"] and not np.allclose(np.asarray(image.affine), np.asarray(fixed_affine)):
            raise ValueError(f"{_CALLER}(): 'fixed' is an array without an affine but '{name}' has one; pass the "
                             f"fixed image as a file or MetaTensor so '{name}' can be resampled onto its grid")
        if name.endswith("labels"):
            integer_labels(image, name, _CALLER)
        else:
            check_image(image, name, _CALLER)


def _voxel_map(a_from: np.ndarray, a_to: np.ndarray, shape_to: tuple[int, ...]) -> list[tuple[int, int]]:
    """For each axis j of grid ``from``: (axis i of grid ``to``, sign) when the grids share voxel centres."""
    ndim = len(shape_to)
    t = np.linalg.solve(a_to, a_from)  # from-voxel -> to-voxel
    perm = np.round(t[:ndim, :ndim])
    mapping = []
    for j in range(ndim):
        i = int(np.argmax(np.abs(perm[:, j])))
        sign = int(perm[i, j])
        expected_offset = 0 if sign > 0 else shape_to[i] - 1
        if abs(sign) != 1 or abs(t[i, ndim] - expected_offset) > 1e-3:
            raise RuntimeError("register(): internal error: the working grid is not a re-orientation of the fixed grid")
        mapping.append((i, sign))
    if not np.allclose(t[:ndim, :ndim], perm, atol=1e-4):
        raise RuntimeError("register(): internal error: the working grid is not a re-orientation of the fixed grid")
    return mapping


def _to_file_axes(x: torch.Tensor, mapping: list[tuple[int, int]], is_field: bool) -> torch.Tensor:
    """Permute/flip ``(1, C, *S_work)`` to the fixed file's axes (:func:`~monai_diffreg.transforms.to_source_axes`);
    fields also get their components mapped. The identity mapping (the fixed file is in the working
    orientation, e.g. RAS arrays) returns ``x``."""
    if all(i == j and sign > 0 for j, (i, sign) in enumerate(mapping)):
        return x.contiguous()
    return to_source_axes(x, mapping, is_field).contiguous()


# ----------------------------------------------------------------------------------------- checks
def _foreground(x: torch.Tensor) -> torch.Tensor:
    """Foreground mask: above 10% of the way from the 1st to the 99th intensity percentile."""
    data = x.float()
    lo, hi = percentile(data, 1.0), percentile(data, 99.0)
    return data > lo + 0.1 * (hi - lo)


def misalignment(fixed: torch.Tensor, moving: torch.Tensor, affine: object) -> dict[str, float]:
    """How far apart two images on the same grid look: foreground centroid distance and overlap.

    Args:
        fixed: ``(1, 1, *S)`` or ``(1, *S)`` image.
        moving: the moving image on the same grid.
        affine: voxel-to-RAS affine of the grid (for millimetres).

    Returns:
        ``{"centroid_distance_mm": ..., "foreground_dice": ...}`` (foreground: intensity above
        10% of the 1st-99th percentile range). Images of more than ``2**21`` voxels are judged on
        every second voxel along each axis (a coarse check needs no more; 8x less work).
    """
    volumes = [_squeeze_leading(plain_tensor(torch.as_tensor(x))) for x in (fixed, moving)]
    step = 2 if volumes[0].numel() > 2**21 else 1
    masks = [_foreground(v[tuple(slice(None, None, step) for _ in v.shape)]) for v in volumes]
    ndim = masks[0].ndim
    lin = torch.as_tensor(spatial_affine(affine, ndim, "misalignment")[:ndim, :ndim])
    centroids = []
    for mask in masks:
        idx = torch.nonzero(mask).double() * step
        centroids.append(idx.mean(0) if len(idx) else torch.full((ndim,), float("nan"), dtype=torch.float64))
    distance = float(torch.linalg.norm(lin @ (centroids[0] - centroids[1])))
    inter = float((masks[0] & masks[1]).sum())
    total = float(masks[0].sum() + masks[1].sum())
    return {"centroid_distance_mm": distance, "foreground_dice": 2 * inter / total if total else float("nan")}


def _dice_dict(pred: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    labels = sorted(set(torch.unique(target).tolist()) - {0})
    if not labels:
        return {"mean": float("nan"), "per_label": {}}
    scores = dice_per_label(pred, target, labels=labels)[0]
    return {"mean": float(torch.nanmean(scores)), "per_label": {str(int(k)): float(v) for k, v in zip(labels, scores)}}


def _field_metrics(det: torch.Tensor) -> dict[str, float]:
    crop = 2 if min(det.shape[2:]) > 4 else 0
    stats = determinant_statistics(det.double(), crop=crop)
    return {**{k: float(v[0]) for k, v in stats.items()}, "jacobian_crop_voxels": crop}


# ----------------------------------------------------------------------------------------- result
@dataclass
class RegistrationResult:
    """Everything :func:`register` produced, on the fixed image's grid (fixed file's axes).

    Attributes:
        warped: ``(1, 1, *S)`` MetaTensor, the moving image warped onto the fixed grid, with
            the fixed affine.
        ddf: ``(1, D, *S)`` total displacement in fixed-grid voxels (package convention; affine
            stage included), fixed -> moving, pull-back.
        fixed: ``(1, 1, *S)`` the fixed image (MetaTensor with its affine).
        moving: ``(1, 1, *S)`` the moving image resampled onto the fixed grid, not deformed.
        inverse_ddf: ``(1, D, *S)`` moving -> fixed displacement when the method gives one.
        uncertainty: ``(1, 1, *S)`` when the method gives one (e.g. posterior std).
        warped_levels: ``(1, L, *S)`` the moving image warped by each level of a multi-level
            method (coarse to fine), when the method gives them.
        warped_labels: ``(1, 1, *S)`` MetaTensor (int64) when moving labels were given.
        fixed_labels: the fixed label map on the fixed grid, when given.
        affine_matrix: ``(1, D, D + 1)`` voxel affine (working grid) of the affine part of the transform: the
            affine stage's, a method's learned one (e.g. SynthMorph's), or their composition; None if neither ran.
        affine_grid: ``(D + 1, D + 1)`` voxel-to-RAS affine of the grid ``affine_matrix`` is on (the
            working grid, which may be a re-orientation of the fixed grid); None: the fixed grid.
        metrics: dict (module docstring), JSON-serialisable.
        info: method, inputs and settings, for ``summary.json``.
    """

    warped: MetaTensor
    ddf: torch.Tensor
    fixed: MetaTensor
    moving: MetaTensor
    inverse_ddf: torch.Tensor | None = None
    uncertainty: torch.Tensor | None = None
    warped_levels: torch.Tensor | None = None
    warped_labels: MetaTensor | None = None
    fixed_labels: MetaTensor | None = None
    affine_matrix: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    misalignment_before: dict[str, float] | None = None
    similarity: dict[str, float] | None = None
    true_ddf: torch.Tensor | None = field(default=None, repr=False)
    moving_labels: MetaTensor | None = field(default=None, repr=False)
    affine_grid: np.ndarray | None = field(default=None, repr=False)
    _det: torch.Tensor | None = field(default=None, init=False, repr=False)
    _metrics: dict[str, Any] | None = field(default=None, init=False, repr=False)

    @property
    def det_jacobian(self) -> torch.Tensor:
        """``(1, 1, *S)`` ``det J`` of the total transform (central differences), computed once."""
        if self._det is None:
            self._det = jacobian_determinant(self.ddf.float())
        return self._det

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics of step 7 of the module docstring (JSON-serialisable), computed on first use."""
        if self._metrics is None:
            start = time.perf_counter()
            metrics = _metrics(self)
            if self.misalignment_before is not None:
                metrics["misalignment_before"] = self.misalignment_before
            if self.similarity is not None:
                metrics["similarity"] = self.similarity
            self.timings["metrics"] = time.perf_counter() - start
            metrics["seconds"] = self.timings
            self._metrics = metrics
        self._metrics["seconds"] = {k: round(v, 4) for k, v in self.timings.items()}
        return self._metrics

    @property
    def affine(self) -> np.ndarray:
        """The fixed grid's voxel-to-RAS affine."""
        return np.asarray(self.fixed.affine, dtype=np.float64)

    def summary(self) -> dict[str, Any]:
        """The content of ``summary.json``: info, grid and metrics."""
        return {**self.info, "grid": {"shape": list(self.ddf.shape[2:]), "affine": self.affine.tolist()},
                "metrics": self.metrics}

    def save(self, output_dir: str | os.PathLike, qc: bool = True, inverse: bool = False) -> dict[str, Path]:
        """Write the results into ``output_dir`` (created if needed).

        Files: ``warped.nii.gz``, ``ddf.nii.gz`` (ITK displacement field, LPS mm, see
        :func:`monai_diffreg.io.save_displacement_field`), ``warped_labels.nii.gz`` (moving
        labels given), ``inverse_ddf.nii.gz`` (``inverse=True``, when the method gives it: on
        request, since a 1 mm brain's field is 75 MB), ``uncertainty.nii.gz`` and
        ``warped_levels.nii.gz`` (one volume per level; when the method gives them),
        ``affine.tfm`` (the affine part alone as an ITK ``AffineTransform``, LPS, fixed point ->
        moving point, see :func:`monai_diffreg.io.save_affine_transform`; when the affine stage ran
        or the method learned one),
        ``summary.json`` and ``qc.png`` (``qc=True``).

        Everything is first written to a hidden temporary folder inside ``output_dir`` and
        moved into place only when every file is complete, so a failure leaves no file
        behind (and removes ``output_dir`` again if this call created it). Output files of an
        earlier run into the same folder that this run does not write (e.g. its
        ``uncertainty.nii.gz``) are removed then, so the folder holds one run's results.

        Returns:
            ``{file name: path}`` of the written files.
        """
        out = check_output_dir(output_dir, "RegistrationResult.save")
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".monai_diffreg-", dir=out))
        try:
            files = self._write(staging, qc, inverse)
            final = {}
            for name, path in files.items():
                os.replace(path, out / name)
                final[name] = out / name
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if created and not any(out.iterdir()):
                out.rmdir()
            raise
        shutil.rmtree(staging, ignore_errors=True)
        for stale in OUTPUT_FILES - set(final):
            (out / stale).unlink(missing_ok=True)
        return final

    def _write(self, folder: Path, qc: bool, inverse: bool) -> dict[str, Path]:
        start = time.perf_counter()
        affine = self.affine
        ndim = self.ddf.shape[1]
        # the field file (the largest: converting, compressing and writing it releases the GIL) is written
        # in a second thread while this one writes the rest and draws the QC picture
        with ThreadPoolExecutor(max_workers=1) as pool:
            ddf_file = pool.submit(save_displacement_field, self.ddf, affine, folder / "ddf.nii.gz")
            files = {"warped.nii.gz": save_image(self.warped, affine, folder / "warped.nii.gz", spatial_dims=ndim)}
            self._write_others(folder, files, qc, inverse)
            _ = self.metrics  # computed on first use: meanwhile
            files["ddf.nii.gz"] = ddf_file.result()
        self.timings["write"] = time.perf_counter() - start
        summary = self.summary()  # its "seconds" with "write"
        summary["files"] = sorted([*files, "summary.json"])
        files["summary.json"] = save_json(summary, folder / "summary.json")
        return files

    def _write_others(self, folder: Path, files: dict[str, Path], qc: bool, inverse: bool) -> None:
        """Every optional output file and ``qc.png`` into ``files``."""
        affine = self.affine
        ndim = self.ddf.shape[1]
        if self.warped_labels is not None:
            files["warped_labels.nii.gz"] = save_image(self.warped_labels, affine, folder / "warped_labels.nii.gz",
                                                       label=True, spatial_dims=ndim)
        if inverse and self.inverse_ddf is not None:
            files["inverse_ddf.nii.gz"] = save_displacement_field(self.inverse_ddf, affine,
                                                                  folder / "inverse_ddf.nii.gz")
        if self.uncertainty is not None:
            files["uncertainty.nii.gz"] = save_image(self.uncertainty, affine, folder / "uncertainty.nii.gz",
                                                     spatial_dims=ndim)
        if self.warped_levels is not None:
            files["warped_levels.nii.gz"] = save_image(self.warped_levels, affine, folder / "warped_levels.nii.gz",
                                                       spatial_dims=ndim)
        if self.affine_matrix is not None:
            grid = affine if self.affine_grid is None else self.affine_grid
            files["affine.tfm"] = save_affine_transform(self.affine_matrix, grid, folder / "affine.tfm")
        if qc:
            from .qc import save_qc_figure

            method = self.info.get("method", "")
            files["qc.png"] = save_qc_figure(self.fixed, self.moving, self.warped, self.ddf, folder / "qc.png",
                                             det_jacobian=self.det_jacobian, title=f"monai_diffreg: {method}",
                                             affine=affine)


# ----------------------------------------------------------------------------------------- register
def _describe(value: object) -> str:
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return f"{type(value).__name__}{tuple(getattr(value, 'shape', ()))}"


def _check_device(device: str | torch.device | None) -> torch.device:
    """The requested device (default CUDA when available), checked to be usable."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{_CALLER}(): 'device' must be a torch device such as 'cpu', 'cuda' or 'cuda:1', "
                         f"got {device!r}") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"{_CALLER}(): 'device' is {str(dev)!r} but that CUDA device is not available "
                         f"({torch.cuda.device_count()} visible); use 'cpu'")
    return dev


def _affine_stage(fixed: torch.Tensor, moving: torch.Tensor, metric: str,
                  options: Mapping[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel affine ``(1, D, D + 1)`` and its displacement, on percentile-normalised intensities."""
    from .engines.affine import optimise_affine

    stage = optimise_affine(normalize_intensity_percentile(fixed, name="fixed", caller=_CALLER),
                            normalize_intensity_percentile(moving, name="moving", caller=_CALLER),
                            metric=metric, **dict(options or {}))
    return stage["matrix"].detach(), stage["ddf"].detach()


def _total_affine(stage: torch.Tensor | None, learned: torch.Tensor | None) -> torch.Tensor | None:
    """The affine part of the total transform ``(1, D, D + 1)`` (float64, CPU): the affine stage's matrix, the
    method's own learned one (already in its ``ddf``), ``stage o learned`` when both ran, None when neither."""
    parts = [m.detach().double().cpu() for m in (stage, learned) if m is not None]
    return parts[0] if len(parts) == 1 else compose_affine(*parts) if parts else None


def _total_fields(out: Mapping[str, torch.Tensor], matrix: torch.Tensor | None,
                  mapping: list[tuple[int, int]]) -> dict[str, torch.Tensor | None]:
    """Affine stage composed with the method's fields, mapped to the fixed file's axes, on the CPU.

    ``ddf = compose_affine_ddf(matrix, deformable)`` (phi_affine o phi_deformable) and
    ``inverse_ddf = compose_ddf(inverse_deformable, inverse_affine)``.
    """
    ddf = out["ddf"].detach().float()
    inverse = None if out.get("inverse_ddf") is None else out["inverse_ddf"].detach().float()
    if matrix is not None:
        ddf = compose_affine_ddf(matrix, ddf)
        if inverse is not None:
            inverse = compose_ddf(inverse, affine_to_ddf(invert_affine(matrix.double()).float(), ddf.shape[2:]))
    uncertainty, levels = out.get("uncertainty"), out.get("warped_levels")
    return {
        "ddf": _to_file_axes(ddf, mapping, is_field=True).cpu(),
        "inverse_ddf": None if inverse is None else _to_file_axes(inverse, mapping, is_field=True).cpu(),
        "uncertainty": None if uncertainty is None else
        _to_file_axes(uncertainty.detach().float(), mapping, is_field=False).cpu(),
        "warped_levels": None if levels is None else _to_file_axes(levels.detach().float(), mapping, is_field=False).cpu(),
    }


def _on_fixed_grid(image: MetaTensor, fixed: MetaTensor) -> bool:
    """Whether ``image`` lies on the fixed grid already (same shape and affine): nothing to resample."""
    return tuple(image.shape[1:]) == tuple(fixed.shape[1:]) and np.allclose(
        np.asarray(image.affine, dtype=np.float64), np.asarray(fixed.affine, dtype=np.float64), atol=1e-6)


def _to_fixed_grid(images: dict[str, MetaTensor], name: str, ddf: torch.Tensor | None,
                   mode: str) -> MetaTensor | None:
    """``images[name]`` on the fixed grid through ``ddf`` (None: not deformed), one interpolation (step 6)."""
    if name not in images:
        return None
    src, fixed = images[name], images["fixed"]
    data = plain_tensor(src).float().unsqueeze(0)
    if _on_fixed_grid(src, fixed):
        if ddf is not None:
            data = warp(data, ddf.to(data.dtype), mode=mode, padding_mode="zeros")
    else:
        shape = tuple(int(s) for s in fixed.shape[1:])
        data = resample_to_fixed(data, src.affine, fixed.affine, shape, ddf, mode=mode)
    if mode == "nearest":
        data = data.round().to(torch.int64)
    return MetaTensor(data, affine=fixed.affine.clone())


def _metrics(result: RegistrationResult) -> dict[str, Any]:
    """Step 7 of the module docstring."""
    metrics: dict[str, Any] = _field_metrics(result.det_jacobian)
    if result.warped_labels is not None and result.fixed_labels is not None:
        metrics["dice_before"] = _dice_dict(result.moving_labels, result.fixed_labels)
        metrics["dice_after"] = _dice_dict(result.warped_labels, result.fixed_labels)
    if result.true_ddf is not None:
        ddf = result.ddf.double()
        truth = result.true_ddf.detach().double().cpu()
        spacing = result.info["spacing_mm"]
        brain = _foreground(plain_tensor(result.fixed))  # where the images constrain the field
        for suffix, mask in (("", None), ("_foreground", brain)):
            metrics[f"epe{suffix}_mm"] = float(endpoint_error(ddf, truth, spacing=spacing, mask=mask)[0])
            metrics[f"epe{suffix}_before_mm"] = float(
                endpoint_error(torch.zeros_like(truth), truth, spacing=spacing, mask=mask)[0])
    return metrics


def register(
    fixed: object,
    moving: object,
    bundle: str | os.PathLike = "vxm_prob",
    *,
    fixed_labels: object | None = None,
    moving_labels: object | None = None,
    affine: bool = False,
    affine_metric: str = "ncc",
    affine_options: Mapping[str, Any] | None = None,
    true_ddf: torch.Tensor | None = None,
    orientation: str | None = "RAS",
    device: str | torch.device | None = None,
    output_dir: str | os.PathLike | None = None,
    qc: bool = True,
    inverse: bool = False,
    **method_options: Any,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with a named method and return (and optionally write) the result.

    Args:
        fixed: the fixed image: a file path (NIfTI, NRRD, MHA, ... anything MONAI's
            ``LoadImage`` reads), a numpy array / torch tensor ``(*S)``, ``(1, *S)`` or
            ``(1, 1, *S)`` (2D or 3D; leading singleton axes are dropped, identity affine), or a
            MONAI MetaTensor of those shapes (its affine is used).
        moving: the moving image, same kinds. Files and MetaTensors may be on another grid
            (resampled); plain arrays must have the fixed image's shape.
        bundle: method name (``"svf_optim"``, ``"vxm_prob"``, ...; see
            :func:`monai_diffreg.methods.available_methods`), a bundle folder, or a method object
            (:func:`monai_diffreg.methods.load_method`'s result, a bundle config's ``method``; no
            ``method_options`` then, and by default its own ``device``).
        fixed_labels: optional fixed label map (integer values), same kinds.
        moving_labels: optional moving label map: warped (nearest) into ``warped_labels``.
        affine: run the affine stage first (recommended unless the pair is already affinely
            aligned; learned bundles assume it is); saving then also writes ``affine.tfm``.
        affine_metric: similarity of the affine stage: ``"ncc"`` (same contrast), ``"mi"``
            (different contrasts) or ``"mse"``.
        affine_options: further arguments of :func:`monai_diffreg.engines.affine.optimise_affine`
            (``levels``, ``iterations``, ``learning_rate``, ...).
        true_ddf: optional known field ``(1, D, *S)`` in fixed-grid voxels (e.g. the built-in
            sample's), for the end-point error in the metrics.
        orientation: axis codes of the working grid the method sees (default ``"RAS"``) or None
            to use the fixed file's axes; outputs are always on the fixed file's grid.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available, else CPU).
        output_dir: when given, :meth:`RegistrationResult.save` writes the files there.
        qc: also write ``qc.png`` when saving.
        inverse: also compute the inverse field ``result.inverse_ddf`` (moving -> fixed) and
            write ``inverse_ddf.nii.gz`` when saving; without it, methods that can skip the
            inverse do (the learned bundles), and ``result.inverse_ddf`` is None for them.
        method_options: options of the method (built-in: constructor arguments; bundles:
            config overrides by id, e.g. ``**{"method#iterations": 50}``).

    Returns:
        a :class:`RegistrationResult`.

    Raises:
        ValueError / TypeError / FileNotFoundError: bad input, with a message naming the argument;
        nothing is written then.
        InsufficientMemoryError: the run would need more memory than is available (a
            ``MemoryError`` and a ``ValueError``; module docstring, step 1), before any heavy work.

    Warns:
        SpacingWarning: strongly anisotropic voxels, or far from the method's expected spacing (step 3).
        MisalignmentWarning, DissimilarityWarning: steps 3 and 7.
    """
    times = {}
    start = time.perf_counter()
    for name, flag in (("affine", affine), ("qc", qc), ("inverse", inverse)):
        if not isinstance(flag, bool):
            raise TypeError(f"{_CALLER}(): '{name}' must be True or False, got {flag!r}")
    if affine_metric not in AFFINE_METRICS:
        raise ValueError(f"{_CALLER}(): 'affine_metric' must be one of {list(AFFINE_METRICS)}, got {affine_metric!r}")
    is_object = callable(bundle) and not isinstance(bundle, (str, os.PathLike))
    if is_object:
        if method_options:
            raise ValueError(f"{_CALLER}(): method options {sorted(method_options)} apply to a method name or bundle "
                             f"folder; 'bundle' is already a method object ({type(bundle).__name__})")
        method_info = MethodInfo(str(getattr(bundle, "name", type(bundle).__name__)), "object",
                                 f"{type(bundle).__module__}.{type(bundle).__qualname__}", "")
        device = getattr(bundle, "device", None) if device is None else device
    else:
        method_info = find_method(bundle, _CALLER, "bundle")
    dev = _check_device(device)
    if output_dir is not None:
        check_output_dir(output_dir)  # before any work

    # 1. inputs
    t0 = time.perf_counter()
    for name, value in (("fixed", fixed), ("moving", moving)):
        if value is None:
            raise TypeError(f"{_CALLER}(): '{name}' is required (a file path, numpy array, torch tensor or MetaTensor), got None")
    given = {"fixed": fixed, "moving": moving, "fixed_labels": fixed_labels, "moving_labels": moving_labels}
    given = {k: v for k, v in given.items() if v is not None}
    images = {name: _as_image(value, name) for name, value in given.items()}
    has_geometry = {name: isinstance(value, (str, os.PathLike, MetaTensor)) for name, value in given.items()}
    _check_inputs(images, has_geometry)
    ndim = images["fixed"].ndim - 1
    if true_ddf is not None and (not isinstance(true_ddf, torch.Tensor)
                                 or tuple(true_ddf.shape) != (1, ndim, *images["fixed"].shape[1:])):
        got = tuple(true_ddf.shape) if isinstance(true_ddf, torch.Tensor) else type(true_ddf).__name__
        raise ValueError(f"{_CALLER}(): 'true_ddf' must be a tensor of shape {(1, ndim, *images['fixed'].shape[1:])}, "
                         f"got {got}")
    times["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    method = bundle if is_object else shared_method(bundle, device=dev, **method_options)
    times["load_method"] = time.perf_counter() - t0
    memory = check_memory(images, method, output_dir is not None, dev)  # before any heavy work

    # 2. working grid
    t0 = time.perf_counter()
    from .transforms.dictionary import LoadRegistrationPaird

    loader = LoadRegistrationPaird(orientation=orientation)
    work = loader(dict(images))
    fixed_affine = spatial_affine(images["fixed"].affine, ndim, _CALLER)
    work_affine = spatial_affine(work["fixed"].affine, ndim, _CALLER)
    mapping = _voxel_map(fixed_affine, work_affine, tuple(int(s) for s in work["fixed"].shape[1:]))

    def on_device(x: torch.Tensor) -> torch.Tensor:
        return plain_tensor(x).float().unsqueeze(0).to(dev)

    fixed_w, moving_w = on_device(work["fixed"]), on_device(work["moving"])
    times["load"] += time.perf_counter() - t0

    # 3. spacing check (arrays without an affine have no known spacing), misalignment check
    spacing_info = spacing_check(np.linalg.norm(work_affine[:ndim, :ndim], axis=0),
                                 expected_spacing(method, ndim, method_info.name), method_info.name)
    if not has_geometry["fixed"]:
        spacing_info["warning"] = None
    elif spacing_info["warning"] is not None:
        warnings.warn(spacing_info["warning"], SpacingWarning, stacklevel=2)
    check = misalignment(work["fixed"], work["moving"], work_affine)
    aligns_itself = bool(getattr(method, "learns_affine", False))  # e.g. synthmorph: no advice to add the stage
    if not aligns_itself and (check["centroid_distance_mm"] > MISALIGNMENT_MM
                              or check["foreground_dice"] < MISALIGNMENT_DICE):
        advice = "it is included (affine=True)" if affine else "use affine=True (CLI: --affine)"
        warnings.warn(
            f"{_CALLER}(): the pair looks misaligned (foreground centroids {check['centroid_distance_mm']:.1f} mm apart, "
            f"foreground Dice {check['foreground_dice']:.2f}); deformable methods assume affinely aligned inputs: "
            f"{advice}", MisalignmentWarning, stacklevel=2)

    # 4. affine stage + deformable method
    t0 = time.perf_counter()
    matrix = affine_ddf = None
    moving_in = moving_w
    if affine:
        matrix, affine_ddf = _affine_stage(fixed_w, moving_w, affine_metric, affine_options)
        moving_in = warp(moving_w, affine_ddf)
    times["affine"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = check_method_output(run_method(method, fixed_w, moving_in, inverse=inverse), fixed_w, method_info.name)
    times["registration"] = time.perf_counter() - t0
    total_affine = _total_affine(matrix, out.get("affine"))

    # 5.-6. total fields on the fixed file's axes, outputs (metrics: on first use)
    t0 = time.perf_counter()
    with torch.no_grad():
        fields = _total_fields(out, matrix, mapping)
        labels_given = "moving_labels" in images and "fixed_labels" in images
        outputs = {
            "fixed": MetaTensor(plain_tensor(images["fixed"]).float().unsqueeze(0), affine=images["fixed"].affine.clone()),
            "moving": _to_fixed_grid(images, "moving", None, "bilinear"),
            "warped": _to_fixed_grid(images, "moving", fields["ddf"], "bilinear"),
            "fixed_labels": _to_fixed_grid(images, "fixed_labels", None, "nearest"),
            "moving_labels": _to_fixed_grid(images, "moving_labels", None, "nearest") if labels_given else None,
            "warped_labels": _to_fixed_grid(images, "moving_labels", fields["ddf"], "nearest"),
        }
    times["resample"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fixed_data = plain_tensor(outputs["fixed"])
    similarity = {f"nmi_{when}": normalized_mutual_information(fixed_data, plain_tensor(outputs[name]), step=2)
                  for when, name in (("before", "moving"), ("after", "warped"))}
    if similarity["nmi_after"] < similarity["nmi_before"] - NMI_TOLERANCE:
        warnings.warn(
            f"{_CALLER}(): the registered image is less like the fixed one than the input was (normalised mutual "
            f"information {similarity['nmi_before']:.3f} -> {similarity['nmi_after']:.3f}): the method may not suit "
            f"these images (another contrast than it was trained on? check qc.png)", DissimilarityWarning, stacklevel=2)
    times["similarity_check"] = time.perf_counter() - t0
    spacing = [float(v) for v in np.linalg.norm(fixed_affine[:ndim, :ndim], axis=0)]
    times["total"] = time.perf_counter() - start

    info = {
        "monai_diffreg_version": __version__,
        "method": method_info.name,
        "method_location": method_info.location,
        "method_options": {k: repr(v) for k, v in method_options.items()},
        "method_settings": repr(method),
        "method_summary": dict(out.get("summary") or {}),
        "affine_stage": {"enabled": affine, "metric": affine_metric if affine else None,
                         "learned_by_method": "affine" in out,
                         "matrix_voxels": None if total_affine is None else total_affine[0].tolist()},
        "device": str(dev),
        "inputs": {name: _describe(value) for name, value in given.items()},
        "spacing_mm": spacing,
        "spacing": {"fixed_mm": spacing, "known": has_geometry["fixed"],
                    "moving_mm": [float(v) for v in np.linalg.norm(
                        spatial_affine(images["moving"].affine, ndim, _CALLER)[:ndim, :ndim], axis=0)],
                    "working_grid_mm": spacing_info["spacing_mm"],
                    "method_expects_mm": spacing_info["expected_spacing_mm"],
                    "anisotropy": spacing_info["anisotropy"], "warning": spacing_info["warning"]},
        "memory": {"estimate_gb": round(memory["estimate_bytes"] / 1e9, 3),
                   "available_gb": None if memory["available_bytes"] is None
                   else round(memory["available_bytes"] / 1e9, 3)},
    }
    result = RegistrationResult(
        warped=outputs["warped"], ddf=fields["ddf"], fixed=outputs["fixed"], moving=outputs["moving"],
        inverse_ddf=fields["inverse_ddf"], uncertainty=fields["uncertainty"],
        warped_levels=fields["warped_levels"], warped_labels=outputs["warped_labels"],
        fixed_labels=outputs["fixed_labels"], affine_matrix=total_affine,
        affine_grid=None if total_affine is None else work_affine,
        timings=times, info=info,
        misalignment_before=check, similarity=similarity, true_ddf=true_ddf, moving_labels=outputs["moving_labels"],
    )
    if output_dir is not None:
        result.save(output_dir, qc=qc, inverse=inverse)
    return result

