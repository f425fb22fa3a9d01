"""The affine stage as an ITK transform file: ``monai_diffreg.io.save_affine_transform`` and ``affine.tfm``.

The reference is ITK itself: a written transform, read by ``itk.transformread`` and applied by
``itk.ResampleImageFilter`` to the moving image file, must reproduce the package's own warp by
``affine_to_ddf(M)``, on oblique, anisotropic, non-RAS grids, in 3D and 2D.
"""

from __future__ import annotations

import json
from pathlib import Path

import itk
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from monai_diffreg import methods
from monai_diffreg.api import OUTPUT_FILES, register
from monai_diffreg.functional import warp
from monai_diffreg.functional.affine import affine_to_ddf
from monai_diffreg.io import (
    AFFINE_TRANSFORM_SUFFIXES,
    load_affine_transform,
    physical_affine_to_voxel,
    resample_to_fixed,
    save_affine_transform,
    save_image,
    voxel_affine_to_physical,
)

LPS = np.diag([-1.0, -1.0, 1.0])


def rotation(angles_deg):
    if len(angles_deg) == 3:
        return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    c, s = np.cos(np.deg2rad(angles_deg[0])), np.sin(np.deg2rad(angles_deg[0]))
    return np.array([[c, -s], [s, c]])


def grid_affine(axes, spacing, angles_deg, centre_mm, shape):
    """Voxel-to-RAS affine: rotation x signed permutation (``axes``: RAS direction of each voxel axis) x spacing.

    ``axes`` columns e.g. LIA: ``[(-1, 0, 0), (0, 0, -1), (0, 1, 0)]``; the grid's centre lands on ``centre_mm``.
    """
    ndim = len(spacing)
    linear = rotation(angles_deg) @ np.array(axes, dtype=np.float64).T @ np.diag(spacing)
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = linear
    affine[:ndim, ndim] = np.asarray(centre_mm) - linear @ ((np.asarray(shape) - 1) / 2)
    return affine


LIA = [(-1, 0, 0), (0, 0, -1), (0, 1, 0)]
PL = [(0, -1), (-1, 0)]  # 2D: axis 0 towards posterior, axis 1 towards left


def oblique_grid(ndim, shape):
    if ndim == 3:
        return grid_affine(LIA, (1.3, 0.9, 1.7), (11, -7, 5), (4.0, -12.0, 9.0), shape)
    return grid_affine(PL, (1.4, 0.8), (15,), (-6.0, 3.0), shape)


def smooth_image(shape, seed=0, n=6):
    """Sum of anisotropic Gaussians of several sizes (float32, values in about [0, 3])."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    image = np.zeros(shape)
    for k in range(n):
        centre = [rng.uniform(0.25 * s, 0.75 * s) for s in shape]
        width = [rng.uniform(0.08 * s, 0.2 * s) for s in shape]
        image += rng.uniform(0.5, 1.5) * np.exp(-sum(((g - c) / w) ** 2 for g, c, w in zip(grids, centre, width)))
    return image.astype(np.float32)


def voxel_matrix(ndim, shape):
    """A known voxel affine: shear/scale/rotation about the grid centre plus a translation (voxels)."""
    if ndim == 3:
        linear = rotation((4, -3, 6)) @ np.array([[1.05, 0.03, 0.0], [0.0, 0.96, -0.04], [0.02, 0.0, 1.02]])
        shift = np.array([1.3, -0.8, 0.6])
    else:
        linear = rotation((7,)) @ np.array([[1.06, 0.04], [-0.02, 0.95]])
        shift = np.array([1.4, -1.1])
    centre = (np.asarray(shape) - 1) / 2
    return np.hstack([linear, (centre - linear @ centre + shift)[:, None]])


def itk_resample(moving_file, reference_file, transform_file):
    """ITK's linear resampling of a moving file through a transform file onto a reference grid (file axes)."""
    moving = itk.imread(str(moving_file), itk.D)
    (transform,) = itk.transformread(str(transform_file))
    ndim = moving.GetImageDimension()
    interpolator = itk.LinearInterpolateImageFunction[type(moving), itk.D].New()
    out = itk.resample_image_filter(moving, transform=transform, interpolator=interpolator, use_reference_image=True,
                                    reference_image=itk.imread(str(reference_file), itk.D), default_pixel_value=0.0)
    return np.transpose(itk.array_from_image(out), tuple(range(ndim - 1, -1, -1)))


