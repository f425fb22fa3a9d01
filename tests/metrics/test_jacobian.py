"""Tests for monai_diffreg.metrics.jacobian: affine fields, hand-built folds, a Learn2Reg-style reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_diffreg.functional import identity_grid, jacobian_determinant
from monai_diffreg.metrics import (
    jacobian_statistics,
    FoldingMetric,
    SDLogJacobianMetric,
    folding_percentage,
    sd_log_jacobian,
    sd_log_jacobian_l2r,
)


def affine_ddf(matrix, shape, dtype=torch.float64):
    """DDF of x -> A x + t in voxels: u(x) = (A - I) x + t, A acting on tensor-axis coordinates."""
    a = torch.as_tensor(matrix, dtype=dtype)
    ndim = len(shape)
    x = identity_grid(shape, dtype=dtype).reshape(ndim, -1)
    u = (a - torch.eye(ndim, dtype=dtype)) @ x + 0.3
    return u.reshape(1, ndim, *shape)


A3 = [[1.1, 0.2, 0.0], [0.1, 0.9, 0.05], [0.0, -0.1, 1.2]]
A2 = [[1.2, 0.3], [-0.2, 0.8]]


@pytest.mark.parametrize("matrix, shape", [(A3, (9, 10, 11)), (A2, (12, 13))])
def test_affine_field_positive_det(matrix, shape):
    ddf = affine_ddf(matrix, shape)
    assert folding_percentage(ddf).item() == 0.0
    assert sd_log_jacobian(ddf).item() == pytest.approx(0.0, abs=1e-12)
    assert sd_log_jacobian_l2r(ddf).item() == pytest.approx(0.0, abs=1e-12)
    assert sd_log_jacobian(ddf).dtype == torch.float64


@pytest.mark.parametrize("shape", [(8, 9, 10), (12, 13)])
def test_reflection_folds_everywhere(shape):
    matrix = torch.eye(len(shape))
    matrix[0, 0] = -1.0  # det = -1 everywhere
    ddf = affine_ddf(matrix, shape)
    assert folding_percentage(ddf).item() == 100.0
    assert math.isnan(sd_log_jacobian(ddf).item())  # no unfolded voxel left
    assert sd_log_jacobian_l2r(ddf).item() == pytest.approx(0.0, abs=1e-12)  # log(2) everywhere


def spiked_field(shape, spikes, amplitude=4.0):
    """2D zero field with u_0 = amplitude at each spike voxel (i, j).

    Central differences give d u_0 / d axis0 = -amplitude / 2 at (i + 1, j), so det J = 1 - 2 = -1 there,
    det J = 1 + 2 = 3 at (i - 1, j), and det J = 1 at every other voxel (d u_1 = 0 keeps the
    off-diagonal terms out of the determinant).
    """
    ddf = torch.zeros(1, 2, *shape, dtype=torch.float64)
    for i, j in spikes:
        ddf[0, 0, i, j] = amplitude
    return ddf


def test_hand_built_folds_counted_and_cropped():
    shape = (16, 16)
    # the last spike folds row 15 (cropped away) but its det = 3 at row 13 stays
    ddf = spiked_field(shape, [(5, 5), (8, 10), (10, 4), (14, 8)])
    n_kept = 12 * 12
    assert folding_percentage(ddf).item() == pytest.approx(100 * 3 / n_kept)
    assert folding_percentage(ddf, crop=0).item() == pytest.approx(100 * 4 / 256)
    # true SDlogJ: over unfolded voxels, four log 3 values (rows 4, 7, 9, 13) among n_kept - 3 voxels
    logs = np.zeros(n_kept - 3)
    logs[:4] = math.log(3.0)
    assert sd_log_jacobian(ddf).item() == pytest.approx(np.std(logs))
    # Learn2Reg's variant: log(det + 3) over every kept voxel, folds included
    l2r = np.full(n_kept, math.log(4.0))
    l2r[:4] = math.log(6.0)
    l2r[4:7] = math.log(2.0)
    assert sd_log_jacobian_l2r(ddf).item() == pytest.approx(np.std(l2r))


def test_mask_restricts_voxels():
    ddf = spiked_field((16, 16), [(5, 5), (8, 10)])
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[..., :8, :] = True  # keeps the fold at (6, 5), not the one at (9, 10); rows 2..7 after the crop
    assert folding_percentage(ddf, mask=mask).item() == pytest.approx(100 / (6 * 12))
    assert math.isnan(folding_percentage(ddf, mask=torch.zeros(1, 1, 16, 16)).item())


def _learn2reg_style_reference(ddf: np.ndarray) -> float:
    """Independent numpy reference from Learn2Reg's stated definition (3D, crop 2, zero-padded differences)."""
    kernel = np.array([-0.5, 0.0, 0.5])
    grads = np.stack(
        [np.stack([ndimage.correlate1d(ddf[c], kernel, axis=a, mode="constant") for a in range(3)]) for c in range(3)]
    )  # grads[c, a] = d u_c / d x_a
    jac = grads + np.eye(3)[:, :, None, None, None]
    det = np.linalg.det(np.moveaxis(jac[:, :, 2:-2, 2:-2, 2:-2], (0, 1), (-2, -1)))
    return float(np.log(np.clip(det + 3, 1e-9, 1e9)).std())


