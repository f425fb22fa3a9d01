"""The validation case families on the validation subject ``niivue_freesurfer/`` (benchmarks.cases).

Cases are built at quick scale (0.5: 2 mm, 80x96x112) through ``get_case`` as ``benchmarks.run``
builds them, with the evaluation-only ``test_scan`` loader made to fail: these families must not
read it, not even for pose. Skipped without the shared data.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import benchmarks.cases as cases
from benchmarks.evaluate import evaluate
from benchmarks.run import build_parser
from monai_diffreg.datasets import NIIVUE_FILES, VOXELMORPH_LABELS, aseg_to_tissue, destrieux_to_aseg

SCALE = 0.5
SEED = 100
QUICK_SHAPE = tuple(n // 2 for n in cases.NIIVUE_CROP)


@pytest.fixture(scope="module")
def built(shared_data, tmp_path_factory):
    """``{name: case}`` of ``niivue_synthetic_s100``, ``niivue_mni`` and ``niivue_2d``'s slices at scale 0.5."""

    def no_test_scan(*args, **kwargs):
        raise AssertionError("a niivue case read voxelmorph/test_scan (evaluation-only data)")

    cache = tmp_path_factory.mktemp("cases")
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cases, "load_voxelmorph_scan", no_test_scan)
        for group, name in cases.case_names(["niivue_synthetic", "niivue_mni", "niivue_2d"], [SEED]):
            out[name] = torch.load(cases.get_case(shared_data, group, name, SCALE, cache), weights_only=True)
    return out


@pytest.fixture(scope="module")
def subject(shared_data):
    """The raw files: image (uint8 0-125) and aparc.a2009s+aseg codes, 256^3 LIA."""
    folder = shared_data / "niivue_freesurfer"
    image = nib.load(folder / NIIVUE_FILES["image"])
    labels = np.asanyarray(nib.load(folder / NIIVUE_FILES["labels"]).dataobj)
    return {"image": np.asanyarray(image.dataobj).astype(np.float64), "labels": labels, "affine": image.affine}


def test_groups_are_validation_only_and_selectable_by_run():
    for group in ("niivue_synthetic", "niivue_mni"):
        assert group in cases.VALIDATION_GROUPS and group not in cases.GROUPS
        assert group in cases.CASE_VERSIONS and cases.CASE_AXCODES[group] == "LIA"
        assert build_parser().parse_args(["--cases", group]).cases == [group]
    assert cases.case_names(["niivue_synthetic", "niivue_mni"], [100, 101]) == [
        ("niivue_synthetic", "niivue_synthetic_s100"), ("niivue_synthetic", "niivue_synthetic_s101"),
        ("niivue_mni", "niivue_mni"),
    ]
    assert cases.family("niivue_synthetic_s101") == "niivue_synthetic" and cases.family("niivue_mni") == "niivue_mni"


def test_brain_box_is_centred_and_must_hold_the_mask():
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[4:10, 2:6, 11:19] = True
    assert cases._brain_box(mask, (10, 8, 8)) == (slice(2, 12), slice(0, 8), slice(11, 19))  # clipped to the array
    with pytest.raises(ValueError, match="does not fit"):
        cases._brain_box(mask, (4, 8, 8))


def test_case_axcodes_is_the_header_orientation(subject):
    assert "".join(nib.aff2axcodes(subject["affine"])) == cases.CASE_AXCODES["niivue_synthetic"]


@pytest.mark.parametrize("name", ["niivue_synthetic_s100", "niivue_mni"])
def test_shapes_and_scored_labels_present(built, name):
    case = built[name]
    for key in ("fixed", "moving", "fixed_labels", "moving_labels"):
        assert tuple(case[key].shape) == (1, 1, *QUICK_SHAPE), key
    assert case["spacing"] == [1 / SCALE] * 3
    expected = list(VOXELMORPH_LABELS) if name.startswith("niivue_synthetic") else [1, 2]
    assert case["labels"] == expected
    for key in ("fixed_labels", "moving_labels"):
        present = set(torch.unique(case[key]).int().tolist())
        assert set(expected) <= present, (key, sorted(set(expected) - present))
    assert 0.0 <= float(case["moving"].min()) and float(case["moving"].max()) <= 1.0


