"""Tests for monai_diffreg.io: atomic writers and ITK displacement fields that ITK applies like our warp."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from monai_diffreg.functional import warp
from monai_diffreg.io import (
    apply_displacement_field_itk,
    atomic_path,
    ddf_to_itk_field,
    itk_field_to_ddf,
    load_displacement_field,
    resample_to_fixed,
    save_displacement_field,
    save_image,
    save_json,
)
from monai_diffreg.transforms.deformation import deformation_from_params, sample_smooth_velocity_params
from monai_diffreg.transforms.synthesis import random_label_map


def oblique_affine(spacing, angles_deg, origin, flip_first=True, centre_of=None):
    """Voxel-to-RAS affine: rotation x diag(flip) x spacing (LAS-like when flip_first).

    With ``centre_of=shape``, ``origin`` is where the grid's centre voxel lands instead of voxel 0.
    """
    ndim = len(spacing)
    if ndim == 3:
        rot = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    else:
        c, s = np.cos(np.deg2rad(angles_deg[0])), np.sin(np.deg2rad(angles_deg[0]))
        rot = np.array([[c, -s], [s, c]])
    flip = np.diag([-1.0 if flip_first else 1.0] + [1.0] * (ndim - 1))
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = rot @ flip @ np.diag(spacing)
    affine[:ndim, ndim] = origin
    if centre_of is not None:
        affine[:ndim, ndim] -= affine[:ndim, :ndim] @ ((np.asarray(centre_of) - 1) / 2)
    return affine


def itk_nearest(moving, reference, field):
    """ITK's nearest-neighbour resampling of a label file through a field file (the independent reference)."""
    return apply_displacement_field_itk(moving, reference, field, mode="nearest").astype(np.int16)


def random_labels(shape, seed=0):
    """Multi-label map of smooth random blobs (many label boundaries), int16 numpy."""
    gen = torch.Generator().manual_seed(seed)
    return random_label_map(shape, num_labels=6, blob_spacing=6.0, generator=gen)[0, 0].numpy().astype(np.int16)


def smooth_ddf(shape, amplitude, seed=0):
    """Smooth diffeomorphic displacement (1, D, *S) in voxels, components up to ``amplitude``."""
    gen = torch.Generator().manual_seed(seed)
    params = sample_smooth_velocity_params(shape, control_spacing=6.0, max_displacement=amplitude, generator=gen)
    return deformation_from_params(params, dtype=torch.float64)["ddf"]


@pytest.mark.parametrize("ndim", [2, 3])
def test_itk_applies_saved_field_like_our_warp_same_grid(tmp_path, ndim):
    shape = (26, 30, 22) if ndim == 3 else (48, 40)
    spacing = (1.5, 0.9, 2.2) if ndim == 3 else (1.3, 0.8)
    angles = (12, -20, 8) if ndim == 3 else (17,)
    affine = oblique_affine(spacing, angles, origin=(10.0, -25.0, 7.0)[:ndim])
    labels = random_labels(shape)
    ddf = smooth_ddf(shape, amplitude=3.0)
    save_image(labels, affine, tmp_path / "moving_labels.nii.gz", label=True)
    save_image(np.zeros(shape, np.int16), affine, tmp_path / "fixed.nii.gz", label=True)
    save_displacement_field(ddf, affine, tmp_path / "ddf.nii.gz")

    ours = warp(torch.as_tensor(labels, dtype=torch.float64)[None, None], ddf, mode="nearest", padding_mode="zeros")
    ref = itk_nearest(tmp_path / "moving_labels.nii.gz", tmp_path / "fixed.nii.gz", tmp_path / "ddf.nii.gz")
    agreement = np.mean(ours[0, 0].numpy().astype(np.int16) == ref)
    moved = np.mean(labels != ref)  # the field really moves labels: the check can fail
    assert moved > 0.02
    assert agreement >= 0.999, f"ITK and warp agree on {agreement:.4%} of voxels"


