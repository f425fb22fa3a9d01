"""Benchmark cases built from the real shared data (``../shared/data``), cached on disk.

Case groups (one results table each):

``brain_synthetic`` (3D, 30 labels, known field)
    ``fixed`` = ``voxelmorph/test_scan`` (1 mm, 160x192x224); ``moving`` = the same scan warped
    by a known random smooth diffeomorphism ``phi = exp(v)``
    (:func:`monai_diffreg.transforms.sample_smooth_velocity_params`, control points every
    :data:`SYNTH_CONTROL_SPACING_MM` mm, velocity components up to
    :data:`SYNTH_MAX_DISPLACEMENT_MM` mm: mean displacement about 3 mm in the brain, up to about
    7 mm, identity Dice about 0.6: an inter-subject magnitude after affine alignment), with an
    intensity change (gamma, smooth multiplicative bias, noise in the brain; :func:`intensity_change`).
    ``moving(y) = fixed(y + u_phi(y))``, so the registration that maps ``moving`` back onto
    ``fixed`` has the displacement of ``phi^-1 = exp(-v)``: that is ``true_ddf``. Moving labels
    are the aseg warped with nearest neighbour. One case per seed.
``mni_to_subject`` (3D, grey/white matter)
    ``moving`` = the skull-stripped MNI152 2009a template, resampled onto the test_scan grid
    through both RAS affines (brain centres of mass superimposed, since test_scan's origin is
    unknown) and then affinely aligned to it with
    :func:`monai_diffreg.engines.optimise_affine` (local NCC, pyramid factors 4-2-1 of the
    case grid, 100/50/25 iterations); its labels
    (0/1/2 = bg/GM/WM, :func:`monai_diffreg.datasets.load_mni152`) follow with nearest.
    ``fixed`` = test_scan with labels from its aseg by
    :func:`monai_diffreg.datasets.aseg_to_tissue` with its default rule, matched to what the
    template's tissue maps cover: cortex, cerebellar cortex and deep grey nuclei -> GM (1);
    cerebral and cerebellar white matter, brain stem, ventral DC -> WM (2). (Cortex 3/42 and
    cerebral WM 2/41 alone leave the template's cerebellar and deep grey matter without a
    counterpart: HD95 about 18 mm for every method, measured.)
``mni_synthetic`` (3D, grey/white matter, known field; **validation**, not in the default groups)
    Held-out cases for choosing settings (refinement steps, learning rates, checkpoints) without
    touching the evaluation brain's labels: ``fixed`` = the aligned MNI152 template of
    ``mni_to_subject`` with its tissue labels (the training distribution's template; only its pose
    comes from test_scan), ``moving`` = it under a known smooth diffeomorphism and intensity
    change exactly as in ``brain_synthetic``. Use seeds other than the benchmark's (e.g. 100 101 102).
``niivue_synthetic`` (3D, 30 labels, known field; **validation** on the validation subject)
    ``brain_synthetic`` on the validation subject ``niivue_freesurfer/`` instead of test_scan (which
    these cases never read, not even for pose): ``fixed`` = its skull-stripped T1 ``norm.mgz``
    divided by its maximum (:func:`monai_diffreg.datasets.load_niivue_subject`), cropped from the
    256^3 LIA volume to the shape of test_scan's cases (:data:`NIIVUE_CROP`: 160x192x224, 1 mm,
    same axes: 0 left-right, 1 superior-inferior, 2 anterior-posterior, orientation LIA) by a box
    centred on the bounding box of the brain (the non-zero voxels of the skull-stripped T1), so
    timings and settings transfer; labels: ``aparc.a2009s+aseg.mgz`` with the Destrieux cortex
    parcels 11100-11199 / 12100-12199 mapped to 3 / 42 (aseg-style cortex), the 30 VoxelMorph
    labels scored. ``moving`` = the crop under a known smooth diffeomorphism and intensity change
    by the very recipe of ``brain_synthetic`` (:func:`synthetic_pair`). One case per seed; use
    seeds other than the benchmark's (e.g. 100 101 102).
``niivue_mni`` (3D, grey/white matter; **validation** on the validation subject)
    ``mni_to_subject`` with the niivue crop as the subject, by the same code path: ``moving`` = the
    MNI152 template put on the crop's grid through both RAS affines (the header's true affine; brain
    centres of mass superimposed) and affinely aligned to it; ``fixed`` = the crop with labels
    from its mapped aparc+aseg by :func:`monai_diffreg.datasets.aseg_to_tissue` (default rule).
``subject_to_subject`` (3D, 30 labels; a real inter-subject pair)
    ``fixed`` = test_scan with its aseg; ``moving`` = the validation subject ``niivue_freesurfer/``
    (whole 1 mm volume, its aparc+aseg mapped to aseg codes by
    :func:`monai_diffreg.datasets.load_niivue_subject`) put on the test_scan grid and affinely
    aligned to it exactly as the template in ``mni_to_subject`` (both header affines; brain
    centres of mass superimposed; ``optimise_affine``); the 30 VoxelMorph labels scored on both
    sides. An evaluation case: it holds test_scan, so nothing is chosen by it.
``brain_synthetic_t2``, ``brain_synthetic_flair`` (3D, 30 labels, known field; **across contrasts**, not in the default groups)
    ``brain_synthetic`` with the moving image in another MR contrast: test_scan's T1 intensities are
    remapped (:func:`contrast_remap`: a piecewise-linear function of the T1 intensity through the
    subject's own mean CSF, grey- and white-matter intensities, sent to :data:`CONTRAST_TARGETS`: T2-like
    bright CSF and dark white matter, or FLAIR-like dark CSF with grey brighter than white) before the
    same deformation and intensity change as ``brain_synthetic`` of that seed (the same random draws:
    identical ``true_ddf`` and labels), so each case differs from its T1 counterpart only in contrast.
    ``fixed`` stays the T1. For contrast-agnostic methods (SynthMorph) against elastix and SyN with
    mutual information.
``niivue_synthetic_t2``, ``niivue_synthetic_flair`` (**validation**): the same on the validation subject.
``brain_synthetic_unaligned`` (3D, 30 labels, known field; **unaligned pair**, not in the default groups)
    ``brain_synthetic`` of that seed (the same deformation and intensity change: the same random draws)
    further moved by a known random affine ``A`` (:func:`random_brain_affine`), so each case differs from
    its aligned twin only by the added affine: for joint affine + deformable methods (SynthMorph's affine
    head, a pyramid's affine level) against the same methods on the aligned pair. ``A = [L | t']`` is the
    voxel matrix (:mod:`monai_diffreg.functional.affine`: fixed-grid index -> moving-grid index) that
    registers the new moving image back onto the aligned twin's: ``y = R S (x - c) + c + t`` about ``c``,
    the centre of mass of the fixed brain (aseg > 0), with ``R`` rotations by angles uniform in
    [-:data:`UNALIGNED_MAX_ROTATION_DEGREES`, +] degrees (20) about each of the three array axes, composed
    in axis order (:func:`monai_diffreg.transforms.sample_random_affine`; the total rotation angle is then
    up to about 35 degrees, median 20, 10-90 % range 11-26), ``S = diag(exp(s))`` per-axis scalings with
    ``s`` uniform in [-ln 1.1, ln 1.1] (factors in [0.91, 1.1], :data:`UNALIGNED_MAX_SCALING`) and ``t``
    uniform in [-:data:`UNALIGNED_MAX_TRANSLATION_MM`, +] mm (20) per axis (the displacement of the brain
    centre). Its draws come from their own generator,
    ``torch.Generator().manual_seed(UNALIGNED_SEED_OFFSET + seed)`` (:data:`UNALIGNED_SEED_OFFSET` = 2^32),
    so the deformation stays the aligned twin's. ``moving`` = the twin's moving image resampled on the same
    grid at ``A^-1 y`` (linear, zero padding: what leaves the field of view is lost, 0-1.1 % of the brain for
    seeds 0-2, ``settings["affine_lost_brain_fraction"]``); ``moving_labels`` = the fixed labels at
    ``phi(A^-1 y)`` in one nearest-neighbour step (the twin's labels moved by ``A^-1``, up to one voxel:
    resampling those again would erode thin structures twice). ``true_ddf`` = the total field, the twin's
    ``exp(-v)`` then ``A`` (pull-back: ``moving`` is sampled at ``A(x + u(x))``), i.e.
    ``true_ddf(x) = (L - I) x + t' + L u(x)`` with ``u`` the twin's ``true_ddf`` (:func:`unalign`). The case
    dict holds ``A`` as ``true_affine`` (``(1, 3, 4)`` float64 voxel matrix at the case's scale) and its
    amplitudes in ``settings`` (total rotation angle, scalings, translation in mm). Quick and full scale draw
    the same affine in mm (up to the brain centre of the coarser grid). Measured (seeds 0-2 and 100-102,
    quick scale): identity Dice 0.05-0.25 (twins 0.63-0.68); the true field 0.93-0.97 (twins 0.96-0.98: the
    moving brain, rotated and scaled by down to 0.93, is resampled once more); full scale: brain seed 1
    identity 0.25 (twin 0.67), true field 0.960 (twin 0.979); niivue seed 100 0.085 (0.634), 0.978 (0.988).
``niivue_synthetic_unaligned`` (**validation**): the same on the validation subject (``niivue_synthetic``).
``niivue_2d`` (2D, grey/white matter; **validation**)
    2D inter-subject pairs for choosing the 2D settings of ``pairs_2d``'s methods: slices of ``niivue_mni``
    (the MNI template affinely aligned onto the validation subject) normal to each axis of its LIA grid,
    ``niivue_mni_sagittal`` 20 mm left of the subject's brain centroid (off the midline), ``niivue_mni_axial``
    and ``niivue_mni_coronal`` through it (:data:`NIIVUE_2D_SLICES`); labels GM/WM as ``niivue_mni``'s.
``pairs_2d`` (2D)
    ``elastix_2d``: the ITKElastix head MR pair (two subjects), brain masks as label 1, no
    known field. ``dipy_synthetic_s<seed>``: the dipy T1 coronal slice under a known 2D smooth
    diffeomorphism and intensity change, as in ``brain_synthetic``; labels: two pseudo-tissue
    classes of the slice (foreground of the Gaussian-smoothed slice split at its median
    intensity: 1 darker, 2 brighter). ``circle_to_c``: the classic large-deformation test of LDDMM
    (Christensen et al. 1996): ``moving`` a solid disk (radius 32 mm), ``fixed`` a "C" (a ring of
    radii 16 and 32 mm about the same centre, opened by a 60-degree gap facing +x), both binary
    masks on a 128 x 128 1 mm grid smoothed by a 1 mm Gaussian; label 1 = the shape. The disk must
    be hollowed out through the gap: a diffeomorphism can do it (the C is simply connected), a
    small-deformation model cannot without folding.

``mni_synthetic``, ``niivue_synthetic``, ``niivue_mni``, ``niivue_synthetic_t2`` / ``_flair`` and ``niivue_synthetic_unaligned``
are **validation** groups
(:data:`VALIDATION_GROUPS`, not run by default): choose checkpoints and settings on them, never on
the benchmark groups; the ``niivue_*`` ones are real anatomy of the validation subject
(``niivue_freesurfer/``) and read nothing of test_scan, the evaluation-only brain.

Quick mode builds every case at half resolution (``scale = 0.5``: 2 mm voxels; the same
deformations in millimetres), so a smoke run takes seconds per method.

A case is a dict of tensors and settings (``(1, 1, *S)`` images and label maps, ``labels``:
the label codes scored, ``spacing`` in mm, ``true_ddf`` and ``mask`` or None); it is built
once and cached as ``<cache>/<name>@<scale>.pt``, rebuilt when its family's entry of
:data:`CASE_VERSIONS` changes; ``fingerprint`` (a hash of its tensors) lets a resumed run
(``run.py --resume``) reuse only results computed on the very same case.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage

from monai_diffreg.datasets import (
    VOXELMORPH_ORIENTATION,
    VOXELMORPH_LABELS,
    aseg_to_tissue,
    load_dipy_slice,
    load_elastix_2d,
    load_mni152,
    load_niivue_subject,
    load_voxelmorph_scan,
)
from monai_diffreg.engines.affine import optimise_affine
from monai_diffreg.functional import affine_to_ddf, compose_affine_ddf, compose_ddf, invert_affine, resize_image, warp
from monai_diffreg.transforms import (
    control_grid_shape,
    deformation_from_params,
    sample_random_affine,
    sample_smooth_velocity_params,
)
from monai_diffreg.transforms.intensity import min_max_normalize
from monai_diffreg.transforms.synthesis import add_gaussian_noise, apply_gamma, bias_field_from_coefficients

__all__ = [
    "CASE_VERSIONS",
    "CONTRAST_TARGETS",
    "CROSS_CONTRAST_GROUPS",
    "NIIVUE_2D_SLICES",
    "GROUPS",
    "VALIDATION_GROUPS",
    "NIIVUE_CROP",
    "SYNTH_CONTROL_SPACING_MM",
    "SYNTH_MAX_DISPLACEMENT_MM",
    "UNALIGNED_GROUPS",
    "UNALIGNED_MAX_ROTATION_DEGREES",
    "UNALIGNED_MAX_SCALING",
    "UNALIGNED_MAX_TRANSLATION_MM",
    "UNALIGNED_SEED_OFFSET",
    "case_names",
    "contrast_remap",
    "family",
    "fingerprint",
    "get_case",
    "intensity_change",
    "random_brain_affine",
    "synthetic_pair",
    "unalign",
]

#: Per case family: bump when its construction changes, so cached cases are rebuilt.
CASE_VERSIONS = {"brain_synthetic": 3, "mni_to_subject": 4, "mni_synthetic": 1, "elastix_2d": 3, "dipy_synthetic": 3, "circle_to_c": 1,
                 "niivue_synthetic": 1, "niivue_mni": 1, "subject_to_subject": 1, "brain_synthetic_t2": 1,
                 "brain_synthetic_flair": 1, "niivue_synthetic_t2": 1, "niivue_synthetic_flair": 1,
                 # built on their aligned twins: bump these with "brain_synthetic" / "niivue_synthetic"
                 "brain_synthetic_unaligned": 1, "niivue_synthetic_unaligned": 1,
                 # slices of niivue_mni: bump with it
                 "niivue_mni_sagittal": 1, "niivue_mni_axial": 1, "niivue_mni_coronal": 1}

#: Orientation of the 3D case arrays: test_scan's grid, and the niivue crop (a box of the LIA
#: volume ``niivue_freesurfer/norm.mgz``, so LIA too); package methods get them re-oriented to
#: RAS, as :func:`monai_diffreg.register` gives them (monai_diffreg.transforms.to_target_axes).
CASE_AXCODES = {family: "".join(VOXELMORPH_ORIENTATION)
                for family in ("brain_synthetic", "mni_to_subject", "mni_synthetic", "subject_to_subject",
                               "brain_synthetic_t2", "brain_synthetic_flair", "brain_synthetic_unaligned")}
CASE_AXCODES.update({family: "LIA" for family in ("niivue_synthetic", "niivue_mni", "niivue_synthetic_t2",
                                                  "niivue_synthetic_flair", "niivue_synthetic_unaligned")})
#: Benchmark case groups, in report order (run by default).
GROUPS = ("brain_synthetic", "mni_to_subject", "subject_to_subject", "pairs_2d")
#: Benchmark groups across MR contrasts (T1 fixed, moving remapped; run when named).
CROSS_CONTRAST_GROUPS = ("brain_synthetic_t2", "brain_synthetic_flair")
#: Benchmark groups of unaligned pairs (brain_synthetic plus a known random affine; run when named).
UNALIGNED_GROUPS = ("brain_synthetic_unaligned",)
#: Held-out groups for choosing settings (never for reported accuracy).
VALIDATION_GROUPS = ("mni_synthetic", "niivue_synthetic", "niivue_mni", "niivue_synthetic_t2", "niivue_synthetic_flair",
                     "niivue_synthetic_unaligned", "niivue_2d")
#: ``niivue_2d``'s cases: the axis of the (LIA) ``niivue_mni`` grid each slice is normal to and its offset from
#: the fixed brain's centroid along that axis, in mm (+ is left, inferior, anterior).
NIIVUE_2D_SLICES = {"niivue_mni_sagittal": (0, 20.0), "niivue_mni_axial": (1, 0.0), "niivue_mni_coronal": (2, 0.0)}
#: Mean intensity of CSF, grey and white matter in the remapped contrasts (:func:`contrast_remap`), on [0, 1].
CONTRAST_TARGETS = {"t2": (1.0, 0.55, 0.35), "flair": (0.08, 0.65, 0.45)}
#: aseg codes of cerebrospinal fluid (ventricles, CSF, choroid plexus), the third class of :func:`contrast_remap`.
ASEG_CSF = (4, 5, 14, 15, 24, 31, 43, 44, 63, 72)
#: Shape of the crop of the validation subject (test_scan's, so timings and settings transfer).
NIIVUE_CROP = (160, 192, 224)
#: Synthetic deformations: control-point spacing and bound on every velocity component, in mm.
SYNTH_CONTROL_SPACING_MM = 32.0
SYNTH_MAX_DISPLACEMENT_MM = 10.0
#: Intensity change of synthetic moving images: gamma = exp(N(0, s^2)); log bias ~ N(0, s^2) on
#: control points every 64 mm; noise std ~ U(0, max) on the [0, 1] scale, inside the brain.
GAMMA_LOG_STD = 0.2
BIAS_LOG_STD = 0.1
BIAS_CONTROL_SPACING_MM = 64.0
MAX_NOISE_STD = 0.03
#: Affine pre-alignment of the MNI case: pyramid factors (relative to the case grid) and iterations per level.
AFFINE_LEVELS = (4, 2, 1)
AFFINE_ITERATIONS = (100, 50, 25)
#: Added affine of the unaligned groups (:func:`random_brain_affine`): rotation angle bound about each axis
#: (degrees), translation bound per axis (mm), per-axis scaling factors in [1 / max, max].
UNALIGNED_MAX_ROTATION_DEGREES = 20.0
UNALIGNED_MAX_TRANSLATION_MM = 20.0
UNALIGNED_MAX_SCALING = 1.1
#: The added affine of seed ``s`` is drawn from ``torch.Generator().manual_seed(UNALIGNED_SEED_OFFSET + s)``,
#: a stream of its own (the deformation's generator is seeded with ``s``).
UNALIGNED_SEED_OFFSET = 2**32


def case_names(groups, seeds) -> list[tuple[str, str]]:
    """``(group, case name)`` of every case of ``groups`` (of :data:`GROUPS`, :data:`CROSS_CONTRAST_GROUPS`,
    :data:`UNALIGNED_GROUPS` and :data:`VALIDATION_GROUPS`) for ``seeds``."""
    names = []
    for group in GROUPS + CROSS_CONTRAST_GROUPS + UNALIGNED_GROUPS + VALIDATION_GROUPS:
        if group not in groups:
            continue
        if group in ("brain_synthetic", "mni_synthetic", "niivue_synthetic") + CROSS_CONTRAST_GROUPS + UNALIGNED_GROUPS + (
                "niivue_synthetic_t2", "niivue_synthetic_flair", "niivue_synthetic_unaligned"):
            names += [(group, f"{group}_s{s}") for s in seeds]
        elif group in ("mni_to_subject", "niivue_mni", "subject_to_subject"):
            names.append((group, group))
        elif group == "niivue_2d":
            names += [(group, name) for name in NIIVUE_2D_SLICES]
        else:
            names += [(group, "elastix_2d"), (group, "circle_to_c")] + [(group, f"dipy_synthetic_s{s}") for s in seeds]
    return names


def _downsample(image: torch.Tensor, labels: torch.Tensor | None, scale: float):
    """Image by area averaging and labels by nearest neighbour to ``round(n * scale)`` voxels."""
    if scale == 1.0:
        return image, labels
    size = [max(2, round(n * scale)) for n in image.shape[2:]]
    image = resize_image(image, size=size, mode="area")
    return image, None if labels is None else resize_image(labels, size=size, mode="nearest")


def intensity_change(image: torch.Tensor, mask: torch.Tensor, spacing: float, generator: torch.Generator) -> torch.Tensor:
    """Random gamma, smooth multiplicative bias and in-mask noise on an image in [0, 1].

    ``x -> minmax(clip(x ** gamma * exp(b) + mask * n, 0, 1))`` with the settings of the module
    constants (:data:`GAMMA_LOG_STD`, :data:`BIAS_LOG_STD`, :data:`MAX_NOISE_STD`).

    Args:
        image: ``(1, 1, *S)`` in [0, 1].
        mask: ``(1, 1, *S)`` bool region that receives noise (the brain: background stays 0).
        spacing: voxel size in mm (sets the bias control grid).
        generator: CPU generator (all draws come from it).
    """
    shape = image.shape[2:]
    gamma = math.exp(float(torch.randn(1, generator=generator)) * GAMMA_LOG_STD)
    grid = control_grid_shape(shape, BIAS_CONTROL_SPACING_MM / spacing)
    bias = bias_field_from_coefficients(torch.randn((1, 1, *grid), generator=generator) * BIAS_LOG_STD, shape)
    noise_std = float(torch.rand(1, generator=generator)) * MAX_NOISE_STD
    changed = apply_gamma(image, gamma) * bias
    changed = changed + mask * add_gaussian_noise(torch.zeros_like(image), noise_std, generator)
    return min_max_normalize(changed.clamp(0.0, 1.0))


def synthetic_pair(image: torch.Tensor, labels: torch.Tensor, seed: int, spacing: float) -> dict:
    """Moving image/labels from a known smooth diffeomorphism and intensity change (module docstring).

    Args:
        image: ``(1, 1, *S)`` fixed image in [0, 1] (2D or 3D).
        labels: ``(1, 1, *S)`` fixed label map.
        seed: seeds the deformation and the intensity change.
        spacing: voxel size in mm (deformation settings are in mm).

    Returns:
        dict with ``moving``, ``moving_labels`` and ``true_ddf`` (``exp(-v)``, voxels: the
        field that registers ``moving`` to ``image``), ``ddf`` (``exp(v)``: ``moving`` is ``image``
        warped by it), and the settings.
    """
    generator = torch.Generator().manual_seed(seed)
    params = sample_smooth_velocity_params(
        image.shape[2:], SYNTH_CONTROL_SPACING_MM / spacing, SYNTH_MAX_DISPLACEMENT_MM / spacing, generator=generator
    )
    fields = deformation_from_params(params)
    moving = warp(image, fields["ddf"])
    moving_labels = warp(labels, fields["ddf"], mode="nearest")
    moving = intensity_change(moving, moving > 0, spacing, generator)
    return {
        "moving": moving,
        "moving_labels": moving_labels,
        "true_ddf": fields["inverse_ddf"],
        "ddf": fields["ddf"],
        "settings": {"seed": seed, "control_spacing_mm": SYNTH_CONTROL_SPACING_MM,
                     "max_displacement_mm": SYNTH_MAX_DISPLACEMENT_MM},
    }


def _subject_grid(image, seg, scale: float, settings: dict) -> dict:
    """A subject's ``(1, 1, *S)`` image and aseg at ``scale``, with the voxel-to-RAS affine of that grid.

    Args:
        image, seg: ``(1, *S)`` MetaTensors sharing their affine (1 mm voxels).
        scale: 1 or 0.5 (:func:`_downsample`); the voxels are ``1 / scale`` mm (``spacing``).
        settings: what identifies the subject (kept in the cases' ``settings``).
    """
    fixed, seg = _downsample(image.as_tensor()[None], seg.as_tensor()[None], scale)
    # the downsampled grid covers the same extent: new voxel j is centred on old index (j + 0.5) / scale - 0.5
    coarse = np.diag([1 / scale] * 3 + [1.0])
    coarse[:3, 3] = 0.5 / scale - 0.5
    return {"image": fixed, "aseg": seg, "affine": image.affine.numpy() @ coarse, "spacing": 1.0 / scale, "settings": settings}


def _test_scan(data: Path, scale: float) -> dict:
    """The evaluation subject ``voxelmorph/test_scan`` (:func:`_subject_grid`)."""
    image, seg = load_voxelmorph_scan(data / "voxelmorph" / "test_scan.npz")
    return _subject_grid(image, seg, scale, {"subject": "voxelmorph/test_scan"})


def _brain_box(mask: np.ndarray, shape) -> tuple[slice, ...]:
    """Box of ``shape`` centred on the bounding box of ``mask``, inside the array; it must hold all of ``mask``."""
    where = np.argwhere(mask)
    lo, hi = where.min(0), where.max(0) + 1
    start = np.clip(np.floor((lo + hi - np.asarray(shape)) / 2).astype(int), 0, np.asarray(mask.shape) - shape)
    if np.any(start > lo) or np.any(start + shape < hi):
        raise ValueError(f"the brain's bounding box {lo.tolist()}-{hi.tolist()} does not fit in a {tuple(shape)} crop")
    return tuple(slice(int(a), int(a) + n) for a, n in zip(start, shape))


def _niivue_subject(data: Path, scale: float) -> dict:
    """The validation subject ``niivue_freesurfer/`` cropped to :data:`NIIVUE_CROP` around the brain (LIA, 1 mm)."""
    image, seg = load_niivue_subject(data / "niivue_freesurfer")
    box = _brain_box(image[0].numpy() > 0, NIIVUE_CROP)
    shift = np.eye(4)
    shift[:3, 3] = [b.start for b in box]
    affine = image.affine.numpy() @ shift
    image, seg = (MetaTensor(x.as_tensor()[(slice(None), *box)], affine=torch.as_tensor(affine)) for x in (image, seg))
    return _subject_grid(image, seg, scale, {"subject": "niivue_freesurfer", "crop_start": shift[:3, 3].astype(int).tolist()})


def contrast_remap(image: torch.Tensor, aseg: torch.Tensor, contrast: str) -> torch.Tensor:
    """A T1 image in another MR contrast: a piecewise-linear function of its intensity, 0 outside the brain.

    The knots are the image's own mean intensities of CSF (:data:`ASEG_CSF`), grey and white matter
    (:func:`monai_diffreg.datasets.aseg_to_tissue`), sent to ``CONTRAST_TARGETS[contrast]``; between and
    beyond them the function is linear (clamped to [0, 1]), so partial-volume voxels land between their
    tissues' new intensities. ``"t2"`` reverses the T1 order (CSF brightest); ``"flair"`` is not monotone
    (CSF darkest, grey above white): no intensity mapping of one image onto the other is one-to-one.

    Args:
        image: ``(1, 1, *S)`` T1 in [0, 1], 0 outside the brain (skull-stripped).
        aseg: ``(1, 1, *S)`` its aseg codes.
        contrast: a key of :data:`CONTRAST_TARGETS`.
    """
    tissue = aseg_to_tissue(aseg)
    classes = (torch.isin(aseg, torch.as_tensor(ASEG_CSF, dtype=aseg.dtype)), tissue == 1, tissue == 2)
    knots = np.array([float(image[c].mean()) for c in classes])
    if not np.all(np.diff(knots) > 0):
        raise ValueError(f"contrast_remap(): expected T1 order CSF < grey < white matter, got means {knots.round(3).tolist()}")
    targets = np.array(CONTRAST_TARGETS[contrast])
    slopes = np.diff(targets) / np.diff(knots)
    x = image.double()
    out = torch.where(x < knots[1], targets[0] + slopes[0] * (x - knots[0]), targets[1] + slopes[1] * (x - knots[1]))
    return (out.clamp(0.0, 1.0) * (image > 0)).to(image.dtype)


def random_brain_affine(spatial_shape, centre, spacing: float, generator: torch.Generator) -> torch.Tensor:
    """The added affine of the unaligned groups: ``(1, D, D + 1)`` float64 voxel matrix ``y = R S (x - c) + c + t``.

    :func:`monai_diffreg.transforms.sample_random_affine` (angles uniform in
    ``[-UNALIGNED_MAX_ROTATION_DEGREES, +]`` about each axis, composed in axis order; scalings ``exp(s)``, ``s``
    uniform in ``[-ln UNALIGNED_MAX_SCALING, +]`` per axis; ``t`` uniform in ``[-UNALIGNED_MAX_TRANSLATION_MM, +]``
    mm per axis), moved from the grid's centre to ``centre``: the same ``R S`` and ``t``, ``c = centre``.

    Args:
        spatial_shape: the grid ``(*S)``.
        centre: ``(D,)`` rotation centre in voxel indices (the brain's centre of mass).
        spacing: voxel size in mm (isotropic: the translation bound in voxels is ``max_mm / spacing``).
        generator: CPU generator (all draws come from it).
    """
    shape = tuple(int(n) for n in spatial_shape)
    matrix = sample_random_affine(shape, UNALIGNED_MAX_ROTATION_DEGREES, UNALIGNED_MAX_TRANSLATION_MM / spacing,
                                  math.log(UNALIGNED_MAX_SCALING), generator=generator).double()
    ndim = len(shape)
    linear = matrix[0, :, :ndim]
    # sampled about the grid's centre g: y = L (x - g) + g + t; about c: y = L (x - c) + c + t = that + (I - L)(c - g)
    shift = torch.as_tensor(np.asarray(centre, dtype=np.float64)) - torch.tensor([(n - 1) / 2 for n in shape],
                                                                                dtype=torch.float64)
    matrix[0, :, ndim] += (torch.eye(ndim, dtype=torch.float64) - linear) @ shift
    return matrix


def unalign(pair: dict, labels: torch.Tensor, matrix: torch.Tensor) -> dict:
    """A synthetic pair (:func:`synthetic_pair`) moved by a known affine on the same grid: its moving side at ``A^-1 y``.

    Args:
        pair: ``moving`` ``(1, 1, *S)``, ``true_ddf`` and ``ddf`` ``(1, D, *S)`` (voxels) of an aligned pair:
            ``moving`` = the fixed image warped by ``ddf``, ``true_ddf`` registers it back onto the fixed image.
        labels: ``(1, 1, *S)`` the fixed label map (the pair's moving labels are it warped by ``ddf``).
        matrix: ``(1, D, D + 1)`` voxel matrix ``A = [L | t]`` (fixed-grid index -> moving-grid index) that will
            register the new moving image onto ``pair["moving"]``.

    Returns:
        dict with ``moving``: ``pair["moving"]`` resampled at ``A^-1 y`` (linear); ``moving_labels``: ``labels``
        resampled at ``phi(A^-1 y)`` with ``phi = x + ddf(x)`` (nearest, in one step: the aligned labels
        resampled again would lose thin structures twice), both zero outside the old field of view; and
        ``true_ddf``: the pair's field then ``A``, ``x -> A(x + u(x))``, that is ``(L - I) x + t + L u(x)``
        (pull-back: ``warp(moving, true_ddf)`` samples the new moving image at ``A(x + u(x))``, which is the old
        one at ``x + u(x)``).
    """
    moving, ddf = pair["moving"], pair["true_ddf"]
    shape = tuple(moving.shape[2:])
    matrix = matrix.double()
    back = affine_to_ddf(invert_affine(matrix), shape).to(moving.dtype)
    total = compose_affine_ddf(matrix, ddf.double())
    forward = compose_ddf(pair["ddf"].to(moving.dtype), back)
    return {
        "moving": warp(moving, back, padding_mode="zeros"),
        "moving_labels": warp(labels, forward.to(labels.dtype), mode="nearest", padding_mode="zeros"),
        "true_ddf": total.to(ddf.dtype),
    }


def _lost_fraction(mask: torch.Tensor, matrix: torch.Tensor) -> float:
    """Fraction of the voxels of ``mask`` ``(1, 1, *S)`` that ``x -> A x`` sends outside the grid."""
    shape = mask.shape[2:]
    points = torch.nonzero(mask[0, 0]).double()
    moved = points @ matrix[0, :, :len(shape)].T + matrix[0, :, len(shape)]
    inside = ((moved > -0.5) & (moved < torch.tensor(shape, dtype=torch.float64) - 0.5)).all(dim=1)
    return 1.0 - float(inside.double().mean()) if len(points) else 0.0


def _affine_amplitudes(matrix: torch.Tensor, centre, spacing: float) -> dict:
    """Readable amplitudes of ``y = R S (x - c) + c + t``: total rotation angle of ``R`` (degrees), the scalings
    (``S`` = the column norms of ``R S``) and ``t`` in mm (the displacement of the centre)."""
    ndim = matrix.shape[1]
    linear = matrix[0, :, :ndim]
    scaling = torch.linalg.norm(linear, dim=0)
    rotation = linear / scaling
    cosine = float(((torch.trace(rotation) - (ndim - 2)) / 2).clamp(-1.0, 1.0))
    centre = torch.as_tensor(np.asarray(centre, dtype=np.float64))
    translation = (linear @ centre + matrix[0, :, ndim] - centre) * spacing
    return {"affine_rotation_degrees": math.degrees(math.acos(cosine)), "affine_scaling": scaling.tolist(),
            "affine_translation_mm": translation.tolist()}


def _subject_synthetic(subject: dict, seed: int, contrast: str | None = None, unaligned: bool = False) -> dict:
    """A subject's image under a known deformation and intensity change (:func:`synthetic_pair`), 30 aseg labels;
    with ``contrast`` the moving image is first remapped to it (:func:`contrast_remap`; same draws, same field);
    ``unaligned``: then moved by a known random affine about the brain's centre (:func:`random_brain_affine`,
    :func:`unalign`; its own generator, the same deformation)."""
    image, seg, spacing = subject["image"], subject["aseg"], subject["spacing"]
    source = image if contrast is None else contrast_remap(image, seg, contrast)
    pair = synthetic_pair(source, seg, seed, spacing)
    settings = {**subject["settings"], **pair["settings"], **({"moving_contrast": contrast} if contrast else {})}
    extra = {}
    if unaligned:
        centre = [float(c) for c in ndimage.center_of_mass(seg[0, 0].numpy() > 0)]
        generator = torch.Generator().manual_seed(UNALIGNED_SEED_OFFSET + seed)
        matrix = random_brain_affine(image.shape[2:], centre, spacing, generator)
        lost = _lost_fraction(pair["moving_labels"] > 0, matrix)
        pair = {**pair, **unalign(pair, seg, matrix)}
        extra["true_affine"] = matrix
        settings.update({"affine_seed": UNALIGNED_SEED_OFFSET + seed, "affine_centre_voxel": list(centre),
                         "affine_max_rotation_degrees": UNALIGNED_MAX_ROTATION_DEGREES,
                         "affine_max_translation_mm": UNALIGNED_MAX_TRANSLATION_MM,
                         "affine_max_scaling": UNALIGNED_MAX_SCALING, "affine_lost_brain_fraction": lost,
                         **_affine_amplitudes(matrix, centre, spacing)})
    return {
        "fixed": image, "moving": pair["moving"], "fixed_labels": seg, "moving_labels": pair["moving_labels"],
        "labels": list(VOXELMORPH_LABELS), "true_ddf": pair["true_ddf"], "mask": seg > 0,
        "spacing": [spacing] * 3, "settings": settings, **extra,
    }


def _resample_to(moving: np.ndarray, moving_affine: np.ndarray, shift: np.ndarray, fixed_shape, fixed_affine, order: int):
    """``moving`` sampled at the world points ``fixed_affine @ index + shift`` (scipy, zero outside)."""
    to_moving = np.linalg.inv(moving_affine) @ fixed_affine
    offset = to_moving[:3, 3] + np.linalg.inv(moving_affine)[:3, :3] @ shift
    return ndimage.affine_transform(moving, to_moving[:3, :3], offset, output_shape=tuple(fixed_shape), order=order)


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.array(ndimage.center_of_mass(mask)) + affine[:3, 3]


def _source_image(data: Path, source: str) -> dict:
    """What is aligned onto a subject: ``"mni152"`` (skull-stripped template, GM/WM labels) or ``"niivue"``
    (the validation subject's whole 1 mm volume, its 30-label aseg): numpy image, labels, brain mask, affine."""
    if source == "mni152":
        mni = load_mni152(data / "mni152_2009a", skull_strip=True)
        return {"image": mni["image"][0].numpy(), "labels": mni["labels"][0].numpy(),
                "mask": mni["mask"][0].numpy() > 0, "affine": mni["image"].affine.numpy()}
    image, seg = load_niivue_subject(data / "niivue_freesurfer")
    return {"image": image[0].numpy(), "labels": seg[0].numpy(), "mask": seg[0].numpy() > 0,
            "affine": image.affine.numpy()}


@functools.lru_cache(maxsize=3)
def _aligned_onto(data: Path, subject, scale: float, source: str = "mni152") -> dict:
    """An image aligned onto a subject's grid: the template (``mni_to_subject`` with ``subject=_test_scan``,
    ``niivue_mni`` with ``_niivue_subject``) or the validation subject (``subject_to_subject``). Built
    once per process and pair: its affine alignment takes minutes.

    Args:
        data: the shared ``data`` folder.
        subject: ``(data, scale) -> dict`` of the subject's grid (:func:`_subject_grid`: image,
            aseg and voxel-to-RAS affine at ``scale``).
        scale: 1 or 0.5.
        source: ``"mni152"`` (labels: GM/WM, the subject's aseg by ``aseg_to_tissue``) or
            ``"niivue"`` (labels: the 30 VoxelMorph aseg labels on both sides).
    """
    subject = subject(data, scale)
    fixed, seg, affine = subject["image"], subject["aseg"], subject["affine"]
    moving_source = _source_image(data, source)
    source_affine = moving_source["affine"]
    shift = _world_centroid(moving_source["mask"], source_affine) - _world_centroid(seg[0, 0].numpy() > 0, affine)
    shape = fixed.shape[2:]
    moving = _resample_to(moving_source["image"], source_affine, shift, shape, affine, order=1)
    moving_labels = _resample_to(moving_source["labels"], source_affine, shift, shape, affine, order=0)
    moving = torch.as_tensor(moving, dtype=torch.float32)[None, None]
    moving_labels = torch.as_tensor(moving_labels, dtype=torch.float32)[None, None]
    aligned = optimise_affine(fixed, moving, metric="ncc", levels=AFFINE_LEVELS, iterations=AFFINE_ITERATIONS)
    tissue = source == "mni152"
    return {
        "fixed": fixed, "moving": aligned["warped"].clamp(0.0, 1.0),
        "fixed_labels": aseg_to_tissue(seg) if tissue else seg,
        "moving_labels": warp(moving_labels, aligned["ddf"], mode="nearest"),
        "labels": [1, 2] if tissue else list(VOXELMORPH_LABELS), "true_ddf": None, "mask": None,
        "spacing": [1.0 / scale] * 3,
        "settings": {**subject["settings"], "moving_source": source, "affine_matrix": aligned["matrix"][0].tolist(),
                     "centroid_shift_mm": shift.tolist(),
                     "affine_final_loss": aligned["history"][-1]["loss"] if aligned["history"] else None},
    }


def _mni_synthetic(data: Path, seed: int, scale: float) -> dict:
    template = _aligned_onto(data, _test_scan, scale)
    spacing = 1.0 / scale
    pair = synthetic_pair(template["moving"], template["moving_labels"], seed, spacing)
    return {
        "fixed": template["moving"], "moving": pair["moving"], "fixed_labels": template["moving_labels"],
        "moving_labels": pair["moving_labels"], "labels": [1, 2], "true_ddf": pair["true_ddf"],
        "mask": template["moving_labels"] > 0, "spacing": [spacing] * 3, "settings": pair["settings"],
    }


def _niivue_mni_slice(data: Path, name: str, scale: float) -> dict:
    """A ``niivue_2d`` case: the slice of ``niivue_mni`` given by :data:`NIIVUE_2D_SLICES`."""
    axis, offset_mm = NIIVUE_2D_SLICES[name]
    pair = _aligned_onto(data, _niivue_subject, scale)
    spacing = 1.0 / scale
    centroid = ndimage.center_of_mass(pair["fixed_labels"][0, 0].numpy() > 0)[axis]
    index = int(round(centroid + offset_mm / spacing))

    def cut(volume: torch.Tensor) -> torch.Tensor:
        return volume.select(axis + 2, index).contiguous()

    return {
        "fixed": cut(pair["fixed"]), "moving": cut(pair["moving"]), "fixed_labels": cut(pair["fixed_labels"]),
        "moving_labels": cut(pair["moving_labels"]), "labels": [1, 2], "true_ddf": None, "mask": None,
        "spacing": [spacing] * 2, "settings": {"axis": axis, "index": index, "offset_mm": offset_mm},
    }


def _elastix_2d(data: Path, scale: float) -> dict:
    pair = load_elastix_2d(data / "elastix_2d")
    fixed, fixed_mask = _downsample(pair["fixed"].as_tensor()[None], pair["fixed_mask"].as_tensor()[None], scale)
    moving, moving_mask = _downsample(pair["moving"].as_tensor()[None], pair["moving_mask"].as_tensor()[None], scale)
    return {
        "fixed": fixed, "moving": moving, "fixed_labels": fixed_mask, "moving_labels": moving_mask,
        "labels": [1], "true_ddf": None, "mask": None, "spacing": [1.0 / scale] * 2, "settings": {},
    }


def _pseudo_tissue(image: torch.Tensor) -> torch.Tensor:
    """0 = background, 1/2 = darker/brighter half of the foreground of the smoothed slice."""
    smooth = ndimage.gaussian_filter(image[0, 0].numpy(), 1.0)
    foreground = smooth > 0.1
    labels = np.where(foreground, np.where(smooth > np.median(smooth[foreground]), 2, 1), 0)
    return torch.as_tensor(labels, dtype=torch.float32)[None, None]


def _dipy_synthetic(data: Path, seed: int, scale: float) -> dict:
    image = load_dipy_slice(data / "dipy_2d" / "t1_coronal_slice.npy").as_tensor()[None]
    image, _ = _downsample(image, None, scale)
    labels = _pseudo_tissue(image)
    spacing = 1.0 / scale
    pair = synthetic_pair(image, labels, seed, spacing)
    return {
        "fixed": image, "moving": pair["moving"], "fixed_labels": labels, "moving_labels": pair["moving_labels"],
        "labels": [1, 2], "true_ddf": pair["true_ddf"], "mask": labels > 0,
        "spacing": [spacing] * 2, "settings": pair["settings"],
    }


def circle_and_c(size: int = 128, outer_mm: float = 32.0, inner_mm: float = 16.0, gap_degrees: float = 60.0,
                 spacing: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The disk and the "C" of ``circle_to_c`` as ``(1, 1, size, size)`` binary masks (float 0/1).

    Both are centred on the grid; the C is the ring ``inner_mm <= r <= outer_mm`` without the
    sector ``|angle| < gap_degrees / 2`` about the +x axis (axis 0).
    """
    coords = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) * spacing
    x, y = torch.meshgrid(coords, coords, indexing="ij")
    radius, angle = torch.hypot(x, y), torch.rad2deg(torch.atan2(y, x)).abs()
    disk = radius <= outer_mm
    c_shape = disk & (radius >= inner_mm) & (angle >= gap_degrees / 2)
    return disk.float()[None, None], c_shape.float()[None, None]


def _circle_to_c(scale: float) -> dict:
    spacing = 1.0 / scale
    disk, c_shape = circle_and_c(size=round(128 * scale), spacing=spacing)
    fixed, moving = (torch.as_tensor(ndimage.gaussian_filter(mask[0, 0].numpy(), 1.0 / spacing))[None, None]
                     for mask in (c_shape, disk))
    return {
        "fixed": fixed, "moving": moving, "fixed_labels": c_shape, "moving_labels": disk,
        "labels": [1], "true_ddf": None, "mask": None, "spacing": [spacing] * 2, "settings": {},
    }


def _build(data: Path, name: str, scale: float) -> dict:
    for stem, subject in (("brain_synthetic", _test_scan), ("niivue_synthetic", _niivue_subject)):
        if name.startswith(f"{stem}_unaligned_s"):
            return _subject_synthetic(subject(data, scale), int(name.rsplit("_s", 1)[1]), unaligned=True)
        for contrast in CONTRAST_TARGETS:
            if name.startswith(f"{stem}_{contrast}_s"):
                return _subject_synthetic(subject(data, scale), int(name.rsplit("_s", 1)[1]), contrast)
    if name.startswith("brain_synthetic_s"):
        return _subject_synthetic(_test_scan(data, scale), int(name.rsplit("_s", 1)[1]))
    if name.startswith("niivue_synthetic_s"):
        return _subject_synthetic(_niivue_subject(data, scale), int(name.rsplit("_s", 1)[1]))
    if name.startswith("mni_synthetic_s"):
        return _mni_synthetic(data, int(name.rsplit("_s", 1)[1]), scale)
    if name.startswith("dipy_synthetic_s"):
        return _dipy_synthetic(data, int(name.rsplit("_s", 1)[1]), scale)
    if name in ("mni_to_subject", "niivue_mni"):
        return dict(_aligned_onto(data, _test_scan if name == "mni_to_subject" else _niivue_subject, scale))
    if name == "subject_to_subject":
        return dict(_aligned_onto(data, _test_scan, scale, "niivue"))
    if name in NIIVUE_2D_SLICES:
        return _niivue_mni_slice(data, name, scale)
    if name == "elastix_2d":
        return _elastix_2d(data, scale)
    if name == "circle_to_c":
        return _circle_to_c(scale)
    raise ValueError(f"get_case(): unknown case {name!r}")


def family(name: str) -> str:
    """Case family: the case name without its ``_s<seed>`` suffix."""
    stem, sep, seed = name.rpartition("_s")
    return stem if sep and seed.isdigit() else name


def fingerprint(case: dict) -> str:
    """SHA-1 of a case's tensors (identifies the exact data a result was computed on)."""
    digest = hashlib.sha1()
    for key in ("fixed", "moving", "fixed_labels", "moving_labels", "true_ddf"):
        if case.get(key) is not None:
            digest.update(case[key].numpy().tobytes())
    return digest.hexdigest()


def get_case(data: Path, group: str, name: str, scale: float, cache: Path) -> Path:
    """Path of the cached case file, building it first when missing or stale.

    Args:
        data: the shared ``data`` folder.
        group: the case group (:data:`GROUPS`, :data:`CROSS_CONTRAST_GROUPS`, :data:`UNALIGNED_GROUPS` or
            :data:`VALIDATION_GROUPS`).
        name: a name from :func:`case_names`.
        scale: 1 (full resolution) or 0.5 (quick mode).
        cache: folder of cached cases.
    """
    path = Path(cache) / f"{name}@{scale:g}.pt"
    if path.is_file():
        stored = torch.load(path, weights_only=True)
        if stored.get("version") == CASE_VERSIONS[family(name)] and "fingerprint" in stored:
            return path
    case = _build(Path(data), name, scale)
    case.update({"name": name, "group": group, "scale": scale, "version": CASE_VERSIONS[family(name)]})
    for key in ("fixed", "moving", "fixed_labels", "moving_labels", "true_ddf", "mask", "true_affine"):
        if case.get(key) is not None:
            case[key] = case[key].detach().contiguous().clone()
    case["fingerprint"] = fingerprint(case)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(case, tmp)
    tmp.replace(path)
    return path