def inside(matrix, shape, margin=1.0):
    """Fixed voxels whose sampling point ``M x`` lies at least ``margin`` voxels inside the grid of ``shape``."""
    ddf = affine_to_ddf(torch.as_tensor(matrix, dtype=torch.float64)[None], shape)[0].numpy()
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    mask = np.ones(shape, bool)
    for axis, n in enumerate(shape):
        point = grids[axis] + ddf[axis]
        mask &= (point >= margin) & (point <= n - 1 - margin)
    return mask


@pytest.mark.parametrize("ndim", [3, 2])
def test_itk_applies_saved_affine_like_our_warp(tmp_path, ndim):
    """Oblique, anisotropic, non-RAS grid (LIA / PL): ITK with the file == warp(moving, affine_to_ddf(M))."""
    shape = (22, 26, 18) if ndim == 3 else (40, 34)
    affine = oblique_grid(ndim, shape)
    moving = smooth_image(shape)
    matrix = voxel_matrix(ndim, shape)
    save_image(moving, affine, tmp_path / "moving.nii.gz")
    written = save_affine_transform(torch.as_tensor(matrix, dtype=torch.float32)[None].double(), affine,
                                    tmp_path / "affine.tfm")
    assert written == tmp_path / "affine.tfm"
    assert f"AffineTransform_double_{ndim}_{ndim}" in written.read_text()

    ours = warp(torch.as_tensor(moving, dtype=torch.float64)[None, None],
                affine_to_ddf(torch.as_tensor(matrix)[None], shape), padding_mode="zeros")[0, 0].numpy()
    ref = itk_resample(tmp_path / "moving.nii.gz", tmp_path / "moving.nii.gz", tmp_path / "affine.tfm")
    mask = inside(matrix, shape)
    assert mask.mean() > 0.6
    assert np.abs(moving - ours)[mask].mean() > 0.05  # the transform really moves the image: the check can fail
    np.testing.assert_allclose(ref[mask], ours[mask], atol=2e-4, rtol=0)


def test_saved_affine_is_grid_independent(tmp_path):
    """Moving on its own RAS grid (other spacing, shape): ITK with the file == resample_to_fixed(affine_to_ddf(M))."""
    fixed_shape, moving_shape = (22, 26, 18), (25, 20, 24)
    fixed_affine = oblique_grid(3, fixed_shape)
    moving_affine = grid_affine([(1, 0, 0), (0, 1, 0), (0, 0, 1)], (1.1, 1.4, 1.0), (0, 0, 0), (5.0, -10.0, 8.0),
                                moving_shape)
    moving = smooth_image(moving_shape, seed=3)
    matrix = voxel_matrix(3, fixed_shape)
    save_image(moving, moving_affine, tmp_path / "moving.nii.gz")
    save_image(np.zeros(fixed_shape, np.float32), fixed_affine, tmp_path / "fixed.nii.gz")
    save_affine_transform(matrix, fixed_affine, tmp_path / "affine.tfm")
    ddf = affine_to_ddf(torch.as_tensor(matrix)[None], fixed_shape)
    ours = resample_to_fixed(torch.as_tensor(moving, dtype=torch.float64)[None, None], moving_affine, fixed_affine,
                             fixed_shape, ddf)[0, 0].numpy()
    ref = itk_resample(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz", tmp_path / "affine.tfm")
    # fixed voxels whose moving point lies well inside the moving grid
    points = np.linalg.solve(moving_affine, fixed_affine) @ np.vstack(
        [np.indices(fixed_shape).reshape(3, -1) + ddf[0].numpy().reshape(3, -1), np.ones(np.prod(fixed_shape))])
    mask = np.all((points[:3] >= 1) & (points[:3] <= np.array(moving_shape)[:, None] - 2), axis=0).reshape(fixed_shape)
    assert mask.mean() > 0.4 and np.abs(ours[mask]).mean() > 0.1
    np.testing.assert_allclose(ref[mask], ours[mask], atol=2e-4, rtol=0)


def test_physical_matrix_hand_computed_and_inverse():
    """W = diag(2, 3, 4) + origin; one voxel along i is 2 mm along R, i.e. -2 mm along LPS x."""
    w = np.diag([2.0, 3.0, 4.0, 1.0])
    w[:3, 3] = (10.0, -5.0, 7.0)
    m = np.hstack([np.eye(3), [[1.0], [0.0], [-0.5]]])  # x -> x + (1, 0, -0.5) voxels
    t = voxel_affine_to_physical(m, w)
    expected = np.eye(4)
    expected[:3, 3] = (-2.0, 0.0, -2.0)
    np.testing.assert_allclose(t, expected, atol=1e-12)
    # a scaling by 2 about voxel 0: about the world point of voxel 0 (10, -5, 7) RAS = (-10, 5, 7) LPS
    s = np.hstack([2 * np.eye(3), np.zeros((3, 1))])
    t = voxel_affine_to_physical(torch.as_tensor(s)[None], w)
    np.testing.assert_allclose(t[:3, :3], 2 * np.eye(3), atol=1e-12)
    np.testing.assert_allclose(t[:3, :3] @ [-10.0, 5.0, 7.0] + t[:3, 3], [-10.0, 5.0, 7.0], atol=1e-12)
    # 2D, (4, 4) grid affine accepted: in-plane part, the first two axes flipped
    t2 = voxel_affine_to_physical(np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 2.0]]), w)
    np.testing.assert_allclose(t2, [[1, 0, -2.0], [0, 1, -6.0], [0, 0, 1]], atol=1e-12)
    for ndim in (3, 2):
        shape = (22, 26, 18)[:ndim] if ndim == 3 else (40, 34)
        grid, matrix = oblique_grid(ndim, shape), voxel_matrix(ndim, shape)
        np.testing.assert_allclose(physical_affine_to_voxel(voxel_affine_to_physical(matrix, grid), grid), matrix,
                                   atol=1e-10)


