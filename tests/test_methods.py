"""Tests for monai_diffreg.methods: the method registry, bundle lookup and the method contract."""

from __future__ import annotations

import json

import pytest
import torch

from monai_diffreg import methods
from monai_diffreg.methods import (
    RegistrationMethod,
    available_methods,
    check_method_output,
    load_method,
    resolve_bundle,
    shared_method,
)

TOY_CONFIG = {
    "imports": ["$import torch"],
    "device": "$torch.device('cpu')",
    "shift": 1.0,
    "method": "$lambda fixed, moving: {'ddf': torch.full((1, fixed.ndim - 2, *fixed.shape[2:]), float(@shift), "
              "device=@device), 'root': @bundle_root}",
}


def write_toy_bundle(root, name="toy_bundle", config=None):
    """A minimal bundle whose method returns a constant shift (no network, no weights)."""
    folder = root / name
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "inference.json").write_text(json.dumps(config or TOY_CONFIG))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"name": name, "description": "toy shift\nmore"}))
    return folder


@pytest.fixture
def bundle_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_DIFFREG_BUNDLES", str(tmp_path))
    write_toy_bundle(tmp_path)
    return tmp_path


def test_available_methods_lists_builtin_and_bundles(bundle_dir):
    infos = {info.name: info for info in available_methods()}
    assert infos["svf_optim"].kind == "builtin"
    assert infos["toy_bundle"].kind == "bundle"
    assert infos["toy_bundle"].description == "toy shift"
    assert infos["toy_bundle"].location == str(bundle_dir / "toy_bundle")


def test_resolve_bundle_by_name_and_path(bundle_dir):
    assert resolve_bundle("toy_bundle") == bundle_dir / "toy_bundle"
    assert resolve_bundle(bundle_dir / "toy_bundle") == (bundle_dir / "toy_bundle").resolve()
    with pytest.raises(ValueError, match=r"resolve_bundle\(\): 'name' is not a known method or bundle: 'nope'; available: svf_optim.*toy_bundle"):
        resolve_bundle("nope")


def test_search_paths_are_the_package_bundles_then_the_checkouts(monkeypatch):
    monkeypatch.delenv("MONAI_DIFFREG_BUNDLES", raising=False)
    package = methods.Path(methods.__file__).resolve().parent
    assert methods.bundle_search_paths() == [package / "bundles", package.parent / "bundles"]
    monkeypatch.setenv("MONAI_DIFFREG_BUNDLES", "/a" + methods.os.pathsep + "/b")
    assert methods.bundle_search_paths()[:2] == [methods.Path("/a"), methods.Path("/b")]


def test_load_bundle_method_with_overrides(bundle_dir):
    method = load_method("toy_bundle", device="cpu", shift=2.5)
    assert isinstance(method, RegistrationMethod)
    fixed = torch.zeros(1, 1, 4, 5, 6)
    out = method(fixed, fixed)
    torch.testing.assert_close(out["ddf"], torch.full((1, 3, 4, 5, 6), 2.5))
    assert out["root"] == str(bundle_dir / "toy_bundle")
    with pytest.raises(ValueError, match=r"option\(s\) \['nonsense'\] are not ids of toy_bundle"):
        load_method("toy_bundle", nonsense=1)


def test_shared_method_reuses_the_object_until_the_bundle_changes(bundle_dir):
    """Same bundle, device and options: one object; other options or a changed config file: a new one."""
    first = shared_method("toy_bundle", device="cpu", shift=2.5)
    assert shared_method("toy_bundle", device="cpu", shift=2.5) is first
    other = shared_method("toy_bundle", device="cpu", shift=1.5)
    assert other is not first
    fixed = torch.zeros(1, 1, 3, 4)
    torch.testing.assert_close(other(fixed, fixed)["ddf"], torch.full((1, 2, 3, 4), 1.5))
    config = bundle_dir / "toy_bundle" / "configs" / "inference.json"
    config.write_text(json.dumps({**TOY_CONFIG, "shift": 7.0}))
    methods.os.utime(config, ns=(1, 1))  # a new stamp even within the file system's time resolution
    changed = shared_method("toy_bundle", device="cpu")
    torch.testing.assert_close(changed(fixed, fixed)["ddf"], torch.full((1, 2, 3, 4), 7.0))
    assert shared_method("svf_optim") is not shared_method("svf_optim")  # built-in methods: built each time


def test_load_method_errors(bundle_dir, tmp_path):
    with pytest.raises(ValueError, match=r"load_method\(\): 'name_or_path' is not a known method or bundle: 'vxm_nope'; available: .*svf_optim"):
        load_method("vxm_nope")
    broken = write_toy_bundle(tmp_path / "other", "broken", config={"x": 1})
    with pytest.raises(ValueError, match="defines no id 'method'"):
        load_method(broken)
    with pytest.raises(ValueError, match=r"load_method\(\): bad option\(s\) \['not_an_option'\] for 'svf_optim': .*unknown setting"):
        load_method("svf_optim", not_an_option=3)


