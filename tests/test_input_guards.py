"""Input guards of register(): the spacing check (SpacingWarning) and the memory check (InsufficientMemoryError),
and the lean io.resample_to_fixed (same results as the former whole-grid float64 version)."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

import monai_diffreg
from monai_diffreg import input_checks, io, methods
from monai_diffreg.api import register
from monai_diffreg.cli import main
from monai_diffreg.functional.grid import identity_grid
from monai_diffreg.input_checks import InsufficientMemoryError, SpacingWarning, estimate_memory, spacing_check
from monai_diffreg.sample import sample_paths

_NAMES = ("fixed", "moving", "fixed_labels", "moving_labels")
# 1 mm sample voxel -> 0.5 x 0.5 x 5 mm voxel: in-plane centres at i / 2 - 1/4, slabs of 5 slices centred on 5k + 2
_THICK_SLICES = np.array([[0.5, 0, 0, -0.25], [0, 0.5, 0, -0.25], [0, 0, 5.0, 2.0], [0, 0, 0, 1]])


def _spacing_warnings(caught):
    return [w for w in caught if issubclass(w.category, SpacingWarning)]


@pytest.fixture(scope="module")
def anisotropic_pair(tmp_path_factory):
    """The built-in 1 mm sample as a thick-slice acquisition: 0.5 x 0.5 mm in plane (linear upsampling), 5 mm
    slices (mean of 5 slices: partial volume), 320 x 384 x 32; label maps sampled at the slice centres."""
    folder = tmp_path_factory.mktemp("anisotropic")
    paths = {}
    for name, source in ((n, sample_paths()[n]) for n in _NAMES):
        image = nib.load(str(source))
        data = torch.as_tensor(np.asarray(image.dataobj, dtype=np.float32))
        if name.endswith("labels"):
            slabs = data[:, :, 2::5][:, :, : data.shape[2] // 5]
            new = slabs.repeat_interleave(2, 0).repeat_interleave(2, 1).numpy().astype(np.int16)
        else:
            slabs = F.avg_pool3d(data[None, None], (1, 1, 5))
            new = F.interpolate(slabs, scale_factor=(2, 2, 1), mode="trilinear", align_corners=False)[0, 0].numpy()
            new = np.clip(np.round(new), 0, 255).astype(np.uint8)
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(new, image.affine @ _THICK_SLICES), str(paths[name]))
    return {name: str(path) for name, path in paths.items()}


# ----------------------------------------------------------------------------------------- spacing
def test_spacing_check_rules():
    fine = spacing_check([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], "m")
    assert fine["warning"] is None and fine["anisotropy"] == 1.0
    assert spacing_check([2.0, 1.0, 1.0], [1.0, 1.0, 1.0])["warning"] is None  # the limits are inclusive
    assert spacing_check([0.5, 1.0, 1.0], [1.0, 1.0, 1.0])["warning"] is None
    assert spacing_check([1.0, 1.0, 3.0])["warning"] is None
    thick = spacing_check([0.5, 0.5, 5.0])  # no expected spacing: anisotropy alone; same-volume isotropic voxels
    assert "strongly anisotropic (10x, limit 3x)" in thick["warning"]
    assert "to 1.1 mm isotropic voxels" in thick["warning"]
    coarse = spacing_check([2.5, 2.5, 2.5], [1.0, 1.0, 1.0], "net")["warning"]
    assert "'net' expects 1 x 1 x 1 mm" in coarse and "anisotropic" not in coarse and "to 1 mm isotropic" in coarse
    assert spacing_check([0.4, 0.4, 0.4], [1.0, 1.0, 1.0])["warning"] is not None
    assert "\n" not in thick["warning"]


class _Zero:
    """Tiny method: the zero field; states what it is given."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)
        self.calls = 0

    def __call__(self, fixed, moving):
        self.calls += 1
        return {"ddf": torch.zeros(1, fixed.ndim - 2, *fixed.shape[2:])}


