"""The built-in sample: a brain MRI pair with grey/white-matter labels and a known deformation.

Derived from the MNI ICBM152 2009a nonlinear symmetric template (T1 and grey/white-matter
probability maps, 1 mm, RAS; notice in ``monai_diffreg/data/sample/NOTICE``), it lets the
first run of any method work offline and report Dice before/after and the field error.

How it is built (:func:`build_sample`, ``python -m monai_diffreg.sample --source DIR``):

1. **Brain mask** (skull stripping, :func:`~monai_diffreg.datasets.tissue_brain_mask`):
   ``p_gm + p_wm >= 0.5`` (probabilities = map / 255), closed morphologically (5 iterations of
   a 6-connected 3x3x3 element), holes filled slice-free in 3D (the ventricles), then dilated
   by one voxel to take in the sulcal CSF.
2. **Crop**: a ``160 x 192 x 160`` box (RAS axes, 1 mm; every size divisible by 16) centred
   on the mask's bounding box, clipped to the template.
3. **Fixed image**: the template T1 inside the mask, 0 outside, ``uint8``.
   **Fixed labels**: 0 background, 1 grey matter, 2 white matter: inside the mask, a voxel
   is GM if ``p_gm >= p_wm`` and ``p_gm >= 1 - p_gm - p_wm``, WM if ``p_wm > p_gm`` and
   ``p_wm >= 1 - p_gm - p_wm``, otherwise (CSF) 0.
4. **Deformation**: :func:`~monai_diffreg.transforms.deformation.sample_smooth_velocity_params`
   (seed :data:`SEED`, control points every 20 voxels, velocity components up to 8 voxels),
   made dense and integrated by :func:`~monai_diffreg.transforms.deformation.deformation_from_params`
   on the half-resolution grid ``80 x 96 x 80`` (the field is smooth at that scale) and resized
   to full resolution with vector rescaling. The forward field ``u`` deforms the template:
   ``moving(x) = fixed(x + u(x))``; the field that registers moving to fixed is its inverse
   ``exp(-v)`` (``true_ddf``). Mean displacement 2.56 mm, 95th percentile 4.59 mm,
   maximum 9.14 mm; ``det J`` in [0.53, 1.93]: a typical inter-subject difference after affine
   alignment.
5. **Moving image**: the masked T1 scaled to [0, 1], warped (linear), then a contrast change
   ``x ** 1.3`` (gamma) and a smooth multiplicative bias ``exp(b)`` (log-bias control values
   uniform in [-0.2, 0.2] every 64 voxels, same seed), back to ``uint8``. **Moving labels**:
   the fixed labels warped with nearest-neighbour interpolation.
6. Only the images, label maps and the deformation's parameters (``deformation.npz``, a few
   kilobytes) are stored; :func:`load_sample` regenerates the fields deterministically.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["SAMPLE_DIR", "SAMPLE_SHAPE", "SEED", "MNI_NOTICE", "sample_paths", "load_sample", "sample_fields", "build_sample"]

SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "sample"
SAMPLE_SHAPE = (160, 192, 160)
SEED = 2009
_CONTROL_SPACING = 20.0
_MAX_DISPLACEMENT = 8.0
_GAMMA = 1.3
_BIAS_SPACING = 64.0
_BIAS_RANGE = 0.2
_FILES = ("fixed", "moving", "fixed_labels", "moving_labels")
MNI_NOTICE = """\
The files in this folder are derived from the MNI ICBM152 2009a nonlinear symmetric template
(T1, grey- and white-matter probability maps; the copy distributed in the nilearn 0.14.1 wheel),
skull-stripped, cropped, deformed and relabelled by monai_diffreg/sample.py. The template's notice:

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal
Neurological Institute, McGill University. Permission to use, copy, modify, and
distribute this software and its documentation for any purpose and without fee is
hereby granted, provided that the above copyright notice appear in all copies. The
authors and McGill University make no representations about the suitability of this
software for any purpose. It is provided "as is" without express or implied warranty.
Reference: V.S. Fonov, A.C. Evans, R.C. McKinstry, C.R. Almli, D.L. Collins, "Unbiased
nonlinear average age-appropriate brain templates from birth to adulthood",
NeuroImage 47 (2009) S102.
"""
_SOURCE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def sample_paths(folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """Paths of the sample files: ``fixed``, ``moving``, ``fixed_labels``, ``moving_labels``
    (NIfTI), ``deformation`` (``.npz`` parameters), ``notice``.

    Args:
        folder: sample folder (default: the one shipped in the package).

    Raises:
        FileNotFoundError: a file is missing (a broken installation).
    """
    root = Path(folder) if folder is not None else SAMPLE_DIR
    paths = {name: root / f"{name}.nii.gz" for name in _FILES}
    paths["deformation"] = root / "deformation.npz"
    paths["notice"] = root / "NOTICE"
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"sample_paths(): the built-in sample is incomplete, missing {missing}; "
                                f"rebuild it with `python -m monai_diffreg.sample --source <mni152_2009a folder>`")
    return paths


def _deformation_params(path: Path) -> dict[str, Any]:
    with np.load(path) as data:
        return {
            "coefficients": torch.as_tensor(data["coefficients"]),
            "spatial_shape": tuple(int(s) for s in data["spatial_shape"]),
            "control_spacing": tuple(float(s) for s in data["control_spacing"]),
            "max_displacement": float(data["max_displacement"]),
        }


def sample_fields(params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Full-resolution fields of the sample deformation (step 4 of the module docstring).

    Args:
        params: the parameters of :func:`~monai_diffreg.transforms.deformation.sample_smooth_velocity_params`.

    Returns:
        ``{"ddf": u, "inverse_ddf": exp(-v)}``, ``(1, 3, *SAMPLE_SHAPE)`` float32 in voxels
        (``ddf`` made the moving image from the fixed one; ``inverse_ddf`` registers moving to fixed).
    """
    from .functional import resize_field
    from .transforms.deformation import deformation_from_params

    shape = tuple(params["spatial_shape"])
    half = deformation_from_params(params, spatial_shape=tuple(n // 2 for n in shape))
    return {key: resize_field(half[key], size=shape) for key in ("ddf", "inverse_ddf")}


def load_sample(folder: str | os.PathLike | None = None, with_fields: bool = True) -> dict[str, Any]:
    """Load the built-in sample as MONAI MetaTensors.

    Args:
        folder: sample folder (default: the shipped one).
        with_fields: also regenerate the true fields (about a second on a CPU core).

    Returns:
        dict with ``fixed``, ``moving``, ``fixed_labels``, ``moving_labels``: ``(1, 160, 192, 160)``
        float32 MetaTensors with their affines (1 mm RAS; labels 0/1/2 = background/GM/WM);
        ``true_ddf``: ``(1, 3, 160, 192, 160)`` float32 displacement in fixed-grid voxels that
        registers moving to fixed (``warp(moving, true_ddf) ~ fixed``), the value for
        ``register(..., true_ddf=...)``; ``true_inverse_ddf``: the field that made the moving
        image (``moving = warp(fixed, true_inverse_ddf)``); ``affine``: the ``(4, 4)`` grid
        affine; ``paths``: :func:`sample_paths`.
    """
    from .transforms.spatial import load_channel_first

    paths = sample_paths(folder)
    out: dict[str, Any] = {name: load_channel_first(paths[name], name, "load_sample") for name in _FILES}
    out["affine"] = np.asarray(out["fixed"].affine, dtype=np.float64)
    out["paths"] = paths
    if with_fields:
        fields = sample_fields(_deformation_params(paths["deformation"]))
        out["true_ddf"] = fields["inverse_ddf"]
        out["true_inverse_ddf"] = fields["ddf"]
    return out


# ------------------------------------------------------------------------------------------- build
def _brain_mask(p_gm: np.ndarray, p_wm: np.ndarray) -> np.ndarray:
    """Step 1 of the module docstring: :func:`~monai_diffreg.datasets.tissue_brain_mask` with the sample's settings.

    (``p_gm + p_wm >= 0.5`` equals the ``> 0.5`` the sample was built with: the maps are
    multiples of 1/255, so their sum is never within 1/510 of 0.5.)
    """
    from .datasets import tissue_brain_mask

    return tissue_brain_mask(p_gm + p_wm, 0.5, closing_iterations=5, dilation_iterations=1)


def _crop_box(mask: np.ndarray) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    centre = (idx.min(0) + idx.max(0)) / 2
    box = []
    for c, size, n in zip(centre, SAMPLE_SHAPE, mask.shape):
        start = int(np.clip(round(c - size / 2), 0, n - size))
        box.append(slice(start, start + size))
    return tuple(box)


def gm_wm_labels(p_gm: np.ndarray, p_wm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """0/1/2 = background/GM/WM by the rule of the module docstring (step 3)."""
    p_rest = 1.0 - p_gm - p_wm
    gm = (p_gm >= p_wm) & (p_gm >= p_rest)
    wm = (p_wm > p_gm) & (p_wm >= p_rest)
    labels = np.zeros(mask.shape, np.uint8)
    labels[gm & mask] = 1
    labels[wm & mask] = 2
    return labels


def build_sample(source: str | os.PathLike, folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """Build the sample files from the MNI152 2009a folder (module docstring for every step).

    Args:
        source: folder holding the three ``mni_icbm152_*_09a_converted.nii.gz`` files.
        folder: output folder (default: the package's ``data/sample``).

    Returns:
        :func:`sample_paths` of the written files.
    """
    import nibabel as nib

    from .functional import warp
    from .io import save_image, save_json
    from .transforms.control_grid import control_grid_shape
    from .transforms.deformation import sample_smooth_velocity_params
    from .transforms.synthesis import apply_gamma, bias_field_from_coefficients

    source, out = Path(source), Path(folder) if folder is not None else SAMPLE_DIR
    out.mkdir(parents=True, exist_ok=True)
    images = {key: nib.load(source / name) for key, name in _SOURCE_FILES.items()}
    t1 = np.asarray(images["t1"].dataobj, dtype=np.float64)
    p_gm = np.asarray(images["gm"].dataobj, dtype=np.float64) / 255.0
    p_wm = np.asarray(images["wm"].dataobj, dtype=np.float64) / 255.0
    mask = _brain_mask(p_gm, p_wm)
    box = _crop_box(mask)
    affine = images["t1"].affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([s.start for s in box], dtype=np.float64)
    mask, t1, p_gm, p_wm = (a[box] for a in (mask, t1, p_gm, p_wm))
    fixed = np.where(mask, t1, 0.0)
    labels = gm_wm_labels(p_gm, p_wm, mask)

    gen = torch.Generator().manual_seed(SEED)
    params = sample_smooth_velocity_params(SAMPLE_SHAPE, control_spacing=_CONTROL_SPACING,
                                           max_displacement=_MAX_DISPLACEMENT, generator=gen)
    fields = sample_fields(params)
    fixed_t = torch.as_tensor(fixed / 255.0, dtype=torch.float32)[None, None]
    moved = warp(fixed_t, fields["ddf"], padding_mode="zeros")
    bias_grid = control_grid_shape(SAMPLE_SHAPE, _BIAS_SPACING)
    log_bias = (torch.rand((1, 1, *bias_grid), generator=gen) * 2 - 1) * _BIAS_RANGE
    moving = apply_gamma(moved, _GAMMA) * bias_field_from_coefficients(log_bias, SAMPLE_SHAPE)
    moving = (moving * 255.0).round().clamp(0, 255)
    moving_labels = warp(torch.as_tensor(labels, dtype=torch.float32)[None, None], fields["ddf"], mode="nearest",
                         padding_mode="zeros")

    save_image(fixed.astype(np.uint8), affine, out / "fixed.nii.gz", label=True)
    save_image(moving[0, 0].numpy().astype(np.uint8), affine, out / "moving.nii.gz", label=True)
    save_image(labels, affine, out / "fixed_labels.nii.gz", label=True)
    save_image(moving_labels[0, 0].numpy().astype(np.uint8), affine, out / "moving_labels.nii.gz", label=True)
    np.savez_compressed(out / "deformation.npz", coefficients=params["coefficients"].numpy(),
                        spatial_shape=np.array(params["spatial_shape"]),
                        control_spacing=np.array(params["control_spacing"]),
                        max_displacement=np.array(params["max_displacement"]))
    (out / "NOTICE").write_text(MNI_NOTICE, encoding="utf-8")
    norm = fields["inverse_ddf"].norm(dim=1)
    save_json({
        "source": "MNI ICBM152 2009a nonlinear symmetric (nilearn 0.14.1 copy); see NOTICE",
        "shape": list(SAMPLE_SHAPE), "voxel_mm": 1.0, "affine": affine.tolist(),
        "crop_start_in_template": [s.start for s in box], "seed": SEED,
        "deformation": {"control_spacing_voxels": _CONTROL_SPACING, "max_velocity_voxels": _MAX_DISPLACEMENT,
                        "integration_grid": [n // 2 for n in SAMPLE_SHAPE], "scaling_and_squaring_steps": 7,
                        "true_ddf_mean_mm": float(norm.mean()), "true_ddf_max_mm": float(norm.max())},
        "intensity": {"gamma": _GAMMA, "log_bias_range": _BIAS_RANGE, "bias_control_spacing_voxels": _BIAS_SPACING,
                      "log_bias_coefficients": log_bias.flatten().tolist()},
        "labels": {"0": "background/CSF", "1": "grey matter", "2": "white matter"},
    }, out / "sample.json")
    return sample_paths(out)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m monai_diffreg.sample", description=build_sample.__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="folder with the MNI152 2009a NIfTI files")
    parser.add_argument("--output", default=None, help="output folder (default: the package's data/sample)")
    args = parser.parse_args(argv)
    for name, path in build_sample(args.source, args.output).items():
        print(f"{name}: {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    _main()