@pytest.mark.parametrize("ndim", [3, 2])
def test_every_format_reads_back_and_text_matches_itk(tmp_path, ndim):
    shape = (22, 26, 18) if ndim == 3 else (40, 34)
    grid, matrix = oblique_grid(ndim, shape), voxel_matrix(ndim, shape)
    physical = voxel_affine_to_physical(matrix, grid)
    for suffix in AFFINE_TRANSFORM_SUFFIXES:
        path = save_affine_transform(matrix, grid, tmp_path / f"affine{suffix}")
        np.testing.assert_allclose(load_affine_transform(path), physical, rtol=0, atol=1e-12, err_msg=suffix)
        (transform,) = itk.transformread(str(path))
        assert type(transform).__name__ == f"itkAffineTransformD{ndim}"
    # the text file is the one ITK writes for the same transform, byte for byte
    reference = itk.AffineTransform[itk.D, ndim].New()
    reference.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(physical[:ndim, :ndim])))
    reference.SetTranslation([float(v) for v in physical[:ndim, ndim]])
    itk.transformwrite([reference], str(tmp_path / "itk.tfm"))
    assert (tmp_path / "affine.tfm").read_text() == (tmp_path / "itk.tfm").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left


def test_bad_input_and_failed_write_leave_nothing(tmp_path, monkeypatch):
    grid, matrix = oblique_grid(3, (22, 26, 18)), voxel_matrix(3, (22, 26, 18))
    with pytest.raises(ValueError, match=r"'path' must end with one of"):
        save_affine_transform(matrix, grid, tmp_path / "affine.nii.gz")
    with pytest.raises(ValueError, match=r"'matrix' must have shape"):
        save_affine_transform(matrix[:2], grid, tmp_path / "affine.tfm")
    with pytest.raises(ValueError, match=r"NaN/Inf"):
        save_affine_transform(np.full((3, 4), np.nan), grid, tmp_path / "affine.tfm")
    with pytest.raises(ValueError, match=r"'affine' must be invertible"):
        save_affine_transform(matrix, np.zeros((4, 4)), tmp_path / "affine.tfm")
    with pytest.raises(FileNotFoundError):
        load_affine_transform(tmp_path / "missing.tfm")
    assert list(tmp_path.iterdir()) == []

    target = tmp_path / "affine.tfm"
    target.write_text("old")

    def failing_write(self, data, *args, **kwargs):
        with open(self, "w") as f:
            f.write(data[:20])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_affine_transform(matrix, grid, target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["affine.tfm"]


# ------------------------------------------------------------------------------------------- API
class ZeroMethod:
    """A deformable method that does nothing: the outputs are the affine stage alone."""

    def __call__(self, fixed, moving):
        return {"ddf": torch.zeros(1, fixed.ndim - 2, *fixed.shape[2:], dtype=fixed.dtype, device=fixed.device)}


@pytest.fixture
def zero_method():
    methods.register_method("zero_for_affine_file", ZeroMethod, "test method: zero field")
    yield "zero_for_affine_file"
    methods.unregister_method("zero_for_affine_file")


def lps_points(affine, shape):
    """LPS millimetres of every voxel centre of a grid, ``(D, N)``."""
    ndim = len(shape)
    vox = np.indices(shape).reshape(ndim, -1).astype(np.float64)
    return LPS[:ndim, :ndim] @ (affine[:ndim, :ndim] @ vox + affine[:ndim, ndim:])


def blob_function(centres, widths, weights):
    """A smooth image defined on LPS points ``(D, N)``."""
    def value(points):
        out = np.zeros(points.shape[1])
        for c, w, a in zip(centres, widths, weights):
            out += a * np.exp(-(((points - np.asarray(c)[:, None]) / np.asarray(w)[:, None]) ** 2).sum(0))
        return out
    return value


def test_register_writes_affine_tfm_that_recovers_known_transform(tmp_path, zero_method):
    """Moving = fixed content moved by a known rigid LPS transform; affine.tfm recovers it and ITK applies it."""
    shape, moving_shape = (28, 30, 24), (30, 28, 26)
    centre = np.array([4.0, -12.0, 9.0])  # RAS
    fixed_affine = grid_affine(LIA, (1.2, 1.0, 1.4), (8, -6, 5), centre, shape)  # oblique LIA: working grid is RAS
    moving_affine = grid_affine([(1, 0, 0), (0, 1, 0), (0, 0, 1)], (1.1, 1.2, 1.1), (0, 0, 0), centre, moving_shape)
    centre_lps = LPS @ centre
    rng = np.random.default_rng(0)
    g = blob_function([centre_lps + rng.uniform(-8, 8, 3) for _ in range(6)],
                      [rng.uniform(3, 6, 3) for _ in range(6)], rng.uniform(0.5, 1.5, 6))
    true = np.eye(4)  # fixed LPS point -> moving LPS point: 5 degrees about the centre, then (2.5, -2, 1.5) mm
    true[:3, :3] = rotation((3, -2, 4))
    true[:3, 3] = centre_lps - true[:3, :3] @ centre_lps + [2.5, -2.0, 1.5]
    fixed = g(lps_points(fixed_affine, shape)).reshape(shape)
    # moving(q) = fixed content at T^-1 q
    q = lps_points(moving_affine, moving_shape)
    moving = g(np.linalg.solve(true[:3, :3], q - true[:3, 3:])).reshape(moving_shape)
    save_image(fixed.astype(np.float32), fixed_affine, tmp_path / "fixed.nii.gz")
    save_image(moving.astype(np.float32), moving_affine, tmp_path / "moving.nii.gz")

    out = tmp_path / "out"
    result = register(tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz", zero_method, affine=True,
                      affine_metric="mse", device="cpu", output_dir=out, qc=False,
                      affine_options={"levels": (2, 1), "iterations": (80, 50), "learning_rate": 0.2})
    assert not np.allclose(result.affine_grid, result.affine)  # the matrix is on the re-oriented working grid
    assert (out / "affine.tfm").is_file() and "affine.tfm" in OUTPUT_FILES
    assert "affine.tfm" in json.loads((out / "summary.json").read_text())["files"]
    found = load_affine_transform(out / "affine.tfm")
    np.testing.assert_allclose(found, voxel_affine_to_physical(result.affine_matrix, result.affine_grid), atol=1e-9)
    # the file's transform maps the image's points where the true one does (within a fraction of a voxel)
    points = lps_points(fixed_affine, shape)[:, fixed.ravel() > 0.2]
    error = np.linalg.norm(found[:3, :3] @ points + found[:3, 3:] - (true[:3, :3] @ points + true[:3, 3:]), axis=0)
    assert error.max() < 0.6, f"affine.tfm is up to {error.max():.2f} mm off the true transform"
    np.testing.assert_allclose(found[:3, :3], true[:3, :3], atol=0.03)
    # ITK applies it to the original moving file: much closer to the fixed image than the moving one was
    aligned = itk_resample(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz", out / "affine.tfm")
    identity = np.eye(4)
    identity_file = save_affine_transform(identity[:3], fixed_affine, tmp_path / "identity.tfm")
    before = itk_resample(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz", identity_file)
    inner = tuple(slice(3, -3) for _ in shape)
    err_before = np.abs(before - fixed)[inner].mean()
    err_after = np.abs(aligned - fixed)[inner].mean()
    assert err_after < 0.15 * err_before, (err_before, err_after)
    # and like the package's own warped image (the zero deformable field: the affine stage alone), where
    # the moving point lies inside the moving grid (at its edge ITK clamps and torch blends with the zero padding)
    moving_vox = np.linalg.solve(moving_affine[:3, :3], LPS @ (found[:3, :3] @ lps_points(fixed_affine, shape)
                                                               + found[:3, 3:]) - moving_affine[:3, 3:])
    mask = np.all((moving_vox >= 1) & (moving_vox <= np.array(moving_shape)[:, None] - 2), axis=0).reshape(shape)
    assert mask.mean() > 0.5
    np.testing.assert_allclose(aligned[mask], result.warped.as_tensor()[0, 0].numpy()[mask], atol=1e-4, rtol=0)

    # without the affine stage: no affine.tfm (and the earlier run's is removed from the folder)
    register(tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz", zero_method, device="cpu", output_dir=out,
             qc=False)
    assert not (out / "affine.tfm").exists()
    assert "affine.tfm" not in json.loads((out / "summary.json").read_text())["files"]


def test_register_2d_affine_file(tmp_path, zero_method):
    """2D: the written transform, applied by ITK to the moving file, gives the package's warped image."""
    shape = (40, 34)
    affine = oblique_grid(2, shape)
    fixed = smooth_image(shape, seed=4)
    matrix = voxel_matrix(2, shape)
    moving = warp(torch.as_tensor(fixed)[None, None], affine_to_ddf(torch.as_tensor(np.linalg.inv(
        np.vstack([matrix, [0, 0, 1]]))[:2], dtype=torch.float32)[None], shape))[0, 0].numpy()
    save_image(fixed, affine, tmp_path / "fixed.nii.gz")
    save_image(moving, affine, tmp_path / "moving.nii.gz")
    out = tmp_path / "out"
    result = register(tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz", zero_method, affine=True,
                      affine_metric="mse", device="cpu", output_dir=out, qc=False,
                      affine_options={"levels": (2, 1), "iterations": (80, 50), "learning_rate": 0.2})
    aligned = itk_resample(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz", out / "affine.tfm")
    inner = (slice(5, -5), slice(5, -5))
    np.testing.assert_allclose(aligned[inner], result.warped.as_tensor()[0, 0].numpy()[inner], atol=1e-3)
    assert np.abs(aligned - fixed)[inner].mean() < 0.3 * np.abs(moving - fixed)[inner].mean()


class LearnedAffineMethod:
    """A method with a learned affine part: a fixed voxel matrix, its field as ``ddf`` and the matrix as ``affine``."""

    matrix = torch.tensor([[[1.02, 0.03, 0.0, 1.5], [-0.02, 0.98, 0.01, -1.0], [0.0, 0.02, 1.01, 0.5]]],
                          dtype=torch.float64)

    def __call__(self, fixed, moving):
        return {"ddf": affine_to_ddf(self.matrix, fixed.shape[2:]).to(fixed.dtype), "affine": self.matrix.clone()}


@pytest.fixture
def learned_affine_method():
    methods.register_method("learned_affine_for_file", LearnedAffineMethod, "test method: a learned affine part")
    yield "learned_affine_for_file"
    methods.unregister_method("learned_affine_for_file")


@pytest.mark.filterwarnings("ignore::monai_diffreg.api.DissimilarityWarning")  # the test method's matrix is arbitrary
def test_register_writes_a_methods_learned_affine_and_composes_it_with_the_stage(tmp_path, learned_affine_method,
                                                                                 monkeypatch):
    """affine.tfm holds the method's own affine (e.g. SynthMorph's), or stage o learned when the stage ran too."""
    from monai_diffreg import api
    from monai_diffreg.functional import compose_affine

    shape = (20, 18, 16)
    affine = grid_affine(LIA, (1.2, 1.0, 1.1), (5, -4, 3), np.zeros(3), shape)
    image = smooth_image(shape, seed=2)
    save_image(image, affine, tmp_path / "fixed.nii.gz")
    save_image(np.roll(image, 2, axis=0), affine, tmp_path / "moving.nii.gz")  # the stage has something to find
    out = tmp_path / "out"
    result = register(tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz", learned_affine_method, device="cpu",
                      output_dir=out, qc=False)
    torch.testing.assert_close(result.affine_matrix, LearnedAffineMethod.matrix)
    np.testing.assert_allclose(load_affine_transform(out / "affine.tfm"),
                               voxel_affine_to_physical(LearnedAffineMethod.matrix, result.affine_grid), atol=1e-9)
    stage = json.loads((out / "summary.json").read_text())["affine_stage"]
    assert stage["enabled"] is False and stage["learned_by_method"] is True

    stages = []
    original = api._affine_stage

    def recording_stage(*args):
        stages.append(original(*args))
        return stages[-1]

    monkeypatch.setattr(api, "_affine_stage", recording_stage)
    both = register(tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz", learned_affine_method, device="cpu",
                    affine=True, affine_metric="mse", affine_options={"levels": (2,), "iterations": (5,)})
    expected = compose_affine(stages[0][0].double(), LearnedAffineMethod.matrix)
    torch.testing.assert_close(both.affine_matrix, expected)
    assert not torch.allclose(expected, LearnedAffineMethod.matrix)  # the stage moved something: a real composition
    assert both.info["affine_stage"]["learned_by_method"] is True
