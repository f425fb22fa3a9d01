"""Writing and reading registration results: images, ITK displacement fields, JSON summaries.

Every writer is **atomic**: the file is written to a temporary file in the destination
folder and moved into place with :func:`os.replace`, so a failure (disk full, bad data,
interrupted process) leaves neither a partial file nor a temporary file behind, and a
reader never sees a half-written file.

Geometry conventions
--------------------
* A tensor's spatial axes are the image file's voxel axes ``(i, j[, k])`` in that order (as
  MONAI's ``LoadImage`` returns them), and an **affine** is MONAI's/nibabel's
  voxel-to-world matrix in **RAS** millimetres: ``(D + 1, D + 1)`` or ``(4, 4)`` (a 2D image
  may carry either).
* Our displacement field (:mod:`monai_diffreg.functional`) ``u`` lives on the fixed grid in
  fixed-grid voxels: fixed voxel ``x`` is matched to the point at voxel coordinate ``x + u(x)``
  of the same grid, i.e. to world point ``A_f (x + u(x))``.
* ITK works in **LPS** physical space and an ``itk.DisplacementFieldTransform`` maps a fixed
  physical point ``p`` to ``p + d(p)`` (``itk.ResampleImageFilter`` then samples the moving
  image there). With ``F = diag(-1, -1, 1)`` (RAS <-> LPS) and ``M`` the linear part of the
  fixed affine, the written field is therefore ``d(x) = F M u(x)`` in millimetres, on an ITK
  image whose geometry is the fixed grid (origin ``F o``, direction and spacing from ``F M``).
  In 2D, ITK's plane is the first two LPS axes, so ``d = (F M)[:2, :2] u``.
* An affine stage's **voxel matrix** ``M`` (``[A | t]``, :mod:`monai_diffreg.functional.affine`)
  maps voxel ``x`` of a grid with voxel-to-RAS affine ``W`` to voxel ``M~ x`` of the same grid
  (``M~`` its homogeneous ``(D + 1, D + 1)`` form), i.e. world point ``W x`` to ``W M~ x``. As an
  ITK transform (fixed LPS point -> moving LPS point, what ``itk.ResampleImageFilter`` expects)
  it is ``T = F W M~ W^-1 F`` (:func:`voxel_affine_to_physical`), written as an
  ``AffineTransform_double_D_D`` with centre 0 (:func:`save_affine_transform`). It does not
  depend on the grid: the same physical map whatever grid ``M`` was estimated on.
* ``ddf.nii.gz`` is a NIfTI vector image (``intent_code`` 1007, shape ``(*S, 1, D)``) laid out
  exactly as ITK writes one, which ITK, SimpleITK and ANTs read as a displacement field.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .functional.grid import identity_grid
from .functional.warp import PADDING_MODES, WARP_MODES, voxel_to_sampling_coordinates
from .validation import check_choice, check_field, check_spatial_tensor

__all__ = [
    "atomic_path",
    "save_png",
    "save_image",
    "write_nifti",
    "save_displacement_field",
    "load_displacement_field",
    "apply_displacement_field_itk",
    "voxel_affine_to_physical",
    "physical_affine_to_voxel",
    "save_affine_transform",
    "load_affine_transform",
    "AFFINE_TRANSFORM_SUFFIXES",
    "save_json",
    "spatial_affine",
    "ddf_to_itk_field",
    "itk_field_to_ddf",
    "resample_to_fixed",
    "RESAMPLE_SLAB_VOXELS",
    "spacing_grid",
    "resample_to_spacing",
    "resample_file_to_spacing",
]

_LPS_FLIP = np.diag([-1.0, -1.0, 1.0])


def _full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``a.nii.gz``, ``.json`` for ``a.json`` (image writers pick the format from it)."""
    suffixes = path.suffixes
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Context manager yielding a temporary path to write instead of ``path``.

    On a clean exit the temporary file replaces ``path`` (:func:`os.replace`, atomic on one
    file system); on an exception it is removed and the exception propagates, so ``path`` is
    either the complete new file, or untouched. The temporary file sits in the same folder
    (hidden, same extension, so writers choosing the format by extension still work).

    Args:
        path: destination file; its parent folder must exist.

    Yields:
        the temporary path to write.
    """
    path = Path(path)
    suffix = _full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def save_png(figure, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Write a matplotlib ``figure`` to ``path`` as a PNG, atomically (:func:`atomic_path`); ``savefig_kwargs``
    (e.g. ``dpi``) go to ``figure.savefig``. Returns ``path``."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", **savefig_kwargs)
    return Path(path)


def _to_numpy(x: object, name: str, caller: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(x).detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{caller}(): '{name}' must be a numpy array or torch tensor, got {type(x).__name__}")


def spatial_affine(affine: object, ndim: int, caller: str = "spatial_affine") -> np.ndarray:
    """Return the ``(D + 1, D + 1)`` voxel-to-RAS affine of a ``D``-dimensional grid.

    Args:
        affine: ``(D + 1, D + 1)`` or ``(4, 4)`` matrix (array, tensor or MetaTensor affine);
            for a 2D grid given a ``(4, 4)``, the in-plane rows/columns ``(0, 1, 3)`` are kept.
        ndim: number of spatial axes (2 or 3).
        caller: name of the public callable for error messages.

    Returns:
        float64 ``(D + 1, D + 1)`` array.
    """
    a = np.asarray(_to_numpy(affine, "affine", caller) if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if a.shape == (4, 4) and ndim == 2:
        a = a[np.ix_([0, 1, 3], [0, 1, 3])]
    if a.shape != (ndim + 1, ndim + 1) or not np.all(np.isfinite(a)):
        raise ValueError(
            f"{caller}(): 'affine' must be a finite ({ndim + 1}, {ndim + 1}) or (4, 4) matrix for a {ndim}D grid, "
            f"got shape {a.shape}"
        )
    if abs(np.linalg.det(a[:ndim, :ndim])) < 1e-12:
        raise ValueError(f"{caller}(): 'affine' must be invertible, got a singular matrix {a.tolist()}")
    return a


def _nifti_affine(affine: np.ndarray) -> np.ndarray:
    """Embed a ``(D + 1, D + 1)`` affine into the ``(4, 4)`` NIfTI affine."""
    ndim = affine.shape[0] - 1
    if ndim == 3:
        return affine
    out = np.eye(4)
    out[np.ix_([0, 1, 3], [0, 1, 3])] = affine
    return out


def _spatial_array(image: object, spatial_dims: int | None, name: str, caller: str) -> tuple[np.ndarray, int]:
    """``(*S)`` or ``(*S, C)`` array from ``(*S)``, ``(C, *S)`` or ``(1, C, *S)`` input."""
    arr = _to_numpy(image, name, caller)
    if spatial_dims is None:
        spatial_dims = 2 if arr.ndim == 2 else 3
    if spatial_dims not in (2, 3):
        raise ValueError(f"{caller}(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
    extra = arr.ndim - spatial_dims
    if extra == 2:
        if arr.shape[0] != 1:
            raise ValueError(f"{caller}(): '{name}' must hold one image (batch size 1), got shape {arr.shape}")
        arr = arr[0]
        extra = 1
    if extra not in (0, 1):
        raise ValueError(
            f"{caller}(): '{name}' must have shape (*S), (C, *S) or (1, C, *S) with {spatial_dims} spatial axes, "
            f"got shape {arr.shape}"
        )
    if extra == 1:
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    return arr, spatial_dims


def _label_dtype(arr: np.ndarray, caller: str, name: str) -> np.dtype:
    if arr.size and not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"{caller}(): '{name}' is saved as a label map but holds non-integer values")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"{caller}(): '{name}' label values [{lo}, {hi}] do not fit in int32")


def save_image(image: object, affine: object, path: str | os.PathLike, *, label: bool = False,
               spatial_dims: int | None = None) -> Path:
    """Write an image as NIfTI (atomic).

    Args:
        image: ``(*S)``, ``(C, *S)`` or ``(1, C, *S)`` array/tensor/MetaTensor. ``C > 1`` is
            written as the last NIfTI axis.
        affine: voxel-to-RAS affine of the grid, ``(D + 1, D + 1)`` or ``(4, 4)``.
        path: destination (``.nii`` or ``.nii.gz``); its folder must exist.
        label: write as a label map: values must be integers and are stored in the smallest
            of ``uint8``/``int16``/``int32`` that holds them. Otherwise integer and bool data
            keep an integer type and floating data is stored as ``float32``.
        spatial_dims: number of spatial axes; default 2 for a 2D array and 3 otherwise (pass 2
            for channel-first 2D images).

    Returns:
        the written path.
    """
    import nibabel as nib

    arr, ndim = _spatial_array(image, spatial_dims, "image", "save_image")
    aff = _nifti_affine(spatial_affine(affine, ndim, "save_image"))
    if label:
        arr = arr.astype(_label_dtype(arr, "save_image", "image"))
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(_label_dtype(arr, "save_image", "image"))
    else:
        arr = arr.astype(np.float32, copy=False)
    img = nib.Nifti1Image(np.ascontiguousarray(arr), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    return write_nifti(img, path)


def write_nifti(image: object, path: str | os.PathLike) -> Path:
    """Write a nibabel NIfTI image atomically; ``.nii.gz`` compressed by ISA-L's gzip (level 1).

    ISA-L writes a standard gzip stream (every NIfTI reader, ITK, ANTs and Slicer read it) about
    ten times faster than zlib at its fastest level, with the same size: a 160x192x224 float32
    displacement field (82 MB) takes about 0.2 s instead of 2.5 s.

    Args:
        image: a ``nibabel.Nifti1Image``.
        path: destination, ``.nii`` or ``.nii.gz``; its folder must exist.

    Returns:
        the written path.
    """
    with atomic_path(path) as tmp:
        if str(path).endswith(".gz"):
            from isal import igzip

            tmp.write_bytes(igzip.compress(image.to_bytes(), compresslevel=1))
        else:
            image.to_filename(str(tmp))
    return Path(path)


def _ddf_array(ddf: object, caller: str, dtype: type = np.float64) -> np.ndarray:
    arr = _to_numpy(ddf, "ddf", caller).astype(dtype, copy=False)
    if arr.ndim in (4, 5) and arr.shape[0] == 1:
        arr = arr[0]
    ndim = arr.ndim - 1
    if ndim not in (2, 3) or arr.shape[0] != ndim:
        raise ValueError(f"{caller}(): 'ddf' must have shape (1, D, *S) or (D, *S) with D = 2 or 3, got {np.shape(ddf)}")
    if arr.size and not (np.isfinite(arr.min()) and np.isfinite(arr.max())):  # NaN/Inf reach the extremes
        raise ValueError(f"{caller}(): 'ddf' contains NaN/Inf values")
    return arr


def _lps_linear(affine: np.ndarray) -> np.ndarray:
    """``(F M)[:D, :D]``: fixed voxel steps to LPS millimetres."""
    ndim = affine.shape[0] - 1
    return _LPS_FLIP[:ndim, :ndim] @ affine[:ndim, :ndim]


def ddf_to_itk_field(ddf: object, fixed_affine: object) -> np.ndarray:
    """Convert a voxel DDF on the fixed grid to ITK physical displacements (LPS, mm).

    ``d(x) = (F M)[:D, :D] u(x)`` (module docstring).

    Args:
        ddf: ``(1, D, *S)`` or ``(D, *S)`` displacement in fixed-grid voxels.
        fixed_affine: voxel-to-RAS affine of the fixed grid.

    Returns:
        float64 ``(D, *S)`` displacement in millimetres, LPS components.
    """
    u = _ddf_array(ddf, "ddf_to_itk_field")
    ndim = u.shape[0]
    linear = _lps_linear(spatial_affine(fixed_affine, ndim, "ddf_to_itk_field"))
    return np.einsum("ij,j...->i...", linear, u)


def itk_field_to_ddf(field: np.ndarray, fixed_affine: object) -> np.ndarray:
    """Inverse of :func:`ddf_to_itk_field`: ``u(x) = (F M)^-1 d(x)``.

    Args:
        field: ``(D, *S)`` LPS displacement in millimetres.
        fixed_affine: voxel-to-RAS affine of the grid.

    Returns:
        float64 ``(D, *S)`` displacement in voxels.
    """
    ndim = field.shape[0]
    linear = _lps_linear(spatial_affine(fixed_affine, ndim, "itk_field_to_ddf"))
    return np.einsum("ij,j...->i...", np.linalg.inv(linear), field)


def save_displacement_field(ddf: object, fixed_affine: object, path: str | os.PathLike) -> Path:
    """Write a voxel DDF as an ITK displacement field on the fixed grid (atomic).

    The file applies in ITK exactly as our :func:`~monai_diffreg.functional.warp` does:
    ``itk.DisplacementFieldTransform`` with this field, used by ``itk.ResampleImageFilter``
    on the fixed image's grid, resamples the moving image (in its own file's geometry) the
    way ``warp(moving_on_fixed_grid, ddf)`` does (module docstring for the maths; tested
    against ITK). The layout is the one ITK itself writes for an
    ``itk.Image[itk.Vector[itk.F, D], D]``: a NIfTI vector image (``intent_code`` 1007,
    shape ``(*S, 1, D)``, 2D padded to ``(X, Y, 1, 1, 2)``), float32 LPS millimetres, the
    fixed affine as qform and sform; ITK, SimpleITK and ANTs read it as a displacement field.
    It is written with nibabel, which avoids loading ITK (seconds) in every run.

    Args:
        ddf: ``(1, D, *S)`` or ``(D, *S)`` displacement in fixed-grid voxels (package convention).
        fixed_affine: voxel-to-RAS affine of the fixed grid (``(D + 1, D + 1)`` or ``(4, 4)``).
        path: destination, ``.nii.gz`` or ``.nii``.

    Returns:
        the written path.
    """
    import nibabel as nib

    u = _ddf_array(ddf, "save_displacement_field", np.float32)  # the file is float32: compute in it
    ndim = u.shape[0]
    affine = spatial_affine(fixed_affine, ndim, "save_displacement_field")
    # d = (F M) u for every voxel, written voxel-major (*S, D): one matrix product, no transposed copy
    data = u.reshape(ndim, -1).T @ _lps_linear(affine).T.astype(np.float32)
    data = data.reshape(*u.shape[1:], *([1] * (4 - ndim)), ndim)  # (*S, [1,] 1, D)
    image = nib.Nifti1Image(data, _nifti_affine(affine))
    image.header.set_intent("vector")
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    return write_nifti(image, path)


def load_displacement_field(path: str | os.PathLike) -> tuple[torch.Tensor, np.ndarray]:
    """Read an ITK displacement field (NIfTI vector image) and express it in voxels of its grid.

    Args:
        path: file written by :func:`save_displacement_field` (or by ITK/ANTs/SimpleITK as NIfTI).

    Returns:
        ``(ddf, affine)``: ``ddf`` float32 ``(1, D, *S)`` in voxels (package convention) and
        ``affine`` the grid's ``(4, 4)`` voxel-to-RAS affine (2D embedded in 4x4).
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_displacement_field(): 'path' {str(path)!r} does not exist")
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float64)
    except Exception as err:  # nibabel raises several types for corrupt files
        raise ValueError(f"load_displacement_field(): cannot read {str(path)!r} as NIfTI: {err}") from None
    ndim = data.shape[-1] if data.ndim == 5 else -1
    if ndim not in (2, 3) or any(s != 1 for s in data.shape[ndim:-1]):
        raise ValueError(
            f"load_displacement_field(): {str(path)!r} must be a NIfTI vector image of shape (*S, 1, D) "
            f"(2D: (X, Y, 1, 1, 2)), got shape {data.shape}"
        )
    field = np.moveaxis(data.reshape(*data.shape[:ndim], ndim), -1, 0)
    affine = spatial_affine(image.affine, ndim, "load_displacement_field")
    return torch.as_tensor(itk_field_to_ddf(field, affine), dtype=torch.float32).unsqueeze(0), _nifti_affine(affine)


