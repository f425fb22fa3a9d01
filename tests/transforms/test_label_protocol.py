"""The one training label set: every source's codes land on the same structures."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.datasets import load_label_map
from monai_diffreg.transforms.label_protocol import TRAINING_STRUCTURES, brain_mask, to_training_labels


def _index(name: str) -> int:
    return 1 + [n for n, _ in TRAINING_STRUCTURES].index(name)


@pytest.mark.parametrize(
    "codes, structure",
    [
        ((2, 41, 77, 251, 255), "cerebral white matter"),
        ((3, 42, 11101, 11175, 12101, 12175, 1035, 2001), "cerebral cortex"),  # aseg, Destrieux, Desikan
        ((4, 43, 5, 44), "lateral ventricle"),
        ((17, 53), "hippocampus"),
        ((24,), "CSF"),
        ((31, 63), "choroid plexus"),
        ((16,), "brain stem"),
    ],
)
def test_hemispheres_and_parcellations_map_to_one_structure(codes, structure):
    assert to_training_labels(torch.tensor(codes)).tolist() == [_index(structure)] * len(codes)


def test_non_brain_and_unknown_codes_are_background():
    # SynthSeg's extra-cerebral labels, vessel, optic chiasm, unknown, negative and out-of-table codes
    codes = torch.tensor([0, 136, 137, 163, 164, 502, 506, 516, 530, 30, 62, 85, 29, 72, -1, 99999])
    assert to_training_labels(codes).tolist() == [0] * len(codes)
    assert not brain_mask(codes).any()


def test_float_codes_shape_and_dtype_kept():
    codes = torch.tensor([[2.0, 41.0], [0.0, 12101.0]])
    out = to_training_labels(codes)
    assert out.dtype == torch.int64 and out.shape == codes.shape
    assert out.tolist() == [[1, 1], [0, _index("cerebral cortex")]]


def test_non_integral_codes_are_an_error():
    with pytest.raises(ValueError, match="integer label codes"):
        to_training_labels(torch.tensor([2.5]))


def test_each_structure_has_distinct_codes():
    seen = [c for _, codes in TRAINING_STRUCTURES for c in codes]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("relative", ["synthseg_label_maps/training_seg_01.nii.gz", "synthsr_label_maps/brain1_labels.nii.gz",
                                      "niivue_freesurfer/aparc.a2009s+aseg.mgz"])
def test_every_source_covers_the_main_structures(shared_data, relative):
    labels = to_training_labels(load_label_map(shared_data / relative)[0])
    present = set(labels.unique().tolist())
    main = {"cerebral white matter", "cerebral cortex", "lateral ventricle", "cerebellum cortex", "thalamus",
            "putamen", "hippocampus", "brain stem"}
    assert {_index(n) for n in main} <= present
    # a brain is 1-2 litres of 1 mm voxels
    assert 0.9e6 < int((labels > 0).sum()) < 2.5e6
