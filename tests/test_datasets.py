"""Tests of monai_diffreg.datasets on the real shared data (skipped when ../shared is absent)."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_diffreg.datasets import (
    ASEG_CEREBRAL_CORTEX,
    ASEG_CEREBRAL_WHITE_MATTER,
    ASEG_GREY_MATTER,
    ASEG_WHITE_MATTER,
    NIIVUE_FILES,
    VOXELMORPH_DIRECTION,
    VOXELMORPH_LABELS,
    VOXELMORPH_ORIENTATION,
    aseg_to_tissue,
    destrieux_to_aseg,
    load_dipy_slice,
    load_elastix_2d,
    load_mni152,
    load_niivue_subject,
    load_voxelmorph_labels,
    load_voxelmorph_scan,
    tissue_brain_mask,
    voxelmorph_affine,
)


@pytest.fixture(scope="module")
def scan(shared_data):
    return load_voxelmorph_scan(shared_data / "voxelmorph" / "test_scan.npz")


@pytest.fixture(scope="module")
def mni(shared_data):
    return load_mni152(shared_data / "mni152_2009a")


def test_voxelmorph_labels_match_file(shared_data):
    assert load_voxelmorph_labels(shared_data / "voxelmorph" / "labels.npz") == VOXELMORPH_LABELS
    assert len(VOXELMORPH_LABELS) == 30


def test_voxelmorph_scan_shapes_and_affine(scan):
    image, labels = scan
    assert image.shape == labels.shape == (1, 160, 192, 224)
    assert image.dtype == labels.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.max()) > 0.9
    assert torch.equal(labels, labels.round())
    codes = set(torch.unique(labels).int().tolist())
    assert len(codes) == 46 and set(VOXELMORPH_LABELS) <= codes
    assert torch.equal(image.affine, labels.affine)
    assert nib.aff2axcodes(image.affine.numpy()) == VOXELMORPH_ORIENTATION == ("L", "I", "A")
    np.testing.assert_allclose(image.pixdim.numpy(), [1.0, 1.0, 1.0])
    # the array centre sits at the RAS origin
    np.testing.assert_allclose(image.affine.numpy() @ [79.5, 95.5, 111.5, 1.0], [0, 0, 0, 1])


def test_voxelmorph_affine_maps_axes_to_their_directions():
    affine = voxelmorph_affine((3, 5, 7))
    origin = affine @ [1, 2, 3, 1]
    np.testing.assert_allclose(origin, [0, 0, 0, 1])
    np.testing.assert_allclose(affine @ [2, 2, 3, 1] - origin, [-1, 0, 0, 0])  # axis 0 -> Left (-x)
    np.testing.assert_allclose(affine @ [1, 3, 3, 1] - origin, [0, 0, -1, 0])  # axis 1 -> Inferior (-z)
    np.testing.assert_allclose(affine @ [1, 2, 4, 1] - origin, [0, 1, 0, 0])  # axis 2 -> Anterior (+y)


def _ras_centroid(labels: np.ndarray, affine: np.ndarray, codes) -> np.ndarray:
    return affine[:3, :3] @ np.array(ndimage.center_of_mass(np.isin(labels, codes))) + affine[:3, 3]


def _score_against_mni(vol, brain, affine, mni_image, mni_mask, mni_affine, step=3):
    """NCC with the skull-stripped template and Dice of brain masks, after resampling the
    scan (placed in RAS by ``affine``) onto every ``step``-th template voxel, with brain
    centres of mass aligned."""
    idx = np.stack(np.meshgrid(*[np.arange(0, n, step) for n in mni_image.shape], indexing="ij")).reshape(3, -1)
    world = mni_affine[:3, :3] @ idx + mni_affine[:3, 3:]
    shift = _ras_centroid(brain, affine, [1]) - _ras_centroid(mni_mask, mni_affine, [1])
    inv = np.linalg.inv(affine)
    coords = inv[:3, :3] @ (world + shift[:, None]) + inv[:3, 3:]
    sub = (slice(None, None, step),) * 3
    fixed, fixed_mask = mni_image[sub].ravel(), mni_mask[sub].ravel() > 0
    warped = ndimage.map_coordinates(vol, coords, order=1)
    warped_mask = ndimage.map_coordinates(brain.astype(np.float32), coords, order=1) > 0.5
    a, b = fixed - fixed.mean(), warped - warped.mean()
    ncc = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    dice = float(2 * (fixed_mask & warped_mask).sum() / (fixed_mask.sum() + warped_mask.sum()))
    return ncc, dice


@pytest.mark.slow
def test_voxelmorph_orientation_proof(scan, mni):
    """The documented orientation is the one that matches the MNI template.

    Candidates: the README's axis assignment (axis 0 left-right, 1 superior-inferior,
    2 anterior-posterior) with each of the 8 sign choices. The template is left-right
    symmetric, so image similarity decides the superior-inferior and anterior-posterior
    signs (by a clear margin) and ties with the left-right mirror; the hemisphere labels
    decide the left-right sign.
    """
    image, labels = scan
    vol, seg = image[0].numpy(), labels[0].numpy()
    brain = (seg > 0).astype(np.float32)
    mni_image, mni_mask, mni_affine = mni["image"][0].numpy(), mni["mask"][0].numpy(), mni["image"].affine.numpy()
    chosen_signs = tuple(int(VOXELMORPH_DIRECTION[:, j].sum()) for j in range(3))  # (-1, -1, +1)
    scores = {}
    for signs in itertools.product((1, -1), repeat=3):
        direction = np.zeros((3, 3))
        direction[0, 0], direction[2, 1], direction[1, 2] = signs  # x<-axis 0, z<-axis 1, y<-axis 2
        scores[signs] = _score_against_mni(vol, brain, voxelmorph_affine(vol.shape, direction), mni_image, mni_mask, mni_affine)
    best_ncc, best_dice = scores[chosen_signs]
    mirror = (-chosen_signs[0], *chosen_signs[1:])
    for signs, (ncc, dice) in scores.items():
        if signs == chosen_signs:
            continue
        if signs == mirror:  # symmetric template: a tie
            assert abs(ncc - best_ncc) < 0.01 and abs(dice - best_dice) < 0.01
        else:
            assert best_ncc > ncc + 0.05, (signs, scores)
            assert best_dice > dice + 0.05, (signs, scores)
    assert best_ncc > 0.85 and best_dice > 0.85
    # anatomy under the chosen affine (RAS: x = right, y = anterior, z = superior)
    affine = image.affine.numpy()
    left_wm, right_wm = _ras_centroid(seg, affine, [2]), _ras_centroid(seg, affine, [41])
    assert left_wm[0] < right_wm[0] - 40  # Left-Cerebral-White-Matter on the left
    assert _ras_centroid(seg, affine, [3])[0] < _ras_centroid(seg, affine, [42])[0]  # cortex too
    cerebrum, cerebellum = _ras_centroid(seg, affine, [2, 41]), _ras_centroid(seg, affine, [8, 47])
    assert cerebellum[2] < cerebrum[2] - 30 and cerebellum[1] < cerebrum[1] - 30  # inferior and posterior


def test_aseg_to_tissue():
    seg = torch.tensor([[0.0, 2.0, 3.0, 41.0, 4.0], [42.0, 17.0, 8.0, 7.0, 16.0]])
    np.testing.assert_array_equal(aseg_to_tissue(seg).numpy(), [[0, 2, 1, 2, 0], [1, 1, 1, 2, 2]])
    cerebral = aseg_to_tissue(seg, ASEG_CEREBRAL_CORTEX, ASEG_CEREBRAL_WHITE_MATTER)
    np.testing.assert_array_equal(cerebral.numpy(), [[0, 2, 1, 2, 0], [1, 0, 0, 0, 0]])
    assert not set(ASEG_GREY_MATTER) & set(ASEG_WHITE_MATTER)
    assert set(ASEG_CEREBRAL_CORTEX) < set(ASEG_GREY_MATTER) and set(ASEG_CEREBRAL_WHITE_MATTER) < set(ASEG_WHITE_MATTER)


@pytest.mark.slow
def test_aseg_to_tissue_keeps_metadata(scan):
    tissue = aseg_to_tissue(scan[1])
    assert torch.equal(tissue.affine, scan[1].affine)
    assert set(torch.unique(tissue).tolist()) == {0.0, 1.0, 2.0}


@pytest.mark.slow
def test_load_mni152(mni, shared_data):
    header = nib.load(shared_data / "mni152_2009a" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    assert set(mni) == {"image", "gm", "wm", "labels", "mask"}
    for key, value in mni.items():
        assert value.shape == (1, 197, 233, 189) and value.dtype == torch.float32, key
        np.testing.assert_allclose(value.affine.numpy(), header.affine)
        assert 0.0 <= float(value.min()) and float(value.max()) <= 2.0
    assert float(mni["image"].max()) == 1.0
    np.testing.assert_array_equal(np.unique(mni["labels"].numpy()), [0, 1, 2])
    np.testing.assert_array_equal(np.unique(mni["mask"].numpy()), [0, 1])
    gm, wm, labels = mni["gm"].numpy(), mni["wm"].numpy(), mni["labels"].numpy()
    # the labelling rule: most probable of background, GM, WM
    assert np.all(labels[wm > 0.5] == 2) and np.all(labels[gm > 0.5] == 1)
    assert np.all(labels[gm + wm < 0.5] == 0)
    # skull stripped: nothing outside the mask, all tissue inside it, a brain-sized mask
    assert float(mni["image"][mni["mask"] == 0].abs().max()) == 0.0
    assert np.all(mni["mask"].numpy()[labels > 0] == 1)
    assert 1.4e6 < float(mni["mask"].sum()) < 2.2e6  # mm^3: an adult brain with CSF
    raw = load_mni152(shared_data / "mni152_2009a", skull_strip=False)
    assert float(raw["image"][mni["mask"] == 0].max()) > 0.5  # the skull is still there
    np.testing.assert_allclose(raw["image"].numpy() * 255, np.asanyarray(header.dataobj)[None], atol=1e-3)


def test_tissue_brain_mask_steps():
    """Threshold (>=), holes filled, then the optional closing, dilation and smoothing (no data needed)."""
    grid = np.indices((21, 21, 21)) - 10
    radius = np.sqrt((grid**2).sum(0))
    shell = np.where((radius >= 5) & (radius <= 8), 0.6, 0.0)  # tissue around an enclosed "ventricle"
    filled = tissue_brain_mask(shell, 0.6)
    np.testing.assert_array_equal(filled, radius <= 8)
    assert not tissue_brain_mask(shell, 0.61).any()
    np.testing.assert_array_equal(tissue_brain_mask(shell, 0.6, dilation_iterations=1),
                                  ndimage.binary_dilation(radius <= 8))
    opened = shell.copy()
    opened[10, 10, 15:19] = 0.0  # a one-voxel channel through the shell: the hole is no longer enclosed
    assert not tissue_brain_mask(opened, 0.6)[10, 10, 10]
    assert tissue_brain_mask(opened, 0.6, closing_iterations=1)[10, 10, 10]  # closing seals it, then it fills
    smooth = tissue_brain_mask(shell, 0.2, smoothing_sigma=1.5)
    assert smooth[radius <= 8].all() and smooth.sum() > (radius <= 8).sum()  # smoothing reaches past the shell


def test_load_elastix_2d(shared_data):
    pair = load_elastix_2d(shared_data / "elastix_2d")
    assert set(pair) == {"fixed", "moving", "fixed_mask", "moving_mask"}
    for key, value in pair.items():
        assert value.shape == (1, 256, 256) and value.dtype == torch.float32, key
        np.testing.assert_allclose(value.affine.numpy(), np.diag([-1.0, -1.0, 1.0]))  # ITK LPS identity -> RAS
    for key in ("fixed", "moving"):
        assert float(pair[key].min()) == 0.0 and float(pair[key].max()) == 1.0
    for key in ("fixed_mask", "moving_mask"):
        np.testing.assert_array_equal(np.unique(pair[key].numpy()), [0, 1])
    # array axis 0 is ITK's x (MONAI's reader): the transpose of the file's row-major (y, x)
    # raster, read here without ITK (uncompressed MetaImage: the header, then 256*256 bytes)
    raw = (shared_data / "elastix_2d" / "CT_2D_head_fixed_mask.mha").read_bytes()[-256 * 256 :]
    np.testing.assert_array_equal(pair["fixed_mask"][0].numpy(), np.frombuffer(raw, np.uint8).reshape(256, 256).T)
    unscaled = load_elastix_2d(shared_data / "elastix_2d", normalise=False)
    assert float(unscaled["fixed"].max()) == 217.0


def test_load_dipy_slice(shared_data):
    image = load_dipy_slice(shared_data / "dipy_2d" / "t1_coronal_slice.npy")
    assert image.shape == (1, 256, 256) and image.dtype == torch.float32
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    np.testing.assert_allclose(image.affine.numpy(), np.eye(3))


@pytest.mark.parametrize(
    "loader, name",
    [
        (load_voxelmorph_scan, "path"),
        (load_voxelmorph_labels, "path"),
        (load_mni152, "folder"),
        (load_elastix_2d, "folder"),
        (load_dipy_slice, "path"),
        (load_niivue_subject, "folder"),
    ],
)
def test_missing_files(loader, name, tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{loader.__name__}\(\): '{name}' does not exist"):
        loader(tmp_path / "nothing_here")


def test_mni152_missing_member(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_mni152\(\): 'folder' does not exist: .*mni_icbm152_t1"):
        load_mni152(tmp_path)


def test_load_elastix_2d_constant_image(shared_data, tmp_path):
    import shutil

    import itk

    for key in ("moving", "fixed_mask", "moving_mask"):
        shutil.copy(shared_data / "elastix_2d" / f"CT_2D_head_{key}.mha", tmp_path)
    itk.imwrite(itk.image_from_array(np.full((8, 8), 7, dtype=np.int16)), str(tmp_path / "CT_2D_head_fixed.mha"))
    with pytest.raises(ValueError, match=r"load_elastix_2d\(\): 'fixed' is constant \(7.0\)"):
        load_elastix_2d(tmp_path)
    assert float(load_elastix_2d(tmp_path, normalise=False)["fixed"].max()) == 7.0


def test_destrieux_to_aseg_maps_cortex_parcels_per_hemisphere():
    codes = torch.tensor([0, 2, 3, 11100, 11101, 11175, 11199, 12100, 12175, 12199, 11200, 12200, 1035, 41, 42])
    expected = torch.tensor([0, 2, 3, 3, 3, 3, 3, 42, 42, 42, 11200, 12200, 1035, 41, 42])
    assert torch.equal(destrieux_to_aseg(codes), expected)
    assert torch.equal(destrieux_to_aseg(codes.float()), expected.float())


def test_load_niivue_subject(shared_data):
    folder = shared_data / "niivue_freesurfer"
    image, labels = load_niivue_subject(folder)
    header = nib.load(folder / NIIVUE_FILES["image"])
    raw_image = np.asanyarray(header.dataobj)
    raw_labels = np.asanyarray(nib.load(folder / NIIVUE_FILES["labels"]).dataobj)
    assert image.shape == labels.shape == (1, 256, 256, 256)
    assert image.dtype == labels.dtype == torch.float32
    # the file's voxel axes (LIA) with the header's affine, not reoriented
    np.testing.assert_allclose(image.affine.numpy(), header.affine)
    assert torch.equal(image.affine, labels.affine)
    assert nib.aff2axcodes(image.affine.numpy()) == ("L", "I", "A")
    np.testing.assert_allclose(image[0].numpy(), raw_image / raw_image.max())
    assert float(image.max()) == 1.0 and float(image.min()) == 0.0
    # aseg-style cortex: every Destrieux parcel of a hemisphere becomes 3 / 42, the rest is kept
    codes = set(torch.unique(labels).int().tolist())
    assert not any(11100 <= c < 12200 for c in codes)
    assert set(VOXELMORPH_LABELS) <= codes
    lab = labels[0].numpy()
    assert (lab == 3).sum() == ((raw_labels >= 11100) & (raw_labels <= 11199)).sum() > 0
    assert (lab == 42).sum() == ((raw_labels >= 12100) & (raw_labels <= 12199)).sum() > 0
    kept = (raw_labels < 11100) | (raw_labels > 12199)
    np.testing.assert_array_equal(lab[kept], raw_labels[kept])
    # left cortex (3) lies at negative RAS x relative to right cortex (42)
    x = [image.affine.numpy()[0, :3] @ np.array(ndimage.center_of_mass(lab == c)) for c in (3, 42)]
    assert x[0] < x[1]
