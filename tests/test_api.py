"""Tests for monai_diffreg.api.register: inputs, working grid, affine stage, outputs, metrics, bad input."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_diffreg import methods
from monai_diffreg.api import MisalignmentWarning, RegistrationResult, misalignment, register
from monai_diffreg.functional import compose_ddf, integrate_velocity, warp
from monai_diffreg.io import apply_displacement_field_itk, load_displacement_field, save_image
from monai_diffreg.transforms.deformation import sample_smooth_velocity_params, smooth_velocity_from_params


def smooth_field(shape, amplitude, seed=0):
    """Smooth random velocity (1, D, *S), components up to ``amplitude`` voxels (replayable)."""
    gen = torch.Generator().manual_seed(seed)
    return smooth_velocity_from_params(sample_smooth_velocity_params(shape, 6.0, amplitude, generator=gen))


def blobs(shape, seed=0, n=4):
    """Smooth intensity image and a label map of its blobs (label k inside blob k)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    image = np.zeros(shape)
    labels = np.zeros(shape, np.int16)
    for k in range(1, n + 1):
        centre = [rng.uniform(0.3 * s, 0.7 * s) for s in shape]
        radius = [rng.uniform(0.15 * s, 0.3 * s) for s in shape]
        r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radius))
        image += k * np.exp(-r2)
        labels[r2 <= 1] = k
    return image.astype(np.float32), labels


class ToyMethod:
    """Returns a fixed velocity's exp (and inverse, uncertainty); records what it was given."""

    calls: list = []

    def __init__(self, velocity=None, amplitude=1.5):
        self.velocity = velocity
        self.amplitude = amplitude

    def __call__(self, fixed, moving):
        ToyMethod.calls.append((fixed.clone(), moving.clone()))
        v = self.velocity if self.velocity is not None else smooth_field(fixed.shape[2:], self.amplitude)
        v = v.to(fixed)
        return {"ddf": integrate_velocity(v), "inverse_ddf": integrate_velocity(-v), "velocity": v,
                "uncertainty": torch.ones_like(fixed)}


@pytest.fixture
def toy():
    """A tiny test-only method, added through the public registration (methods.register_method)."""
    ToyMethod.calls = []
    methods.register_method("toy", ToyMethod, "test method")
    yield ToyMethod
    methods.unregister_method("toy")


