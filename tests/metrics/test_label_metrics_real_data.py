"""Dice and HD95 on a real FreeSurfer label map (VoxelMorph's test scan, evaluation only), against MONAI."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot

from monai_diffreg.functional import gaussian_smooth, warp
from monai_diffreg.metrics import dice_per_label, hausdorff95_per_label


def _one_hot(label_map: torch.Tensor, labels: list[int]) -> torch.Tensor:
    """One-hot (MONAI layout) with channel i + 1 = labels[i], channel 0 = everything else."""
    lut = torch.zeros(int(label_map.max()) + 1, dtype=torch.long)
    lut[labels] = torch.arange(1, len(labels) + 1)
    return one_hot(lut[label_map.long()], len(labels) + 1)


@pytest.fixture(scope="module")
def label_pair(shared_data):
    """A 48^3 crop of the scan's labels and the same labels warped by a smooth random field (nearest)."""
    data = np.load(shared_data / "voxelmorph" / "test_scan.npz")
    labels = np.load(shared_data / "voxelmorph" / "labels.npz")["labels"].tolist()
    seg = torch.from_numpy(data["seg"][56:104, 72:120, 88:136].copy()).float()[None, None]
    generator = torch.Generator().manual_seed(1)
    ddf = gaussian_smooth(torch.randn(1, 3, 48, 48, 48, generator=generator), 5.0)
    ddf = ddf / ddf.std() * 1.5  # displacements of a few voxels
    return warp(seg, ddf, mode="nearest"), seg, labels


@pytest.mark.slow
def test_real_labels_dice_matches_monai(label_pair):
    pred, target, labels = label_pair
    dice = dice_per_label(pred, target, labels, skip_if_absent_from="target")
    expected = compute_dice(_one_hot(pred, labels), _one_hot(target, labels), include_background=False).float()
    torch.testing.assert_close(dice, expected, equal_nan=True)
    present = ~torch.isnan(dice)
    assert present.sum() >= 20
    assert 0.5 < float(dice[present].mean()) < 0.95  # a real, imperfect overlap


@pytest.mark.slow
def test_real_labels_hd95_matches_monai(label_pair):
    pred, target, labels = label_pair
    labels = labels[:12]  # MONAI's loop is slow; a dozen structures of varied size suffice
    spacing = (1.0, 1.3, 0.8)
    hd = hausdorff95_per_label(pred, target, labels, spacing=spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = compute_hausdorff_distance(
            _one_hot(pred, labels), _one_hot(target, labels), percentile=95, spacing=spacing
        )
    both = ~torch.isnan(hd)
    assert both.sum() >= 8 and float(hd[both].max()) > 1.0
    torch.testing.assert_close(hd[both], expected[both], rtol=1e-5, atol=1e-4)
