"""Tests for monai_diffreg.metrics.field_error: hand-computed end-point errors with spacing and masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_diffreg.metrics import EndPointErrorMetric, endpoint_error


def test_constant_error_2d_with_spacing():
    ddf = torch.zeros(1, 2, 6, 7)
    true_ddf = torch.zeros(1, 2, 6, 7)
    true_ddf[:, 0], true_ddf[:, 1] = 3.0, 4.0
    assert endpoint_error(ddf, true_ddf).item() == pytest.approx(5.0)
    assert endpoint_error(ddf, true_ddf, spacing=(2.0, 1.0)).item() == pytest.approx(math.sqrt(36 + 16))
    assert endpoint_error(true_ddf, true_ddf, spacing=0.5).item() == 0.0
    # spacing as nibabel gives it (numpy float32 zooms), as an array or a tensor
    for spacing in (tuple(np.float32([2.0, 1.0])), np.array([2.0, 1.0]), torch.tensor([2.0, 1.0])):
        assert endpoint_error(ddf, true_ddf, spacing=spacing).item() == pytest.approx(math.sqrt(36 + 16))
    assert endpoint_error(ddf, true_ddf, spacing=np.float32(2.0)).item() == pytest.approx(10.0)


def test_mask_and_batch_3d_against_numpy():
    ddf = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64)
    true_ddf = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64)
    mask = torch.rand(2, 1, 5, 6, 7) > 0.5
    spacing = (1.5, 0.8, 2.0)
    err = endpoint_error(ddf, true_ddf, spacing, mask)
    diff = (ddf - true_ddf).numpy() * np.array(spacing)[None, :, None, None, None]
    norms = np.sqrt((diff**2).sum(1))
    expected = [norms[b][mask[b, 0].numpy()].mean() for b in range(2)]
    assert err.shape == (2,) and err.dtype == torch.float64
    np.testing.assert_allclose(err.numpy(), expected, rtol=1e-12)
    # a batch-1 mask applies to every case; an empty mask gives NaN
    shared = endpoint_error(ddf, true_ddf, spacing, mask[:1])
    np.testing.assert_allclose(shared[1].item(), norms[1][mask[0, 0].numpy()].mean(), rtol=1e-12)
    assert torch.isnan(endpoint_error(ddf, true_ddf, mask=torch.zeros(1, 1, 5, 6, 7))).all()


@pytest.mark.parametrize(
    "true_ddf, kwargs, match",
    [
        (torch.zeros(1, 2, 6, 6), {}, "endpoint_error\\(\\): 'true_ddf' must have shape \\(1, 2, 6, 5\\)"),
        (torch.zeros(1, 2, 6, 5), {"spacing": (1.0, 1.0, 1.0)}, "'spacing' must be a number or 2 numbers"),
        (torch.zeros(1, 2, 6, 5), {"mask": torch.ones(2, 1, 6, 5)}, "'mask' must have shape"),
    ],
)
def test_bad_input(true_ddf, kwargs, match):
    with pytest.raises(ValueError, match=match):
        endpoint_error(torch.zeros(1, 2, 6, 5), true_ddf, **kwargs)
    with pytest.raises(ValueError, match="endpoint_error\\(\\): 'ddf' must have 2 channels"):
        endpoint_error(torch.zeros(1, 3, 6, 5), torch.zeros(1, 3, 6, 5))


def test_metric():
    true_ddf = torch.ones(2, 2, 4, 4)
    metric = EndPointErrorMetric(spacing=(3.0, 4.0))
    metric(y_pred=torch.zeros(2, 2, 4, 4), y=true_ddf)
    metric(y_pred=torch.zeros(1, 2, 4, 4), y=true_ddf[:1], spacing=1.0)
    torch.testing.assert_close(metric.get_buffer(), torch.tensor([[5.0], [5.0], [math.sqrt(2)]]))
    assert metric.aggregate().item() == pytest.approx((10 + math.sqrt(2)) / 3)
    with pytest.raises(ValueError, match="'y' \\(the true displacement field\\) is required"):
        metric(y_pred=true_ddf)
