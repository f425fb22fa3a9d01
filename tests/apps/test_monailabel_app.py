"""The MONAI Label app served by a REAL MONAI Label server, called over real HTTP.

A server (``python -m monailabel.main start_server``, what the ``monailabel`` script runs) is
started on 127.0.0.1 with a free port and a temporary studies folder holding real NIfTI
images; the tests then call it with ``httpx`` like a viewer would. The server is always shut
down at the end (terminate, wait, kill).

Studies (built from ``../shared/data``; the module skips without it):

* ``anatomical``: the nibabel example head volume, ``(33, 41, 25)``, 2 mm, LAS, big-endian int16;
* ``anatomical_ras``: the same voxels re-oriented (axis 0 flipped, axes 0/2 swapped): a
  different file grid of the same anatomy;
* ``anatomical_1mm``: the same voxels each split into 2 x 2 x 2 voxels of 1 mm, which the app
  registers on its 2 mm working grid (exactly the original voxels);
* ``slice2d``: a 2D slice, to be rejected (the atlas is 3D).

The server runs the app's defaults except for fewer iterations and a larger cache
(:data:`FAST_CONF`), so the module stays within a few minutes on two busy CPU cores; the
Python API reference uses the same settings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("monailabel", reason="MONAI Label is not installed (make monailabel, see README)")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (it comes with the monailabel extra)")

from monai_diffreg.api import register  # noqa: E402
from monai_diffreg.apps import monailabel_app_dir  # noqa: E402
from monai_diffreg.apps.monailabel.lib.config import WORKING_SPACING_KEY, parse_conf  # noqa: E402
from monai_diffreg.apps.monailabel.lib.working_grid import to_working_grid  # noqa: E402
from monai_diffreg.io import load_displacement_field, resample_to_fixed  # noqa: E402
from monai_diffreg.methods import available_methods  # noqa: E402
from monai_diffreg.metrics import dice_per_label  # noqa: E402
from monai_diffreg.sample import sample_paths  # noqa: E402
from monai_diffreg.transforms.spatial import load_channel_first  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")]

STARTUP_SECONDS = 120
REQUEST_SECONDS = 300
METHOD = "svf_optim"
FAST_CONF = {"affine_options": '{"iterations": [10, 5]}', METHOD: '{"iterations": [10, 5]}', "cache_size": "4"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A MONAI Label server subprocess serving a copy of the app (see :func:`start_server`)."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def post(self, model: str, image: str | None = None, params: dict | None = None, output: str = "image",
             files: dict | None = None) -> httpx.Response:
        query = {"output": output, **({"image": image} if image else {})}
        data = {"params": json.dumps(params)} if params else None
        return httpx.post(f"{self.url}/infer/{model}", params=query, data=data, files=files, timeout=REQUEST_SECONDS)

    def info(self) -> dict:
        response = httpx.get(f"{self.url}/info/", timeout=REQUEST_SECONDS)
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


def start_server(folder: Path, studies: Path, conf: dict[str, str] | None = None) -> Server:
    """Start ``monailabel start_server`` on a copy of the app and wait until ``/info/`` answers.

    The app is copied into ``folder`` because MONAI Label creates ``model/``, ``logs/`` and
    ``bin/`` inside the app folder; ``main.py`` imports everything else from the package.
    """
    app = folder / "app"
    shutil.copytree(monailabel_app_dir(), app, ignore=shutil.ignore_patterns("__pycache__", "model", "logs", "bin"))
    port = _free_port()
    command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
               "--host", "127.0.0.1", "--port", str(port)]
    for key, value in (conf or {}).items():
        command += ["--conf", key, value]
    log = folder / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false"}
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=folder)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode}:\n{server.log_tail()}")
            try:
                if httpx.get(f"{server.url}/info/", timeout=5).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /info/ within {STARTUP_SECONDS} s:\n{server.log_tail()}")
            time.sleep(0.5)
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="module")
def studies(shared_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("studies")
    source = shared_data / "nibabel_tiny" / "anatomical.nii"
    if not source.is_file():
        pytest.skip(f"real data not available: {source} not found")
    img = nib.load(str(source))
    shutil.copy(source, folder / "anatomical.nii")
    # the same voxels on a re-oriented file grid: flip axis 0, swap axes 0 and 2
    data = np.asanyarray(img.dataobj)[::-1].transpose(2, 1, 0)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, img.shape[0] - 1
    swap = np.eye(4)[[2, 1, 0, 3]]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip @ swap),
             str(folder / "anatomical_ras.nii.gz"))
    fine = np.asanyarray(img.dataobj).repeat(2, 0).repeat(2, 1).repeat(2, 2)
    half = np.eye(4)
    half[:3, :3] *= 0.5
    half[:3, 3] = -0.25  # 1 mm voxel x lies at 2 mm voxel (x - 1/2) / 2
    nib.save(nib.Nifti1Image(fine, img.affine @ half), str(folder / "anatomical_1mm.nii.gz"))
    slice2d = np.asanyarray(img.dataobj)[:, :, img.shape[2] // 2].astype(np.float32)
    nib.save(nib.Nifti1Image(slice2d, img.affine), str(folder / "slice2d.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def server(studies, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("server"), studies, FAST_CONF)
    try:
        yield srv
    finally:
        srv.stop()


def python_api_labels(image_path: Path, method: str) -> torch.Tensor:
    """The same registration through the Python API: atlas labels on the image's grid.

    Uses the app's settings for ``method`` (:data:`FAST_CONF` over the defaults); the image is
    2 mm, so the app registers it on its own grid (checked).
    """
    config = parse_conf(FAST_CONF, [m.name for m in available_methods()])
    options = config.options_for(method)
    image = load_channel_first(image_path, "image", "test").float()
    spacing = options.pop(WORKING_SPACING_KEY, None)
    assert spacing is None or to_working_grid(image, spacing) is image
    paths = sample_paths()
    result = register(image, load_channel_first(paths["fixed"], "atlas", "test").float(), bundle=method,
                      moving_labels=load_channel_first(paths["fixed_labels"], "labels", "test"), affine=config.affine,
                      affine_metric=config.affine_metric, affine_options=config.affine_options, device="cpu",
                      **options)
    return result.warped_labels


def _load(content: bytes, folder: Path, name: str) -> nib.Nifti1Image:
    path = folder / name
    path.write_bytes(content)
    return nib.load(str(path))


def test_info_lists_one_task_per_method(server):
    info = server.info()
    expected = {f"atlas_propagation_{m.name}" for m in available_methods()} | {"register"}
    assert set(info["models"]) == expected
    names = info["models"][f"atlas_propagation_{METHOD}"]["labels"]
    assert names == {"grey matter": 1, "white matter": 2}  # the default atlas: the built-in sample
    assert info["atlas"]["label_names"] == names and info["labels"] == names
    assert info["models"][f"atlas_propagation_{METHOD}"]["type"] == "segmentation"


@pytest.mark.parametrize("method", [m.name for m in available_methods()])
def test_atlas_propagation_matches_python_api(server, studies, tmp_path, method):
    """``/infer/atlas_propagation_<method>`` for every method (``vxm_prob`` once its bundle exists)."""
    response = server.post(f"atlas_propagation_{method}", "anatomical")
    assert response.status_code == 200, response.text
    labels = _load(response.content, tmp_path, "labels.nii.gz")
    image = nib.load(str(studies / "anatomical.nii"))
    assert labels.shape == image.shape
    np.testing.assert_allclose(labels.affine, image.affine, atol=1e-5)
    data = np.asanyarray(labels.dataobj)
    names = server.info()["atlas"]["label_names"]
    assert set(np.unique(data).tolist()) == {0, *names.values()}  # every atlas label lands on the image
    served = torch.as_tensor(data.astype(np.int64))[None, None]
    reference = python_api_labels(studies / "anatomical.nii", method).as_tensor()
    dice = dice_per_label(served, reference, labels=sorted(names.values()))
    assert bool((dice >= 0.99).all()), f"Dice against the Python API {dice.tolist()}"

    params = server.post(f"atlas_propagation_{method}", "anatomical", output="json")
    assert params.status_code == 200, params.text
    body = params.json()
    assert body["label_names"] == names and body["method"] == method and body["cached"] is True


def test_label_map_follows_the_image_header(server, studies, tmp_path):
    """A re-oriented copy of the image gets the same labels, re-oriented the same way."""
    plain = server.post(f"atlas_propagation_{METHOD}", "anatomical")
    turned = server.post(f"atlas_propagation_{METHOD}", "anatomical_ras")
    assert plain.status_code == 200 and turned.status_code == 200, (plain.text, turned.text)
    a = np.asanyarray(_load(plain.content, tmp_path, "a.nii.gz").dataobj)
    b = _load(turned.content, tmp_path, "b.nii.gz")
    np.testing.assert_allclose(b.affine, nib.load(str(studies / "anatomical_ras.nii.gz")).affine, atol=1e-5)
    back = np.asanyarray(b.dataobj).transpose(2, 1, 0)[::-1]
    agree = float((back == a).mean())
    assert agree >= 0.99, f"labels of the re-oriented copy agree on {agree:.1%} of voxels"


def test_fine_image_is_registered_on_the_working_grid(server, studies, tmp_path):
    """A 1 mm image: registered on the 2 mm working grid, labels returned on its own 1 mm grid."""
    fine = server.post(f"atlas_propagation_{METHOD}", "anatomical_1mm")
    coarse = server.post(f"atlas_propagation_{METHOD}", "anatomical")
    assert fine.status_code == 200 and coarse.status_code == 200, (fine.text, coarse.text)
    fine_img = _load(fine.content, tmp_path, "fine.nii.gz")
    reference = nib.load(str(studies / "anatomical_1mm.nii.gz"))
    assert fine_img.shape == reference.shape
    np.testing.assert_allclose(fine_img.affine, reference.affine, atol=1e-5)
    params = server.post(f"atlas_propagation_{METHOD}", "anatomical_1mm", output="json").json()
    assert params["working_shape"] == list(nib.load(str(studies / "anatomical.nii")).shape)
    replicated = np.asanyarray(_load(coarse.content, tmp_path, "coarse.nii.gz").dataobj)
    replicated = replicated.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    agree = float((np.asanyarray(fine_img.dataobj) == replicated).mean())
    assert agree >= 0.9, f"1 mm labels agree with the 2 mm labels on {agree:.1%} of voxels"


def test_register_returns_warped_atlas_and_displacement_field(server, studies, tmp_path):
    image = nib.load(str(studies / "anatomical.nii"))
    warped = server.post("register", "anatomical", params={"method": METHOD})
    assert warped.status_code == 200, warped.text
    warped_img = _load(warped.content, tmp_path, "warped.nii.gz")
    assert warped_img.shape == image.shape
    np.testing.assert_allclose(warped_img.affine, image.affine, atol=1e-5)
    assert float(np.asanyarray(warped_img.dataobj).std()) > 0

    field = server.post("register", "anatomical", params={"method": METHOD, "result": "ddf"})
    assert field.status_code == 200, field.text
    (tmp_path / "ddf.nii.gz").write_bytes(field.content)
    ddf, affine = load_displacement_field(tmp_path / "ddf.nii.gz")
    assert tuple(ddf.shape) == (1, 3, *image.shape)
    np.testing.assert_allclose(affine, image.affine, atol=1e-5)
    # the served field applied to the atlas labels reproduces the served label map
    paths = sample_paths()
    atlas_labels = load_channel_first(paths["fixed_labels"], "labels", "test")
    mine = resample_to_fixed(atlas_labels.float()[None], atlas_labels.affine, image.affine, image.shape, ddf,
                             mode="nearest")
    labels = server.post(f"atlas_propagation_{METHOD}", "anatomical")
    served = np.asanyarray(_load(labels.content, tmp_path, "labels.nii.gz").dataobj)
    agree = float((mine[0, 0].round().numpy() == served).mean())
    assert agree >= 0.999, f"field-warped atlas labels agree with the served labels on {agree:.2%} of voxels"


def test_five_concurrent_requests_all_succeed(server, studies, tmp_path):
    """Five viewers at once: two upload the image (never cached: two registrations), three name it."""
    content = (studies / "anatomical.nii").read_bytes()
    calls = [
        lambda: server.post(f"atlas_propagation_{METHOD}", files={"file": ("scan0.nii", content)}),
        lambda: server.post(f"atlas_propagation_{METHOD}", files={"file": ("scan1.nii", content)}),
        lambda: server.post(f"atlas_propagation_{METHOD}", "anatomical"),
        lambda: server.post("register", "anatomical"),
        lambda: server.post("register", "anatomical", {"result": "ddf"}),
    ]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        responses = list(pool.map(lambda call: call(), calls))
    assert [r.status_code for r in responses] == [200] * 5, [r.text[:300] for r in responses]
    maps = [np.asanyarray(_load(r.content, tmp_path, f"{i}.nii.gz").dataobj) for i, r in enumerate(responses[:3])]
    assert maps[0].shape == nib.load(str(studies / "anatomical.nii")).shape
    for other in maps[1:]:
        assert float((other == maps[0]).mean()) >= 0.999


@pytest.mark.parametrize(
    "model, image, params, status, message",
    [
        (f"atlas_propagation_{METHOD}", "no_such_image", None, 404, "unknown image 'no_such_image'"),
        (f"atlas_propagation_{METHOD}", "slice2d", None, 422, "must be 3D like the atlas"),
        ("no_such_model", "anatomical", None, 404, "unknown model 'no_such_model'"),
        ("register", "anatomical", {"result": "pixels"}, 400, "'result' must be one of \\['warped', 'ddf'\\]"),
        ("register", "anatomical", {"method": "nope"}, 400, "'method' must be one of"),
        (f"atlas_propagation_{METHOD}", "anatomical", {"device": "gpu7"}, 400, "'gpu7' is not a device"),
    ],
)
def test_bad_request_gets_a_clear_4xx_and_the_server_keeps_serving(server, model, image, params, status, message):
    response = server.post(model, image, params)
    assert response.status_code == status, response.text
    assert re.search(message, response.json()["detail"]), response.json()
    assert server.process.poll() is None
    assert server.post(f"atlas_propagation_{METHOD}", "anatomical", output="json").status_code == 200


def test_atlas_misconfiguration_reaches_the_client(studies, tmp_path):
    """A missing atlas file: the server still starts, /info/ says why, infer answers 503 with the reason."""
    srv = start_server(tmp_path, studies, {"atlas_image": str(tmp_path / "missing.nii.gz"),
                                           "atlas_labels": str(tmp_path / "missing_labels.nii.gz")})
    try:
        info = srv.info()
        assert "missing.nii.gz" in info["atlas"]["error"]
        response = srv.post(f"atlas_propagation_{METHOD}", "anatomical")
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert "--conf settings are unusable" in detail and "'atlas_image' file not found" in detail
        assert srv.process.poll() is None and srv.info()["name"] == "monai_diffreg"
    finally:
        srv.stop()
    assert srv.process.returncode is not None
