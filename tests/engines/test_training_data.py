"""SyntheticPairDataset: every source gives replayable, consistent pairs; real subjects' maps on one label set."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_diffreg.engines.training_data import T1_MEANS, SyntheticPairDataset
from monai_diffreg.transforms.label_protocol import TRAINING_STRUCTURES

CHANNELS = len(TRAINING_STRUCTURES) + 1


@pytest.fixture(scope="module")
def label_map_files(tmp_path_factory):
    """Two small 'subjects': nested structures of aseg codes (WM in cortex, a ventricle, CSF outside), 2 mm."""
    folder = tmp_path_factory.mktemp("maps")
    paths = []
    for i, (shape, code_wm) in enumerate((((30, 34, 28), 2), ((28, 36, 30), 41))):
        codes = np.zeros(shape, dtype=np.float32)
        centre = np.array(shape) / 2
        zz = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
        radius = np.linalg.norm((zz - centre) / (np.array(shape) / 2.5), axis=-1)
        codes[radius < 1.0] = 24
        codes[radius < 0.9] = 3
        codes[radius < 0.7] = code_wm
        codes[radius < 0.4] = 4
        codes[:3] = 136  # extra-cerebral tissue: not brain
        path = folder / f"subject_{i}.nii.gz"
        nib.save(nib.Nifti1Image(codes, np.diag([2.0, 2.0, 2.0, 1.0])), path)
        paths.append(path)
    return paths


def _subjects_only(files, **kwargs):
    settings = dict(label_maps=files, label_map_probability=1.0, num_label_channels=CHANNELS, seed=1,
                    label_map_spacing=4.0, max_displacement=(0.0, 1.0), flip_probability=0.0)
    settings.update(kwargs)
    return SyntheticPairDataset((16, 16, 16), **settings)


def test_subject_pairs_are_replayable_and_well_formed(label_map_files):
    dataset = _subjects_only(label_map_files)
    first, again = dataset[5], dataset[5]
    for key in ("moving", "fixed", "moving_labels", "fixed_labels"):
        assert torch.equal(first[key], again[key]), key
    assert first["moving"].shape == (1, 16, 16, 16) and first["moving_labels"].shape == (CHANNELS, 16, 16, 16)
    for name in ("moving", "fixed"):
        image, labels = first[name], first[f"{name}_labels"]
        assert float(image.min()) == 0.0 and float(image.max()) == pytest.approx(1.0)
        assert torch.allclose(labels.sum(0), torch.ones(16, 16, 16))  # one-hot
        background = labels[0] > 0.5
        assert bool(background.any()) and float(image[0][background].abs().max()) == 0.0  # skull-stripped
        present = set(labels.flatten(1).sum(1).nonzero().flatten().tolist())
        assert present <= {0, 1, 2, 3, 15}  # WM (both hemisphere codes), cortex, ventricle, CSF


def test_t1_like_contrast_orders_the_tissues(label_map_files):
    dataset = _subjects_only(label_map_files, t1_contrast_probability=1.0, t1_mean_jitter=0.0, intensity_jitter=0.0)
    for index in range(3):
        item = dataset[index]
        labels, image = item["fixed_labels"], item["fixed"][0]
        mean = {k: float(image[labels[k] > 0.5].mean()) for k in (1, 2, 3)}
        assert mean[1] > mean[2] > mean[3], mean  # WM > cortex > ventricle, as on a T1 scan
    assert T1_MEANS[1] > T1_MEANS[2] > T1_MEANS[3] and len(T1_MEANS) == CHANNELS


def test_inter_subject_probability_joins_two_subjects(label_map_files):
    same = _subjects_only(label_map_files, inter_subject_probability=0.0, max_displacement=(0.0, 0.0))
    other = _subjects_only(label_map_files, inter_subject_probability=1.0, max_displacement=(0.0, 0.0))
    for index in range(4):
        item = same[index]
        assert torch.equal(item["moving_labels"], item["fixed_labels"])
        item = other[index]
        assert not torch.equal(item["moving_labels"], item["fixed_labels"])


def test_sources_mix_with_their_probabilities(label_map_files):
    dataset = SyntheticPairDataset((16, 16, 16), label_maps=label_map_files, label_map_probability=0.5,
                                   num_label_channels=CHANNELS, label_map_spacing=4.0, flip_probability=0.0)
    skull_stripped = 0
    for index in range(40):
        item = dataset[index]
        skull_stripped += int(float(item["moving"][0][item["moving_labels"][0] > 0.5].abs().max()) == 0.0)
    assert 10 <= skull_stripped <= 30  # shapes pairs have no zero background


def test_bad_subject_settings(label_map_files):
    with pytest.raises(ValueError, match="num_label_channels"):
        SyntheticPairDataset((16, 16, 16), label_maps=label_map_files, num_label_channels=16)
    with pytest.raises(ValueError, match="must be <= 1"):  # checked before the template is read
        SyntheticPairDataset((16, 16, 16), label_maps=label_map_files, label_map_probability=0.8,
                             num_label_channels=CHANNELS, template_folder="not-read", template_probability=0.5)
    with pytest.raises(ValueError, match="'label_maps' is empty but 'label_map_probability' is 0.5"):
        SyntheticPairDataset((16, 16, 16), label_maps=[], label_map_probability=0.5, num_label_channels=CHANNELS)
    assert SyntheticPairDataset((16, 16), label_maps=[], label_map_probability=0.0).label_map_probability == 0.0
    with pytest.raises(ValueError, match="3D"):
        SyntheticPairDataset((16, 16), label_maps=label_map_files, num_label_channels=CHANNELS)


def test_real_label_maps_make_brain_like_pairs(shared_data):
    files = [shared_data / "synthseg_label_maps" / "training_seg_01.nii.gz",
             shared_data / "synthsr_label_maps" / "brain1_labels.nii.gz"]
    dataset = SyntheticPairDataset((40, 48, 40), label_maps=files, label_map_probability=1.0,
                                   num_label_channels=CHANNELS, label_map_spacing=4.0, inter_subject_probability=1.0)
    item = dataset[0]
    for name in ("moving", "fixed"):
        labels = item[f"{name}_labels"]
        brain = 1.0 - labels[0]
        assert 0.15 < float(brain.mean()) < 0.7  # the brain fills the canvas, with a margin
        assert int((labels.flatten(1).sum(1) > 0).sum()) >= 15  # most structures present


def test_random_affine_moves_the_moving_side_only_and_costs_no_draw_when_off():
    """Affine limits of 0 give the items of a dataset without the option (bit for bit); with limits the moving
    image and labels are resampled by the pair's own affine, the fixed side untouched, labels still summing to 1."""
    plain = SyntheticPairDataset((16, 20), seed=3)
    off = SyntheticPairDataset((16, 20), seed=3, max_rotation_degrees=0.0, max_translation=0.0)
    on = SyntheticPairDataset((16, 20), seed=3, max_rotation_degrees=10.0, max_translation=3.0)
    for index in range(3):
        a, b, c = plain[index], off[index], on[index]
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(a["fixed"], c["fixed"]) and torch.equal(a["fixed_labels"], c["fixed_labels"])
        assert not torch.equal(a["moving"], c["moving"])
        torch.testing.assert_close(c["moving_labels"].sum(0), torch.ones(16, 20))
    with pytest.raises(ValueError, match="must be >= 0"):
        SyntheticPairDataset((16, 20), max_translation=-1.0)



