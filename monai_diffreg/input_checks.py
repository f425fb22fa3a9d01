"""Checks of register()'s inputs before the heavy work: voxel spacing against what the method expects,
and the memory the run will need against what is available.

* :func:`spacing_check`: a fixed image whose voxels are strongly anisotropic, or far from the
  method's ``expected_spacing_mm`` (method contract, :mod:`monai_diffreg.methods`), is reported
  (:class:`SpacingWarning`); nothing is resampled silently.
* :func:`estimate_memory` / :func:`available_memory`: the peak memory of a run from the grid
  sizes (calibrated on the shipped methods, figures below) and the memory the machine can give;
  :class:`InsufficientMemoryError` when the first exceeds the second.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["SpacingWarning", "InsufficientMemoryError", "ANISOTROPY_LIMIT", "SPACING_FACTOR", "MEMORY_CHECK_ENV",
           "spacing_check", "expected_spacing", "check_memory", "estimate_memory", "available_memory", "METHOD_BYTES_PER_VOXEL"]

_CALLER = "register"


class SpacingWarning(UserWarning):
    """The fixed image's voxels are strongly anisotropic, or far from the spacing the method expects:
    the result may be worse than the input (resample to isotropic voxels first)."""


class InsufficientMemoryError(MemoryError, ValueError):
    """:func:`register` would need more memory than is available (estimated before any heavy work)."""


#: A fixed image whose largest voxel side is more than this many times its smallest is reported.
ANISOTROPY_LIMIT = 3.0
#: A working-grid axis whose spacing is more than this factor finer or coarser than the method's
#: ``expected_spacing_mm`` is reported.
SPACING_FACTOR = 2.0
#: Environment variable: ``0`` skips the memory check of :func:`register`.
MEMORY_CHECK_ENV = "MONAI_DIFFREG_MEMORY_CHECK"


def _mm(values: Any) -> str:
    return " x ".join(f"{float(v):.3g}" for v in values)


def expected_spacing(method: object, ndim: int, name: str) -> tuple[float, ...] | None:
    """The method's ``expected_spacing_mm`` (method contract) as ``ndim`` floats, or None (not stated,
    or stated for another dimensionality: the method itself reports that)."""
    value = getattr(method, "expected_spacing_mm", None)
    if value is None:
        return None
    values = [value] if isinstance(value, (int, float)) else value
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        floats = ()
    if not floats or isinstance(value, bool) or not all(np.isfinite(v) and v > 0 for v in floats):
        raise ValueError(f"{_CALLER}(): method '{name}' states expected_spacing_mm = {value!r}; it must be None, a "
                         f"positive number or one positive number per axis (mm)")
    floats = floats * ndim if len(floats) == 1 else floats
    return floats if len(floats) == ndim else None


def spacing_check(spacing: Any, expected: Any = None, method: str = "the method") -> dict[str, Any]:
    """Whether voxels of ``spacing`` mm suit a method that expects ``expected`` mm (module docstring, step 3).

    Args:
        spacing: voxel size per axis of the grid the method works on (mm).
        expected: the method's ``expected_spacing_mm`` per axis, or None (any spacing).
        method: its name, for the message.

    Returns:
        ``{"spacing_mm", "expected_spacing_mm", "anisotropy", "warning"}``: ``anisotropy`` is the
        largest voxel side over the smallest; ``warning`` the one-line message of
        :class:`SpacingWarning`, or None when the spacing is fine.
    """
    spacing = [float(v) for v in spacing]
    expected = None if expected is None else [float(v) for v in expected]
    anisotropy = max(spacing) / min(spacing)
    problems = []
    if anisotropy > ANISOTROPY_LIMIT:
        problems.append(f"strongly anisotropic ({anisotropy:.3g}x, limit {ANISOTROPY_LIMIT:g}x)")
    if expected is not None:
        ratios = [s / e for s, e in zip(spacing, expected)]
        if any(not 1.0 / SPACING_FACTOR <= r <= SPACING_FACTOR for r in ratios):
            problems.append(f"'{method}' expects {_mm(expected)} mm (limit {SPACING_FACTOR:g}x per axis)")
    warning = None
    if problems:
        if expected is not None and max(expected) <= 1.01 * min(expected):
            target = expected[0]
        else:  # isotropic voxels of the same volume: as many voxels as now
            target = float(f"{float(np.prod(spacing)) ** (1.0 / len(spacing)):.2g}")
        warning = (f"{_CALLER}(): the fixed image's voxels are {_mm(spacing)} mm: {' and '.join(problems)}; the "
                   f"result may be worse than the input: resample both images to {target:g} mm isotropic voxels first "
                   f"(monai_diffreg.io.resample_file_to_spacing(path, output, {target:g}); label maps: label=True)")
    return {"spacing_mm": spacing, "expected_spacing_mm": expected, "anisotropy": anisotropy, "warning": warning}


# Memory calibration: peak RSS during register() minus RSS before it (/proc/self/statm sampled every
# 2 ms, and ru_maxrss), CPU, float32 NIfTI files, the moving image on another grid; MiB measured ->
# estimated (below), vxm_prob unless named:
#   fixed 256^3 (16.8 M voxels)  no output_dir 1170 -> 1408; + label maps 1884 -> 2048; output_dir
#                                2544 -> 2752; output_dir + label maps 3475 -> 3840 (mdregnet 3534,
#                                moving image on the fixed grid 3333)
#   fixed 320^3 (32.8 M)         no output_dir 2175 -> 2506; output_dir + label maps 6640 -> 7256
#   fixed 128x160x128 (2.6 M)    no output_dir 236 -> 436; output_dir + label maps 679 -> 816
#   fixed 128^3, moving 256^3    no output_dir 330 -> 512; output_dir + label maps 650 -> 928
#   svf_optim (states no memory_bytes_per_voxel yet; its optimisation needs ~180 B/voxel):
#     128x160x128 output_dir + label maps 882 -> 816; 160x192x160 no output_dir 1083 -> 594
# The per-voxel figures are the 256^3 ones (after the constant and the other inputs) plus about
# 10%. With an output folder the peak is the QC figure and the det J statistics (~110 and ~60
# B/voxel on top of the results), without one MONAI's ResampleToMatch of the moving image onto the
# working grid (~60 B/voxel); the shipped networks' own work is 40-55 B/voxel (their 2 mm grid).
# (io.resample_to_fixed needed ~96 B/voxel more before it worked in slabs: 12 GB at 512^3.)
_MEMORY_FIXED = {(False, False): 64, (False, True): 88, (True, False): 148, (True, True): 200}  # (saved, labels)
_MEMORY_OTHER = 8  # bytes per voxel of every input other than the fixed image, on its own grid
_MEMORY_CONSTANT = 256 * 2**20
#: A method's working memory included in the figures above (bytes per fixed-grid voxel); a method
#: stating a larger ``memory_bytes_per_voxel`` (method contract) adds the difference when it runs on the CPU.
METHOD_BYTES_PER_VOXEL = 64


def estimate_memory(fixed_shape: Any, other_shapes: Any = (), *, labels: bool = False, saved: bool = False,
                    method_bytes_per_voxel: float | None = None, method_on_cpu: bool = True) -> int:
    """Estimated peak memory of :func:`register` in bytes (calibration in the source).

    Args:
        fixed_shape: spatial shape of the fixed image (the grid of every output).
        other_shapes: spatial shapes of the other inputs (moving image, label maps), each on its own grid.
        labels: label maps are given.
        saved: the results are written (``output_dir``): metrics, QC figure and files.
        method_bytes_per_voxel: the method's working memory per fixed-grid voxel, when it states one.
        method_on_cpu: the method runs on the CPU (on a GPU its working memory is not host memory).
    """
    fixed_voxels = int(np.prod([int(n) for n in fixed_shape]))
    estimate = _MEMORY_CONSTANT + _MEMORY_FIXED[bool(saved), bool(labels)] * fixed_voxels
    estimate += _MEMORY_OTHER * sum(int(np.prod([int(n) for n in shape])) for shape in other_shapes)
    if method_on_cpu and method_bytes_per_voxel is not None:
        estimate += max(0.0, float(method_bytes_per_voxel) - METHOD_BYTES_PER_VOXEL) * fixed_voxels
    return int(estimate)


def _cgroup_available() -> int | None:
    """Room left under this process's cgroup (v2) memory limit, or None when there is none."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            path = next((line.strip()[3:] for line in f if line.startswith("0::")), None)
        if path is None:
            return None
        folder = Path("/sys/fs/cgroup") / path.lstrip("/")
        limit = (folder / "memory.max").read_text(encoding="ascii").strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((folder / "memory.current").read_text(encoding="ascii").strip()))
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes of memory a new allocation can take: ``MemAvailable`` of ``/proc/meminfo`` (Linux), or less
    under a cgroup v2 memory limit (containers); None where it cannot be read (no memory check then)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            available = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except (OSError, ValueError, IndexError):
        return None
    if available is None:
        return None
    limit = _cgroup_available()
    return available if limit is None else min(available, limit)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_memory(images: Mapping[str, torch.Tensor], method: object, saved: bool, dev: torch.device) -> dict[str, Any]:
    """Step 1's memory check: raise :class:`InsufficientMemoryError` when the estimate exceeds what is available."""
    shape = tuple(int(n) for n in images["fixed"].shape[1:])
    others = {name: tuple(int(n) for n in image.shape[1:]) for name, image in images.items() if name != "fixed"}
    stated = getattr(method, "memory_bytes_per_voxel", None)
    stated = float(stated) if isinstance(stated, (int, float)) and not isinstance(stated, bool) and stated > 0 else None
    estimate = estimate_memory(shape, others.values(), labels=any(n.endswith("labels") for n in images), saved=saved,
                               method_bytes_per_voxel=stated, method_on_cpu=dev.type == "cpu")
    check_enabled = os.environ.get(MEMORY_CHECK_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    available = available_memory() if check_enabled else None
    if available is not None and estimate > available:
        moving = others.get("moving", shape)
        raise InsufficientMemoryError(
            f"{_CALLER}(): not enough memory for a {' x '.join(map(str, shape))} fixed grid "
            f"({np.prod(shape) / 1e6:.1f} M voxels) and a {' x '.join(map(str, moving))} moving image: the run needs "
            f"about {_gb(estimate)} (estimate), {_gb(available)} is available; crop the images to the region of "
            f"interest, resample them to coarser voxels (monai_diffreg.io.resample_file_to_spacing), "
            f"or use a machine with more memory ({MEMORY_CHECK_ENV}=0 skips this check)")
    return {"estimate_bytes": estimate, "available_bytes": available}


# ----------------------------------------------------------------------------------------- metrics