def apply_displacement_field_itk(moving: str | os.PathLike, reference: str | os.PathLike,
                                 field: str | os.PathLike, mode: str = "linear",
                                 default_value: float = 0.0) -> np.ndarray:
    """Resample an image file through a displacement-field file with ITK (independent of torch).

    What any ITK user does with ``ddf.nii.gz``: ``itk.DisplacementFieldTransform`` with the field
    and ``itk.ResampleImageFilter`` onto the reference grid. Use it to apply a registration to
    another image of the moving subject (e.g. a second label map), or to cross-check our warp.

    Args:
        moving: image file in its own geometry (any format ITK reads).
        reference: image file whose grid is the output grid (the fixed image).
        field: displacement field file (:func:`save_displacement_field`).
        mode: ``"linear"`` or ``"nearest"`` (label maps).
        default_value: value outside the moving image.

    Returns:
        float64 array on the reference grid, axes in file voxel order ``(i, j[, k])`` (as
        nibabel and MONAI index it).
    """
    import itk

    check_choice(mode, "mode", "apply_displacement_field_itk", ("linear", "nearest"))
    image = itk.imread(os.fspath(moving), itk.D)
    ndim = image.GetImageDimension()
    field_f = itk.imread(os.fspath(field))
    # itk.DisplacementFieldTransform[itk.D] needs a double field; Python ITK reads float vectors
    displacement = itk.Image[itk.Vector[itk.D, ndim], ndim].New()
    displacement.SetRegions(field_f.GetLargestPossibleRegion())
    displacement.CopyInformation(field_f)
    displacement.Allocate()
    itk.array_view_from_image(displacement)[:] = itk.array_view_from_image(field_f)
    transform = itk.DisplacementFieldTransform[itk.D, ndim].New()
    transform.SetDisplacementField(displacement)
    interpolator = (itk.NearestNeighborInterpolateImageFunction if mode == "nearest"
                    else itk.LinearInterpolateImageFunction)[type(image), itk.D].New()
    out = itk.resample_image_filter(image, transform=transform, interpolator=interpolator, use_reference_image=True,
                                    reference_image=itk.imread(os.fspath(reference), itk.D),
                                    default_pixel_value=default_value)
    return np.transpose(itk.array_from_image(out), tuple(range(ndim - 1, -1, -1)))


