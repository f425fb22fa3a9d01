"""Tests for monai_diffreg.losses.kl: degree matrix, reference formula, exact-KL relations, minimiser."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_diffreg.losses import ProbabilisticSVFKLLoss, degree_matrix, kl_svf_laplacian


def reference_degree(shape) -> torch.Tensor:
    """The reference code's construction: ones convolved with the neighbour filter, zero padding ("SAME")."""
    ndim = len(shape)
    filt = torch.zeros([3] * ndim, dtype=torch.float64)
    for axis in range(ndim):
        for offset in (0, 2):
            index = [1] * ndim
            index[axis] = offset
            filt[tuple(index)] = 1.0
    conv = (F.conv2d, F.conv3d)[ndim - 2]
    return conv(torch.ones(1, 1, *shape, dtype=torch.float64), filt[None, None], padding=1)[0, 0]


def grid_laplacian(shape) -> np.ndarray:
    """Dense graph Laplacian L = Dg - A of the 2D-neighbourhood grid graph (row-major voxel order)."""
    index = np.arange(int(np.prod(shape))).reshape(shape)
    lap = np.zeros((index.size, index.size))
    for voxel in itertools.product(*(range(n) for n in shape)):
        for axis in range(len(shape)):
            neighbour = list(voxel)
            neighbour[axis] += 1
            if neighbour[axis] < shape[axis]:
                i, j = index[voxel], index[tuple(neighbour)]
                lap[i, j] = lap[j, i] = -1.0
                lap[i, i] += 1.0
                lap[j, j] += 1.0
    return lap


def reference_kl(mean: np.ndarray, log_var: np.ndarray, prior_lambda: float) -> float:
    """Line-by-line transcription of vxm.losses.KL.loss (channels-first, numpy)."""
    ndims = mean.ndim - 2
    degree = reference_degree(mean.shape[2:]).numpy()
    sigma_term = np.mean(prior_lambda * degree * np.exp(log_var) - log_var)
    sm = sum(np.mean(np.diff(mean, axis=axis) ** 2) for axis in range(2, ndims + 2))
    prec_term = prior_lambda * (0.5 * sm / ndims)
    return 0.5 * ndims * (sigma_term + prec_term)


def test_degree_matrix_hand_computed_2d():
    expected = torch.tensor([[2.0, 3.0, 3.0, 2.0], [3.0, 4.0, 4.0, 3.0], [2.0, 3.0, 3.0, 2.0]])
    torch.testing.assert_close(degree_matrix((3, 4)), expected)
    torch.testing.assert_close(degree_matrix((1, 3)), torch.tensor([[1.0, 2.0, 1.0]]))


@pytest.mark.parametrize("shape", [(3, 4), (5, 2, 4), (4, 4, 4)])
def test_degree_matrix_is_the_reference_convolution_and_the_laplacian_diagonal(shape):
    degree = degree_matrix(shape, dtype=torch.float64)
    torch.testing.assert_close(degree, reference_degree(shape))
    np.testing.assert_array_equal(degree.numpy().ravel(), np.diag(grid_laplacian(shape)))
    interior = 2 * len(shape) if min(shape) >= 3 else 2 * len(shape) - 1  # a length-2 axis has no interior
    assert float(degree.max()) == interior


@pytest.mark.parametrize("shape", [(2, 2, 5, 6), (2, 3, 4, 3, 5)])
def test_matches_reference_code_transcription(shape):
    mean, log_var = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64) - 3.0
    expected = reference_kl(mean.numpy(), log_var.numpy(), prior_lambda=20.0)
    assert float(kl_svf_laplacian(mean, log_var, 20.0)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 3)])
def test_constant_log_var_and_zero_mean_hand_formula(shape):
    ndim, prior_lambda, c = len(shape), 10.0, -4.0
    mean = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    log_var = torch.full_like(mean, c)
    mean_degree = float(degree_matrix(shape, dtype=torch.float64).mean())
    expected = 0.5 * ndim * (prior_lambda * mean_degree * math.exp(c) - c)
    assert float(kl_svf_laplacian(mean, log_var, prior_lambda)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 3)])