def _blob_pair(spacing=(1.0, 1.0, 1.0), shape=(24, 20, 16)):
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    image = np.exp(-sum((g - n / 2) ** 2 for g, n in zip(grids, shape)) / 30.0)
    affine = torch.as_tensor(np.diag([*spacing, 1.0]))
    return (MetaTensor(torch.as_tensor(image), affine=affine.clone()),
            MetaTensor(torch.as_tensor(np.roll(image, 1, 0)), affine=affine.clone()))


def test_method_expected_spacing_is_compared(tmp_path):
    fixed, moving = _blob_pair()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet = register(fixed, moving, _Zero(expected_spacing_mm=1.0), device="cpu")
        register(fixed, moving, _Zero(), device="cpu")  # nothing stated, isotropic: nothing to say
    assert not _spacing_warnings(caught)
    assert quiet.info["spacing"]["method_expects_mm"] == [1.0, 1.0, 1.0] and quiet.info["spacing"]["warning"] is None
    with pytest.warns(SpacingWarning, match=r"1 x 1 x 1 mm: '_Zero' expects 3 x 3 x 3 mm"):
        result = register(fixed, moving, _Zero(expected_spacing_mm=(3.0, 3.0, 3.0)), device="cpu",
                          output_dir=tmp_path / "out", qc=False)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["spacing"]["method_expects_mm"] == [3.0, 3.0, 3.0]
    assert summary["spacing"]["fixed_mm"] == [1.0, 1.0, 1.0] and summary["spacing"]["warning"].startswith("register():")
    assert result.info["spacing"] == summary["spacing"]
    # arrays carry no geometry: their spacing is unknown, so nothing is claimed about it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        register(fixed.as_tensor().numpy(), moving.as_tensor().numpy(), _Zero(expected_spacing_mm=3.0), device="cpu")
    assert not _spacing_warnings(caught)
    with pytest.raises(ValueError, match="expected_spacing_mm = -1.0"):
        register(fixed, moving, _Zero(expected_spacing_mm=-1.0), device="cpu")


def test_bundles_state_the_spacing_they_expect():
    for name in ("vxm_prob", "mdregnet"):
        assert methods.load_method(name, device="cpu").expected_spacing_mm == (1.0, 1.0, 1.0)
    # derived from the training spacing and the input scaling, so an override stays consistent
    native = methods.load_method("vxm_prob", device="cpu", **{"network_def#image_scale": 1.0})
    assert native.expected_spacing_mm == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="expected_spacing_mm"):
        methods.load_method("vxm_prob", device="cpu", expected_spacing_mm=-1.0)


@pytest.mark.slow
def test_anisotropic_pair_warns_through_the_api(anisotropic_pair):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = register(anisotropic_pair["fixed"], anisotropic_pair["moving"], "vxm_prob", device="cpu",
                          fixed_labels=anisotropic_pair["fixed_labels"],
                          moving_labels=anisotropic_pair["moving_labels"])
    found = _spacing_warnings(caught)
    assert len(found) == 1
    message = str(found[0].message)
    assert message.startswith("register(): the fixed image's voxels are 0.5 x 0.5 x 5 mm: strongly anisotropic")
    assert "'vxm_prob' expects 1 x 1 x 1 mm" in message and "resample_file_to_spacing(path, output, 1)" in message
    spacing = result.summary()["spacing"]  # the content of summary.json
    assert spacing["fixed_mm"] == [0.5, 0.5, 5.0] and spacing["method_expects_mm"] == [1.0, 1.0, 1.0]
    assert spacing["anisotropy"] == pytest.approx(10.0) and spacing["warning"] == message
    # the working grid is the file's (no silent resampling): outputs on the 0.5 x 0.5 x 5 mm grid
    assert tuple(result.ddf.shape[2:]) == (320, 384, 32)


@pytest.mark.slow
def test_isotropic_1mm_pair_does_not_warn():
    paths = sample_paths()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = register(str(paths["fixed"]), str(paths["moving"]), "vxm_prob", device="cpu")
    assert not _spacing_warnings(caught)
    assert result.info["spacing"]["fixed_mm"] == [1.0, 1.0, 1.0] and result.info["spacing"]["warning"] is None