#: File extensions :func:`save_affine_transform` writes, as ITK chooses its transform IO from them:
#: ITK's text format (``.tfm``, ``.txt``), MATLAB v4 (``.mat``, as ANTs writes) and HDF5.
AFFINE_TRANSFORM_SUFFIXES = (".tfm", ".txt", ".mat", ".h5", ".hdf5")


def _homogeneous_flip(ndim: int) -> np.ndarray:
    """``diag(F, 1)``: RAS <-> LPS on homogeneous ``D``-dimensional points (2D: the first two axes flip)."""
    flip = np.eye(ndim + 1)
    flip[:ndim, :ndim] = _LPS_FLIP[:ndim, :ndim]
    return flip


def _voxel_matrix(matrix: object, caller: str) -> np.ndarray:
    """float64 ``(D, D + 1)`` from a ``(D, D + 1)`` or ``(1, D, D + 1)`` array/tensor."""
    arr = np.asarray(_to_numpy(matrix, "matrix", caller), dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[0] not in (2, 3) or arr.shape[1] != arr.shape[0] + 1:
        raise ValueError(f"{caller}(): 'matrix' must have shape (D, D + 1) or (1, D, D + 1) with D = 2 or 3, "
                         f"got {tuple(np.shape(matrix))}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{caller}(): 'matrix' contains NaN/Inf values")
    return arr


def voxel_affine_to_physical(matrix: object, grid_affine: object) -> np.ndarray:
    """The physical (ITK, LPS) transform of a voxel affine on a grid: ``T = F W M~ W^-1 F``.

    ``M`` maps voxel ``x`` of the grid to voxel ``M~ x`` of the same grid (the package's
    convention: fixed-grid voxel to the voxel of the moving image resampled onto that grid,
    ``warp(moving, affine_to_ddf(M))``); ``T`` maps the fixed LPS point to the moving LPS point,
    so ITK resampling the moving image (in any grid of its own) through ``T`` onto the fixed
    grid reproduces that warp (module docstring).

    Args:
        matrix: ``(D, D + 1)`` or ``(1, D, D + 1)`` ``[A | t]`` in voxels (array or tensor; D = 2 or 3).
        grid_affine: voxel-to-RAS affine ``W`` of the grid ``M`` is expressed on, ``(D + 1, D + 1)``
            or ``(4, 4)`` (2D: the in-plane part of a ``(4, 4)``).

    Returns:
        float64 ``(D + 1, D + 1)`` homogeneous matrix ``[L | o; 0 | 1]``: ``p_moving = L p_fixed + o``
        in LPS millimetres.
    """
    m = _voxel_matrix(matrix, "voxel_affine_to_physical")
    ndim = m.shape[0]
    w = spatial_affine(grid_affine, ndim, "voxel_affine_to_physical")
    flip = _homogeneous_flip(ndim)
    full = np.vstack([m, np.eye(ndim + 1)[ndim]])
    out = flip @ w @ full @ np.linalg.inv(w) @ flip
    out[ndim] = np.eye(ndim + 1)[ndim]  # exact last row
    return out


def physical_affine_to_voxel(transform: object, grid_affine: object) -> np.ndarray:
    """Inverse of :func:`voxel_affine_to_physical`: ``M~ = W^-1 F T F W``, the voxel matrix on a grid.

    Args:
        transform: ``(D + 1, D + 1)`` physical LPS transform (fixed point -> moving point), e.g.
            from :func:`load_affine_transform`.
        grid_affine: voxel-to-RAS affine ``W`` of the grid to express it on.

    Returns:
        float64 ``(D, D + 1)`` ``[A | t]`` in voxels (use ``torch.as_tensor(m)[None]`` for
        :func:`~monai_diffreg.functional.affine_to_ddf`).
    """
    t = np.asarray(_to_numpy(transform, "transform", "physical_affine_to_voxel"), dtype=np.float64)
    ndim = t.shape[0] - 1
    if t.ndim != 2 or ndim not in (2, 3) or t.shape[1] != ndim + 1 or not np.all(np.isfinite(t)):
        raise ValueError(f"physical_affine_to_voxel(): 'transform' must be a finite (D + 1, D + 1) matrix with "
                         f"D = 2 or 3, got shape {t.shape}")
    w = spatial_affine(grid_affine, ndim, "physical_affine_to_voxel")
    flip = _homogeneous_flip(ndim)
    return (np.linalg.inv(w) @ flip @ t @ flip @ w)[:ndim]


def _itk_text_transform(transform: np.ndarray) -> str:
    """ITK's text transform format (``itk::TxtTransformIO``) of an ``AffineTransform`` with centre 0."""
    ndim = transform.shape[0] - 1
    params = [*transform[:ndim, :ndim].ravel(), *transform[:ndim, ndim]]  # row-major matrix, then translation
    numbers = " ".join(repr(float(v)) for v in params)  # shortest text that reads back as the same double
    return (f"#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_{ndim}_{ndim}\n"
            f"Parameters: {numbers}\nFixedParameters: {' '.join(['0'] * ndim)}\n")


def save_affine_transform(matrix: object, grid_affine: object, path: str | os.PathLike) -> Path:
    """Write a voxel affine as an ITK ``AffineTransform`` file (double, ``D`` dimensions; atomic).

    The file holds ``T = F W M~ W^-1 F`` (:func:`voxel_affine_to_physical`), fixed LPS point ->
    moving LPS point, centre 0: what ``itk.transformread``, SimpleITK, ``antsApplyTransforms``
    and Slicer read, and what ``itk.ResampleImageFilter`` applies to resample the moving image
    (in its own file's geometry) onto the fixed grid. ``.tfm``/``.txt`` are ITK's text format,
    written here directly (exactly as ``itk.transformwrite`` writes it, without loading ITK,
    which takes seconds); ``.mat`` (MATLAB v4, ANTs' format) and ``.h5``/``.hdf5`` are written
    with ``itk.transformwrite``.

    Args:
        matrix: ``(D, D + 1)`` or ``(1, D, D + 1)`` voxel affine (e.g. ``RegistrationResult.affine_matrix``).
        grid_affine: voxel-to-RAS affine of the grid ``matrix`` is expressed on.
        path: destination with one of :data:`AFFINE_TRANSFORM_SUFFIXES`; its folder must exist.

    Returns:
        the written path.
    """
    path = Path(path)
    suffix = path.suffix  # ITK's own checks are case-sensitive
    if suffix not in AFFINE_TRANSFORM_SUFFIXES:
        raise ValueError(f"save_affine_transform(): 'path' must end with one of {list(AFFINE_TRANSFORM_SUFFIXES)} "
                         f"(ITK picks the transform format from it), got {str(path)!r}")
    transform = voxel_affine_to_physical(matrix, grid_affine)
    ndim = transform.shape[0] - 1
    with atomic_path(path) as tmp:
        if suffix in (".tfm", ".txt"):
            tmp.write_text(_itk_text_transform(transform), encoding="ascii")
        else:
            import itk

            itk_transform = itk.AffineTransform[itk.D, ndim].New()
            itk_transform.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(transform[:ndim, :ndim])))
            itk_transform.SetTranslation([float(v) for v in transform[:ndim, ndim]])
            itk.transformwrite([itk_transform], os.fspath(tmp))
    return path


