"""Tests for the built-in sample (monai_diffreg.sample and monai_diffreg/data/sample)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from monai_diffreg.sample import MNI_NOTICE, SAMPLE_SHAPE, _crop_box, gm_wm_labels, sample_paths


def test_sample_files_small_and_complete():
    paths = sample_paths()
    total = sum(p.stat().st_size for p in paths["fixed"].parent.iterdir())
    assert total < 5 * 1024 * 1024
    for name in ("fixed", "moving", "fixed_labels", "moving_labels"):
        img = nib.load(paths[name])
        assert img.shape == SAMPLE_SHAPE == (160, 192, 160)
        assert all(n % 16 == 0 for n in img.shape)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 1.0))
        assert img.get_data_dtype() == np.uint8
    labels = np.asarray(nib.load(paths["fixed_labels"]).dataobj)
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    info = json.loads((paths["fixed"].parent / "sample.json").read_text())
    np.testing.assert_allclose(info["affine"], nib.load(paths["fixed"]).affine)


def test_notice_is_the_mni_notice(shared_data):
    readme = (shared_data / "README.md").read_text()
    notice = readme.split("## MNI ICBM152 notice (must accompany any copy or derivative that ships)\n", 1)[1].strip()
    shipped = sample_paths()["notice"].read_text()
    assert shipped == MNI_NOTICE
    assert notice in shipped


def test_fixed_image_is_the_template_crop(shared_data):
    """The fixed image is the template's T1, unchanged inside the brain mask, at the recorded crop."""
    source = nib.load(shared_data / "mni152_2009a" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    fixed = nib.load(sample_paths()["fixed"])
    start = json.loads((sample_paths()["fixed"].parent / "sample.json").read_text())["crop_start_in_template"]
    np.testing.assert_allclose(fixed.affine[:3, 3], source.affine[:3, 3] + np.asarray(start, dtype=float))
    template = np.asarray(source.dataobj)[tuple(slice(s, s + n) for s, n in zip(start, SAMPLE_SHAPE))]
    data = np.asarray(fixed.dataobj)
    inside = data > 0
    assert inside.mean() > 0.3
    np.testing.assert_array_equal(data[inside], template[inside])


def test_label_rule_hand_values():
    p_gm = np.array([0.6, 0.3, 0.2, 0.4, 0.9])
    p_wm = np.array([0.3, 0.6, 0.2, 0.4, 0.1])
    mask = np.array([True, True, True, True, False])
    # GM wins, WM wins, CSF (0.6 rest) wins, GM/WM tie -> GM, outside the mask -> 0
    np.testing.assert_array_equal(gm_wm_labels(p_gm, p_wm, mask), [1, 2, 0, 1, 0])


def test_crop_box_centres_and_fits():
    mask = np.zeros((197, 233, 189), bool)
    mask[30:170, 30:200, 5:150] = True
    box = _crop_box(mask)
    assert [s.stop - s.start for s in box] == list(SAMPLE_SHAPE)
    assert box[0].start == 20 and box[2].start == 0  # centred on x; clipped at the bottom on z


@pytest.mark.slow
def test_sample_end_to_end_svf_optim(tmp_path):
    """The built-in sample through register(): the true field is right, and svf_optim improves Dice and the field error."""
    import torch

    from monai_diffreg import api
    from monai_diffreg.functional import warp
    from monai_diffreg.metrics import mean_dice
    from monai_diffreg.sample import load_sample

    sample = load_sample()
    assert sample["true_ddf"].shape == (1, 3, *SAMPLE_SHAPE)
    fixed_labels = sample["fixed_labels"].as_tensor()[None]
    moving_labels = sample["moving_labels"].as_tensor()[None]
    with torch.no_grad():
        recovered = warp(moving_labels, sample["true_ddf"], mode="nearest")
    assert float(mean_dice(moving_labels, fixed_labels)) < 0.85
    assert float(mean_dice(recovered, fixed_labels)) > 0.97  # true_ddf registers moving to fixed

    paths = sample["paths"]
    out = tmp_path / "out"
    result = api.register(paths["fixed"], paths["moving"], "svf_optim", fixed_labels=paths["fixed_labels"],
                          moving_labels=paths["moving_labels"], true_ddf=sample["true_ddf"], device="cpu",
                          output_dir=out, qc=False, levels=(4,), iterations=(30,))
    m = result.metrics
    assert m["dice_after"]["mean"] > m["dice_before"]["mean"] + 0.03
    assert m["epe_foreground_mm"] < 0.8 * m["epe_foreground_before_mm"]
    assert m["folding_percent"] < 0.1
    assert sorted(p.name for p in out.iterdir()) == ["ddf.nii.gz", "summary.json",
                                                    "warped.nii.gz", "warped_labels.nii.gz"]


def test_a_t2_like_moving_image_given_to_a_t1_model_is_reported(tmp_path):
    """Issue 15's silent cross-contrast failure: vxm_prob (trained on T1 contrast) given a CSF-bright moving image
    makes the pair worse (Dice falls); the contrast-independent NMI check says so instead of staying silent."""
    from monai_diffreg import DissimilarityWarning, register

    paths = sample_paths()
    moving = nib.load(paths["moving"])
    data = np.asarray(moving.dataobj).astype(np.float32)
    brain = data > 0.05 * data.max()
    nib.save(nib.Nifti1Image(np.where(brain, data.max() - data, 0).astype(np.float32), moving.affine),
             tmp_path / "t2_like.nii.gz")
    with pytest.warns(DissimilarityWarning, match="normalised mutual information"):
        result = register(paths["fixed"], tmp_path / "t2_like.nii.gz", "vxm_prob", fixed_labels=paths["fixed_labels"],
                          moving_labels=paths["moving_labels"], device="cpu")
    assert result.metrics["dice_after"]["mean"] < result.metrics["dice_before"]["mean"]  # it really got worse
    assert result.metrics["similarity"]["nmi_after"] < result.metrics["similarity"]["nmi_before"]
