"""The real inter-subject evaluation case ``subject_to_subject`` (benchmarks.cases): the validation subject
affinely aligned onto test_scan, 30 aseg labels on both sides. Built at quick scale; skipped without the shared data."""

from __future__ import annotations

import pytest
import torch

import benchmarks.cases as cases
from benchmarks.evaluate import evaluate
from monai_diffreg.datasets import VOXELMORPH_LABELS


@pytest.fixture(scope="module")
def case(shared_data, tmp_path_factory):
    path = cases.get_case(shared_data, "subject_to_subject", "subject_to_subject", 0.5, tmp_path_factory.mktemp("c"))
    return torch.load(path, weights_only=True)


def test_is_an_evaluation_group_on_test_scans_grid():
    assert "subject_to_subject" in cases.GROUPS and "subject_to_subject" not in cases.VALIDATION_GROUPS
    assert cases.case_names(["subject_to_subject"], [0, 1]) == [("subject_to_subject", "subject_to_subject")]
    assert cases.CASE_AXCODES["subject_to_subject"] == cases.CASE_AXCODES["brain_synthetic"]


def test_two_subjects_aligned_with_the_same_labels(case):
    assert case["true_ddf"] is None and case["labels"] == list(VOXELMORPH_LABELS)
    assert case["settings"]["moving_source"] == "niivue" and case["settings"]["subject"] == "voxelmorph/test_scan"
    assert case["fixed"].shape == case["moving"].shape == (1, 1, 80, 96, 112)
    for key in ("fixed_labels", "moving_labels"):  # every scored label on both sides (others are not scored)
        assert set(VOXELMORPH_LABELS) <= set(torch.unique(case[key]).int().tolist()), key
    assert not torch.equal(case["fixed"], case["moving"])  # another brain
    dice = evaluate(case, torch.zeros(1, 3, 80, 96, 112), hd95=False)["dice"]
    assert 0.4 < dice < 0.8, dice  # affine-only overlap of two brains: aligned, not yet registered