def test_l2r_variant_matches_reference_on_a_random_field():
    noise = torch.randn(3, 14, 15, 16, dtype=torch.float64).numpy()
    ddf = np.stack([ndimage.gaussian_filter(n, 1.5) * 8.0 for n in noise])  # some folds
    ours = sd_log_jacobian_l2r(torch.from_numpy(ddf)[None]).item()
    assert folding_percentage(torch.from_numpy(ddf)[None]).item() > 0
    assert ours == pytest.approx(_learn2reg_style_reference(ddf), rel=1e-10)


def test_l2r_variant_is_about_four_times_smaller_for_small_deformations():
    # near det J = 1, d log(det + 3) = d det / 4 while d log det = d det
    noise = torch.randn(1, 3, 16, 16, 16, dtype=torch.float64).numpy()
    ddf = torch.from_numpy(np.stack([ndimage.gaussian_filter(n, 2.0) for n in noise[0]]))[None]
    ratio = (sd_log_jacobian(ddf) / sd_log_jacobian_l2r(ddf)).item()
    assert 3.6 < ratio < 4.4


def test_batch_and_float32():
    ddf = torch.cat([affine_ddf(A2, (10, 10)), spiked_field((10, 10), [(4, 4)])]).float()
    out = folding_percentage(ddf)
    assert out.shape == (2,) and out.dtype == torch.float32
    assert out.tolist() == pytest.approx([0.0, 100 / 36])


@pytest.mark.parametrize(
    "ddf, kwargs, match",
    [
        (torch.zeros(1, 3, 8, 8), {}, "folding_percentage\\(\\): 'ddf' must have 2 channels"),
        (torch.zeros(1, 2, 8, 8), {"crop": 4}, "'crop'=4 leaves no voxel"),
        (torch.zeros(1, 2, 8, 8), {"crop": -1}, "'crop' must be an integer >= 0"),
        (torch.zeros(1, 2, 8, 8), {"mask": torch.zeros(1, 1, 8, 7)}, "'mask' must have shape \\(1, 1, 8, 8\\)"),
        (torch.zeros(1, 2, 8, 8), {"mask": torch.full((1, 1, 8, 8), 0.5)}, "'mask' must hold only 0 and 1"),
    ],
)
def test_bad_input(ddf, kwargs, match):
    with pytest.raises(ValueError, match=match):
        folding_percentage(ddf, **kwargs)


def test_metrics_accumulate():
    folds = spiked_field((16, 16), [(5, 5)])
    smooth = affine_ddf(A2, (16, 16))
    folding = FoldingMetric(reduction="none")
    folding(y_pred=folds)
    folding(y_pred=[smooth[0]])
    torch.testing.assert_close(folding.aggregate(), torch.tensor([[100 / 144], [0.0]], dtype=torch.float64))
    true_sd = SDLogJacobianMetric(crop=1)
    l2r_sd = SDLogJacobianMetric(variant="learn2reg", crop=1)
    for metric in (true_sd, l2r_sd):
        metric(y_pred=folds)
    assert true_sd.aggregate().item() == pytest.approx(sd_log_jacobian(folds, crop=1).item())
    assert l2r_sd.aggregate().item() == pytest.approx(sd_log_jacobian_l2r(folds, crop=1).item())
    with pytest.raises(ValueError, match="SDLogJacobianMetric\\(\\): 'variant' must be one of \\['true', 'learn2reg'\\]"):
        SDLogJacobianMetric(variant="l2r")
    with pytest.raises(ValueError, match="FoldingMetric\\(\\): 'crop'"):
        FoldingMetric(crop=1.5)


@pytest.mark.parametrize("with_mask", [False, True])
def test_jacobian_statistics_equal_the_three_metrics(with_mask):
    """One determinant, the same three numbers (a fold included, so both SDlogJ variants differ)."""
    ddf = torch.randn(2, 3, 12, 11, 10, dtype=torch.float64) * 0.6
    mask = (torch.rand(1, 1, 12, 11, 10) > 0.3) if with_mask else None
    stats = jacobian_statistics(ddf, crop=1, mask=mask)
    assert float(stats["folding_percent"].min()) > 0  # the field folds somewhere
    torch.testing.assert_close(stats["folding_percent"], folding_percentage(ddf, 1, mask))
    torch.testing.assert_close(stats["sd_log_jacobian"], sd_log_jacobian(ddf, 1, mask))
    torch.testing.assert_close(stats["sd_log_jacobian_learn2reg"], sd_log_jacobian_l2r(ddf, 1, mask))
    if mask is None:  # the unmasked shortcut equals numpy's population statistics
        det = jacobian_determinant(ddf)[:, :, 1:-1, 1:-1, 1:-1].numpy()
        expected = [np.std(np.log(np.clip(d + 3, 1e-9, 1e9))) for d in det]
        np.testing.assert_allclose(stats["sd_log_jacobian_learn2reg"].numpy(), expected, rtol=1e-12)
