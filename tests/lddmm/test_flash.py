"""FLASH registration: energy terms, recovery of a deformation drawn from its own model, the built-in
method "flash" through the method contract, bad options."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from monai_diffreg.functional import compose_ddf, jacobian_determinant, warp
from monai_diffreg.functional import invert_ddf
from monai_diffreg.lddmm import FLASHRegistration, band_operators, band_to_ddf, flash_energy, flash_register, shoot_maps
from monai_diffreg.lddmm.flash import prior_energy
from monai_diffreg.lddmm.fourier import band_to_spatial, hermitian_part
from monai_diffreg.methods import check_method_output, load_method
from monai_diffreg.metrics.jacobian import folding_percentage


def blobs(shape, seed=0):
    """A smooth textured image ``(1, 1, *shape)`` in [0, 1] (sum of Gaussian blobs)."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    image = torch.zeros(shape, dtype=torch.float64)
    for _ in range(12):
        centre = [float(0.2 * n + 0.6 * n * torch.rand(1, generator=g)) for n in shape]
        width = 0.06 * min(shape) + 0.06 * min(shape) * float(torch.rand(1, generator=g))
        image = image + torch.exp(-sum((x - c) ** 2 for x, c in zip(grids, centre)) / (2 * width ** 2))
    return (image / image.max())[None, None].float()


