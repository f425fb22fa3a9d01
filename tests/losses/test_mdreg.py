"""MDRegNetLoss: eq. 4's sum over levels and both directions, the L1 velocity penalty, wiring with MDRegNet."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.losses import MDRegNetLoss, local_ncc_loss


def _outputs(levels, perfect: bool, slope: float = 0.0):
    """A fake MDRegNet output dict: textured images, warped ones equal to their targets when ``perfect``."""
    torch.manual_seed(0)
    sizes = [(8 * 2**level, 8 * 2**level) for level in range(levels)]
    fixed = [torch.rand(1, 1, *s) for s in sizes]
    moving = [torch.rand(1, 1, *s) for s in sizes]
    warped = [f.clone() if perfect else torch.rand_like(f) for f in fixed]
    warped_fixed = [m.clone() if perfect else torch.rand_like(m) for m in moving]
    velocities = []
    for s in sizes:
        yy, xx = torch.meshgrid(torch.arange(float(s[0])), torch.arange(float(s[1])), indexing="ij")
        ramp = slope * (yy + xx)
        velocities.append(torch.stack([ramp, -ramp]).unsqueeze(0))
    return {"fixed_levels": fixed, "moving_levels": moving, "warped_levels": warped,
            "warped_fixed_levels": warped_fixed, "velocity_levels": velocities}


@pytest.mark.parametrize("levels", [1, 3])
def test_perfect_alignment_scores_minus_two_per_level(levels):
    terms = MDRegNetLoss()(_outputs(levels, perfect=True))
    assert torch.isclose(terms["similarity"], torch.tensor(-2.0 * levels), atol=1e-3)
    assert terms["regularization"] == 0


def test_similarity_is_the_sum_over_levels_and_directions():
    out = _outputs(3, perfect=False)
    expected = sum(local_ncc_loss(w, f) + local_ncc_loss(wf, m) for w, f, wf, m in zip(
        out["warped_levels"], out["fixed_levels"], out["warped_fixed_levels"], out["moving_levels"]))
    assert torch.isclose(MDRegNetLoss()(out)["similarity"], expected, atol=1e-6)
    weighted = MDRegNetLoss(level_weights=(0.0, 0.0, 1.0))(out)["similarity"]
    last = local_ncc_loss(out["warped_levels"][2], out["fixed_levels"][2]) + local_ncc_loss(
        out["warped_fixed_levels"][2], out["moving_levels"][2])
    assert torch.isclose(weighted, last, atol=1e-6)


def test_regularization_is_lambda_times_l1_gradient_per_level():
    """A ramp with slope s along both axes has |d v| = |s| everywhere: lambda * levels * |s|."""
    terms = MDRegNetLoss(regularization_weight=0.35)(_outputs(3, perfect=True, slope=0.2))
    assert torch.isclose(terms["regularization"], torch.tensor(0.35 * 3 * 0.2), atol=1e-6)
    assert torch.isclose(terms["loss"], terms["similarity"] + terms["regularization"])


def test_bad_input():
    with pytest.raises(ValueError, match="lacks key\\(s\\) \\['velocity_levels'\\]"):
        MDRegNetLoss()({k: v for k, v in _outputs(2, True).items() if k != "velocity_levels"})
    with pytest.raises(ValueError, match="regularization_weight"):
        MDRegNetLoss(regularization_weight=-1.0)
    with pytest.raises(ValueError, match="got 2 levels but 3 'weights'"):
        MDRegNetLoss(level_weights=(1.0, 1.0, 1.0))(_outputs(2, True))


def test_single_terms_are_those_of_the_finest_level():
    """finest_image_term / regularization_term are the pieces eq. 4 sums (used by MDRegNet.refine)."""
    outputs = _outputs(2, perfect=False, slope=0.1)
    loss = MDRegNetLoss(level_weights=[1.0, 0.5], regularization_weight=0.2)
    fixed, warped = outputs["fixed_levels"][-1], outputs["warped_levels"][-1]
    assert torch.isclose(loss.finest_image_term(warped, fixed), 0.5 * local_ncc_loss(warped, fixed, window=9))
    terms = loss(outputs)
    assert torch.isclose(terms["regularization"], sum(loss.regularization_term(v) for v in outputs["velocity_levels"]))
    assert torch.isclose(loss.regularization_term(outputs["velocity_levels"][0]), torch.tensor(0.2 * 0.1), atol=1e-6)