@pytest.mark.slow
def test_anisotropic_pair_warning_is_one_cli_line(anisotropic_pair, tmp_path, capsys):
    code = main(["register", "--fixed", anisotropic_pair["fixed"], "--moving", anisotropic_pair["moving"],
                 "--bundle", "vxm_prob", "--device", "cpu", "--output-dir", str(tmp_path / "out"), "--no-qc"])
    assert code == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "voxels are" in line]
    assert len(lines) == 1
    assert lines[0].startswith("monai-diffreg: warning: register(): the fixed image's voxels are 0.5 x 0.5 x 5 mm")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["spacing"]["warning"] is not None


def test_resample_to_spacing_offers_the_fix(anisotropic_pair, tmp_path):
    out = io.resample_file_to_spacing(anisotropic_pair["fixed"], tmp_path / "fixed_1mm.nii.gz", 1.0)
    labels = io.resample_file_to_spacing(anisotropic_pair["fixed_labels"], tmp_path / "labels_1mm.nii.gz", 1.0,
                                         label=True)
    original = nib.load(str(sample_paths()["fixed"]))
    for path in (out, labels):
        image = nib.load(str(path))
        # the same field of view as the 1 mm original, on its voxel centres
        assert image.shape == original.shape
        np.testing.assert_allclose(image.affine, original.affine, atol=1e-6)
    values = np.unique(np.asarray(nib.load(str(labels)).dataobj))
    assert set(values.tolist()) <= {0, 1, 2}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        register(str(out), str(out), _Zero(expected_spacing_mm=1.0), device="cpu")
    assert not _spacing_warnings(caught)


def test_spacing_grid_keeps_directions_and_centre():
    affine = np.array([[0.0, -0.5, 0, 10], [0.5, 0, 0, -3], [0, 0, 5.0, 7], [0, 0, 0, 1]])
    new_affine, shape = io.spacing_grid(affine, (40, 30, 6), 1.0)
    assert shape == (20, 15, 30)
    np.testing.assert_allclose(np.linalg.norm(new_affine[:3, :3], axis=0), [1, 1, 1])
    np.testing.assert_allclose(new_affine[:3, :3] / [1, 1, 1], affine[:3, :3] / [0.5, 0.5, 5])
    centre = lambda a, s: a[:3, :3] @ ((np.array(s) - 1) / 2) + a[:3, 3]  # noqa: E731
    np.testing.assert_allclose(centre(new_affine, shape), centre(affine, (40, 30, 6)))
    image = torch.rand(1, 1, 8, 9, 10, dtype=torch.float64)
    same, same_affine = io.resample_to_spacing(image, np.eye(4), 1.0)  # already at that spacing: unchanged
    torch.testing.assert_close(same, image)
    with pytest.raises(ValueError, match="'spacing' must be a positive number"):
        io.spacing_grid(affine, (4, 4, 4), 0.0)


# ----------------------------------------------------------------------------------------- memory
def test_memory_estimate_is_calibrated():
    small = estimate_memory((160, 192, 160), [(160, 192, 160)])
    # the 512^3 pair with label maps, written to a folder: tens of GB, not silently attempted
    big = estimate_memory((512,) * 3, [(512,) * 3] * 3, labels=True, saved=True)
    assert 20e9 < big < 40e9 and small < 1e9
    assert estimate_memory((64,) * 3, saved=True) > estimate_memory((64,) * 3)
    assert estimate_memory((64,) * 3, labels=True) > estimate_memory((64,) * 3)
    # a method stating more working memory than the shipped networks adds the difference on the CPU only
    base = estimate_memory((100,) * 3)
    assert estimate_memory((100,) * 3, method_bytes_per_voxel=164) == base + 100 * 10**6
    assert estimate_memory((100,) * 3, method_bytes_per_voxel=164, method_on_cpu=False) == base
    assert estimate_memory((100,) * 3, method_bytes_per_voxel=10) == base


