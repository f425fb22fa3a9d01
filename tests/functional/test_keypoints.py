"""Tests for keypoints from feature maps and the weighted least-squares affine fit."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.functional import feature_centroids, fit_affine
from monai_diffreg.functional.affine import identity_affine


def _random_affine(ndim: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    linear = torch.eye(ndim, dtype=torch.float64) + 0.2 * torch.randn(batch, ndim, ndim, dtype=torch.float64,
                                                                       generator=generator)
    return torch.cat([linear, 3.0 * torch.randn(batch, ndim, 1, dtype=torch.float64, generator=generator)], dim=2)


def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    ndim = points.shape[-1]
    return torch.einsum("bij,bnj->bni", matrix[:, :, :ndim], points) + matrix[:, :, ndim].unsqueeze(1)


def _simplex(ndim: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """``D + 1`` points spanning every direction: a corner and its ``D`` axis neighbours 8 voxels away, jittered."""
    corners = torch.cat([torch.zeros(1, ndim), 8.0 * torch.eye(ndim)]).to(torch.float64)
    return 10.0 + corners + torch.rand(batch, ndim + 1, ndim, dtype=torch.float64, generator=generator)


# ------------------------------------------------------------------------------------------ fit_affine
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("points", ["simplex", "cloud"])
def test_fit_recovers_a_known_affine_exactly(ndim, points):
    g = torch.Generator().manual_seed(ndim)
    matrix = _random_affine(ndim, 4, g)
    fixed = _simplex(ndim, 4, g) if points == "simplex" else 20.0 * torch.rand(4, 12, ndim, dtype=torch.float64,
                                                                                generator=g)
    estimate = fit_affine(fixed, _apply(matrix, fixed))  # default ridge
    assert estimate.shape == (4, ndim, ndim + 1) and estimate.dtype == torch.float64
    torch.testing.assert_close(estimate, matrix, atol=1e-6, rtol=0)


def test_fit_returns_the_input_dtype_and_is_exact_in_float32_to_its_precision():
    g = torch.Generator().manual_seed(0)
    matrix = _random_affine(3, 2, g)
    fixed = 20.0 * torch.rand(2, 16, 3, dtype=torch.float64, generator=g)
    estimate = fit_affine(fixed.float(), _apply(matrix, fixed).float())
    assert estimate.dtype == torch.float32
    torch.testing.assert_close(estimate.double(), matrix, atol=1e-4, rtol=0)


def test_zero_weights_ignore_corrupted_points():
    g = torch.Generator().manual_seed(1)
    matrix = _random_affine(3, 2, g)
    fixed = 20.0 * torch.rand(2, 10, 3, dtype=torch.float64, generator=g)
    moving = _apply(matrix, fixed)
    moving[:, 6:] += 15.0 * torch.randn(2, 4, 3, dtype=torch.float64, generator=g)  # outliers
    weights = torch.rand(2, 10, dtype=torch.float64, generator=g) + 0.5
    assert (fit_affine(fixed, moving, weights) - matrix).abs().max() > 0.1  # the outliers matter...
    weights[:, 6:] = 0.0
    torch.testing.assert_close(fit_affine(fixed, moving, weights), matrix, atol=1e-6, rtol=0)  # ...unless weighted 0


def test_weights_are_normalised():
    g = torch.Generator().manual_seed(2)
    fixed, moving = torch.rand(1, 8, 2, dtype=torch.float64, generator=g), torch.rand(1, 8, 2, dtype=torch.float64,
                                                                                   generator=g)
    weights = torch.rand(1, 8, dtype=torch.float64, generator=g)
    torch.testing.assert_close(fit_affine(fixed, moving, weights), fit_affine(fixed, moving, 1e3 * weights))


def test_batch_elements_are_fitted_independently():
    g = torch.Generator().manual_seed(3)
    matrix = _random_affine(2, 3, g)
    fixed = 20.0 * torch.rand(3, 7, 2, dtype=torch.float64, generator=g)
    moving = _apply(matrix, fixed) + 0.5 * torch.randn(3, 7, 2, dtype=torch.float64, generator=g)  # inexact fits
    weights = torch.rand(3, 7, dtype=torch.float64, generator=g)
    batched = fit_affine(fixed, moving, weights)
    for b in range(3):
        torch.testing.assert_close(batched[b:b + 1], fit_affine(fixed[b:b + 1], moving[b:b + 1], weights[b:b + 1]))


def test_fit_is_the_least_squares_solution():
    """Without ridge, the residual of a noisy fit is orthogonal to the design ``[f, 1]`` (normal equations)."""
    g = torch.Generator().manual_seed(4)
    fixed = 20.0 * torch.rand(1, 30, 3, dtype=torch.float64, generator=g)
    moving = _apply(_random_affine(3, 1, g), fixed) + torch.randn(1, 30, 3, dtype=torch.float64, generator=g)
    weights = torch.rand(1, 30, dtype=torch.float64, generator=g)
    residual = moving - _apply(fit_affine(fixed, moving, weights, ridge=0.0), fixed)
    design = torch.cat([fixed, torch.ones(1, 30, 1, dtype=torch.float64)], dim=2)
    gradient = torch.einsum("bn,bnk,bnd->bkd", weights, design, residual)
    assert gradient.abs().max() < 1e-9


def test_degenerate_points_give_the_identity_where_undetermined():
    g = torch.Generator().manual_seed(5)
    matrix = _random_affine(3, 1, g)
    fixed = 20.0 * torch.rand(1, 6, 3, dtype=torch.float64, generator=g)
    fixed[..., 2] = 4.0  # all on the plane z = 4
    estimate = fit_affine(fixed, _apply(matrix, fixed))
    assert torch.isfinite(estimate).all()
    torch.testing.assert_close(estimate[0, :, 2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(_apply(estimate, fixed), _apply(matrix, fixed))  # exact on the plane
    one = fit_affine(fixed[:, :1], fixed[:, :1] + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    expected = identity_affine(1, 3, dtype=torch.float64)
    expected[0, :, 3] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(one, expected)  # one point: a translation
    zero = fit_affine(fixed, _apply(matrix, fixed), torch.zeros(1, 6, dtype=torch.float64))
    torch.testing.assert_close(zero, identity_affine(1, 3, dtype=torch.float64))  # no weight: the identity


def test_fit_gradcheck():
    g = torch.Generator().manual_seed(6)
    fixed = (5.0 * torch.rand(2, 5, 2, dtype=torch.float64, generator=g)).requires_grad_()
    moving = (5.0 * torch.rand(2, 5, 2, dtype=torch.float64, generator=g)).requires_grad_()
    weights = (torch.rand(2, 5, dtype=torch.float64, generator=g) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda f, m, w: fit_affine(f, m, w, ridge=1e-3), (fixed, moving, weights))


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(2, 5, 4), torch.zeros(2, 5, 4)), r"fit_affine\(\): 'fixed_points' must have shape \(B, N, D\)"),
    ((torch.zeros(5, 3), torch.zeros(5, 3)), r"fit_affine\(\): 'fixed_points' must have shape \(B, N, D\)"),
    ((torch.zeros(2, 5, 3), torch.zeros(2, 4, 3)), r"fit_affine\(\): 'moving_points' must have the shape"),
    ((torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), torch.zeros(2, 4)),
     r"fit_affine\(\): 'weights' must have shape \(2, 5\)"),
    ((torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), None, -1.0), r"fit_affine\(\): 'ridge' must be a finite number >= 0"),
])
def test_fit_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        fit_affine(*args)


# ----------------------------------------------------------------------------------- feature_centroids
@pytest.mark.parametrize("shape, index", [((7, 9), (5, 2)), ((6, 5, 8), (1, 4, 6))])
def test_centroid_of_one_voxel_is_its_index(shape, index):
    features = torch.zeros(2, 3, *shape)
    features[1, 2][index] = 2.5
    features[0, 0][index] = 1.0
    points, masses = feature_centroids(features)
    assert points.shape == (2, 3, len(shape)) and masses.shape == (2, 3)
    expected = torch.tensor(index, dtype=torch.float32)
    assert torch.equal(points[1, 2], expected) and torch.equal(points[0, 0], expected)
    assert torch.equal(points[0, 1], torch.zeros(len(shape)))  # an empty channel: 0, not NaN
    assert torch.equal(masses, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.5]]))


def test_centroid_of_a_symmetric_blob_is_its_centre_and_masses_are_sums():
    """A Gaussian sampled symmetrically about an integer or half-integer centre, well inside the grid."""
    centre = torch.tensor([6.5, 9.0, 7.0], dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (14, 18, 15)), indexing="ij"))
    blob = torch.exp(-((grid - centre.view(3, 1, 1, 1)) ** 2).sum(0) / 4.0)
    features = torch.stack([blob, 3.0 * blob]).unsqueeze(0)  # (1, 2, *S)
    points, masses = feature_centroids(features)
    torch.testing.assert_close(points[0], centre.expand(2, 3), atol=1e-8, rtol=0)
    torch.testing.assert_close(masses, features.flatten(2).sum(2))


def test_centroid_gradcheck():
    features = (torch.rand(1, 2, 3, 4, 3, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(feature_centroids, (features,))


def test_translated_features_give_the_translation():
    """Centroids of a feature map and of its exactly translated copy, fitted: the shift (fixed -> moving indices)."""
    g = torch.Generator().manual_seed(7)
    shift = (3, -2, 4)
    features = torch.zeros(1, 8, 24, 22, 26, dtype=torch.float64)
    features[..., 6:16, 6:14, 6:18] = torch.rand(1, 8, 10, 8, 12, dtype=torch.float64, generator=g) ** 4
    moved = torch.roll(features, shift, dims=(2, 3, 4))  # moved[x + shift] = features[x]: no wrap-around
    fixed_points, fixed_masses = feature_centroids(features)
    moving_points, moving_masses = feature_centroids(moved)
    torch.testing.assert_close(moving_masses, fixed_masses)
    matrix = fit_affine(fixed_points, moving_points, fixed_masses)
    expected = identity_affine(1, 3, dtype=torch.float64)
    expected[0, :, 3] = torch.tensor(shift, dtype=torch.float64)
    torch.testing.assert_close(matrix, expected, atol=1e-6, rtol=0)


def test_centroids_bad_arguments():
    with pytest.raises(ValueError, match=r"feature_centroids\(\): 'features' must be"):
        feature_centroids(torch.rand(2, 3, 4))