def test_register_arrays(toy):
    image, labels = blobs((20, 24, 16))
    moving, moving_labels = blobs((20, 24, 16), seed=0)
    result = register(image, torch.as_tensor(moving)[None, None], "toy", fixed_labels=labels,
                      moving_labels=moving_labels, device="cpu")
    assert isinstance(result, RegistrationResult)
    expected_ddf = integrate_velocity(smooth_field((20, 24, 16), 1.5))
    torch.testing.assert_close(result.ddf, expected_ddf)
    assert result.ddf.shape == (1, 3, 20, 24, 16)
    # identity affines: one-interpolation resampling equals our warp with zero padding
    ref = warp(torch.as_tensor(moving)[None, None], expected_ddf, padding_mode="zeros")
    torch.testing.assert_close(result.warped.as_tensor(), ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(result.warped.affine.numpy(), np.eye(4))
    ref_labels = warp(torch.as_tensor(moving_labels, dtype=torch.float32)[None, None], expected_ddf, mode="nearest",
                      padding_mode="zeros")
    assert (result.warped_labels == ref_labels).float().mean() > 0.999
    assert result.inverse_ddf is not None and result.uncertainty.shape == (1, 1, 20, 24, 16)
    m = result.metrics
    assert m["dice_before"]["mean"] == pytest.approx(1.0)  # same labels before
    assert m["dice_after"]["mean"] < 1.0
    assert set(m["dice_after"]["per_label"]) == {"1", "2", "3", "4"}
    assert m["folding_percent"] == 0.0 and m["sd_log_jacobian"] > 0 and m["sd_log_jacobian_learn2reg"] > 0
    assert m["seconds"]["total"] > 0
    # the method saw the RAS working grid = the arrays as given (identity affine)
    torch.testing.assert_close(toy.calls[0][0], torch.as_tensor(image)[None, None])


def test_metrics_are_computed_once_on_first_use_from_one_determinant(toy, monkeypatch):
    """register() leaves the metrics to whoever asks; they equal the separate metric functions."""
    from monai_diffreg import api
    from monai_diffreg.metrics import folding_percentage, sd_log_jacobian, sd_log_jacobian_l2r

    determinants = []
    real = api.jacobian_determinant
    monkeypatch.setattr(api, "jacobian_determinant", lambda ddf: determinants.append(1) or real(ddf))
    image, _ = blobs((20, 24, 16))
    result = register(image, blobs((20, 24, 16), seed=1)[0], "toy", amplitude=3.0)
    assert result._metrics is None and determinants == []  # nothing computed yet
    metrics = result.metrics
    assert result.metrics is metrics and determinants == [1]  # once, cached
    ddf = result.ddf.double()
    assert metrics["folding_percent"] == pytest.approx(float(folding_percentage(ddf)[0]), abs=1e-9)
    assert metrics["sd_log_jacobian"] == pytest.approx(float(sd_log_jacobian(ddf)[0]), rel=1e-5)
    assert metrics["sd_log_jacobian_learn2reg"] == pytest.approx(float(sd_log_jacobian_l2r(ddf)[0]), rel=1e-5)
    assert {"load", "registration", "resample", "metrics", "total"} <= set(metrics["seconds"])
    torch.testing.assert_close(result.det_jacobian, real(result.ddf))


def test_data_on_the_fixed_grid_is_not_resampled(toy, monkeypatch, tmp_path):
    """Arrays (and files sharing the fixed grid) are only warped: the 'moving' output is the input itself."""
    from monai_diffreg import api

    monkeypatch.setattr(api, "resample_to_fixed", lambda *a, **k: pytest.fail("resampled data already on the grid"))
    image, labels = blobs((20, 24, 16))
    moving, moving_labels = blobs((20, 24, 16), seed=2)
    result = register(image, moving, "toy", fixed_labels=labels, moving_labels=moving_labels)
    torch.testing.assert_close(result.moving.as_tensor(), torch.as_tensor(moving)[None, None], rtol=0, atol=0)
    expected = warp(torch.as_tensor(moving)[None, None], result.ddf, padding_mode="zeros")
    torch.testing.assert_close(result.warped.as_tensor(), expected)
    affine = np.diag([1.2, 0.9, 1.1, 1.0])
    for name, data in (("f", image), ("m", moving)):
        save_image(torch.as_tensor(data)[None, None], affine, tmp_path / f"{name}.nii.gz")
    on_files = register(tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", "toy", orientation=None)
    torch.testing.assert_close(on_files.moving.as_tensor(), torch.as_tensor(moving)[None, None])


def test_register_2d_and_save(toy, tmp_path):
    image, labels = blobs((32, 28))
    moving, moving_labels = blobs((32, 28), seed=1)
    out = tmp_path / "out"
    result = register(image, moving, "toy", fixed_labels=labels, moving_labels=moving_labels, output_dir=out,
                      inverse=True)
    assert result.ddf.shape == (1, 2, 32, 28)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ddf.nii.gz", "inverse_ddf.nii.gz", "qc.png", "summary.json", "uncertainty.nii.gz", "warped.nii.gz",
                     "warped_labels.nii.gz"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "toy" and summary["grid"]["shape"] == [32, 28]
    assert summary["metrics"]["dice_before"]["mean"] < summary["metrics"]["dice_after"]["mean"] + 1  # numbers present
    assert summary["files"] == names
    back, _ = load_displacement_field(out / "ddf.nii.gz")
    torch.testing.assert_close(back, result.ddf, atol=1e-5, rtol=1e-5)
    assert nib.load(out / "warped_labels.nii.gz").get_data_dtype() == np.uint8


def _oblique(spacing, angles, centre, shape, flip):
    from scipy.spatial.transform import Rotation

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(flip) @ np.diag(spacing)
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def test_output_folder_problems_are_found_before_any_work(toy, tmp_path):
    image, _ = blobs((12, 12, 10))
    (tmp_path / "a_file").write_text("x")
    for bad, match in ((tmp_path / "a_file", "is an existing file, not a folder"), ("", "must be a folder path"),
                       ("   ", "must be a folder path")):
        toy.calls = []
        with pytest.raises(ValueError, match=match):
            register(image, image, "toy", output_dir=bad)
        assert toy.calls == []  # the method never ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_rerun_into_the_same_folder_leaves_no_stale_outputs(toy, tmp_path):
    image, _ = blobs((12, 12, 10))
    register(image, blobs((12, 12, 10), seed=1)[0], "toy", output_dir=tmp_path, inverse=True, qc=False)
    (tmp_path / "notes.txt").write_text("mine")  # not ours: kept
    assert "inverse_ddf.nii.gz" in {p.name for p in tmp_path.iterdir()}
    register(image, blobs((12, 12, 10), seed=1)[0], "toy", output_dir=tmp_path, qc=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddf.nii.gz", "notes.txt", "summary.json", "uncertainty.nii.gz",
                                                          "warped.nii.gz"]


def test_a_result_less_similar_than_its_input_says_so(toy):
    """A method that scrambles an aligned pair is reported (contrast-independent NMI before/after); a good one is not."""
    from monai_diffreg.api import DissimilarityWarning

    image, _ = blobs((24, 24, 20))
    with pytest.warns(DissimilarityWarning, match="less like the fixed one than the input was"):
        result = register(image, image, "toy", amplitude=3.0)
    assert result.metrics["similarity"]["nmi_after"] < result.metrics["similarity"]["nmi_before"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DissimilarityWarning)
        good = register(image, 1.0 - image, "toy", velocity=torch.zeros(1, 3, 24, 24, 20))  # inverted contrast, aligned
    assert good.metrics["similarity"]["nmi_after"] == pytest.approx(good.metrics["similarity"]["nmi_before"])


def test_inverse_field_is_written_on_request(toy, tmp_path):
    image, _ = blobs((16, 12))
    result = register(image, blobs((16, 12), seed=1)[0], "toy", output_dir=tmp_path / "a", qc=False)
    assert result.inverse_ddf is not None  # in memory either way
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["ddf.nii.gz", "summary.json", "uncertainty.nii.gz",
                                                                  "warped.nii.gz"]
    result.save(tmp_path / "b", qc=False, inverse=True)
    back, _ = load_displacement_field(tmp_path / "b" / "inverse_ddf.nii.gz")
    torch.testing.assert_close(back, result.inverse_ddf, atol=1e-5, rtol=1e-5)
    assert "write" in json.loads((tmp_path / "b" / "summary.json").read_text())["metrics"]["seconds"]
    with pytest.raises(TypeError, match="'inverse' must be True or False"):
        register(image, image, "toy", inverse="yes")


def test_saved_field_maps_original_moving_file_in_itk(toy, tmp_path):
    """LAS oblique fixed, moving file on another grid: ITK + ddf.nii.gz on the ORIGINAL moving labels == warped_labels."""
    fixed_shape, moving_shape = (22, 26, 18), (18, 30, 20)
    fixed_affine = _oblique((1.5, 1.0, 2.0), (10, -15, 5), (1, 2, 3), fixed_shape, (-1, 1, 1))
    moving_affine = _oblique((1.8, 1.1, 1.7), (-5, 8, 25), (2, 0, 4), moving_shape, (1, 1, 1))
    image, labels = blobs(fixed_shape)
    moving, moving_labels = blobs(moving_shape, seed=3)
    paths = {}
    for name, data, aff, lab in (("fixed", image, fixed_affine, False), ("moving", moving, moving_affine, False),
                                 ("fixed_labels", labels, fixed_affine, True),
                                 ("moving_labels", moving_labels, moving_affine, True)):
        paths[name] = save_image(data, aff, tmp_path / f"{name}.nii.gz", label=lab)
    out = tmp_path / "out"
    result = register(paths["fixed"], paths["moving"], "toy", fixed_labels=paths["fixed_labels"],
                      moving_labels=paths["moving_labels"], output_dir=out, qc=False)
    # outputs on the fixed file's own grid
    warped_img = nib.load(out / "warped.nii.gz")
    assert warped_img.shape == fixed_shape
    np.testing.assert_allclose(warped_img.affine, fixed_affine, atol=1e-5)
    # the method saw a RAS re-orientation of the fixed grid (axis 0 flipped)
    seen = toy.calls[0][0][0, 0].numpy()
    np.testing.assert_allclose(seen, np.flip(image, axis=0), atol=1e-6)

    ref = apply_displacement_field_itk(paths["moving_labels"], paths["fixed"], out / "ddf.nii.gz", mode="nearest")
    ours = result.warped_labels[0, 0].numpy()
    assert np.mean(ref > 0) > 0.1
    assert np.mean(ours == ref) >= 0.999
    saved = np.asarray(nib.load(out / "warped_labels.nii.gz").dataobj)
    np.testing.assert_array_equal(saved, ours)


def test_field_mapped_back_to_file_axes(toy):
    """A field along +R on the RAS working grid is along -axis 0 on an LAS file grid, with its spatial layout flipped."""
    shape = (12, 10, 8)
    ramp = torch.arange(12, dtype=torch.float32).view(1, 12, 1, 1).expand(1, 12, 10, 8)
    work_ddf = torch.zeros(1, 3, *shape)
    work_ddf[:, 0] = 0.1 * ramp  # along work axis 0 (+R), growing towards R

    class Fixed:
        def __call__(self, fixed, moving):
            return {"ddf": work_ddf.clone()}

    methods.register_method("const", Fixed, "const")
    try:
        image, _ = blobs(shape)
        las = MetaTensor(torch.as_tensor(image)[None], affine=torch.diag(torch.tensor([-2.0, 1.0, 1.5, 1.0], dtype=torch.float64)))
        result = register(las, las.clone(), "const")
        expected = torch.zeros(1, 3, *shape)
        expected[:, 0] = -0.1 * ramp.flip(1)
        torch.testing.assert_close(result.ddf, expected)
        # orientation=None: the method works on the file axes directly
        result_none = register(las, las.clone(), "const", orientation=None)
        torch.testing.assert_close(result_none.ddf, work_ddf)
    finally:
        methods.unregister_method("const")


def test_affine_stage_composed(toy):
    """Moving = fixed translated by 3 voxels: the affine stage finds it; the total field includes it."""
    shape = (24, 24, 20)
    image, _ = blobs(shape, n=3)
    fixed = torch.as_tensor(image)[None, None]
    shift = torch.zeros(1, 3, *shape)
    shift[:, 0] = -3.0
    moving = warp(fixed, shift)  # moving(x) = fixed(x - 3): content moved +3 along axis 0
    zero = torch.zeros(1, 3, *shape)
    result = register(fixed, moving, "toy", velocity=zero, affine=True, affine_metric="mse",
                      affine_options={"levels": (2, 1), "iterations": (60, 40), "learning_rate": 0.2})
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6), slice(5, -5))
    assert result.ddf[inner][:, 0].mean().item() == pytest.approx(3.0, abs=0.3)
    assert result.ddf[inner][:, 1:].abs().mean().item() < 0.3
    assert result.affine_matrix.shape == (1, 3, 4)
    err_before = (moving - fixed)[inner].abs().mean()
    err_after = (result.warped.as_tensor() - fixed)[inner].abs().mean()
    assert err_after < 0.3 * err_before
    # inverse composed too: phi o phi^-1 ~ id
    roundtrip = compose_ddf(result.ddf, result.inverse_ddf)
    assert roundtrip[inner].abs().max() < 0.3
    assert result.info["affine_stage"]["enabled"] is True


