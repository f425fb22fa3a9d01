"""Loaders for the real images the project tests, benchmarks and trains on.

Every loader takes the path of the data (the shared ``data`` folder is present for
developers and CI but not on users' machines) and returns MONAI
:class:`~monai.data.MetaTensor` objects shaped ``(1, *spatial)`` (channel first) with a
RAS ``affine`` (world millimetres, MONAI's convention), so they drop straight into MONAI
pipelines and into :mod:`monai_diffreg.functional`.

Data sets (see ``shared/data/README.md`` for origins and licences):

* ``voxelmorph/test_scan.npz``: one skull-stripped T1 brain MRI with a FreeSurfer aseg,
  ``(160, 192, 224)``, 1 mm, no header. **Evaluation only: never train on it.**
  Its orientation is :data:`VOXELMORPH_ORIENTATION` (see :func:`voxelmorph_affine`).
* ``voxelmorph/labels.npz``: the 30 aseg labels VoxelMorph reports Dice on
  (:data:`VOXELMORPH_LABELS`).
* ``mni152_2009a/``: the MNI ICBM152 2009a nonlinear symmetric T1 template with grey- and
  white-matter probability maps, ``(197, 233, 189)``, 1 mm, RAS header
  (:func:`load_mni152`).
* ``elastix_2d/``: a 2D head MR pair with brain masks (:func:`load_elastix_2d`).
* ``dipy_2d/t1_coronal_slice.npy``: one T1 coronal slice (:func:`load_dipy_slice`).
* ``synthseg_label_maps/``, ``synthsr_label_maps/``, ``niivue_freesurfer/``: real subjects'
  FreeSurfer-style label maps (NIfTI or MGH) for training and validation (:func:`load_label_map`;
  :mod:`monai_diffreg.transforms.label_protocol` maps their codes onto one label set).
* ``niivue_freesurfer/``: **the validation subject**, a skull-stripped T1 with its
  ``aparc.a2009s+aseg`` labels, 256^3, 1 mm, LIA (:func:`load_niivue_subject`): for choosing
  checkpoints and settings on real anatomy instead of ever touching ``test_scan``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from scipy import ndimage

from .transforms.intensity import min_max_normalize
from .transforms.label_protocol import DESTRIEUX_CORTEX

__all__ = [
    "VOXELMORPH_LABELS",
    "VOXELMORPH_ORIENTATION",
    "VOXELMORPH_DIRECTION",
    "ASEG_GREY_MATTER",
    "ASEG_WHITE_MATTER",
    "ASEG_CEREBRAL_CORTEX",
    "ASEG_CEREBRAL_WHITE_MATTER",
    "MNI152_FILES",
    "voxelmorph_affine",
    "load_voxelmorph_scan",
    "load_voxelmorph_labels",
    "aseg_to_tissue",
    "load_mni152",
    "tissue_brain_mask",
    "load_elastix_2d",
    "load_dipy_slice",
    "load_label_map",
    "NIIVUE_FILES",
    "DESTRIEUX_CORTEX",
    "destrieux_to_aseg",
    "load_niivue_subject",
]

#: The 30 FreeSurfer aseg label codes VoxelMorph reports Dice on (``voxelmorph/labels.npz``):
#: cerebral white matter and cortex, lateral ventricles, cerebellar white matter and
#: cortex, thalamus, caudate, putamen, pallidum, 3rd/4th ventricles, brain stem,
#: hippocampus, amygdala, CSF, ventral DC, choroid plexus; left then right hemisphere.
VOXELMORPH_LABELS: tuple[int, ...] = (
    2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 28, 31,
    41, 42, 43, 46, 47, 49, 50, 51, 52, 53, 54, 60, 63,
)  # fmt: skip

#: Orientation of ``test_scan.npz`` (nibabel axis codes: the world direction each array
#: axis runs towards): axis 0 towards Left, axis 1 towards Inferior, axis 2 towards
#: Anterior. This is FreeSurfer's conformed "LIA" space (cropped). Determined against the
#: MNI152 template (``tests/test_datasets.py`` proves it): of the 8 sign choices for the
#: axis assignment "axis 0 left-right, axis 1 superior-inferior, axis 2 anterior-posterior",
#: this one and its left-right mirror give by far the best NCC and brain-mask Dice with the
#: template after centre-of-mass alignment (0.91 vs <= 0.81); the template is left-right
#: symmetric, so the hemisphere labels decide the mirror: with "L", Left-Cerebral-White-
#: Matter (aseg 2) lies at negative RAS x relative to Right-Cerebral-White-Matter (41).
VOXELMORPH_ORIENTATION: tuple[str, str, str] = ("L", "I", "A")

#: The 3x3 direction matrix of :data:`VOXELMORPH_ORIENTATION`: column ``j`` is the unit RAS
#: vector of array axis ``j`` (x = -axis 0, y = +axis 2, z = -axis 1).
VOXELMORPH_DIRECTION: np.ndarray = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
VOXELMORPH_DIRECTION.setflags(write=False)

#: Aseg codes of grey matter as the MNI152 tissue maps define it (:func:`aseg_to_tissue`'s
#: default): cerebral cortex 3/42, cerebellar cortex 8/47, thalamus 10/49, caudate 11/50,
#: putamen 12/51, pallidum 13/52, hippocampus 17/53, amygdala 18/54, accumbens 26/58
#: (the template's GM map covers the deep nuclei and the cerebellar cortex).
ASEG_GREY_MATTER: tuple[int, ...] = (3, 42, 8, 47, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58)
#: Aseg codes of white matter as the MNI152 tissue maps define it: cerebral white matter 2/41,
#: cerebellar white matter 7/46, brain stem 16, ventral DC 28/60 (mostly WM in the template).
ASEG_WHITE_MATTER: tuple[int, ...] = (2, 41, 7, 46, 16, 28, 60)
#: The narrower cerebral-only rule: cortex 3/42 as GM ...
ASEG_CEREBRAL_CORTEX: tuple[int, ...] = (3, 42)
#: ... and cerebral white matter 2/41 as WM.
ASEG_CEREBRAL_WHITE_MATTER: tuple[int, ...] = (2, 41)

#: File names inside the ``mni152_2009a`` folder.
MNI152_FILES: dict[str, str] = {
    "image": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: File names inside the ``niivue_freesurfer`` folder (the validation subject).
NIIVUE_FILES: dict[str, str] = {"image": "norm.mgz", "labels": "aparc.a2009s+aseg.mgz"}

#: Brain mask of the template (:func:`load_mni152`): Gaussian scale (mm = voxels) applied to
#: ``p_gm + p_wm`` and the threshold on the smoothed sum.
_MNI_MASK_SIGMA = 1.5
_MNI_MASK_THRESHOLD = 0.25


def _metatensor(array: np.ndarray, affine: np.ndarray, path: Path | str) -> MetaTensor:
    """``(1, *S)`` float32 MetaTensor with a float64 RAS affine."""
    data = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)[None]
    return MetaTensor(
        data, affine=torch.as_tensor(affine, dtype=torch.float64), meta={"filename_or_obj": str(path), "space": "RAS"}
    )


def _existing(path: Path | str, caller: str, name: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{caller}(): '{name}' does not exist: {path}")
    return path


def voxelmorph_affine(shape, direction: np.ndarray = VOXELMORPH_DIRECTION) -> np.ndarray:
    """4x4 voxel-to-RAS affine of a headerless VoxelMorph volume (1 mm voxels).

    ``world = direction @ (index - (shape - 1) / 2)``: the array centre sits at the RAS
    origin (the crop offset of the original FreeSurfer space is unknown).

    Args:
        shape: spatial shape ``(S0, S1, S2)``.
        direction: 3x3 matrix whose column ``j`` is the RAS unit vector of array axis ``j``;
            defaults to :data:`VOXELMORPH_DIRECTION` (other values serve to test candidates).

    Returns:
        float64 array ``(4, 4)``.
    """
    direction = np.asarray(direction, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = direction
    affine[:3, 3] = -direction @ ((np.asarray(shape, dtype=np.float64) - 1) / 2)
    return affine


def load_voxelmorph_scan(path) -> tuple[MetaTensor, MetaTensor]:
    """Load ``voxelmorph/test_scan.npz`` as RAS MetaTensors.

    Args:
        path: the ``.npz`` file (keys ``vol`` in [0, 1] and ``seg`` aseg codes).

    Returns:
        ``(image, labels)``: float32 MetaTensors ``(1, 160, 192, 224)`` sharing the affine
        :func:`voxelmorph_affine` (orientation :data:`VOXELMORPH_ORIENTATION`, 1 mm);
        ``image`` in [0, 1], ``labels`` holding the integer aseg codes (float32 as MONAI
        loads label maps; 46 distinct values including 0).
    """
    path = _existing(path, "load_voxelmorph_scan", "path")
    with np.load(path) as data:
        vol, seg = data["vol"], data["seg"]
    affine = voxelmorph_affine(vol.shape)
    return _metatensor(vol, affine, path), _metatensor(seg, affine, path)


def load_voxelmorph_labels(path) -> tuple[int, ...]:
    """The label codes stored in ``voxelmorph/labels.npz`` (key ``labels``)."""
    path = _existing(path, "load_voxelmorph_labels", "path")
    with np.load(path) as data:
        return tuple(int(v) for v in data["labels"])


def aseg_to_tissue(
    labels: torch.Tensor, grey: tuple[int, ...] = ASEG_GREY_MATTER, white: tuple[int, ...] = ASEG_WHITE_MATTER
) -> torch.Tensor:
    """Map an aseg label map to tissue classes 0 = other, 1 = grey matter, 2 = white matter.

    The default rule (:data:`ASEG_GREY_MATTER` -> 1, :data:`ASEG_WHITE_MATTER` -> 2, all else,
    i.e. ventricles, CSF, choroid plexus, vessels, -> 0) matches the MNI template's tissue
    labels (:func:`load_mni152`), whose grey-matter map covers the deep grey nuclei and the
    cerebellar cortex too. With the cerebral-only rule (``grey=ASEG_CEREBRAL_CORTEX,
    white=ASEG_CEREBRAL_WHITE_MATTER``) the template's cerebellar and deep grey matter has no
    counterpart in the subject: after affine alignment of the template to ``test_scan``, GM
    Dice is 0.53 instead of 0.64 and GM HD95 18.6 mm instead of 4.4 mm, whatever the
    deformable registration does.

    Args:
        labels: tensor of aseg codes, any shape (MetaTensor metadata is kept).
        grey: codes mapped to 1.
        white: codes mapped to 2.

    Returns:
        tensor like ``labels`` (same dtype) with values in {0, 1, 2}.
    """
    out = torch.zeros_like(labels)
    out[torch.isin(labels, torch.as_tensor(grey, dtype=labels.dtype, device=labels.device))] = 1
    out[torch.isin(labels, torch.as_tensor(white, dtype=labels.dtype, device=labels.device))] = 2
    return out


def tissue_brain_mask(tissue: np.ndarray, threshold: float, *, smoothing_sigma: float = 0.0,
                      closing_iterations: int = 0, dilation_iterations: int = 0) -> np.ndarray:
    """Brain mask (a skull strip) from a brain-tissue probability map, e.g. ``p_gm + p_wm`` of a template.

    The package's one recipe for a mask from tissue probabilities (label maps have
    :func:`~monai_diffreg.transforms.label_protocol.brain_mask` instead): without a CSF map the
    tissue is brought out to the brain's surface and its holes are closed, in this order:

    1. Gaussian smoothing of standard deviation ``smoothing_sigma`` voxels (0: none), which
       brings in the sulcal CSF;
    2. threshold: ``tissue >= threshold``;
    3. morphological closing, ``closing_iterations`` iterations of the 6-connected 3x3x3 element
       (0: none);
    4. enclosed holes (the ventricles) filled in 3D;
    5. dilation by ``dilation_iterations`` voxels (0: none), taking in the outer CSF.

    Settings in use: :func:`load_mni152` smooths (sigma 1.5 mm) and thresholds at 0.25; the
    built-in sample (:func:`monai_diffreg.sample.build_sample`) thresholds at 0.5, closes 5
    times and dilates once.

    Args:
        tissue: 2D or 3D array of probabilities in [0, 1].
        threshold: the tissue level inside the brain.
        smoothing_sigma: Gaussian scale in voxels (>= 0).
        closing_iterations: closing iterations (>= 0).
        dilation_iterations: dilation iterations (>= 0).

    Returns:
        bool array of ``tissue``'s shape.
    """
    if smoothing_sigma > 0:
        tissue = ndimage.gaussian_filter(tissue, smoothing_sigma)
    brain = tissue >= threshold
    if closing_iterations > 0:
        brain = ndimage.binary_closing(brain, iterations=closing_iterations)
    brain = ndimage.binary_fill_holes(brain)
    if dilation_iterations > 0:
        brain = ndimage.binary_dilation(brain, iterations=dilation_iterations)
    return brain


def _tissue_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """0/1/2 = the most probable of background ``1 - gm - wm``, ``gm``, ``wm`` (ties: lower label)."""
    bg = 1.0 - gm - wm
    labels = np.zeros(gm.shape, dtype=np.float32)
    labels[(gm > bg) & (gm >= wm)] = 1
    labels[(wm > bg) & (wm > gm)] = 2
    return labels


def load_mni152(folder, skull_strip: bool = True) -> dict[str, MetaTensor]:
    """Load the MNI ICBM152 2009a nonlinear symmetric template with tissue maps.

    Args:
        folder: the ``mni152_2009a`` folder holding :data:`MNI152_FILES`.
        skull_strip: multiply the T1 by the brain mask (``p_gm + p_wm`` smoothed with a
            Gaussian of sigma 1.5 mm, >= 0.25, holes filled: the template has no CSF map).

    Returns:
        dict of float32 MetaTensors ``(1, 197, 233, 189)`` with the header's RAS affine:
        ``image`` (T1 scaled to [0, 1] by its maximum, after skull stripping),
        ``gm`` and ``wm`` (probabilities in [0, 1]), ``labels`` (0 = background, 1 = GM,
        2 = WM: the most probable of ``p_bg = 1 - p_gm - p_wm``, ``p_gm``, ``p_wm``, ties
        going to the lower label), and ``mask`` (the brain mask, {0, 1}).
    """
    folder = _existing(folder, "load_mni152", "folder")
    arrays, affine = {}, None
    for key, name in MNI152_FILES.items():
        img = nib.load(_existing(folder / name, "load_mni152", "folder"))
        arrays[key] = np.asanyarray(img.dataobj).astype(np.float32) / 255.0
        if affine is None:
            affine = img.affine
        elif not np.allclose(affine, img.affine):
            raise ValueError(f"load_mni152(): {name} has affine {img.affine.tolist()}, expected {affine.tolist()}")
    gm, wm = arrays["gm"], arrays["wm"]
    mask = tissue_brain_mask(gm + wm, _MNI_MASK_THRESHOLD, smoothing_sigma=_MNI_MASK_SIGMA)  # no CSF map: smoothed
    image = arrays["image"] * mask if skull_strip else arrays["image"]
    image = image / image.max()
    labels = _tissue_labels(gm, wm)
    files = {k: folder / v for k, v in MNI152_FILES.items()}
    return {
        "image": _metatensor(image, affine, files["image"]),
        "gm": _metatensor(gm, affine, files["gm"]),
        "wm": _metatensor(wm, affine, files["wm"]),
        "labels": _metatensor(labels, affine, files["gm"]),
        "mask": _metatensor(mask, affine, files["gm"]),
    }


def _normalise(image: MetaTensor, name: str, caller: str) -> MetaTensor:
    """Min-max scale ``(1, *S)`` to [0, 1] (:func:`~monai_diffreg.transforms.intensity.min_max_normalize`);
    a constant image is an error here (a file that cannot be registered), naming the file."""
    lo, hi = torch.aminmax(image.as_tensor())
    if hi <= lo:
        raise ValueError(f"{caller}(): '{name}' is constant ({float(lo)}): {image.meta.get('filename_or_obj')}")
    return MetaTensor(min_max_normalize(image.as_tensor()[None])[0], meta=image.meta)


def load_elastix_2d(folder, normalise: bool = True) -> dict[str, MetaTensor]:
    """Load the ITKElastix 2D head MR pair with brain masks (``elastix_2d/``).

    Read with MONAI's ``LoadImage`` (ITK reader), so array axis 0 is ITK's x and the affine
    is RAS (ITK's LPS header converted), 1 mm.

    Args:
        folder: the ``elastix_2d`` folder (``CT_2D_head_{fixed,moving}[_mask].mha``).
        normalise: min-max scale each image to [0, 1] (the raw int16 range is about 0..250).

    Returns:
        dict of float32 MetaTensors ``(1, 256, 256)``: ``fixed``, ``moving`` and
        ``fixed_mask``, ``moving_mask`` (values {0, 1}).
    """
    folder = _existing(folder, "load_elastix_2d", "folder")
    reader = LoadImage(reader="ITKReader", ensure_channel_first=True, image_only=True, dtype=np.float32)
    out = {}
    for key in ("fixed", "moving", "fixed_mask", "moving_mask"):
        out[key] = reader(_existing(folder / f"CT_2D_head_{key}.mha", "load_elastix_2d", "folder"))
    if normalise:
        for key in ("fixed", "moving"):
            out[key] = _normalise(out[key], key, "load_elastix_2d")
    return out


def load_dipy_slice(path) -> MetaTensor:
    """Load ``dipy_2d/t1_coronal_slice.npy``: float32 MetaTensor ``(1, 256, 256)`` in [0, 1].

    The file has no header: the affine is the identity (1 mm, origin at voxel 0).
    """
    path = _existing(path, "load_dipy_slice", "path")
    return _metatensor(np.load(path), np.eye(3), path)


def load_label_map(path) -> MetaTensor:
    """Load a label map (NIfTI or MGH, any orientation) reoriented to RAS voxel axes.

    Args:
        path: the file (e.g. ``synthseg_label_maps/training_seg_01.nii.gz``).

    Returns:
        float32 MetaTensor ``(1, *S)`` of integer label codes whose array axes run towards
        R, A, S (nibabel's closest canonical orientation), with its RAS affine.
    """
    path = _existing(path, "load_label_map", "path")
    img = nib.as_closest_canonical(nib.load(path))
    codes = np.asanyarray(img.dataobj)
    if not np.array_equal(codes, np.round(codes)):
        raise ValueError(f"load_label_map(): {path} holds non-integral values: not a label map")
    return _metatensor(codes.astype(np.float32), img.affine, path)


def destrieux_to_aseg(labels: torch.Tensor) -> torch.Tensor:
    """Aseg-style cortex for an ``aparc.a2009s+aseg`` label map: Destrieux parcels -> 3 / 42.

    Codes in the ranges of :data:`DESTRIEUX_CORTEX` become the aseg cortex label of their
    hemisphere; every other code is kept (aseg structures keep left and right apart).

    Args:
        labels: tensor of label codes, any shape (MetaTensor metadata is kept).

    Returns:
        tensor like ``labels`` (same dtype).
    """
    out = labels.clone()
    for first, last, code in DESTRIEUX_CORTEX:
        out[(labels >= first) & (labels <= last)] = code
    return out


def load_niivue_subject(folder) -> tuple[MetaTensor, MetaTensor]:
    """Load the validation subject ``niivue_freesurfer/`` (image and aseg-style labels).

    The arrays keep the files' voxel axes (FreeSurfer's conformed space: LIA, 256^3, 1 mm;
    :func:`load_label_map` reorients to RAS instead), with the header's voxel-to-RAS affine.

    Args:
        folder: the ``niivue_freesurfer`` folder holding :data:`NIIVUE_FILES`.

    Returns:
        ``(image, labels)``: float32 MetaTensors ``(1, 256, 256, 256)`` sharing the affine;
        ``image`` = ``norm.mgz`` (skull-stripped T1, uint8 0-125) divided by its maximum, in
        [0, 1]; ``labels`` = ``aparc.a2009s+aseg.mgz`` through :func:`destrieux_to_aseg` (aseg
        codes, cortex 3 / 42).
    """
    folder = _existing(folder, "load_niivue_subject", "folder")
    images = {key: nib.load(_existing(folder / name, "load_niivue_subject", "folder")) for key, name in NIIVUE_FILES.items()}
    affine = images["image"].affine
    if not np.allclose(images["labels"].affine, affine):
        raise ValueError(f"load_niivue_subject(): {NIIVUE_FILES['labels']} has affine "
                         f"{images['labels'].affine.tolist()}, expected {affine.tolist()}")
    image = np.asanyarray(images["image"].dataobj).astype(np.float32)
    image = image / image.max()
    labels = np.asanyarray(images["labels"].dataobj).astype(np.float32)
    files = {key: folder / name for key, name in NIIVUE_FILES.items()}
    return _metatensor(image, affine, files["image"]), destrieux_to_aseg(_metatensor(labels, affine, files["labels"]))