def test_minimiser_is_one_over_lambda_degree(shape):
    ndim, prior_lambda = len(shape), 25.0
    mean = torch.zeros(2, ndim, *shape, dtype=torch.float64)
    optimum = -torch.log(prior_lambda * degree_matrix(shape, dtype=torch.float64)).expand_as(mean)
    log_var = optimum.clone().requires_grad_(True)
    kl_svf_laplacian(mean, log_var, prior_lambda).backward()
    assert log_var.grad.abs().max() < 1e-12
    # a constant 2 D degree is not the optimum on the border
    wrong = torch.full_like(mean, -math.log(prior_lambda * 2 * ndim)).requires_grad_(True)
    kl_svf_laplacian(mean, wrong, prior_lambda).backward()
    assert wrong.grad.abs().max() > 1e-4
    best, other = kl_svf_laplacian(mean, optimum, prior_lambda), kl_svf_laplacian(mean, wrong.detach(), prior_lambda)
    assert float(best) < float(other)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 3)])
def test_relation_to_exact_kl_with_dense_laplacian(shape):
    """sigma part: exactly (exact KL) / N; mu part (differences along one axis): (exact KL) / (2 D E_axis)."""
    ndim, prior_lambda, n = len(shape), 7.0, int(np.prod(shape))
    lap = grid_laplacian(shape)
    log_var = torch.randn(1, ndim, *shape, dtype=torch.float64)
    zero = torch.zeros_like(log_var)
    exact_sigma = sum(
        0.5 * (prior_lambda * np.sum(np.diag(lap) * np.exp(lv.ravel())) - np.sum(lv)) for lv in log_var[0].numpy()
    )
    assert float(kl_svf_laplacian(zero, log_var, prior_lambda)) * n == pytest.approx(exact_sigma, rel=1e-12)

    # a mean that varies along the last axis only: every difference lies on that axis' edges
    axis_values = torch.randn(shape[-1], dtype=torch.float64)
    mean = axis_values.expand(1, ndim, *shape).clone()
    exact_mu = sum(0.5 * prior_lambda * m.ravel() @ lap @ m.ravel() for m in mean[0].numpy())
    edges = n * (shape[-1] - 1) // shape[-1]
    value_mu = float(kl_svf_laplacian(mean, zero, prior_lambda) - kl_svf_laplacian(zero, zero, prior_lambda))
    # per voxel: value_mu = (exact_mu / n) * n / (2 D edges), about (exact_mu / n) / (2 D)
    assert value_mu == pytest.approx(exact_mu / (2 * ndim * edges), rel=1e-12)


def test_reductions_over_the_batch_and_gradcheck():
    mean, log_var = torch.randn(3, 2, 4, 5, dtype=torch.float64), torch.randn(3, 2, 4, 5, dtype=torch.float64)
    per_sample = kl_svf_laplacian(mean, log_var, 5.0, reduction="none")
    assert per_sample.shape == (3,)
    for b in range(3):
        assert float(per_sample[b]) == pytest.approx(float(kl_svf_laplacian(mean[b : b + 1], log_var[b : b + 1], 5.0)))
    torch.testing.assert_close(kl_svf_laplacian(mean, log_var, 5.0), per_sample.mean())
    torch.testing.assert_close(kl_svf_laplacian(mean, log_var, 5.0, reduction="sum"), per_sample.sum())
    mean3 = torch.randn(1, 3, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    log_var3 = torch.randn(1, 3, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, v: kl_svf_laplacian(m, v, 3.0), (mean3, log_var3))


def test_module_matches_function():
    mean, log_var = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    loss = ProbabilisticSVFKLLoss(prior_lambda=10.0)
    torch.testing.assert_close(loss(mean, log_var), kl_svf_laplacian(mean, log_var, 10.0))
    assert "prior_lambda=10.0" in repr(loss)
    assert loss(mean.half(), log_var.half()).dtype == torch.float32


def test_bad_inputs_raise_clear_errors():
    mean = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"kl_svf_laplacian\(\): 'velocity_mean' must have 2 channels"):
        kl_svf_laplacian(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), 1.0)
    with pytest.raises(ValueError, match=r"'velocity_mean' and 'velocity_log_var' must have the same shape"):
        kl_svf_laplacian(mean, torch.zeros(1, 2, 4, 5), 1.0)
    with pytest.raises(ValueError, match=r"needs >= 2 voxels"):
        kl_svf_laplacian(torch.zeros(1, 2, 4, 1), torch.zeros(1, 2, 4, 1), 1.0)
    with pytest.raises(ValueError, match=r"'prior_lambda' must be a finite number > 0, got 0"):
        kl_svf_laplacian(mean, mean, 0)
    with pytest.raises(ValueError, match=r"ProbabilisticSVFKLLoss\(\): 'prior_lambda'"):
        ProbabilisticSVFKLLoss(prior_lambda=-1.0)
    with pytest.raises(ValueError, match=r"degree_matrix\(\): 'shape'"):
        degree_matrix((3, 0))