def deformation(shape, amplitude, seed=1):
    """Band coefficients of a smooth v_0 (|k| <= 2) and its phi_1^-1 displacement in voxels."""
    ops = band_operators(shape, 3.0, 15, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    c = torch.zeros(1, len(shape), *ops.band, dtype=torch.complex128)
    window = tuple(slice(t // 2 - 2, t // 2 + 3) for t in ops.band)
    noise = torch.complex(torch.randn(1, len(shape), *[5] * len(shape), generator=g, dtype=torch.float64),
                          torch.randn(1, len(shape), *[5] * len(shape), generator=g, dtype=torch.float64))
    c[(slice(None), slice(None), *window)] = amplitude * noise
    c = hermitian_part(c)
    inverse, _ = shoot_maps(c, ops, forward=False)
    return c, band_to_ddf(inverse, ops).float()


def test_energy_terms_match_their_spatial_definitions():
    shape = (24, 20)
    ops = band_operators(shape, 2.0, 9, dtype=torch.float64)
    v0 = hermitian_part(torch.randn(1, 2, 9, 9, dtype=torch.complex128, generator=torch.Generator().manual_seed(2)) * 0.01)
    fixed, moving = blobs(shape).double(), blobs(shape, seed=1).double()
    out = flash_energy(v0, fixed, moving, ops, sigma=0.1)
    # prior: the voxel sum of v . L v computed in the spatial domain (L applied as its symbol to each component)
    spatial = band_to_spatial(v0, shape)
    l_v = band_to_spatial(ops.regularization * v0, shape)
    assert torch.allclose(prior_energy(v0, ops), 0.5 * (spatial * l_v).sum().reshape(1), rtol=1e-10)
    assert torch.allclose(out["image"], ((warp(moving, out["ddf"]) - fixed) ** 2).sum().reshape(1) / (2 * 0.01), rtol=1e-6)
    assert torch.allclose(out["total"], out["image"] + out["prior"])


def test_recovers_a_deformation_of_its_own_model():
    shape = (48, 48)
    fixed = blobs(shape)
    _, truth = deformation(shape, 0.03)
    moving = warp(fixed, invert_ddf(truth, iterations=30))
    result = flash_register(fixed, moving, alpha=1.0, sigma=0.01, iterations=(100, 50))
    history = result["history"]
    for level in (0, 1):  # monotone descent within each level (the levels' energies differ)
        losses = [h["loss"] for h in history if h["level"] == level]
        assert losses and all(b <= a for a, b in zip(losses, losses[1:]))
    before = float((moving - fixed).abs().mean())
    after = float((result["warped"] - fixed).abs().mean())
    assert after < 0.25 * before  # measured 0.12 (mean |truth| 0.6 voxel)
    assert jacobian_determinant(result["ddf"]).min() > 0
    # the returned inverse composes with the forward field to about the identity
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    assert compose_ddf(result["ddf"], result["inverse_ddf"])[inner].abs().max() < 0.05
    assert result["initial_velocity"].shape == (1, 2, 15, 15)


def test_registration_does_not_depend_on_the_orientation_of_the_pair():
    """Flipped or turned pairs register to the flipped or turned result: the image term differentiates
    the warp symmetrically (``warp(..., displacement_gradient="symmetric")``); with the one-sided derivative
    that float rounding picks at the identity, a bull's-eye pair ended at energies 4.9 or 10.7 by orientation."""
    shape = (40, 40)
    fixed = (blobs(shape) > 0.5).float() * 0.5 + (blobs(shape) > 0.8).float() * 0.5  # sharp edges
    _, truth = deformation(shape, 0.03)
    moving = warp(fixed, truth)
    settings = {"alpha": 2.0, "sigma": 0.03, "levels": (1,), "iterations": (25,)}
    reference = flash_register(fixed, moving, **settings)
    for transform, field_back in (
        (lambda x: x.flip(3), lambda u: torch.stack([u[:, 0], -u[:, 1]], 1).flip(3)),
        (lambda x: x.flip(2), lambda u: torch.stack([-u[:, 0], u[:, 1]], 1).flip(2)),
        (lambda x: x.transpose(2, 3), lambda u: u.flip(1).transpose(2, 3)),
    ):
        result = flash_register(transform(fixed), transform(moving), **settings)
        assert float(result["energy"]) == pytest.approx(float(reference["energy"]), rel=1e-3)
        assert (field_back(result["ddf"]) - reference["ddf"]).abs().max() < 0.02 * reference["ddf"].abs().max()


def test_levels_carry_the_same_field_and_the_coarse_level_does_most_of_the_work():
    """Band coefficients are in physical units, so a coarse level's result is a good start for the next: the
    two-level schedule reaches about the single-level energy, and the coarse level alone already most of the way."""
    shape = (48, 48)
    fixed = blobs(shape)
    _, truth = deformation(shape, 0.03)
    moving = warp(fixed, invert_ddf(truth, iterations=30))
    options = {"alpha": 1.0, "sigma": 0.01, "inverse": False}
    single = flash_register(fixed, moving, levels=(1,), iterations=(150,), **options)
    pyramid = flash_register(fixed, moving, levels=(2, 1), iterations=(100, 30), **options)
    coarse_only = flash_register(fixed, moving, levels=(2, 1), iterations=(100, 0), **options)
    start = flash_register(fixed, moving, levels=(1,), iterations=(0,), **options)
    e_single, e_pyramid = float(single["energy"]), float(pyramid["energy"])
    e_coarse, e_start = float(coarse_only["energy"]), float(start["energy"])
    assert e_pyramid < 1.05 * e_single
    assert (e_start - e_coarse) > 0.8 * (e_start - e_single)
    assert {h["level"] for h in pyramid["history"]} == {0, 1}


def test_larger_alpha_gives_a_smoother_smaller_field():
    shape = (40, 40)
    fixed = blobs(shape)
    _, truth = deformation(shape, 0.01, seed=3)
    moving = warp(fixed, truth)
    soft = flash_register(fixed, moving, alpha=0.5, sigma=0.05, levels=(1,), iterations=(40,), inverse=False)
    stiff = flash_register(fixed, moving, alpha=50.0, sigma=0.05, levels=(1,), iterations=(40,), inverse=False)
    assert "inverse_ddf" not in soft
    assert stiff["ddf"].abs().mean() < soft["ddf"].abs().mean()
    assert float(stiff["energy"]) > 0 and math.isfinite(float(soft["energy"]))


def test_builtin_method_flash_through_the_contract():
    shape = (20, 20, 20)
    fixed = blobs(shape) * 800 + 100  # any intensity range: the method normalises
    _, truth = deformation(shape, 0.006, seed=4)
    moving = warp(fixed, truth)
    method = load_method("flash", alpha=0.5, sigma=0.01, iterations=[20, 10], truncation=7)
    out = check_method_output(method(fixed, moving), fixed, "flash")
    assert out["ddf"].shape == (1, 3, *shape) and out["inverse_ddf"].shape == (1, 3, *shape)
    assert (warp(moving, out["ddf"]) - fixed).abs().mean() < 0.5 * (moving - fixed).abs().mean()


@pytest.mark.parametrize("options, message", [
    ({"alpha": 0.0}, "'alpha' must be"),
    ({"sigma": -1.0}, "'sigma' must be"),
    ({"iterations": [-2, 1]}, "'iterations'"),
    ({"iterations": 5}, "'iterations'"),
    ({"levels": [0.5, 1]}, "'levels'"),
    ({"truncation": 0}, "truncation"),
    ({"integrator": "leapfrog"}, "integrator"),
])
def test_bad_options_are_one_clear_error(options, message):
    fixed = blobs((16, 16))
    with pytest.raises(ValueError, match=message):
        flash_register(fixed, fixed.flip(-1), **{"iterations": [2, 2], **options})


def test_settings_holder_rejects_unknown_settings():
    with pytest.raises(TypeError, match="unknown setting"):
        FLASHRegistration(lambda_=3)
    assert "alpha=6.0" in repr(FLASHRegistration(alpha=6.0))


def test_alpha_map_estimates_alpha_and_reports_it_in_the_summary():
    shape = (32, 32)
    fixed = blobs(shape)
    _, truth = deformation(shape, 0.02, seed=5)
    method = FLASHRegistration(alpha="map", sigma=0.01, truncation=7, iterations=[40, 20])
    out = check_method_output(method(fixed, warp(fixed, truth)), fixed, "flash")
    summary = out["summary"]
    assert summary["alpha_source"] == "map" and summary["alpha_estimation_curvature"] == "full"
    assert 1e-3 <= summary["alpha"] <= 1e3 and summary["alpha"] != 3.0  # moved from its start
    assert summary["prior_scale"] != 1.0 and summary["effective_sigma"] == pytest.approx(0.01 * summary["prior_scale"] ** 0.5)
    assert summary["folding_percent"] == pytest.approx(float(folding_percentage(out["ddf"])))
    given = check_method_output(FLASHRegistration(alpha=2.0, truncation=7, iterations=[2, 2])(fixed, fixed.flip(-1)),
                                fixed, "flash")
    assert given["summary"] == {"alpha": 2.0, "alpha_source": "given"}


def test_alpha_map_passes_its_estimation_settings_to_the_estimate():
    """``estimation`` reaches the estimate: the paper's model (``tau`` fixed at 1) keeps the prior scale and the
    noise level; every keyword of the estimate is either the holder's own setting or an estimation setting."""
    import inspect

    from monai_diffreg.lddmm.flash import ESTIMATION_SETTINGS
    from monai_diffreg.lddmm.regularization import estimate_regularization

    own = {"sigma", "truncation", "num_steps", "integrator", "memory", "progress", "tolerance", "spacing", "iterations",
           "callback"}
    keywords = set(inspect.signature(estimate_regularization).parameters) - {"fixed", "moving"}
    assert set(ESTIMATION_SETTINGS) == keywords - own and not set(ESTIMATION_SETTINGS) & own
    shape = (24, 24)
    fixed = blobs(shape)
    _, truth = deformation(shape, 0.02, seed=5)
    method = FLASHRegistration(alpha="map", sigma=0.01, truncation=7, iterations=[20, 5],
                               estimation={"estimate_scale": False, "prior_scale": 1.0, "alpha": 2.0})
    assert "estimation={'estimate_scale': False" in repr(method)
    summary = method(fixed, warp(fixed, truth))["summary"]
    assert summary["prior_scale"] == 1.0 and summary["effective_sigma"] == pytest.approx(0.01)


@pytest.mark.parametrize("settings, error, message", [
    ({"alpha": 3.0, "estimation": {"warmup": 5}}, ValueError, "'estimation' applies to alpha='map' only"),
    ({"alpha": "map", "estimation": {"sigma": 0.1}}, TypeError, "unknown 'estimation' setting\\(s\\) \\['sigma'\\]"),
    ({"alpha": "map", "estimation": [("warmup", 5)]}, TypeError, "'estimation' must be a dict"),
])
def test_bad_estimation_settings_are_one_clear_error(settings, error, message):
    with pytest.raises(error, match=message):
        FLASHRegistration(**settings)


@pytest.mark.parametrize("folding, warns", [(0.0, False), (0.01, False), (5.0, True)])
def test_alpha_map_warns_when_its_field_folds(monkeypatch, folding, warns):
    """Above MAP_FOLDING_WARNING_PERCENT of folded voxels alpha="map" warns once, naming the share, the estimate and
    the fixed default; the summary records the share either way (the folding itself is stood in for: the estimate
    folds on brains, not on a small test pair)."""
    import monai_diffreg.lddmm.flash as flash

    monkeypatch.setattr(flash, "folding_percentage", lambda ddf: torch.full((ddf.shape[0],), folding))
    shape = (16, 16)
    fixed = blobs(shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = FLASHRegistration(alpha="map", truncation=5, iterations=[6, 2])(fixed, fixed.roll(1, -1))
    found = [w for w in caught if issubclass(w.category, flash.MapFoldingWarning)]
    assert out["summary"]["folding_percent"] == pytest.approx(folding)
    assert len(found) == (1 if warns else 0)
    if warns:
        message = str(found[0].message)
        assert "5.00 % of voxels" in message and f"alpha {out['summary']['alpha']:.3g}" in message and "alpha=10" in message


def test_contract_rejects_a_summary_that_is_not_json():
    fixed = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="'summary' that is not a JSON object"):
        check_method_output({"ddf": torch.zeros(1, 2, 4, 4), "summary": {"alpha": float("nan")}}, fixed, "m")
    with pytest.raises(ValueError, match="'summary' that is not a dict"):
        check_method_output({"ddf": torch.zeros(1, 2, 4, 4), "summary": [1, 2]}, fixed, "m")


def test_cli_estimate_regularization_prints_json(tmp_path, capsys):
    import json

    import nibabel as nib
    import numpy as np

    from monai_diffreg.cli import main

    shape = (20, 20, 20)
    fixed = blobs(shape)
    _, truth = deformation(shape, 0.004, seed=6)
    paths = {}
    for name, image in (("fixed", fixed), ("moving", warp(fixed, truth))):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(image[0, 0].numpy().astype(np.float32), np.eye(4)), paths[name])
    status = main(["estimate-regularization", "--fixed", str(paths["fixed"]), "--moving", str(paths["moving"]),
                   "--option", "truncation=5", "--option", "iterations=[5, 5]"])
    assert status == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["alpha_source"] == "map" and 1e-3 <= printed["alpha"] <= 1e3 and printed["seconds"] > 0
    assert printed["alpha_estimation_curvature"] == "full"  # 3 x 5^3 = 375 band modes
    assert main(["estimate-regularization", "--fixed", str(paths["fixed"]), "--moving", str(paths["moving"]),
                 "--option", "truncation=5", "--option", "iterations=[5, 5]",
                 "--option", 'estimation={"estimate_scale": false, "prior_scale": 1}']) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["prior_scale"] == 1  # the paper's tau, kept
    assert main(["estimate-regularization", "--fixed", str(paths["fixed"]), "--moving", str(tmp_path / "nope.nii.gz")]) == 1
    message = capsys.readouterr().err.strip()
    assert message.endswith("estimate-regularization: --moving file not found: " + repr(str(tmp_path / "nope.nii.gz")))
    assert len(message.splitlines()) == 1 and "register" not in message


def test_cli_estimate_regularization_shows_progress_on_a_terminal(tmp_path, monkeypatch, capsys):
    """The estimate takes minutes on a brain: on a terminal the command turns FLASH's progress bar on (unless
    ``--option progress=false``); piped, it stays off."""
    import json
    import sys

    import monai_diffreg.api as api
    from monai_diffreg.cli import main

    calls = []

    class Result:
        info = {"method_summary": {"alpha": 3.0, "alpha_source": "map"}}
        timings = {"registration": 1.0}

    def fake_register(*args, **kwargs):
        calls.append(kwargs)
        return Result()

    monkeypatch.setattr(api, "register", fake_register)
    files = [tmp_path / "f.nii.gz", tmp_path / "m.nii.gz"]
    for path in files:
        path.touch()  # the command checks they exist; the stand-in register reads nothing
    for tty, extra, expected in ((True, [], True), (False, [], False), (True, ["--option", "progress=false"], False)):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        assert main(["estimate-regularization", "--fixed", str(files[0]), "--moving", str(files[1]), *extra]) == 0
        assert calls[-1]["progress"] is expected and calls[-1]["alpha"] == "map"
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["alpha"] == 3.0