def test_itk_applies_saved_field_to_original_moving_grid(tmp_path):
    """Moving on another grid (RAS, other spacing/shape): the field maps the ORIGINAL moving file."""
    fixed_shape, moving_shape = (26, 30, 22), (20, 34, 25)
    fixed_affine = oblique_affine((1.5, 0.9, 2.2), (12, -20, 8), (1.0, 2.0, 3.0), centre_of=fixed_shape)
    moving_affine = oblique_affine((1.7, 1.0, 1.6), (-5, 4, 30), (2.0, 0.0, 4.0), flip_first=False,
                                   centre_of=moving_shape)
    labels = random_labels(moving_shape, seed=1)
    ddf = smooth_ddf(fixed_shape, amplitude=2.5, seed=1)
    save_image(labels, moving_affine, tmp_path / "moving_labels.nii.gz", label=True)
    save_image(np.zeros(fixed_shape, np.int16), fixed_affine, tmp_path / "fixed.nii.gz", label=True)
    save_displacement_field(ddf, fixed_affine, tmp_path / "ddf.nii.gz")

    moving = torch.as_tensor(labels, dtype=torch.float32)[None, None]
    ours = resample_to_fixed(moving, moving_affine, fixed_affine, fixed_shape, ddf, mode="nearest")
    ref = itk_nearest(tmp_path / "moving_labels.nii.gz", tmp_path / "fixed.nii.gz", tmp_path / "ddf.nii.gz")
    assert np.mean(ref > 0) > 0.1  # the grids overlap: a real comparison
    agreement = np.mean(ours[0, 0].numpy().astype(np.int16) == ref)
    assert agreement >= 0.999, f"ITK and resample_to_fixed agree on {agreement:.4%} of voxels"

    # the same grid-to-grid composition with a zero field is plain resampling: compare with ITK's identity
    identity = resample_to_fixed(moving, moving_affine, fixed_affine, fixed_shape, None, mode="nearest")
    save_displacement_field(torch.zeros(1, 3, *fixed_shape), fixed_affine, tmp_path / "zero.nii.gz")
    ref0 = itk_nearest(tmp_path / "moving_labels.nii.gz", tmp_path / "fixed.nii.gz", tmp_path / "zero.nii.gz")
    assert np.mean(identity[0, 0].numpy().astype(np.int16) == ref0) >= 0.999


def test_itk_field_on_real_files(tmp_path, shared_data):
    """nibabel's LAS 2 mm head (fixed) and its RAS 4 mm resampled copy (moving), intensities quantised into labels."""
    fixed_img = nib.load(shared_data / "nibabel_tiny" / "anatomical.nii")
    moving_img = nib.load(shared_data / "nibabel_tiny" / "reoriented_anat_moved.nii")
    moving = np.asarray(moving_img.dataobj, dtype=np.float64)
    labels = np.digitize(moving, np.quantile(moving[moving > 0], [0.2, 0.4, 0.6, 0.8])).astype(np.int16)
    save_image(labels, moving_img.affine, tmp_path / "moving_labels.nii.gz", label=True)
    fixed_shape = fixed_img.shape
    ddf = smooth_ddf(fixed_shape, amplitude=2.0, seed=2)
    save_displacement_field(ddf, fixed_img.affine, tmp_path / "ddf.nii.gz")
    ours = resample_to_fixed(torch.as_tensor(labels, dtype=torch.float32)[None, None], moving_img.affine,
                             fixed_img.affine, fixed_shape, ddf, mode="nearest")
    ref = itk_nearest(tmp_path / "moving_labels.nii.gz", shared_data / "nibabel_tiny" / "anatomical.nii",
                      tmp_path / "ddf.nii.gz")
    assert len(np.unique(ref)) == 5
    assert np.mean(ours[0, 0].numpy().astype(np.int16) == ref) >= 0.999


@pytest.mark.parametrize("ndim", [2, 3])
def test_displacement_field_round_trip(tmp_path, ndim):
    shape = (7, 6, 5) if ndim == 3 else (9, 8)
    affine = oblique_affine((2.0, 1.5, 3.0)[:ndim], (10, -20, 15)[: 3 if ndim == 3 else 1], (1.0, 2.0, 3.0)[:ndim])
    ddf = smooth_ddf(shape, amplitude=1.5).float()
    save_displacement_field(ddf, affine, tmp_path / "ddf.nii.gz")
    back, back_affine = load_displacement_field(tmp_path / "ddf.nii.gz")
    torch.testing.assert_close(back, ddf, atol=1e-4, rtol=1e-4)
    expected = np.eye(4)
    idx = [0, 1, 2, 3] if ndim == 3 else [0, 1, 3]
    expected[np.ix_(idx, idx)] = affine
    np.testing.assert_allclose(back_affine, expected, atol=1e-5)
    # the file is a NIfTI vector image in LPS millimetres
    header = nib.load(tmp_path / "ddf.nii.gz").header
    assert header.get_intent()[0] == "vector"
    np.testing.assert_allclose(itk_field_to_ddf(ddf_to_itk_field(ddf, affine), affine), ddf[0].double().numpy(), atol=1e-10)


