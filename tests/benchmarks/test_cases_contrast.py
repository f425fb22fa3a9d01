"""Cases across MR contrasts (benchmarks.cases): the T1 remap, and cases that differ from their T1 twins only in contrast."""

from __future__ import annotations

import pytest
import torch

import benchmarks.cases as cases
from benchmarks.run import build_parser

CSF, GREY, WHITE = 4, 3, 2  # aseg codes: lateral ventricle, cortex, cerebral white matter


def _phantom():
    """A 1D-like phantom: CSF, grey and white matter at T1 intensities 0.2 / 0.5 / 0.8, partial-volume voxels
    between them (labelled as the darker tissue), background 0 with aseg 0."""
    t1 = torch.tensor([0.0, 0.2, 0.2, 0.35, 0.5, 0.5, 0.65, 0.8, 0.8, 0.0]).reshape(1, 1, 10, 1, 1)
    aseg = torch.tensor([0, CSF, CSF, CSF, GREY, GREY, GREY, WHITE, WHITE, 0]).reshape(1, 1, 10, 1, 1)
    return t1, aseg


@pytest.mark.parametrize("contrast", sorted(cases.CONTRAST_TARGETS))
def test_remap_sends_tissue_means_to_their_targets(contrast):
    t1, aseg = _phantom()
    out = cases.contrast_remap(t1, aseg, contrast).flatten()
    csf, grey, white = cases.CONTRAST_TARGETS[contrast]
    # class means of the phantom (the knots): CSF (0.2+0.2+0.35)/3 = 0.25, GM (0.5+0.5+0.65)/3 = 0.55, WM 0.8
    below, above = (grey - csf) / 0.3, (white - grey) / 0.25  # slopes of the two pieces
    expected_at = {0.2: csf + below * -0.05, 0.35: csf + below * 0.1, 0.5: csf + below * 0.25,
                   0.65: grey + above * 0.1, 0.8: white}
    for value, want in expected_at.items():
        got = out[(t1.flatten() - value).abs() < 1e-6]
        torch.testing.assert_close(got, torch.full_like(got, min(max(want, 0.0), 1.0)), atol=1e-6, rtol=0)
    assert out[0] == 0 and out[-1] == 0  # outside the brain


def test_t2_reverses_and_flair_breaks_the_t1_order():
    t1, aseg = _phantom()
    t2 = cases.contrast_remap(t1, aseg, "t2").flatten()
    flair = cases.contrast_remap(t1, aseg, "flair").flatten()
    csf, grey, white = 2, 5, 8  # a CSF, a grey and a white voxel of the phantom
    assert t2[csf] > t2[grey] > t2[white]
    assert flair[csf] < flair[white] < flair[grey]


def test_remap_refuses_an_image_that_is_not_t1_ordered():
    t1, aseg = _phantom()
    with pytest.raises(ValueError, match="expected T1 order CSF < grey < white matter"):
        cases.contrast_remap(1.0 - t1, aseg, "t2")


def test_groups_are_named_not_default_and_validation_twins_exist():
    for group in cases.CROSS_CONTRAST_GROUPS:
        assert group not in cases.GROUPS and group in cases.CASE_VERSIONS
        assert build_parser().parse_args(["--cases", group]).cases == [group]
        twin = group.replace("brain_synthetic", "niivue_synthetic")
        assert twin in cases.VALIDATION_GROUPS and cases.CASE_AXCODES[twin] == "LIA"
    assert build_parser().parse_args([]).cases == list(cases.GROUPS)
    assert cases.case_names(["brain_synthetic_t2"], [0, 1]) == [("brain_synthetic_t2", "brain_synthetic_t2_s0"),
                                                                ("brain_synthetic_t2", "brain_synthetic_t2_s1")]


def test_validation_cases_differ_from_their_t1_twin_only_in_contrast(shared_data, tmp_path):
    """niivue_synthetic_t2 / _flair at quick scale: same fixed image, labels and known field as niivue_synthetic of
    the seed; the moving image has the target contrast's tissue order."""
    def build(name, group):
        return torch.load(cases.get_case(shared_data, group, name, 0.5, tmp_path), weights_only=True)

    t1 = build("niivue_synthetic_s100", "niivue_synthetic")
    for contrast, order in (("t2", (0, 1, 2)), ("flair", (1, 2, 0))):  # indices of (CSF, GM, WM), bright to dark
        case = build(f"niivue_synthetic_{contrast}_s100", f"niivue_synthetic_{contrast}")
        for key in ("fixed", "fixed_labels", "moving_labels", "true_ddf"):
            assert torch.equal(case[key], t1[key]), key
        assert case["settings"]["moving_contrast"] == contrast and case["labels"] == t1["labels"]
        labels = case["moving_labels"]
        tissue = (torch.isin(labels, torch.tensor(cases.ASEG_CSF, dtype=labels.dtype)),
                  torch.isin(labels, torch.tensor([3, 42])), torch.isin(labels, torch.tensor([2, 41])))
        means = [float(case["moving"][t].mean()) for t in tissue]
        assert [means[i] for i in order] == sorted(means, reverse=True), (contrast, means)