def test_misalignment_warning(toy):
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in (32, 32, 24)], indexing="ij"))
    centre = torch.tensor([10.0, 16.0, 12.0]).view(3, 1, 1, 1)
    fixed = 1.0 - ((grid - centre) ** 2).sum(0).div(36).clamp(max=1.0)  # a bright ball on a zero background
    moving = torch.roll(fixed, shifts=10, dims=0)
    m = misalignment(fixed[None], moving[None], np.diag([2.0, 2.0, 2.0, 1.0]))
    assert m["centroid_distance_mm"] == pytest.approx(20.0, abs=1.0)
    assert m["foreground_dice"] < 0.2
    with pytest.warns(MisalignmentWarning, match=r"looks misaligned .* use affine=True \(CLI: --affine\)"):
        register(MetaTensor(fixed[None], affine=torch.diag(torch.tensor([2.0, 2, 2, 1], dtype=torch.float64))),
                 MetaTensor(moving[None], affine=torch.diag(torch.tensor([2.0, 2, 2, 1], dtype=torch.float64))), "toy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MisalignmentWarning)
        register(fixed, fixed.clone(), "toy")  # aligned pair: no warning


class SelfAligningMethod:
    """A method whose network learns the affine part (networks.contract: learns_affine): zero fields here."""

    learns_affine = True

    def __call__(self, fixed, moving):
        return {"ddf": torch.zeros(1, fixed.ndim - 2, *fixed.shape[2:])}


def test_no_affine_stage_advice_for_a_method_that_aligns_the_pair_itself():
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in (32, 32, 24)], indexing="ij"))
    fixed = 1.0 - ((grid - torch.tensor([10.0, 16.0, 12.0]).view(3, 1, 1, 1)) ** 2).sum(0).div(36).clamp(max=1.0)
    moving = torch.roll(fixed, shifts=10, dims=0)  # misaligned: the toy method is warned about (above)
    methods.register_method("self_aligning", SelfAligningMethod, "test method: learns the affine part")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", MisalignmentWarning)
            result = register(fixed, moving, "self_aligning")
    finally:
        methods.unregister_method("self_aligning")
    assert result.metrics["misalignment_before"]["foreground_dice"] < 0.2  # still measured and reported


