"""Real label maps on one canvas: brain moments matched, orientation does not matter."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_diffreg.engines.subject_maps import brain_moments, moment_alignment, prepare_subject_maps
from monai_diffreg.transforms.label_protocol import to_training_labels


def _box_map(shape, start, size, code=2):
    codes = np.zeros(shape, dtype=np.float32)
    codes[tuple(slice(s, s + n) for s, n in zip(start, size))] = code
    return codes


def test_brain_moments_of_a_box():
    codes = torch.as_tensor(_box_map((20, 30, 40), (2, 5, 10), (5, 10, 20)))
    centroid, spread = brain_moments(codes, (1.0, 2.0, 0.5))
    assert torch.allclose(centroid, torch.tensor([4.0, 9.5, 19.5], dtype=torch.float64))
    # the spread of positions 0..n-1 along each axis, over all N = 1000 voxels (unbiased), in mm
    count = 5 * 10 * 20
    expected = [np.std(np.arange(n)) * np.sqrt(count / (count - 1)) * v for n, v in zip((5, 10, 20), (1.0, 2.0, 0.5))]
    assert torch.allclose(spread, torch.tensor(expected, dtype=torch.float64))


def test_brain_moments_ignore_csf_and_need_a_brain():
    codes = torch.as_tensor(_box_map((10, 10, 10), (2, 2, 2), (3, 3, 3)))
    codes[0] = 24  # CSF slab
    centroid, _ = brain_moments(codes, (1.0, 1.0, 1.0))
    assert torch.allclose(centroid, torch.tensor([3.0, 3.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="no brain structure"):
        brain_moments(torch.full((5, 5, 5), 24.0), (1.0, 1.0, 1.0))


def test_moment_alignment_maps_canvas_centre_to_centroid_and_scales():
    where = moment_alignment(torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64),
                             torch.tensor([20.0, 20.0, 20.0], dtype=torch.float64),
                             torch.tensor([10.0, 20.0, 40.0], dtype=torch.float64), (1.0, 1.0, 1.0), (5, 5, 5), 2.0)
    assert where.shape == (5, 5, 5, 3)
    assert torch.allclose(where[2, 2, 2], torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64))
    # one canvas voxel = 2 mm, times spread / reference = 2, 1, 0.5 along the axes
    step = where[3, 3, 3] - where[2, 2, 2]
    assert torch.allclose(step, torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64))


def test_prepare_subject_maps_is_orientation_independent_and_centres(tmp_path):
    codes = _box_map((40, 48, 36), (6, 10, 4), (16, 20, 12))
    codes[10:14, 14:18, 8:10] = 17  # an off-centre structure that reveals flips
    ras = nib.Nifti1Image(codes, np.diag([1.0, 1.0, 1.0, 1.0]))
    lia = nib.Nifti1Image(np.ascontiguousarray(codes[::-1].transpose(0, 2, 1)[:, ::-1]),
                          np.array([[-1.0, 0, 0, 39], [0, 0, 1, 0], [0, -1, 0, 35], [0, 0, 0, 1]]))
    nib.save(ras, tmp_path / "ras.nii.gz")
    nib.save(lia, tmp_path / "lia.nii.gz")
    out = prepare_subject_maps([tmp_path / "ras.nii.gz", tmp_path / "lia.nii.gz"], (16, 16, 16), spacing=2.0)
    assert out.shape == (2, 1, 16, 16, 16) and out.dtype == torch.int32
    assert torch.equal(out[0], out[1])
    brain = torch.nonzero(to_training_labels(out[0, 0]) > 0).double()
    assert torch.allclose(brain.mean(0), torch.full((3,), 7.5, dtype=torch.float64), atol=0.6)
    assert set(out.unique().tolist()) == {0, 2, 17}


def test_prepare_subject_maps_needs_files():
    with pytest.raises(ValueError, match="empty"):
        prepare_subject_maps([], (8, 8, 8))