def test_itk_field_units_hand_computed():
    """A 1-voxel shift along axis 0 of a 2 mm LAS grid is +2 mm along L in LPS: ITK's x component is +2."""
    affine = np.diag([-2.0, 3.0, 1.0, 1.0])
    ddf = torch.zeros(1, 3, 2, 2, 2)
    ddf[:, 0] = 1.0
    ddf[:, 1] = 1.0
    field = ddf_to_itk_field(ddf, affine)
    np.testing.assert_allclose(field[:, 0, 0, 0], [2.0, -3.0, 0.0])  # RAS (-2, +3, 0) -> LPS (+2, -3, 0)


def test_save_image_dtypes_and_affine(tmp_path):
    affine = oblique_affine((1.0, 2.0, 3.0), (5, 0, 0), (0.0, 0.0, 0.0))
    labels = torch.tensor([[0.0, 1.0], [2.0, 300.0]]).view(1, 1, 2, 2, 1).expand(1, 1, 2, 2, 3)
    save_image(labels, affine, tmp_path / "l.nii.gz", label=True)
    img = nib.load(tmp_path / "l.nii.gz")
    assert img.get_data_dtype() == np.int16 and img.shape == (2, 2, 3)
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    save_image(np.ones((4, 5), np.float64), np.diag([2.0, 3.0, 1.0]), tmp_path / "i2d.nii.gz")
    img2 = nib.load(tmp_path / "i2d.nii.gz")
    assert img2.get_data_dtype() == np.float32 and img2.shape == (4, 5)
    np.testing.assert_allclose(img2.affine, np.diag([2.0, 3.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"save_image\(\): 'image' is saved as a label map but holds non-integer"):
        save_image(np.full((2, 2, 2), 0.5), np.eye(4), tmp_path / "bad.nii.gz", label=True)
    with pytest.raises(ValueError, match=r"save_image\(\): 'affine' must be a finite \(4, 4\)"):
        save_image(np.zeros((2, 2, 2)), np.eye(3), tmp_path / "bad.nii.gz")
    assert not (tmp_path / "bad.nii.gz").exists()


def test_atomic_writers_leave_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "warped.nii.gz"
    target.write_bytes(b"old")

    def failing_write(self, data):
        with open(self, "wb") as f:
            f.write(data[:10])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_image(np.zeros((3, 3, 3), np.float32), np.eye(4), target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warped.nii.gz"]

    with pytest.raises(TypeError, match="cannot serialise"):
        save_json({"a": object()}, tmp_path / "summary.json")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warped.nii.gz"]


def test_save_json_converts_values(tmp_path):
    save_json({"a": np.float32(1.5), "b": torch.tensor([1, 2]), "c": float("nan"), "d": {"e": np.int64(3)}},
              tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": 1.5, "b": [1, 2], "c": None, "d": {"e": 3}}


def test_bad_field_input(tmp_path):
    with pytest.raises(ValueError, match=r"save_displacement_field\(\): 'ddf' must have shape"):
        save_displacement_field(torch.zeros(1, 2, 4, 4, 4), np.eye(4), tmp_path / "d.nii.gz")
    with pytest.raises(ValueError, match=r"save_displacement_field\(\): 'ddf' contains NaN"):
        save_displacement_field(torch.full((1, 3, 2, 2, 2), float("nan")), np.eye(4), tmp_path / "d.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"load_displacement_field\(\): 'path'"):
        load_displacement_field(tmp_path / "missing.nii.gz")
    (tmp_path / "garbage.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"load_displacement_field\(\): cannot read"):
        load_displacement_field(tmp_path / "garbage.nii.gz")
    save_image(np.zeros((3, 3, 3), np.float32), np.eye(4), tmp_path / "scalar.nii.gz")
    with pytest.raises(ValueError, match="must be a NIfTI vector image of shape"):
        load_displacement_field(tmp_path / "scalar.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.nii.gz", "scalar.nii.gz"]


def test_write_nifti_gzip_is_standard_and_lossless(tmp_path):
    """ISA-L's gzip output reads back bit-exact with Python's gzip (nibabel) and with ITK."""
    import gzip

    import itk

    from monai_diffreg.io import write_nifti

    data = np.random.default_rng(0).normal(size=(9, 8, 7)).astype(np.float32)
    image = nib.Nifti1Image(data, np.diag([1.5, 1.0, 2.0, 1.0]))
    path = write_nifti(image, tmp_path / "x.nii.gz")
    with gzip.open(path, "rb") as stream:
        assert stream.read() == image.to_bytes()
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), data)
    # ITK reads (z, y, x) arrays of the same values
    np.testing.assert_array_equal(itk.array_from_image(itk.imread(str(path))), data.transpose(2, 1, 0))
    write_nifti(image, tmp_path / "y.nii")
    assert (tmp_path / "y.nii").read_bytes() == image.to_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nii.gz", "y.nii"]  # no temporary left