def test_array_moving_with_file_fixed_shares_its_grid(toy, tmp_path):
    """An array has no geometry: it is taken to lie on the fixed grid (outputs equal a same-grid warp)."""
    image, _ = blobs((14, 12, 10))
    affine = np.diag([-1.5, 2.0, 1.0, 1.0])
    save_image(image, affine, tmp_path / "f.nii.gz")
    moving = np.roll(image, 1, axis=1)
    result = register(tmp_path / "f.nii.gz", moving, "toy", velocity=torch.zeros(1, 3, 14, 12, 10))
    np.testing.assert_allclose(result.warped[0, 0].numpy(), moving, atol=1e-5)
    np.testing.assert_allclose(result.warped.affine.numpy(), affine)


def test_metatensors_on_different_grids_are_resampled(toy):
    image, _ = blobs((16, 16, 16))
    fixed = MetaTensor(torch.as_tensor(image)[None], affine=torch.eye(4, dtype=torch.float64))
    coarse = torch.nn.functional.avg_pool3d(torch.as_tensor(image)[None, None], 2)[0]
    aff = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    aff[:3, 3] = 0.5
    moving = MetaTensor(coarse, affine=aff)
    result = register(fixed, moving, "toy", velocity=torch.zeros(1, 3, 16, 16, 16))
    assert result.moving.shape == (1, 1, 16, 16, 16)
    inner = (0, 0, slice(2, -2), slice(2, -2), slice(2, -2))
    assert np.corrcoef(result.moving[inner].flatten(), torch.as_tensor(image)[2:-2, 2:-2, 2:-2].flatten())[0, 1] > 0.95