@pytest.mark.parametrize("name", ["niivue_synthetic_s100", "niivue_mni"])
def test_fixed_is_the_niivue_subject_crop(built, subject, name):
    """fixed = 2x2x2 means of norm.mgz / max over a centred crop of NIIVUE_CROP (no test_scan: see ``built``)."""
    case = built[name]
    assert case["settings"]["subject"] == "niivue_freesurfer"
    start = case["settings"]["crop_start"]
    box = tuple(slice(a, a + n) for a, n in zip(start, cases.NIIVUE_CROP))
    brain = np.argwhere(subject["image"] > 0)
    lo, hi = brain.min(0), brain.max(0) + 1
    assert np.all(np.asarray(start) <= lo) and np.all(np.asarray(start) + cases.NIIVUE_CROP >= hi)  # all the brain
    np.testing.assert_allclose(np.asarray(start) + np.asarray(cases.NIIVUE_CROP) / 2, (lo + hi) / 2, atol=1)  # centred
    crop = subject["image"][box] / subject["image"].max()
    pooled = crop.reshape(QUICK_SHAPE[0], 2, QUICK_SHAPE[1], 2, QUICK_SHAPE[2], 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(case["fixed"][0, 0].numpy(), pooled, atol=1e-5)
    # nearest-exact downsampling by 2 keeps the odd voxels (each 2x2x2 block centre rounds up)
    aseg = destrieux_to_aseg(torch.as_tensor(subject["labels"][box][1::2, 1::2, 1::2].astype(np.float32)))
    if name == "niivue_mni":
        aseg = aseg_to_tissue(aseg)
    assert torch.equal(case["fixed_labels"][0, 0], aseg)


def test_niivue_synthetic_true_field_registers_the_pair(built):
    case = built["niivue_synthetic_s100"]
    assert case["true_ddf"] is not None and tuple(case["true_ddf"].shape) == (1, 3, *QUICK_SHAPE)
    assert case["settings"]["seed"] == SEED
    identity = evaluate(case, torch.zeros_like(case["true_ddf"]), hd95=False)["dice"]
    truth = evaluate(case, case["true_ddf"], hd95=False)["dice"]
    assert identity < 0.75  # a real deformation (measured 0.63)
    assert truth > 0.93 and truth > identity + 0.25  # measured 0.975: the field convention is right
    # the true field's end-point error against itself is 0, against identity a few mm
    assert evaluate(case, case["true_ddf"], hd95=False)["epe"] == pytest.approx(0.0, abs=1e-6)
    assert 1.0 < evaluate(case, torch.zeros_like(case["true_ddf"]), hd95=False)["epe"] < 6.0


def test_niivue_mni_template_is_aligned(built):
    case = built["niivue_mni"]
    assert case["true_ddf"] is None
    assert set(torch.unique(case["moving_labels"]).int().tolist()) <= {0, 1, 2}
    dice = evaluate(case, torch.zeros(1, 3, *QUICK_SHAPE), hd95=False)["dice"]
    assert 0.55 < dice < 0.85  # affine-only GM/WM overlap (measured 0.64): aligned, not yet registered


def test_niivue_2d_slices_are_validation_only():
    assert "niivue_2d" in cases.VALIDATION_GROUPS and "niivue_2d" not in cases.GROUPS
    assert build_parser().parse_args(["--cases", "niivue_2d"]).cases == ["niivue_2d"]
    assert cases.case_names(["niivue_2d"], [0]) == [("niivue_2d", name) for name in cases.NIIVUE_2D_SLICES]
    for name in cases.NIIVUE_2D_SLICES:
        assert cases.family(name) == name and name in cases.CASE_VERSIONS and name not in cases.CASE_AXCODES


@pytest.mark.parametrize("name", list(cases.NIIVUE_2D_SLICES))
def test_niivue_2d_cases_are_slices_of_niivue_mni(built, name):
    """Each 2D pair is the plane of niivue_mni (images and labels alike) at the stated offset from the fixed brain's
    centroid, with labels to score and an inter-subject misalignment left to register."""
    case, volume = built[name], built["niivue_mni"]
    axis, offset_mm = cases.NIIVUE_2D_SLICES[name]
    centroid = np.argwhere(volume["fixed_labels"][0, 0].numpy() > 0).mean(axis=0)[axis]
    index = case["settings"]["index"]
    assert index == round(centroid + offset_mm * SCALE)
    for key in ("fixed", "moving", "fixed_labels", "moving_labels"):
        assert torch.equal(case[key], volume[key].select(axis + 2, index)), key
    assert case["spacing"] == [1 / SCALE] * 2 and case["labels"] == [1, 2] and case["true_ddf"] is None
    for key in ("fixed_labels", "moving_labels"):
        assert {1, 2} <= set(torch.unique(case[key]).int().tolist()), key
    dice = evaluate(case, torch.zeros(1, 2, *case["fixed"].shape[2:]), hd95=False)["dice"]
    assert 0.4 < dice < 0.9, dice  # aligned in 3D, not registered