def test_available_memory_reads_the_system():
    available = input_checks.available_memory()
    if available is None:
        pytest.skip("no /proc/meminfo here: the memory check is off")
    assert 0 < available < 2**50


def test_memory_guard_fails_before_any_work(monkeypatch, tmp_path, anisotropic_pair):
    from monai_diffreg.transforms.dictionary import LoadRegistrationPaird

    monkeypatch.setattr(input_checks, "available_memory", lambda: 50 * 2**20)
    monkeypatch.setattr(LoadRegistrationPaird, "__call__", lambda *a, **k: pytest.fail("heavy work started"))
    method = _Zero()
    out = tmp_path / "out"
    with pytest.raises(InsufficientMemoryError) as info:
        register(anisotropic_pair["fixed"], anisotropic_pair["moving"], method, output_dir=out, device="cpu",
                 fixed_labels=anisotropic_pair["fixed_labels"])
    message = str(info.value)
    assert isinstance(info.value, MemoryError) and isinstance(info.value, ValueError) and "\n" not in message
    assert message.startswith("register(): not enough memory for a 320 x 384 x 32 fixed grid (3.9 M voxels) and a "
                              "320 x 384 x 32 moving image: the run needs about ")
    assert "0.1 GB is available" in message and "crop" in message and "resample_file_to_spacing" in message
    assert "MONAI_DIFFREG_MEMORY_CHECK=0" in message
    assert method.calls == 0 and not out.exists()


def test_memory_guard_can_be_skipped_and_is_off_without_meminfo(monkeypatch):
    fixed, moving = _blob_pair()
    monkeypatch.setattr(input_checks, "available_memory", lambda: 1)
    with pytest.raises(InsufficientMemoryError):
        register(fixed, moving, _Zero(), device="cpu")
    monkeypatch.setenv(input_checks.MEMORY_CHECK_ENV, "0")
    assert register(fixed, moving, _Zero(), device="cpu").info["memory"]["available_gb"] is None
    monkeypatch.delenv(input_checks.MEMORY_CHECK_ENV)
    monkeypatch.setattr(input_checks, "available_memory", lambda: None)  # not Linux: no check
    result = register(fixed, moving, _Zero(), device="cpu")
    assert result.info["memory"]["estimate_gb"] > 0


def test_memory_guard_counts_a_method_s_stated_memory(monkeypatch):
    fixed, moving = _blob_pair(shape=(64, 64, 64))
    plain = input_checks.estimate_memory((64,) * 3, [(64,) * 3])
    monkeypatch.setattr(input_checks, "available_memory", lambda: plain + 2**20)
    register(fixed, moving, _Zero(), device="cpu")
    with pytest.raises(InsufficientMemoryError):
        register(fixed, moving, _Zero(memory_bytes_per_voxel=1000), device="cpu")


