"""The MONAI Label app's building blocks in-process: settings, atlas checks, error statuses.

These run without MONAI Label (the real-server tests are in ``test_monailabel_app.py``).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_diffreg.apps import monailabel_app_dir
from monai_diffreg.apps.monailabel.lib import errors
from monai_diffreg.apps.monailabel.lib.atlas import load_atlas, parse_label_names
from monai_diffreg.apps.monailabel.lib.config import DEFAULT_AFFINE_OPTIONS, DEFAULT_METHOD_OPTIONS, parse_conf
from monai_diffreg.apps.monailabel.lib.service import AtlasRegistrationService
from monai_diffreg.apps.monailabel.lib.working_grid import field_to_image_grid, to_working_grid, working_shape

METHODS = ("svf_optim", "vxm_prob")

pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")


def _write(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def atlas_files(tmp_path):
    """A 12^3 atlas: a bright cube labelled 1 inside a dimmer shell labelled 2, LAS 2 mm affine."""
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:10, 2:10, 2:10] = 2
    labels[4:8, 4:8, 4:8] = 1
    image = labels.astype(np.float32) * 50.0 + 1.0
    return _write(tmp_path / "atlas.nii.gz", image, affine), _write(tmp_path / "labels.nii.gz", labels, affine)


def test_app_dir_holds_main():
    assert (monailabel_app_dir() / "main.py").is_file()
    assert (monailabel_app_dir() / "lib" / "infers.py").is_file()


def test_parse_conf_defaults():
    config = parse_conf({}, METHODS)
    assert config.atlas_image is None and config.atlas_labels is None
    assert config.affine is True and config.cache_size == 2 and config.register_method == "svf_optim"
    assert config.options_for("svf_optim") == DEFAULT_METHOD_OPTIONS["svf_optim"]
    assert config.options_for("vxm_prob") == {}
    assert config.affine_options == DEFAULT_AFFINE_OPTIONS and config.affine_metric == "ncc"
    assert config.resolve_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_parse_conf_values():
    config = parse_conf({"atlas_image": "a.nii", "atlas_labels": "b.nii", "affine": "false", "cache_size": "0",
                         "device": "cpu", "svf_optim": '{"x": 3, "working_spacing_mm": 0}',
                         "register_method": "vxm_prob",
                         "vxm_prob": '{"working_spacing_mm": 3}', "affine_metric": "mi",
                         "affine_options": '{"iterations": [5, 5]}', "server_mode": "true"}, METHODS)
    assert config.atlas_image.name == "a.nii" and config.atlas_labels.name == "b.nii"
    assert config.affine is False and config.cache_size == 0 and config.device == "cpu"
    expected = {k: v for k, v in DEFAULT_METHOD_OPTIONS["svf_optim"].items() if k != "working_spacing_mm"}
    assert config.options_for("svf_optim") == {**expected, "x": 3}  # 0: the image's own grid
    assert config.options_for("vxm_prob") == {"working_spacing_mm": 3}
    assert config.affine_metric == "mi" and config.affine_options == {**DEFAULT_AFFINE_OPTIONS, "iterations": [5, 5]}
    assert config.register_method == "vxm_prob"


@pytest.mark.parametrize(
    "conf, match",
    [
        ({"atlas_image": "a.nii"}, "'atlas_image' is set but 'atlas_labels' is not"),
        ({"atlas_labels": "b.nii"}, "'atlas_labels' is set but 'atlas_image' is not"),
        ({"affine": "maybe"}, "'affine' must be true or false, got 'maybe'"),
        ({"cache_size": "many"}, "'cache_size' must be an integer >= 0, got 'many'"),
        ({"cache_size": "-1"}, "'cache_size' must be an integer >= 0, got -1"),
        ({"svf_optim": "[1, 2]"}, "'svf_optim' must be a JSON object, got '\\[1, 2\\]'"),
        ({"svf_optim": "{iterations: 3}"}, "'svf_optim' must be a JSON object"),
        ({"register_method": "nope"}, "'register_method' must be one of \\['svf_optim', 'vxm_prob'\\], got 'nope'"),
        ({"device": "gpu0"}, "'gpu0' is not a device"),
        ({"affine_metric": "dice"}, "'affine_metric' must be one of \\['ncc', 'mi', 'mse'\\], got 'dice'"),
        ({"affine_options": "5"}, "'affine_options' must be a JSON object, got '5'"),
        ({"svf_optim": '{"working_spacing_mm": -1}'}, "'working_spacing_mm' must be a number of mm > 0"),
        ({"svf_optim": '{"working_spacing_mm": "2"}'}, "'working_spacing_mm' must be a number of mm > 0"),
    ],
)
def test_parse_conf_errors(conf, match):
    with pytest.raises(ValueError, match=match):
        parse_conf(conf, METHODS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):
        parse_conf({"device": "cuda"}, METHODS)


def test_parse_label_names_both_directions(tmp_path):
    expected = {"grey_matter": 1, "white_matter": 2}
    assert parse_label_names('{"white_matter": 2, "grey_matter": 1}') == expected
    assert parse_label_names('{"1": "grey_matter", "2": "white_matter"}') == expected
    path = tmp_path / "names.json"
    path.write_text(json.dumps(expected))
    assert parse_label_names(str(path)) == expected
    assert list(parse_label_names({"b": 2, "a": 1})) == ["a", "b"]  # ordered by value


@pytest.mark.parametrize(
    "spec, match",
    [
        ("missing.json", "no such file"),
        ("{not json", "'atlas_label_names' must be a JSON object, got '{not json'"),
        ("{}", "is empty"),
        ('{"a": 0}', "positive integer, got 0"),
        ('{"a": 1.5}', "positive integer, got 1.5"),
        ('{"a": "x"}', "must be an integer, got 'x'"),
        ('{"a": 1, "b": 1}', "several names to the value\\(s\\) \\[1\\]"),
        ('{"1": "a", "2": "a"}', "repeats the name 'a'"),
    ],
)
def test_parse_label_names_errors(tmp_path, monkeypatch, spec, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=match):
        parse_label_names(spec)


def test_load_atlas(atlas_files):
    image, labels = atlas_files
    atlas = load_atlas(image, labels, '{"cube": 1, "shell": 2}')
    assert atlas.spatial_dims == 3 and tuple(atlas.image.shape) == (1, 12, 12, 12)
    assert atlas.labels.dtype == torch.int64 and atlas.label_names == {"cube": 1, "shell": 2}
    np.testing.assert_allclose(np.asarray(atlas.labels.affine), np.diag([-2.0, 2.0, 2.0, 1.0]))
    assert load_atlas(image, labels).label_names == {"label_1": 1, "label_2": 2}
    assert atlas.describe()["label_names"] == {"cube": 1, "shell": 2}


def test_load_atlas_errors(atlas_files, tmp_path):
    image, labels = atlas_files
    with pytest.raises(FileNotFoundError, match="'atlas_image' file not found"):
        load_atlas(tmp_path / "nope.nii.gz", labels)
    with pytest.raises(ValueError, match="unnamed value\\(s\\): \\[2\\]"):
        load_atlas(image, labels, '{"cube": 1}')
    with pytest.raises(ValueError, match="absent from 'atlas_labels': \\{'extra': 3\\}"):
        load_atlas(image, labels, '{"cube": 1, "shell": 2, "extra": 3}')
    shifted = _write(tmp_path / "shifted.nii.gz", nib.load(str(labels)).get_fdata().astype(np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="must have the affine of 'atlas_image'"):
        load_atlas(image, shifted)
    small = _write(tmp_path / "small.nii.gz", np.ones((6, 6, 6), np.uint8), np.diag([-2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="must have the shape of 'atlas_image' \\(12, 12, 12\\), got \\(6, 6, 6\\)"):
        load_atlas(image, small)
    empty = _write(tmp_path / "empty.nii.gz", np.zeros((12, 12, 12), np.uint8), np.diag([-2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="holds no foreground label"):
        load_atlas(image, empty)
    fractional = _write(tmp_path / "frac.nii.gz", np.full((12, 12, 12), 0.5, np.float32),
                        np.diag([-2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="must be a label map of integer values"):
        load_atlas(image, fractional)
    flat = _write(tmp_path / "flat.nii.gz", np.ones((12, 12, 12), np.float32), np.diag([-2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="'atlas_image' is constant"):
        load_atlas(flat, labels)


def test_request_error_statuses():
    assert errors.bad_request("x").status == 400
    assert errors.not_found("x").status == 404
    assert errors.unprocessable("x").status == 422
    error = errors.atlas_unavailable("no atlas")
    assert error.status == 503 and error.message == "no atlas" and str(error) == "no atlas"
    with pytest.raises(ValueError):
        errors.RequestError(999, "not an HTTP status")


def test_working_shape():
    assert working_shape((160, 192, 160), (1.0, 1.0, 1.0), 2.0) == (80, 96, 80)
    assert working_shape((33, 41, 25), (2.0, 2.0, 2.0), 2.0) == (33, 41, 25)  # already coarse enough
    assert working_shape((100, 100, 40), (1.5, 0.5, 4.0), 2.0) == (100, 25, 40)  # only axis 1 gains >= 1.5x
    assert working_shape((20, 300), (0.1, 0.1), 2.0) == (16, 16)  # at least MIN_WORKING_SIZE voxels
    with pytest.raises(ValueError, match="'spacing_mm' must be > 0, got 0"):
        working_shape((8, 8), (1.0, 1.0), 0)


def test_to_working_grid_undoes_voxel_splitting():
    """A 2 mm image whose voxels were split into 2x2x2 voxels of 1 mm: the working grid is the 2 mm one."""
    coarse_affine = np.array([[-2.0, 0, 0, 32], [0, 0, 2.0, -40], [0, 2.0, 0, -16], [0, 0, 0, 1]])  # oblique axes
    data = torch.rand(1, 16, 17, 18)
    half = np.eye(4)
    half[:3, :3] *= 0.5
    half[:3, 3] = -0.25
    fine = MetaTensor(data.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3),
                      affine=torch.as_tensor(coarse_affine @ half))
    work = to_working_grid(fine, 2.0)
    assert tuple(work.shape) == (1, 16, 17, 18)
    torch.testing.assert_close(work.as_tensor(), data)
    np.testing.assert_allclose(np.asarray(work.affine), coarse_affine, atol=1e-12)
    assert to_working_grid(work, 2.0) is work  # nothing to coarsen


def test_field_to_image_grid_keeps_the_physical_motion():
    """A constant displacement of t working voxels is r * t image voxels: the same millimetres."""
    image = MetaTensor(torch.rand(1, 32, 24, 16),
                       affine=torch.diag(torch.tensor([0.5, 1.0, 2.0, 1.0], dtype=torch.float64)))
    work = to_working_grid(image, 2.0)
    assert tuple(work.shape[1:]) == (16, 16, 16)  # ratios 2, 1.5 (kept at MIN_WORKING_SIZE) and 1
    shift = torch.tensor([0.75, -1.0, 2.0]).view(1, 3, 1, 1, 1)
    ddf = field_to_image_grid(shift.expand(1, 3, *work.shape[1:]).clone(), image.shape[1:])
    a_w, a_i = np.asarray(work.affine), np.asarray(image.affine)
    mm_work = a_w[:3, :3] @ shift.flatten().numpy()
    mm_image = a_i[:3, :3] @ ddf[0, :, 3, 4, 5].numpy()
    np.testing.assert_allclose(mm_image, mm_work, atol=1e-5)


@pytest.fixture(scope="module")
def service():
    return AtlasRegistrationService({"device": "cpu"})


def test_service_default_atlas_is_the_sample(service):
    assert service.error is None
    assert service.label_names == {"grey matter": 1, "white matter": 2}
    assert service.spatial_dims == 3 and "svf_optim" in service.methods
    assert service.describe()["image"] == "fixed.nii.gz"


def _status(call) -> tuple[int, str]:
    with pytest.raises(errors.RequestError) as info:
        call()
    return info.value.status, info.value.message


def test_service_rejects_bad_requests_with_statuses(service, tmp_path):
    _write(tmp_path / "flat.nii.gz", np.ones((12, 12, 12), np.float32))
    _write(tmp_path / "slice.nii.gz", np.random.rand(12, 14).astype(np.float32))
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    status, message = _status(lambda: service.register(str(tmp_path / "slice.nii.gz"), "svf_optim"))
    assert status == 422 and "'image' must be 3D like the atlas" in message and "(12, 14)" in message
    status, message = _status(lambda: service.register(str(tmp_path / "flat.nii.gz"), "svf_optim"))
    assert status == 422 and "'image' is constant" in message
    status, message = _status(lambda: service.register(str(tmp_path / "junk.nii.gz"), "svf_optim"))
    assert status == 422 and "could not read 'image'" in message
    status, message = _status(lambda: service.register(str(tmp_path), "svf_optim"))
    assert status == 422 and "is a folder" in message
    status, message = _status(lambda: service.register(str(tmp_path / "none.nii.gz"), "svf_optim"))
    assert status == 404 and "file not found" in message
    status, message = _status(lambda: service.register(str(tmp_path / "flat.nii.gz"), "nope"))
    assert status == 400 and "'method' must be one of" in message
    status, message = _status(lambda: service.register(str(tmp_path / "flat.nii.gz"), "svf_optim", "tpu"))
    assert status == 400 and "'tpu' is not a device" in message


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"atlas_image": "missing.nii.gz", "atlas_labels": "missing_labels.nii.gz"}, "'atlas_image' file not found"),
        ({"cache_size": "lots"}, "'cache_size' must be an integer"),
        ({"atlas_label_names": '{"grey": 1}'}, "unnamed value(s): [2]"),
        ({"svf_optim": '{"iteration": [1, 1]}'}, "unknown setting(s) ['iteration']"),
    ],
)
def test_service_keeps_configuration_errors_for_the_client(tmp_path, monkeypatch, conf, message):
    monkeypatch.chdir(tmp_path)
    broken = AtlasRegistrationService(conf)
    assert broken.atlas is None and message in broken.error
    assert broken.label_names == {} and broken.describe() == {"error": broken.error}
    status, text = _status(lambda: broken.register(str(tmp_path / "x.nii.gz"), "svf_optim"))
    assert status == 503 and text.startswith("the server's --conf settings are unusable") and message in text