def load_affine_transform(path: str | os.PathLike) -> np.ndarray:
    """Read an ITK affine transform file (any format and matrix-offset type ITK reads) as a matrix.

    Args:
        path: a file of one affine-like transform (``AffineTransform``, ``Euler3DTransform``, ...:
            any ITK transform with a matrix and an offset), e.g. :func:`save_affine_transform`'s.

    Returns:
        float64 ``(D + 1, D + 1)`` homogeneous LPS transform (fixed point -> moving point, centre
        and translation folded into the offset); :func:`physical_affine_to_voxel` gives the voxel
        matrix on a grid.
    """
    import itk

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_affine_transform(): 'path' {str(path)!r} does not exist")
    try:
        transforms = list(itk.transformread(os.fspath(path)))
    except Exception as err:  # ITK raises RuntimeError with its own message
        raise ValueError(f"load_affine_transform(): cannot read {str(path)!r} as an ITK transform: {err}") from None
    if len(transforms) != 1 or not hasattr(transforms[0], "GetMatrix") or not hasattr(transforms[0], "GetOffset"):
        kinds = [type(t).__name__ for t in transforms]
        raise ValueError(f"load_affine_transform(): {str(path)!r} must hold one affine transform, got {kinds}")
    transform = transforms[0]
    ndim = int(transform.GetInputSpaceDimension())
    out = np.eye(ndim + 1)
    out[:ndim, :ndim] = np.asarray(itk.array_from_matrix(transform.GetMatrix()), dtype=np.float64)
    offset = transform.GetOffset()
    out[:ndim, ndim] = [float(offset[i]) for i in range(ndim)]
    return out


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"save_json(): cannot serialise a {type(value).__name__}")