def _contrast_correlation(item, channels):
    """Correlation, over the labels present in both images, of the moving and the fixed image's per-label means."""
    moving, fixed = [], []
    for k in channels:
        in_moving, in_fixed = item["moving_labels"][k] > 0.5, item["fixed_labels"][k] > 0.5
        if bool(in_moving.any()) and bool(in_fixed.any()):
            moving.append(float(item["moving"][0][in_moving].mean()))
            fixed.append(float(item["fixed"][0][in_fixed].mean()))
    return float(np.corrcoef(moving, fixed)[0, 1])


def test_independent_contrasts_draw_each_images_own_contrast(label_map_files):
    """SynthMorph's cross-contrast pairs: with the option every image of a subject or shapes pair gets its own
    label intensities (the two images' per-label means no longer correlate); without it the items are bit for
    bit those of a dataset that does not know the option (the shared contrast: strongly correlated means)."""
    kwargs = dict(t1_contrast_probability=0.0, intensity_jitter=0.0, inter_subject_probability=0.0,
                  max_displacement=(0.0, 0.0))
    subjects = {flag: _subjects_only(label_map_files, **kwargs, independent_contrasts=flag) for flag in (False, True)}
    shapes = {flag: SyntheticPairDataset((24, 24), seed=2, intensity_jitter=0.0, max_displacement=(0.0, 0.0),
                                         independent_contrasts=flag) for flag in (False, True)}
    plain = _subjects_only(label_map_files, **kwargs)
    for index in range(6):
        assert all(torch.equal(plain[index][k], subjects[False][index][k]) for k in plain[index])
    for datasets, channels in ((subjects, (1, 2, 3, 15)), (shapes, range(16))):
        shared = [_contrast_correlation(datasets[False][i], channels) for i in range(6)]
        independent = [_contrast_correlation(datasets[True][i], channels) for i in range(6)]
        assert min(shared) > 0.7 and float(np.mean(independent)) < 0.4, (shared, independent)
    with pytest.raises(ValueError, match="'independent_contrasts' must be True or False"):
        SyntheticPairDataset((16, 16), independent_contrasts="yes")