def test_builtin_svf_optim_runs_on_normalised_inputs():
    """svf_optim recovers a smooth deformation of a small volume; intensities in any range work."""
    from monai_diffreg.functional import integrate_velocity, warp

    grids = torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij")
    fixed = sum(torch.sin(g / 3.0 + k) for k, g in enumerate(grids))[None, None] * 500.0 + 1000.0
    velocity = torch.zeros(1, 3, 16, 16, 16)
    velocity[:, 0] = 1.5 * torch.sin(grids[1] * 3.1416 / 15)
    moving = warp(fixed, integrate_velocity(velocity))
    method = load_method("svf_optim", levels=(2, 1), iterations=(20, 10), learning_rate=0.2)
    out = check_method_output(method(fixed, moving), fixed, "svf_optim")
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    before = (moving - fixed)[inner].abs().mean()
    after = (warp(moving, out["ddf"]) - fixed)[inner].abs().mean()
    assert after < 0.3 * before  # measured 0.08
    assert set(out) >= {"ddf", "inverse_ddf", "velocity"}


def test_check_method_output():
    fixed = torch.zeros(1, 1, 4, 4)
    good = {"ddf": torch.zeros(1, 2, 4, 4), "uncertainty": torch.ones(1, 1, 4, 4), "extra": "ignored"}
    assert check_method_output(good, fixed, "m")["extra"] == "ignored"
    with pytest.raises(ValueError, match="method 'm' must return a dict with key 'ddf', got tuple"):
        check_method_output((torch.zeros(1, 2, 4, 4),), fixed, "m")
    with pytest.raises(ValueError, match=r"returned 'inverse_ddf' of shape \(1, 3, 4, 4\), expected \(1, 2, 4, 4\)"):
        check_method_output({"ddf": torch.zeros(1, 2, 4, 4), "inverse_ddf": torch.zeros(1, 3, 4, 4)}, fixed, "m")
    with pytest.raises(ValueError, match="returned a non-finite 'ddf'"):
        check_method_output({"ddf": torch.full((1, 2, 4, 4), float("nan"))}, fixed, "m")


@pytest.mark.parametrize("options, error, match", [
    ({"refine": "quick"}, ValueError, r"NetworkRegistration\(\): 'refine' must be one of \['none', 'fast'\], got 'quick'"),
    ({"refine_steps": -1}, ValueError, r"'refine_steps' must be an integer >= 0, got -1"),
    ({"method#weights": "/nonexistent/model.pt"}, FileNotFoundError, r"'weights' file not found: '/nonexistent/model.pt'"),
])
def test_bad_bundle_options_raise_the_packages_own_error(options, error, match):
    """MONAI's config parser wraps component errors in RuntimeErrors; load_method raises the cause itself."""
    with pytest.raises(error, match=match):
        load_method("vxm_prob", device="cpu", **options)


def test_register_method_is_the_public_way_to_add_a_method():
    """A tiny test-only method added with register_method is listed, loaded with its options, and rejected
    cleanly when misused; nothing else in the package is edited to add it."""
    from monai_diffreg import methods

    class Shift:
        """constant one-voxel shift (test)"""

        def __init__(self, amount=1.0):
            self.amount = amount

        def __call__(self, fixed, moving):
            ddf = torch.zeros(1, fixed.ndim - 2, *fixed.shape[2:])
            ddf[:, 0] = self.amount
            return {"ddf": ddf}

    methods.register_method("test_shift", Shift)
    try:
        info = {m.name: m for m in methods.available_methods()}["test_shift"]
        assert info.kind == "builtin" and info.description == "constant one-voxel shift (test)"
        assert methods.load_method("test_shift", amount=2.0).amount == 2.0
        with pytest.raises(ValueError, match=r"bad option\(s\) \['speed'\] for 'test_shift'"):
            methods.load_method("test_shift", speed=3)
        with pytest.raises(ValueError, match=r"'test_shift' is already registered"):
            methods.register_method("test_shift", Shift)
        methods.register_method("test_shift", Shift, "replaced", replace=True)
        assert {m.name: m for m in methods.available_methods()}["test_shift"].description == "replaced"
    finally:
        methods.unregister_method("test_shift")
    assert "test_shift" not in {m.name for m in methods.available_methods()}
    with pytest.raises(ValueError, match=r"'name' must be a non-empty name"):
        methods.register_method("a b", Shift)
    with pytest.raises(ValueError, match=r"'factory' must be callable"):
        methods.register_method("x", 3)


def test_methods_of_other_packages_come_through_entry_points(monkeypatch):
    """An installed package's 'monai_diffreg.methods' entry point is listed without importing it, loaded on use."""
    from importlib import metadata

    from monai_diffreg import methods

    point = metadata.EntryPoint("ep_identity", "monai_diffreg.methods:PercentileNormalised", methods.ENTRY_POINT_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [point] if group == methods.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(methods, "_entry_points_loaded", False)
    monkeypatch.setattr(methods, "BUILTIN_METHODS", {**methods.BUILTIN_METHODS})
    info = {m.name: m for m in methods.available_methods()}["ep_identity"]
    assert "monai_diffreg.methods:PercentileNormalised" in info.description
    loaded = methods.load_method("ep_identity", method=lambda f, m: {"ddf": f})
    assert isinstance(loaded, methods.PercentileNormalised)