def _replace_non_finite(value: object) -> object:
    """JSON has no NaN/Inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _replace_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_non_finite(v) for v in value]
    return value


def save_json(data: Mapping, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON (atomic). NaN/Inf become ``null``; numpy/torch scalars are converted."""
    text = json.dumps(_replace_non_finite(json.loads(json.dumps(data, default=_json_default))), indent=2,
                      sort_keys=False, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return Path(path)


#: Fixed-grid voxels resampled per slab by :func:`resample_to_fixed`: its float64 coordinates then
#: need about 150 bytes per voxel of the slab (~40 MB), not of the whole grid.
RESAMPLE_SLAB_VOXELS = 2**18


def resample_to_fixed(moving: torch.Tensor, moving_affine: object, fixed_affine: object,
                      fixed_shape: Sequence[int], ddf: torch.Tensor | None = None, mode: str = "bilinear",
                      padding_mode: str = "zeros") -> torch.Tensor:
    """Resample a moving image from its own grid onto the fixed grid, through a fixed-grid DDF.

    Fixed voxel ``x`` takes the moving value at moving voxel ``y = A_m^-1 A_f (x + u(x))``
    (``u = 0`` when ``ddf`` is None): one interpolation from the original moving image,
    exactly what ITK does with the field written by :func:`save_displacement_field`.

    The sampling points are computed in float64 (``y`` of a large grid needs it) slab by slab
    along the first fixed axis (:data:`RESAMPLE_SLAB_VOXELS` voxels at a time), so the memory
    needed beyond the output is a few tens of megabytes whatever the grid size (a whole 512^3
    grid's float64 coordinates took over 12 GB).

    Args:
        moving: ``(1, C, *S_m)`` image on its own grid.
        moving_affine: voxel-to-RAS affine of the moving grid.
        fixed_affine: voxel-to-RAS affine of the fixed grid.
        fixed_shape: fixed spatial shape ``S``.
        ddf: optional ``(1, D, *S)`` displacement in fixed-grid voxels.
        mode: ``"bilinear"`` or ``"nearest"`` (label maps).
        padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"`` outside the moving grid.

    Returns:
        ``(1, C, *S)`` image on the fixed grid, in ``moving``'s floating dtype (float32 for
        integer input).
    """
    ndim = check_spatial_tensor(moving, "moving", "resample_to_fixed")
    check_choice(mode, "mode", "resample_to_fixed", WARP_MODES)
    check_choice(padding_mode, "padding_mode", "resample_to_fixed", PADDING_MODES)
    shape = tuple(int(s) for s in fixed_shape)
    if len(shape) != ndim:
        raise ValueError(f"resample_to_fixed(): 'fixed_shape' must have {ndim} entries, got {shape}")
    a_m = spatial_affine(moving_affine, ndim, "resample_to_fixed")
    a_f = spatial_affine(fixed_affine, ndim, "resample_to_fixed")
    if ddf is not None:
        check_field(ddf, "ddf", "resample_to_fixed")
        if tuple(ddf.shape) != (moving.shape[0], ndim, *shape):
            raise ValueError(
                f"resample_to_fixed(): 'ddf' must have shape {(moving.shape[0], ndim, *shape)}, got {tuple(ddf.shape)}"
            )
    device = moving.device
    vox = np.linalg.solve(a_m, a_f)  # fixed voxel -> moving voxel
    lin = torch.as_tensor(vox[:ndim, :ndim], device=device)
    off = torch.as_tensor(vox[:ndim, ndim], device=device).view(1, ndim, *([1] * ndim))
    dtype = moving.dtype if moving.is_floating_point() else torch.float32
    data = torch.as_tensor(moving).to(dtype)  # no copy for floating input
    out = torch.empty((data.shape[0], data.shape[1], *shape), dtype=dtype, device=device)
    rows = max(1, RESAMPLE_SLAB_VOXELS // max(math.prod(shape[1:]), 1))
    for start in range(0, shape[0], rows):
        stop = min(start + rows, shape[0])
        points = identity_grid((stop - start, *shape[1:]), device, torch.float64).unsqueeze(0)
        if start:
            points = points + torch.as_tensor([start] + [0] * (ndim - 1), dtype=torch.float64,
                                              device=device).view(1, ndim, *([1] * ndim))
        if ddf is not None:
            points = points + ddf[:, :, start:stop].to(device=device, dtype=torch.float64)
        coords = torch.einsum("ij,bj...->bi...", lin, points) + off  # moving voxels, (B, D, *slab)
        grid = voxel_to_sampling_coordinates(coords.movedim(1, -1), moving.shape[2:]).to(dtype)
        if grid.shape[0] != data.shape[0]:
            grid = grid.expand(data.shape[0], *grid.shape[1:])
        out[:, :, start:stop] = torch.nn.functional.grid_sample(data, grid, mode=mode, padding_mode=padding_mode,
                                                                align_corners=True)
    return out


def _spacing_values(spacing: float | Sequence[float], ndim: int, caller: str) -> np.ndarray:
    try:
        values = np.atleast_1d(np.asarray(spacing, dtype=np.float64)) if not isinstance(spacing, bool) else np.array([])
    except (TypeError, ValueError):
        values = np.array([])
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.shape != (ndim,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{caller}(): 'spacing' must be a positive number or {ndim} positive numbers (mm), "
                         f"got {spacing!r}")
    return values


def spacing_grid(affine: object, shape: Sequence[int],
                 spacing: float | Sequence[float]) -> tuple[np.ndarray, tuple[int, ...]]:
    """A grid of voxel size ``spacing`` covering the field of view of the grid ``(affine, shape)``.

    The new grid keeps the axes, their directions and the centre of the field of view; along
    each axis it has ``round(n * old_spacing / spacing)`` voxels (at least 1).

    Args:
        affine: voxel-to-RAS affine of the grid, ``(D + 1, D + 1)`` or ``(4, 4)``.
        shape: its spatial shape ``S``.
        spacing: new voxel size in millimetres, one number (isotropic) or one per axis.

    Returns:
        ``(affine, shape)`` of the new grid (``(D + 1, D + 1)`` float64 affine).
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    a = spatial_affine(affine, ndim, "spacing_grid")
    new = _spacing_values(spacing, ndim, "spacing_grid")
    old = np.linalg.norm(a[:ndim, :ndim], axis=0)
    new_shape = tuple(max(1, int(round(n * o / s))) for n, o, s in zip(shape, old, new))
    out = np.eye(ndim + 1)
    out[:ndim, :ndim] = a[:ndim, :ndim] / old * new
    centre = a[:ndim, :ndim] @ ((np.array(shape) - 1) / 2.0) + a[:ndim, ndim]
    out[:ndim, ndim] = centre - out[:ndim, :ndim] @ ((np.array(new_shape) - 1) / 2.0)
    return out, new_shape


def resample_to_spacing(image: torch.Tensor, affine: object, spacing: float | Sequence[float],
                        mode: str = "bilinear") -> tuple[torch.Tensor, np.ndarray]:
    """Resample an image onto a grid of voxel size ``spacing`` covering the same field of view (:func:`spacing_grid`).

    E.g. thick-slice data (0.5 x 0.5 x 5 mm) to the 1 mm isotropic voxels a learned method was
    trained on (what :class:`monai_diffreg.api.SpacingWarning` suggests). Linear (or nearest,
    for label maps) interpolation, border values outside; no smoothing, so downsampling by more
    than a factor of 2 along an axis aliases fine detail (smooth first).

    Args:
        image: ``(1, C, *S)`` image.
        affine: its voxel-to-RAS affine.
        spacing: new voxel size in millimetres (one number or one per axis).
        mode: ``"bilinear"`` or ``"nearest"`` (label maps).

    Returns:
        ``(resampled (1, C, *S'), affine of the new grid)``.
    """
    ndim = check_spatial_tensor(image, "image", "resample_to_spacing")
    new_affine, new_shape = spacing_grid(affine, image.shape[2:], spacing)
    return resample_to_fixed(image, affine, new_affine, new_shape, mode=mode, padding_mode="border"), new_affine


def resample_file_to_spacing(path: str | os.PathLike, output: str | os.PathLike, spacing: float | Sequence[float] = 1.0,
                             *, label: bool = False) -> Path:
    """Write an image file resampled to voxels of ``spacing`` mm (:func:`resample_to_spacing`) as NIfTI.

    One line for files, e.g. before registering thick-slice images with a method trained on 1 mm
    isotropic images::

        python -c "from monai_diffreg.io import resample_file_to_spacing as r; r('t1.nii.gz', 't1_1mm.nii.gz', 1.0)"

    Args:
        path: image file (anything MONAI's ``LoadImage`` reads).
        output: NIfTI file to write (``.nii`` or ``.nii.gz``; atomic).
        spacing: new voxel size in millimetres (one number or one per axis).
        label: a label map: nearest-neighbour interpolation, integer output.

    Returns:
        the written path.
    """
    from .transforms.spatial import load_channel_first

    image = load_channel_first(path, "path", "resample_file_to_spacing")
    ndim = image.ndim - 1
    affine = spatial_affine(image.affine, ndim, "resample_file_to_spacing")
    data = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image).unsqueeze(0)
    out, new_affine = resample_to_spacing(data, affine, spacing, mode="nearest" if label else "bilinear")
    return save_image(out[0], new_affine, output, label=label, spatial_dims=ndim)