def test_memory_guard_is_one_cli_line(monkeypatch, tmp_path, capsys, anisotropic_pair):
    monkeypatch.setattr(input_checks, "available_memory", lambda: 2**20)
    code = main(["register", "--fixed", anisotropic_pair["fixed"], "--moving", anisotropic_pair["moving"],
                 "--bundle", "vxm_prob", "--device", "cpu", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and not (tmp_path / "out").exists()
    assert [line for line in err if "not enough memory" in line][0].startswith(
        "monai-diffreg: error: register(): not enough memory for a 320 x 384 x 32 fixed grid")
    assert "Traceback" not in "\n".join(err)


def test_exports():
    assert monai_diffreg.SpacingWarning is SpacingWarning
    assert monai_diffreg.InsufficientMemoryError is InsufficientMemoryError
    assert issubclass(SpacingWarning, UserWarning)


# ----------------------------------------------------------------------------------------- resample_to_fixed
def _former_resample_to_fixed(moving, moving_affine, fixed_affine, fixed_shape, ddf=None, mode="bilinear",
                              padding_mode="zeros"):
    """io.resample_to_fixed before it worked in slabs: whole-grid float64 coordinates, inline voxel ->
    grid_sample maths (kept here as the reference the lean version must reproduce)."""
    ndim = moving.ndim - 2
    shape = tuple(int(s) for s in fixed_shape)
    a_m = io.spatial_affine(moving_affine, ndim)
    a_f = io.spatial_affine(fixed_affine, ndim)
    vox = np.linalg.solve(a_m, a_f)
    dtype = moving.dtype if moving.is_floating_point() else torch.float32
    data = torch.as_tensor(moving).to(dtype)
    points = identity_grid(shape, moving.device, torch.float64).unsqueeze(0)
    if ddf is not None:
        points = points + ddf.to(device=moving.device, dtype=torch.float64)
    lin = torch.as_tensor(vox[:ndim, :ndim], device=moving.device)
    off = torch.as_tensor(vox[:ndim, ndim], device=moving.device).view(1, ndim, *([1] * ndim))
    coords = torch.einsum("ij,bj...->bi...", lin, points) + off
    size = torch.tensor([2.0 / max(n - 1, 1) for n in moving.shape[2:]], dtype=torch.float64, device=moving.device)
    coords = coords * size.view(1, ndim, *([1] * ndim)) - 1.0
    grid = coords.permute(0, *range(2, ndim + 2), 1).flip(-1).to(dtype)
    if grid.shape[0] != data.shape[0]:
        grid = grid.expand(data.shape[0], *grid.shape[1:])
    return F.grid_sample(data, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def _oblique(ndim, seed):
    rng = np.random.default_rng(seed)
    a = np.eye(ndim + 1)
    q, _ = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    a[:ndim, :ndim] = q @ np.diag(rng.uniform(0.7, 1.4, ndim))
    a[:ndim, ndim] = rng.uniform(-20, 20, ndim)
    return a


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("slab", [None, 1, 100])
def test_resample_to_fixed_gives_the_former_results(monkeypatch, ndim, slab):
    if slab is not None:  # several slabs, down to one row each
        monkeypatch.setattr(io, "RESAMPLE_SLAB_VOXELS", slab)
    gen = torch.Generator().manual_seed(ndim)
    fixed_shape, moving_shape = ((23, 19, 17), (21, 25, 15)) if ndim == 3 else ((41, 37), (45, 33))
    moving_affine = _oblique(ndim, 1)
    fixed_affine = moving_affine @ np.linalg.inv(_oblique(ndim, 2)) @ _oblique(ndim, 3)  # overlapping, rotated
    for dtype in (torch.float32, torch.float64, torch.int16):
        moving = (torch.rand(1, 2, *moving_shape, generator=gen, dtype=torch.float64) * 9).to(dtype)
        for ddf in (None, 2.5 * torch.randn(1, ndim, *fixed_shape, generator=gen)):
            for mode in ("bilinear", "nearest"):
                for padding in ("zeros", "border"):
                    ours = io.resample_to_fixed(moving, moving_affine, fixed_affine, fixed_shape, ddf, mode=mode,
                                                padding_mode=padding)
                    former = _former_resample_to_fixed(moving, moving_affine, fixed_affine, fixed_shape, ddf, mode,
                                                       padding)
                    assert ours.dtype == former.dtype and torch.equal(ours, former), (dtype, mode, padding)


def test_resample_to_fixed_on_the_sample_is_unchanged():
    paths = sample_paths()
    moving = torch.as_tensor(np.asarray(nib.load(str(paths["moving"])).dataobj, dtype=np.float32))[None, None]
    fixed_affine = nib.load(str(paths["fixed"])).affine
    moving_affine = fixed_affine @ np.array([[0.9, 0.1, 0, 3], [-0.1, 1.1, 0, -2], [0, 0, 1, 1.5], [0, 0, 0, 1]])
    ddf = 3 * torch.sin(identity_grid((160, 192, 160), dtype=torch.float32) / 17).unsqueeze(0)
    ours = io.resample_to_fixed(moving, moving_affine, fixed_affine, (160, 192, 160), ddf)
    assert torch.equal(ours, _former_resample_to_fixed(moving, moving_affine, fixed_affine, (160, 192, 160), ddf))