def test_unsigned_and_big_endian_arrays_are_registered_as_their_values(toy):
    """uint16 (torch has no arithmetic on it) and big-endian arrays (torch refuses them) give the float result."""
    image, labels = blobs((12, 14, 10))
    scan = (image * 1000).astype(np.uint16)
    reference = register(scan.astype(np.float32), scan.astype(np.float32), "toy", moving_labels=labels, fixed_labels=labels)
    for fixed in (scan, scan.astype(">u2"), scan.astype(">f4")):
        result = register(fixed, fixed, "toy", moving_labels=labels.astype(np.uint16), fixed_labels=labels.astype(">i2"))
        torch.testing.assert_close(result.warped.as_tensor(), reference.warped.as_tensor())
        assert result.metrics["dice_after"] == reference.metrics["dice_after"]


# ----------------------------------------------------------------------------------------- bad input
@pytest.fixture
def files(tmp_path):
    image, labels = blobs((12, 12, 12))
    save_image(image, np.eye(4), tmp_path / "f.nii.gz")
    save_image(labels, np.eye(4), tmp_path / "l.nii.gz", label=True)
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x00garbage bytes, not gzip")
    return tmp_path


@pytest.mark.parametrize("case, error, match", [
    ("2d_vs_3d", ValueError, r"register\(\): 'moving' is 2D .* but 'fixed' is 3D"),
    ("multichannel", ValueError, r"register\(\): 'moving' must be a single-channel 2D or 3D image"),
    ("nan", ValueError, r"register\(\): 'moving' contains 1 NaN/Inf"),
    ("constant", ValueError, r"register\(\): 'fixed' is constant"),
    ("empty", ValueError, r"register\(\): 'moving' must be a single-channel 2D or 3D image.* got shape \(0, 12, 12\)"),
    ("inf", ValueError, r"register\(\): 'fixed' contains 1 NaN/Inf"),
    ("missing", FileNotFoundError, r"register\(\): 'moving' file not found: .*missing.nii.gz"),
    ("corrupt", ValueError, r"register\(\): could not read 'moving' from .*corrupt.nii.gz"),
    ("float_labels", ValueError, r"register\(\): 'moving_labels' must be a label map of integer values"),
    ("unknown_bundle", ValueError, r"register\(\): 'bundle' is not a known method or bundle: 'vxm_nope'; available: .*svf_optim"),
    ("array_shape", ValueError, r"register\(\): 'moving' is an array without an affine, so it must be on the fixed grid"),
    ("true_ddf", ValueError, r"register\(\): 'true_ddf' must be a tensor of shape \(1, 3, 12, 12, 12\)"),
    ("type", TypeError, r"register\(\): 'fixed_labels' must be a file path, numpy array, torch tensor or MetaTensor"),
    ("array_fixed", ValueError, r"register\(\): 'fixed' is an array without an affine but 'moving' has one"),
    ("none_fixed", TypeError, r"register\(\): 'fixed' is required .* got None"),
    ("folder", ValueError, r"register\(\): 'moving' is a folder, not an image file"),
    ("no_overlap", ValueError, r"'moving' does not overlap 'fixed' in world coordinates.* check the two files' affines"),
])
def test_bad_input_names_argument_and_writes_nothing(toy, files, case, error, match):
    image, labels = blobs((12, 12, 12))
    args = {"fixed": files / "f.nii.gz", "moving": files / "f.nii.gz", "bundle": "toy"}
    if case == "2d_vs_3d":
        args["fixed"], args["moving"] = image, image[:, :, 0]
    elif case == "multichannel":
        args["moving"] = np.stack([image, image])
    elif case == "nan":
        args["fixed"], args["moving"] = image, np.where(np.arange(image.size).reshape(image.shape) == 5, np.nan, image)
    elif case == "constant":
        args["fixed"] = np.zeros_like(image)
    elif case == "empty":
        args["moving"] = np.zeros((0, 12, 12), np.float32)
    elif case == "inf":
        args["fixed"], args["moving"] = np.where(np.arange(image.size).reshape(image.shape) == 7, np.inf, image), image
    elif case == "missing":
        args["moving"] = files / "missing.nii.gz"
    elif case == "no_overlap":
        far = np.eye(4)
        far[:3, 3] = 500.0  # half a metre away: no voxel of the moving image lies in the fixed field of view
        save_image(image, far, files / "far.nii.gz")
        args["moving"] = files / "far.nii.gz"
    elif case == "none_fixed":
        args["fixed"] = None
    elif case == "folder":
        args["moving"] = files
    elif case == "corrupt":
        args["moving"] = files / "corrupt.nii.gz"
    elif case == "float_labels":
        args["moving_labels"] = labels + 0.5
    elif case == "unknown_bundle":
        args["bundle"] = "vxm_nope"
    elif case == "array_shape":
        args["fixed"], args["moving"] = image, image[:10]
    elif case == "true_ddf":
        args["true_ddf"] = torch.zeros(1, 3, 4, 4, 4)
    elif case == "type":
        args["fixed_labels"] = [1, 2, 3]
    elif case == "array_fixed":
        args["fixed"] = image
        args["moving"] = MetaTensor(torch.as_tensor(image)[None], affine=torch.diag(torch.tensor([2.0, 2, 2, 1])))
    out = files / "out"
    with pytest.raises(error, match=match):
        register(output_dir=out, **args)
    assert not out.exists()
    assert toy.calls == []


def test_save_failure_leaves_nothing(toy, tmp_path, monkeypatch):
    image, _ = blobs((12, 12, 12))
    result = register(image, image, "toy")
    out = tmp_path / "out"
    import monai_diffreg.api as api

    def broken_json(data, path):
        path.write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(api, "save_json", broken_json)
    with pytest.raises(OSError, match="disk full"):
        result.save(out)
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    with pytest.raises(OSError, match="disk full"):
        result.save(existing)
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]
