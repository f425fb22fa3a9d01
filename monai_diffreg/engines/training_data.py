"""Synthetic training pairs for registration networks: SynthMorph-style shapes and an augmented template.

:class:`SyntheticPairDataset` is a map-style dataset of infinitely many pairs whose item ``i``
is a deterministic function of ``(seed, i)`` (one :class:`torch.Generator` per item), so a
training run can be resumed exactly without saving any data-loader state. Each item is one of:

* **shapes** (SynthMorph, Hoffmann et al. 2022): a random label map of smooth blobs
  (:func:`~monai_diffreg.transforms.synthesis.random_label_map`), deformed by two independent
  random smooth diffeomorphisms (:mod:`~monai_diffreg.transforms.deformation` parameters,
  integrated by scaling and squaring)
  into the moving and fixed label maps; each is turned into an image by the GMM synthesis
  (:func:`~monai_diffreg.transforms.synthesis.synthesize_image`) with its own blur, bias,
  gamma, noise and texture draws. Both images share the per-label mean intensities up to a
  jitter of ``intensity_jitter``, so they have the same contrast (mono-modal pairs, as the
  image term of the loss requires) yet differ in appearance.
* **template**: the MNI ICBM152 2009a template (skull-stripped T1 and its GM/WM labels,
  :func:`monai_diffreg.datasets.load_mni152`), reoriented to ``orientation`` (RAS, the API's
  working grid) and resampled by
  ``template_scale``, randomly cropped to ``spatial_size``, deformed by two random smooth
  diffeomorphisms, and given random bias field, gamma and noise per image (inside the brain:
  the background stays 0, as in skull-stripped scans).

* **subjects** (SynthMorph trained on real anatomy): real subjects' label maps
  (:mod:`~monai_diffreg.engines.subject_maps` places them on one canvas of ``label_map_spacing``
  mm voxels, brain moments matched). The moving and fixed maps are the same subject or, with
  probability ``inter_subject_probability``, two different ones; each is deformed by its own
  random diffeomorphism and synthesised into a skull-stripped image (background 0) by the GMM
  model, with per-structure means either T1-like (:data:`T1_MEANS` plus a jitter of
  ``t1_mean_jitter``, probability ``t1_contrast_probability``) or uniform in [0, 1] (SynthMorph's
  random contrasts), shared by both images up to ``intensity_jitter``. Labels are the
  structures of :mod:`~monai_diffreg.transforms.label_protocol` (one label set for every source).

Every pair is flipped along each axis with probability ``flip_probability`` (both images
and labels alike). Labels come as soft one-hot maps with ``num_label_channels`` channels
(shapes: ``shape_labels`` labels; template: background, GM, WM, the rest zero), warped with
linear interpolation; subjects: background and the training structures). The labelled
evaluation brain (``voxelmorph/test_scan.npz``) must never be given to this class.

:func:`real_label_maps` lists the real label maps of the shared data folder less
:data:`VALIDATION_LABEL_MAPS` (held out for validation); the bundles' ``train.json`` build their
data from them with :func:`monai_diffreg.bundle_workflow.real_anatomy_dataset`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.transforms import Orientation
from torch.utils.data import Dataset

from ..functional import affine_to_ddf, integrate_velocity, resize_image, warp
from ..transforms.label_protocol import TRAINING_STRUCTURES, brain_mask, to_training_labels
from ..transforms.deformation import sample_random_affine, sample_smooth_velocity_params, smooth_velocity_from_params
from ..transforms.intensity import min_max_normalize
from ..transforms.synthesis import (
    add_gaussian_noise,
    apply_gamma,
    bias_field_from_coefficients,
    random_label_map,
    sample_synthesis_params,
    synthesize_image,
)

__all__ = ["SyntheticPairDataset", "T1_MEANS", "VALIDATION_LABEL_MAPS", "real_label_maps",
           "shared_data_folder"]

#: T1-weighted mean intensity (scale of a white-matter-normalised scan, [0, 1]) of background
#: and each structure of :data:`~monai_diffreg.transforms.label_protocol.TRAINING_STRUCTURES`, in
#: that order: white matter brightest, grey matter mid, deep nuclei between, fluid dark.
T1_MEANS: tuple[float, ...] = (
    0.0, 0.85, 0.50, 0.10, 0.80, 0.50, 0.70, 0.55, 0.60, 0.72,
    0.10, 0.10, 0.75, 0.50, 0.52, 0.10, 0.72, 0.35, 0.55,
)  # fmt: skip

#: The real label maps held out of training, for validation (``benchmarks.validate_checkpoints
#: --held-out-subjects``): file names under ``synthseg_label_maps/`` (``training_seg_19``,
#: ``training_seg_20``) and ``synthsr_label_maps/`` (``brain5_labels``) of the shared data folder.
VALIDATION_LABEL_MAPS: tuple[str, ...] = ("training_seg_19.nii.gz", "training_seg_20.nii.gz", "brain5_labels.nii.gz")

#: folders of the shared data folder that hold the real subjects' label maps (``*.nii.gz``)
_LABEL_MAP_FOLDERS = ("synthseg_label_maps", "synthsr_label_maps")
#: folder of the shared data folder that holds the MNI ICBM152 2009a template
TEMPLATE_FOLDER = "mni152_2009a"


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class SyntheticPairDataset(Dataset):
    """Deterministic, unbounded stream of synthetic registration pairs; see the module docstring.

    Args:
        spatial_size: size of every image ``(*S)``, 2D or 3D (the template needs 3D).
        length: nominal number of items (``__len__``); item ``i`` exists for any ``i >= 0``.
        seed: base seed; item ``i`` uses a generator seeded with ``seed * 2**32 + i``.
        template_folder: the ``mni152_2009a`` folder, or None for shapes only.
        template_probability: probability that an item is a template pair (when a folder is given).
        template_scale: resampling factor of the 1 mm template (0.5: 2 mm voxels).
        orientation: axis codes the template is reoriented to; ``"RAS"``, the working grid on
            which the package's API hands images to the networks.
        shape_labels: number of blob labels of a shapes pair.
        num_label_channels: channels of the one-hot label maps (>= max(shape_labels, 3)).
        blob_spacing: range of the blob size in voxels.
        control_spacing: range of the control-point spacing of the random deformations, voxels.
        max_displacement: range of the bound on each velocity component, voxels. Keep it well
            below the spacing (the velocity's Jacobian reaches about ``2 * max / spacing``):
            violent, folding-scale deformations cannot be learned by a smooth model.
        bias_control_spacing: control-point spacing of the random bias fields, voxels.
        intensity_jitter: largest change of a label's mean intensity between the two images of a shapes pair.
        flip_probability: probability of flipping a pair along each axis.
        label_maps: real subjects' label-map files (None: no subject pairs; empty with a
            ``label_map_probability`` above 0 is an error, as when a data folder is missing).
        label_map_probability: probability that an item is a subject pair (when maps are given).
        label_map_spacing: canvas voxel size of the subject maps in mm (the canvas is ``spatial_size``).
        inter_subject_probability: probability that a subject pair joins two different subjects.
        t1_contrast_probability: probability of T1-like rather than random contrast in a subject pair.
        t1_mean_jitter: standard deviation of each structure's mean around :data:`T1_MEANS`.
        independent_contrasts: each image of a subject or shapes pair gets its own random contrast
            (per-label means drawn independently: SynthMorph's cross-contrast pairs) instead of one
            contrast shared up to ``intensity_jitter``; False (the default) draws the same random
            numbers as a dataset without the option.
        max_rotation_degrees, max_translation, max_log_scaling: a random affine
            (:func:`~monai_diffreg.transforms.deformation.sample_random_affine`, about the centre;
            translation in voxels) applied to the moving image and labels of every pair, for
            networks that learn an affine too; all 0 (the default): none, and no random number is
            drawn for it (the items are those of a dataset without the option).

    Items are dicts of float32 CPU tensors: ``"moving"``, ``"fixed"`` ``(1, *S)`` in [0, 1] and
    ``"moving_labels"``, ``"fixed_labels"`` ``(num_label_channels, *S)``.
    """

    def __init__(self, spatial_size: Sequence[int], length: int = 10**9, seed: int = 0,
                 template_folder: str | Path | None = None, template_probability: float = 0.5,
                 template_scale: float = 0.5, orientation: str = "RAS", shape_labels: int = 16,
                 num_label_channels: int = 16, blob_spacing: Sequence[float] = (4.0, 12.0),
                 control_spacing: Sequence[float] = (8.0, 16.0), max_displacement: Sequence[float] = (0.0, 3.0),
                 bias_control_spacing: float = 16.0, intensity_jitter: float = 0.1, flip_probability: float = 0.5,
                 label_maps: Sequence[str | Path] | None = None, label_map_probability: float = 0.5,
                 label_map_spacing: float = 2.0, inter_subject_probability: float = 0.5,
                 t1_contrast_probability: float = 0.5, t1_mean_jitter: float = 0.05,
                 independent_contrasts: bool = False, max_rotation_degrees: float = 0.0, max_translation: float = 0.0, max_log_scaling: float = 0.0) -> None:
        caller = "SyntheticPairDataset"
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if len(self.spatial_size) not in (2, 3) or min(self.spatial_size) < 4:
            raise ValueError(f"{caller}(): 'spatial_size' must be 2 or 3 sizes >= 4, got {tuple(spatial_size)}")
        if num_label_channels < max(shape_labels, 3):
            raise ValueError(f"{caller}(): 'num_label_channels' must be >= max(shape_labels, 3) = "
                             f"{max(shape_labels, 3)}, got {num_label_channels}")
        self.length = int(length)
        self.seed = int(seed)
        self.template_probability = float(template_probability) if template_folder is not None else 0.0
        self.shape_labels = int(shape_labels)
        self.num_label_channels = int(num_label_channels)
        self.blob_spacing = tuple(blob_spacing)
        self.control_spacing = tuple(control_spacing)
        self.max_displacement = tuple(max_displacement)
        self.bias_control_spacing = float(bias_control_spacing)
        self.intensity_jitter = float(intensity_jitter)
        self.flip_probability = float(flip_probability)
        if label_maps is not None and len(label_maps) == 0 and label_map_probability > 0:
            raise ValueError(f"{caller}(): 'label_maps' is empty but 'label_map_probability' is {label_map_probability}: "
                             "no label map was found (is the shared data folder where the config says?); pass "
                             "label_map_probability=0 to train without real subjects")
        self.label_map_probability = float(label_map_probability) if label_maps else 0.0
        if self.label_map_probability > 0 and num_label_channels < len(TRAINING_STRUCTURES) + 1:
            raise ValueError(f"{caller}(): 'num_label_channels' must be >= {len(TRAINING_STRUCTURES) + 1} with "
                             f"'label_maps' (background + the training structures), got {num_label_channels}")
        if self.template_probability + self.label_map_probability > 1:
            raise ValueError(f"{caller}(): 'template_probability' + 'label_map_probability' must be <= 1, got "
                             f"{self.template_probability} + {self.label_map_probability}")
        self.inter_subject_probability = float(inter_subject_probability)
        self.t1_contrast_probability = float(t1_contrast_probability)
        self.t1_mean_jitter = float(t1_mean_jitter)
        if not isinstance(independent_contrasts, bool):
            raise ValueError(f"{caller}(): 'independent_contrasts' must be True or False, got {independent_contrasts!r}")
        self.independent_contrasts = independent_contrasts
        self.affine_limits = {"max_rotation_degrees": float(max_rotation_degrees),
                              "max_translation": float(max_translation), "max_log_scaling": float(max_log_scaling)}
        if any(v < 0 for v in self.affine_limits.values()):
            raise ValueError(f"{caller}(): 'max_rotation_degrees', 'max_translation' and 'max_log_scaling' must be >= 0, "
                             f"got {self.affine_limits}")
        self.subject_maps: torch.Tensor | None = None
        if self.label_map_probability > 0:
            if len(self.spatial_size) != 3:
                raise ValueError(f"{caller}(): label maps are 3D, got a 2D 'spatial_size' {self.spatial_size}")
            from .subject_maps import prepare_subject_maps

            self.subject_maps = prepare_subject_maps(label_maps, self.spatial_size, label_map_spacing)
        self.template: dict[str, torch.Tensor] | None = None
        if template_folder is not None:
            if len(self.spatial_size) != 3:
                raise ValueError(f"{caller}(): the template is 3D, got a 2D 'spatial_size' {self.spatial_size}")
            self.template = self._prepare_template(template_folder, template_scale, orientation)

    @staticmethod
    def _prepare_template(folder: str | Path, scale: float, orientation: str) -> dict[str, torch.Tensor]:
        from ..datasets import load_mni152

        mni = load_mni152(folder)
        reorient = Orientation(axcodes=orientation, labels=(("L", "R"), ("P", "A"), ("I", "S")))
        image = reorient(mni["image"]).as_tensor()
        gm, wm = reorient(mni["gm"]).as_tensor(), reorient(mni["wm"]).as_tensor()
        soft = torch.cat([(1.0 - gm - wm).clamp(min=0.0), gm, wm])
        size = [max(1, round(s * scale)) for s in image.shape[1:]]
        return {
            "image": resize_image(image[None], size=size, mode="area")[0],
            "labels": resize_image(soft[None], size=size, mode="area")[0],
        }

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed((self.seed * 2**32 + int(index)) % 2**63)
        draw = float(torch.rand((), generator=generator))
        if draw < self.template_probability:
            item = self._template_pair(generator)
        elif draw < self.template_probability + self.label_map_probability:
            item = self._subject_pair(generator)
        else:
            item = self._shapes_pair(generator)
        for axis in range(len(self.spatial_size)):
            if float(torch.rand((), generator=generator)) < self.flip_probability:
                item = {k: v.flip(axis + 1) for k, v in item.items()}
        if any(self.affine_limits.values()):
            ddf = affine_to_ddf(sample_random_affine(self.spatial_size, generator=generator, **self.affine_limits),
                                self.spatial_size)
            item["moving"] = warp(item["moving"][None], ddf, padding_mode="zeros")[0]
            item["moving_labels"] = warp(item["moving_labels"][None], ddf, padding_mode="zeros")[0]
            item["moving_labels"][0] += 1.0 - item["moving_labels"].sum(0)  # outside the image: background
        return item

    def _random_ddf(self, generator: torch.Generator) -> torch.Tensor:
        params = sample_smooth_velocity_params(
            self.spatial_size, _uniform(generator, *self.control_spacing), _uniform(generator, *self.max_displacement),
            generator=generator,
        )
        return integrate_velocity(smooth_velocity_from_params(params))

    def _one_hot(self, soft: torch.Tensor) -> torch.Tensor:
        return F.pad(soft, [0, 0] * len(self.spatial_size) + [0, self.num_label_channels - soft.shape[0]])

    def _shapes_pair(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        labels = random_label_map(self.spatial_size, self.shape_labels, _uniform(generator, *self.blob_spacing),
                                  max_displacement=0.0, generator=generator).float()
        item: dict[str, torch.Tensor] = {}
        means = None
        for name in ("moving", "fixed"):
            warped = warp(labels, self._random_ddf(generator), mode="nearest").long()
            params = sample_synthesis_params(torch.arange(self.shape_labels), self.spatial_size,
                                             bias_control_spacing=self.bias_control_spacing, generator=generator)
            if means is None:
                means = params["means"]
            elif not self.independent_contrasts:
                jitter = (torch.rand(means.shape, generator=generator) * 2 - 1) * self.intensity_jitter
                params["means"] = (means + jitter).clamp(0.0, 1.0)
            item[name] = synthesize_image(warped, params)[0]
            onehot = F.one_hot(warped[0, 0], self.shape_labels).movedim(-1, 0).float()
            item[f"{name}_labels"] = self._one_hot(onehot)
        return item

    def _crop_template(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = self.template["image"], self.template["labels"]  # type: ignore[index]
        pad = []
        for have, want in zip(reversed(image.shape[1:]), reversed(self.spatial_size)):
            extra = max(0, want - have)
            pad += [extra // 2, extra - extra // 2]
        image = F.pad(image, pad)
        labels = F.pad(labels, pad)
        labels[0] = labels[0] + (labels.sum(0) == 0).float()  # padding is background
        starts = [int(torch.randint(0, have - want + 1, (), generator=generator))
                  for have, want in zip(image.shape[1:], self.spatial_size)]
        crop = (slice(None), *(slice(s, s + n) for s, n in zip(starts, self.spatial_size)))
        return image[crop], labels[crop]

    def _template_pair(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        image, labels = self._crop_template(generator)
        item: dict[str, torch.Tensor] = {}
        for name in ("moving", "fixed"):
            ddf = self._random_ddf(generator)
            warped = warp(image[None], ddf)
            foreground = (warped > 1e-3).float()  # the scans have a zero background: keep it
            params = sample_synthesis_params([0], self.spatial_size, bias_control_spacing=self.bias_control_spacing,
                                             generator=generator)
            warped = warped * bias_field_from_coefficients(params["bias_coefficients"], self.spatial_size)
            warped = apply_gamma(min_max_normalize(warped), params["gamma"])
            noise = torch.Generator().manual_seed(params["seed"])
            item[name] = (min_max_normalize(add_gaussian_noise(warped, params["noise_std"], noise)) * foreground)[0]
            item[f"{name}_labels"] = self._one_hot(warp(labels[None], ddf)[0])
        return item

    def _structure_means(self, generator: torch.Generator) -> torch.Tensor:
        """Mean intensity of background and each training structure for one pair."""
        count = len(TRAINING_STRUCTURES) + 1
        if float(torch.rand((), generator=generator)) < self.t1_contrast_probability:
            jitter = torch.randn(count, generator=generator) * self.t1_mean_jitter
            return (torch.tensor(T1_MEANS) + jitter).clamp(0.0, 1.0)
        return torch.rand(count, generator=generator)

    def _subject_pair(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        maps = self.subject_maps  # type: ignore[assignment]
        first = int(torch.randint(0, maps.shape[0], (), generator=generator))
        second = first
        if maps.shape[0] > 1 and float(torch.rand((), generator=generator)) < self.inter_subject_probability:
            second = (first + 1 + int(torch.randint(0, maps.shape[0] - 1, (), generator=generator))) % maps.shape[0]
        structure_means = self._structure_means(generator)
        item: dict[str, torch.Tensor] = {}
        for name, subject in (("moving", first), ("fixed", second)):
            if name == "fixed" and self.independent_contrasts:
                structure_means = self._structure_means(generator)
            codes = warp(maps[subject][None].float(), self._random_ddf(generator), mode="nearest").long()
            structures = to_training_labels(codes)
            values = codes.unique()
            params = sample_synthesis_params(values, self.spatial_size, std_range=(0.0, 0.05),
                                             bias_control_spacing=self.bias_control_spacing, generator=generator)
            jitter = (torch.rand(values.shape, generator=generator) * 2 - 1) * self.intensity_jitter
            params["means"] = (structure_means[to_training_labels(values)] + jitter).clamp(0.0, 1.0)
            brain = brain_mask(codes).float()
            item[name] = min_max_normalize(synthesize_image(codes, params) * brain)[0]
            onehot = F.one_hot(structures[0, 0], len(TRAINING_STRUCTURES) + 1).movedim(-1, 0).float()
            item[f"{name}_labels"] = self._one_hot(onehot)
        return item


def shared_data_folder(shared_data: str | Path | None = None) -> str:
    """``shared_data`` as text; None: the ``data`` folder of ``$MONAI_DIFFREG_SHARED``, by default
    ``../shared/data`` (relative to the working directory: the bundles run from the repository root)."""
    if shared_data is None:
        return os.environ.get("MONAI_DIFFREG_SHARED", "../shared") + "/data"
    return str(shared_data)


def real_label_maps(shared_data: str | Path | None = None, held_out: bool = False) -> list[str]:
    """The real subjects' label-map files of the shared data folder, sorted: the training ones (all
    ``*.nii.gz`` of ``synthseg_label_maps/`` and ``synthsr_label_maps/`` but :data:`VALIDATION_LABEL_MAPS`)
    or, with ``held_out``, the held-out ones. A missing folder holds none.

    Args:
        shared_data: the shared data folder (:func:`shared_data_folder`; None: the default one).
        held_out: the maps of :data:`VALIDATION_LABEL_MAPS` found there instead of the training maps.
    """
    folder = glob.escape(shared_data_folder(shared_data))
    files = sorted(path for name in _LABEL_MAP_FOLDERS for path in glob.glob(f"{folder}/{name}/*.nii.gz"))
    return [path for path in files if (os.path.basename(path) in VALIDATION_LABEL_MAPS) == held_out]
