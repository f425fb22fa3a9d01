"""Tests for the classical SVF optimisation engine and the per-instance refinement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_diffreg.engines.svf_optim import SVFRegistration, optimise_svf, refine_velocity
from monai_diffreg.functional import compose_ddf, integrate_velocity, jacobian_determinant, resize_field, resize_image, warp
from monai_diffreg.losses import gradient_loss, local_ncc_loss


def _pair(phantom, smooth_velocity, shape, amplitude):
    """Fixed phantom, true velocity and moving = fixed o exp(-v), so that moving o exp(v) = fixed."""
    fixed = phantom(shape)
    velocity = smooth_velocity(shape, amplitude).float()
    moving = warp(fixed, integrate_velocity(-velocity))
    return fixed, moving, velocity


def _end_point_error(ddf: torch.Tensor, velocity: torch.Tensor, fixed: torch.Tensor) -> tuple[float, float]:
    """Mean end-point error inside the object, and the mean true displacement there (voxels)."""
    truth = integrate_velocity(velocity)
    inside = fixed[0, 0] > 0
    return float((ddf - truth).norm(dim=1)[0][inside].mean()), float(truth.norm(dim=1)[0][inside].mean())


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


# Measured (CPU, float32, default smoothing_sigma=2): 2D mean squared error reduced 96x,
# end-point error inside the object 0.31 of the mean true displacement (3.8 voxels; the rest
# lies along iso-intensity directions, which no image term constrains), det J >= 0.72,
# |exp(v) o exp(-v) - id| 0.009 voxel; 3D 42x and 0.33 (2.1 voxels), det J >= 0.53.
# The bounds leave a margin of about 2.
def test_recovers_2d_deformation(phantom, smooth_velocity):
    fixed, moving, velocity = _pair(phantom, smooth_velocity, (64, 64), amplitude=4.0)
    result = optimise_svf(fixed, moving, levels=(4, 2, 1), iterations=(100, 50, 30))
    assert set(result) == {"velocity", "ddf", "inverse_ddf", "warped", "history"}
    for key in ("velocity", "ddf", "inverse_ddf"):
        assert result[key].shape == (1, 2, 64, 64) and result[key].dtype == torch.float32
    assert _mse(result["warped"], fixed) < _mse(moving, fixed) / 40
    error, displacement = _end_point_error(result["ddf"], velocity, fixed)
    assert error < 0.5 * displacement
    assert jacobian_determinant(result["ddf"]).min() > 0
    # the inverse is exp(-v): composing both is close to the identity inside the object
    round_trip = compose_ddf(result["ddf"], result["inverse_ddf"]).norm(dim=1)[0][fixed[0, 0] > 0]
    assert round_trip.mean() < 0.05


def test_recovers_3d_deformation(phantom, smooth_velocity):
    fixed, moving, velocity = _pair(phantom, smooth_velocity, (24, 24, 24), amplitude=2.5)
    result = optimise_svf(fixed, moving, levels=(2, 1), iterations=(60, 30))
    assert result["ddf"].shape == (1, 3, 24, 24, 24)
    assert _mse(result["warped"], fixed) < _mse(moving, fixed) / 20
    error, displacement = _end_point_error(result["ddf"], velocity, fixed)
    assert error < 0.6 * displacement
    assert jacobian_determinant(result["ddf"]).min() > 0


def _ncc_term(fixed, moving, velocity):
    return float(local_ncc_loss(warp(moving, integrate_velocity(velocity)), fixed))


def test_refine_from_true_velocity_does_not_get_worse(phantom, smooth_velocity):
    fixed, moving, velocity = _pair(phantom, smooth_velocity, (48, 48), amplitude=3.0)
    refined, history = refine_velocity(fixed, moving, velocity, 20, learning_rate=0.05)
    assert len(history) == 20 and set(history[0]) == {"stage", "iteration", "loss", "image", "regularization"}
    # energy and image term end no higher than at the truth, and the transform stays within
    # about half a voxel of it inside the object (measured 0.41: the squared local NCC with its
    # epsilon and the interpolated moving image put their optimum slightly off the truth; the
    # image term there is 0.004 better than at the truth)
    assert _ncc_term(fixed, moving, refined) + float(gradient_loss(refined)) <= history[0]["loss"]
    assert _ncc_term(fixed, moving, refined) <= history[0]["image"]
    error, displacement = _end_point_error(integrate_velocity(refined), velocity, fixed)
    assert error < 0.6 and error < 0.25 * displacement


def test_coarse_steps_travel_on_half_size_images_then_fine_steps_finish(phantom, smooth_velocity):
    """Coarse stage: half-size images and a change of the velocity held on a half-size grid; both stages lower the loss."""
    fixed, moving, velocity = _pair(phantom, smooth_velocity, (48, 48), amplitude=3.0)
    coarse_velocity = resize_field(velocity, size=(24, 24))
    start = 0.3 * coarse_velocity
    refined, history = refine_velocity(fixed, moving, start, 5, coarse_steps=30, int_downsize=2, learning_rate=0.1)
    assert [r["stage"] for r in history] == ["coarse"] * 30 + ["fine"] * 5
    assert refined.shape == start.shape
    # the coarse image term integrates the velocity on the 12^2 grid and compares the 24^2 images
    half_fixed, half_moving = (resize_image(image, size=(24, 24), mode="area") for image in (fixed, moving))
    coarse_ddf = resize_field(integrate_velocity(resize_field(start, size=(12, 12))), size=(24, 24))
    assert history[0]["image"] == pytest.approx(float(local_ncc_loss(warp(half_moving, coarse_ddf), half_fixed)), abs=1e-6)
    assert history[0]["regularization"] == pytest.approx(float(gradient_loss(start)), abs=1e-6)  # on the full velocity
    assert history[29]["loss"] < history[0]["loss"] - 0.05  # the coarse stage does the travelling
    # the fine stage starts where the coarse one ended and evaluates the full-size images
    full = resize_field(integrate_velocity(refined), size=(48, 48))
    assert _ncc_term(fixed, moving, resize_field(refined, size=(48, 48))) < _ncc_term(fixed, moving, resize_field(start, size=(48, 48)))
    assert torch.isfinite(full).all()
    # a velocity on the images' own grid (int_downsize 1) gets a coarse stage too
    refined_1, history_1 = refine_velocity(fixed, moving, resize_field(start, size=(48, 48)), 2, coarse_steps=10)
    assert [r["stage"] for r in history_1] == ["coarse"] * 10 + ["fine"] * 2
    assert refined_1.shape == (1, 2, 48, 48) and history_1[9]["loss"] < history_1[0]["loss"]
    assert _ncc_term(fixed, moving, refined_1) < _ncc_term(fixed, moving, resize_field(start, size=(48, 48)))


def test_tolerance_stops_a_stage_once_the_loss_stalls(phantom, smooth_velocity):
    fixed, moving, velocity = _pair(phantom, smooth_velocity, (48, 48), amplitude=3.0)
    _, history = refine_velocity(fixed, moving, velocity, 200, learning_rate=0.01, tolerance=1e-3, patience=3)
    assert len(history) < 200
    losses = [r["loss"] for r in history]
    best_before = min(losses[:-3])
    assert all(loss > best_before - 1e-3 for loss in losses[-3:])  # the last 3 brought no real gain
    with pytest.raises(ValueError, match="'patience' must be an integer >= 1"):
        refine_velocity(fixed, moving, velocity, 1, patience=0)


def test_refine_from_perturbed_velocity_improves_image_term(phantom, smooth_velocity):
    fixed, moving, velocity = _pair(phantom, smooth_velocity, (48, 48), amplitude=3.0)
    start = velocity + smooth_velocity((48, 48), amplitude=1.5, seed=7).float()
    refined, history = refine_velocity(fixed, moving, start, 40)
    before, after = _ncc_term(fixed, moving, start), _ncc_term(fixed, moving, refined)
    assert history[0]["image"] == pytest.approx(before, abs=1e-6)
    assert after < before - 0.05
    error_before, _ = _end_point_error(integrate_velocity(start), velocity, fixed)
    error_after, _ = _end_point_error(integrate_velocity(refined), velocity, fixed)
    assert error_after < 0.6 * error_before


def test_refine_on_a_coarser_velocity_grid(phantom, smooth_velocity):
    """int_downsize=2: half-resolution velocity, image term at full resolution (as the networks train)."""
    fixed, moving, velocity = _pair(phantom, smooth_velocity, (48, 48), amplitude=3.0)
    zero = torch.zeros(1, 2, 24, 24)
    refined, history = refine_velocity(fixed, moving, zero, 40, int_downsize=2, learning_rate=0.1, smoothing_sigma=1.0)
    assert refined.shape == (1, 2, 24, 24)
    ddf = resize_field(integrate_velocity(refined), size=[48, 48])
    assert history[0]["image"] == pytest.approx(float(local_ncc_loss(moving, fixed)), abs=1e-6)
    assert float(local_ncc_loss(warp(moving, ddf), fixed)) < history[0]["image"] - 0.05
    error_before, _ = _end_point_error(torch.zeros_like(velocity), velocity, fixed)
    error_after, _ = _end_point_error(ddf, velocity, fixed)
    assert error_after < 0.6 * error_before


def test_refine_with_custom_loss_smoothing_and_zero_steps(phantom, smooth_velocity):
    fixed, moving, velocity = _pair(phantom, smooth_velocity, (32, 32), amplitude=2.0)
    zero = torch.zeros_like(velocity)
    unchanged, history = refine_velocity(fixed, moving, zero, 0)
    assert torch.equal(unchanged, zero) and history == []
    # a plain MSE loss and no regulariser, with Gaussian-preconditioned updates
    refined, history = refine_velocity(
        fixed, moving, zero, 30, loss_fn=lambda w, f: ((w - f) ** 2).mean(), regularizer=lambda v: v.sum() * 0,
        smoothing_sigma=1.5, learning_rate=0.3,
    )
    assert all(record["regularization"] == 0 for record in history)
    assert history[-1]["image"] < history[0]["image"] / 5
    # the preconditioned update is smooth: much smaller second differences than a voxel-wise one
    voxelwise, _ = refine_velocity(fixed, moving, zero, 30, loss_fn=lambda w, f: ((w - f) ** 2).mean(),
                                   regularizer=lambda v: v.sum() * 0, learning_rate=0.3, smoothing_sigma=None)
    def roughness(v: torch.Tensor) -> float:
        return float(v.diff(dim=2).diff(dim=2).abs().mean())

    assert roughness(refined) < 0.5 * roughness(voxelwise)


def test_initial_velocity_at_any_resolution(phantom, smooth_velocity):
    fixed, moving, velocity = _pair(phantom, smooth_velocity, (32, 32), amplitude=2.0)
    half = resize_field(velocity, size=(16, 16))
    # no iterations: the result is the initial velocity carried through the levels
    result = optimise_svf(fixed, moving, initial_velocity=half, levels=(2,), iterations=(0,))
    assert torch.allclose(result["velocity"], resize_field(half, size=(32, 32)), atol=1e-5)
    assert torch.allclose(result["ddf"], resize_field(integrate_velocity(half), size=(32, 32)), atol=1e-5)
    # starting from the (half-resolution) truth gives a better result than starting from zero
    started = optimise_svf(fixed, moving, initial_velocity=half, levels=(1,), iterations=(10,))
    cold = optimise_svf(fixed, moving, levels=(1,), iterations=(10,))
    assert _mse(started["warped"], fixed) < _mse(cold["warped"], fixed)


def test_mse_loss_mask_callback_and_progress(phantom, smooth_velocity, capsys):
    fixed, moving, _ = _pair(phantom, smooth_velocity, (32, 32), amplitude=2.0)
    calls = []
    mask = (resize_image(fixed, size=(32, 32)) > 0).float()
    result = optimise_svf(fixed, moving, levels=(2, 1), iterations=(4, 3), image_loss="mse", fixed_mask=mask,
                          regularization="l1", callback=lambda *a: calls.append(a), progress=True)
    assert [(c[0], c[1]) for c in calls] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    assert [h["loss"] for h in result["history"]] == [c[2] for c in calls]
    assert "optimise_svf" in capsys.readouterr().err  # the tqdm bar
    registration = SVFRegistration(levels=(2, 1), iterations=(4, 3), image_loss="mse", regularization="l1")
    again = registration(fixed, moving, fixed_mask=mask)
    assert torch.equal(again["velocity"], result["velocity"])
    with pytest.raises(TypeError, match=r"SVFRegistration\(\): unknown setting\(s\) \['window'\]"):
        SVFRegistration(window=5)


def test_bad_inputs(phantom):
    fixed = phantom((16, 16))
    with pytest.raises(ValueError, match=r"optimise_svf\(\): 'moving' must have the shape of 'fixed' \(1, 1, 16, 16\)"):
        optimise_svf(fixed, phantom((16, 20)))
    nan = fixed.clone()
    nan[0, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"optimise_svf\(\): 'fixed' contains 1 NaN/Inf"):
        optimise_svf(nan, fixed)
    with pytest.raises(ValueError, match=r"optimise_svf\(\): 'moving' is constant"):
        optimise_svf(fixed, torch.zeros_like(fixed))
    with pytest.raises(ValueError, match=r"optimise_svf\(\): 'image_loss' must be one of \['ncc', 'mse'\]"):
        optimise_svf(fixed, fixed, image_loss="mi")
    with pytest.raises(ValueError, match=r"optimise_svf\(\): 'regularization' must be one of"):
        optimise_svf(fixed, fixed, regularization="bending")
    with pytest.raises(ValueError, match=r"optimise_svf\(\): 'initial_velocity' must have shape \(1, 2, \*, \*\)"):
        optimise_svf(fixed, fixed, initial_velocity=torch.zeros(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match=r"optimise_svf\(\): 'regularization_weight' must be a finite number >= 0"):
        optimise_svf(fixed, fixed, regularization_weight=-1.0)
    with pytest.raises(ValueError, match=r"refine_velocity\(\): 'velocity' \(1, 2, 8, 8\) does not fit images .* = \[8, 8\]"):
        refine_velocity(fixed, fixed, torch.zeros(1, 2, 8, 8), 1)
    with pytest.raises(ValueError, match=r"refine_velocity\(\): 'velocity' \(1, 2, 9, 8\) does not fit images .* = \[18, 16\]"):
        refine_velocity(fixed, fixed, torch.zeros(1, 2, 9, 8), 1, int_downsize=2)
    with pytest.raises(ValueError, match=r"refine_velocity\(\): 'int_downsize' must be an integer >= 1"):
        refine_velocity(fixed, fixed, torch.zeros(1, 2, 8, 8), 1, int_downsize=0)
    with pytest.raises(ValueError, match=r"refine_velocity\(\): 'steps' must be an integer >= 0"):
        refine_velocity(fixed, fixed, torch.zeros(1, 2, 16, 16), -1)
    with pytest.raises(ValueError, match=r"refine_velocity\(\): 'smoothing_sigma' must be a finite number > 0"):
        refine_velocity(fixed, fixed, torch.zeros(1, 2, 16, 16), 1, smoothing_sigma=0.0)


@pytest.mark.slow
def test_real_brain_labels_improve(shared_data):
    """test_scan.npz (evaluation only) at quarter resolution, warped by a known smooth deformation."""
    scan = np.load(shared_data / "voxelmorph" / "test_scan.npz")
    labels = np.load(shared_data / "voxelmorph" / "labels.npz")["labels"]
    vol = resize_image(torch.from_numpy(scan["vol"]).float()[None, None], scale=0.25, mode="area")
    seg = resize_image(torch.from_numpy(scan["seg"]).float()[None, None], scale=0.25, mode="nearest")
    gen = torch.Generator().manual_seed(0)
    velocity = resize_field(torch.randn(1, 3, 5, 6, 7, generator=gen) * 0.2, size=vol.shape[2:])
    inverse = integrate_velocity(-velocity)
    moving, moving_seg = warp(vol, inverse), warp(seg, inverse, mode="nearest")

    def dice(a: torch.Tensor, b: torch.Tensor) -> float:
        scores = [2 * float(((a == k) & (b == k)).sum()) / float((a == k).sum() + (b == k).sum())
                  for k in labels if bool((a == k).any() or (b == k).any())]
        return float(np.mean(scores))

    result = optimise_svf(vol, moving, levels=(2, 1), iterations=(40, 10))
    before, after = dice(moving_seg, seg), dice(warp(moving_seg, result["ddf"], mode="nearest"), seg)
    # measured: 0.41 -> 0.82 (labels at 4 mm are small, hence the low values)
    assert after > before + 0.25 and after > 0.72, (before, after)
    assert jacobian_determinant(result["ddf"]).min() > 0


def test_bidirectional_refine_matches_both_directions(phantom, smooth_velocity):
    """bidirectional=True: the image term is the mean of moving o exp(v) vs fixed and fixed o exp(-v) vs moving."""
    fixed, moving, velocity = _pair(phantom, smooth_velocity, (48, 48), amplitude=3.0)
    start = velocity + smooth_velocity((48, 48), amplitude=1.5, seed=7).float()
    refined, history = refine_velocity(fixed, moving, start, 40, bidirectional=True)
    both = 0.5 * (_ncc_term(fixed, moving, start) + _ncc_term(moving, fixed, -start))
    assert history[0]["image"] == pytest.approx(both, abs=1e-6)
    assert history[-1]["image"] < history[0]["image"] - 0.05
    error_before, _ = _end_point_error(integrate_velocity(start), velocity, fixed)
    error_after, _ = _end_point_error(integrate_velocity(refined), velocity, fixed)
    assert error_after < 0.6 * error_before
    with pytest.raises(ValueError, match=r"refine_velocity\(\): 'bidirectional' must be True or False, got 1"):
        refine_velocity(fixed, moving, start, 1, bidirectional=1)


def test_bidirectional_reduction_sum_adds_the_directions(phantom, smooth_velocity):
    """bidirectional_reduction="sum": the image term is the sum of both directions (MDReg-Net's eq. 4 convention)."""
    fixed, moving, velocity = _pair(phantom, smooth_velocity, (32, 32), amplitude=2.0)
    _, history = refine_velocity(fixed, moving, velocity, 1, bidirectional=True, bidirectional_reduction="sum")
    both = _ncc_term(fixed, moving, velocity) + _ncc_term(moving, fixed, -velocity)
    assert history[0]["image"] == pytest.approx(both, abs=1e-6)
    with pytest.raises(ValueError, match=r"refine_velocity\(\): 'bidirectional_reduction' must be one of \['mean', 'sum'\]"):
        refine_velocity(fixed, moving, velocity, 1, bidirectional=True, bidirectional_reduction="none")
