"""RegistrationPyramidLoss: a perfect registration scores its minimum terms, level weights 2^-l / 2^l with l = 0 the
finest, each weight scales its own term, the affine penalty in normalised units, float64 gradcheck, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from monai_diffreg.functional import affine_to_ddf, gaussian_smooth, identity_affine, warp
from monai_diffreg.functional.affine import affine_from_normalized
from monai_diffreg.losses import gradient_loss, local_ncc_loss, present_label_dice_loss
from monai_diffreg.losses.reg_pyramid import RegistrationPyramidLoss, affine_identity_penalty
from monai_diffreg.networks.reg_pyramid import RegistrationPyramid

SMALL = {"filters": (4, 8, 8), "deform_filters": (8, 8, 4)}


def _image(size, seed):
    generator = torch.Generator().manual_seed(seed)
    image = gaussian_smooth(torch.rand(1, 1, *size, generator=generator), 1.5)
    return (image - image.min()) / (image.max() - image.min())


def _labels(image, levels=(0.33, 0.66)):
    """A one-hot map (background + 2 labels) thresholding ``image``."""
    index = (image > levels[0]).long() + (image > levels[1]).long()
    return torch.nn.functional.one_hot(index[:, 0], 3).movedim(-1, 1).float()


def _outputs(seed=0, **kwargs):
    """A small network with non-trivial heads, and its outputs for a pair (2D, 32x32)."""
    torch.manual_seed(seed)
    model = RegistrationPyramid(2, **{**SMALL, **kwargs}).eval()
    with torch.no_grad():
        for block in model.deform_blocks:
            block.out.weight.normal_(0.0, 0.02)
        for head in model.affine_heads:
            head.dense.weight.normal_(0.0, 0.02)
            head.dense.bias.normal_(0.0, 0.05)
    moving, fixed = _image((32, 32), 1), _image((32, 32), 2)
    with torch.no_grad():
        return model(moving, fixed), moving, fixed


def test_a_perfect_registration_scores_its_minimum_terms():
    """moving == fixed and the identity (the network at initialisation): Dice, affine and smoothness terms are 0 and
    the similarity is -sum_l gamma/2^l NCC(I^(l), I^(l)), each NCC at its maximum for these images."""
    model = RegistrationPyramid(2, **SMALL).eval()
    image = _image((32, 32), 3)
    labels = _labels(image)
    with torch.no_grad():
        out = model(image, image)
    terms = RegistrationPyramidLoss()(out, image, image, labels, labels)
    assert float(terms["segmentation"]) == pytest.approx(0.0, abs=1e-6)  # warping by 0 is exact up to rounding
    assert float(terms["affine"]) == 0.0 and float(terms["smoothness"]) == 0.0
    levels = [torch.nn.functional.adaptive_avg_pool2d(image, n) for n in ((4, 4), (8, 8))] + [image]
    best = sum(5.0 / 2**l * local_ncc_loss(level, level) for l, level in enumerate(reversed(levels)))
    torch.testing.assert_close(terms["similarity"], best, atol=1e-5, rtol=0)
    torch.testing.assert_close(terms["loss"], best, atol=1e-5, rtol=0)
    # any misregistration scores worse in every term it touches
    shifted = torch.roll(image, shifts=(2, -1), dims=(2, 3))
    with torch.no_grad():
        worse = RegistrationPyramidLoss()(model(shifted, image), image, shifted, labels, _labels(shifted))
    assert float(worse["similarity"]) > float(best) + 0.1 and float(worse["segmentation"]) > 0.1


def test_level_weights_with_the_finest_level_first():
    """By hand: l = 0 is the last (finest) entry of the coarse-to-fine tuples; gamma/2^l, alpha 2^l, beta/2^l."""
    out, moving, fixed = _outputs()
    loss = RegistrationPyramidLoss(gamma=3.0, alpha=0.5, beta=2.0, ncc_window=5)
    assert loss.level_weights(0) == (3.0, 0.5, 2.0) and loss.level_weights(2) == (0.75, 2.0, 0.5)
    terms = loss(out, fixed, moving)
    similarity = sum(3.0 / 2**l * local_ncc_loss(out["warped_levels"][2 - l], out["fixed_levels"][2 - l], 5)
                     for l in range(3))
    affine = sum(0.5 * 2**l * affine_identity_penalty(out["affine_matrices"][2 - l], (32, 32)) for l in range(3))
    smoothness = sum(2.0 / 2**l * gradient_loss(out["level_ddfs"][2 - l]) for l in range(3))
    torch.testing.assert_close(terms["similarity"], similarity)
    torch.testing.assert_close(terms["affine"], affine)
    torch.testing.assert_close(terms["smoothness"], smoothness)
    assert float(terms["segmentation"]) == 0.0  # no labels
    # the finest level compares the full-resolution images warped by the output field
    assert out["warped_levels"][2] is out["warped"] and out["fixed_levels"][2] is fixed


@pytest.mark.parametrize("name,term", [("dice_weight", "segmentation"), ("gamma", "similarity"),
                                       ("alpha", "affine"), ("beta", "smoothness")])
def test_each_weight_scales_its_own_term(name, term):
    out, moving, fixed = _outputs()
    labels = (_labels(fixed), _labels(moving))
    base = RegistrationPyramidLoss()(out, fixed, moving, *labels)
    doubled = RegistrationPyramidLoss(**{name: {"dice_weight": 10.0, "gamma": 10.0}.get(name, 2.0)})(out, fixed, moving, *labels)
    for key, value in base.items():
        assert torch.isfinite(value) and float(value) != 0.0
        if key == term:
            torch.testing.assert_close(doubled[key], 2 * value)
        elif key != "loss":
            torch.testing.assert_close(doubled[key], value)
    torch.testing.assert_close(doubled["loss"], base["loss"] + base[term])
    zero = RegistrationPyramidLoss(**{name: 0.0})(out, fixed, moving, *labels)
    assert float(zero[term]) == 0.0


def test_segmentation_term_is_the_present_label_dice_of_the_warped_labels():
    """Dice over the labels present in either map: an empty extra channel changes nothing."""
    out, moving, fixed = _outputs()
    fixed_labels, moving_labels = _labels(fixed), _labels(moving)
    terms = RegistrationPyramidLoss()(out, fixed, moving, fixed_labels, moving_labels)
    expected = 5.0 * present_label_dice_loss(warp(moving_labels, out["ddf"]), fixed_labels)
    torch.testing.assert_close(terms["segmentation"], expected)
    empty = fixed_labels.new_zeros(fixed_labels[:, :1].shape)
    padded = RegistrationPyramidLoss()(out, fixed, moving, torch.cat([fixed_labels, empty], 1),
                                       torch.cat([moving_labels, empty], 1))
    torch.testing.assert_close(padded["segmentation"], terms["segmentation"])


def test_affine_penalty_in_normalised_units():
    """A rotation about the image centre costs ||R - I||_F^2 whatever the grid; a shift of 2 voxels of a 16-voxel axis
    costs (2 / 8)^2; the identity costs 0."""
    a = math.radians(10)
    rotation = torch.tensor([[math.cos(a) - 1, -math.sin(a), math.sin(a), math.cos(a) - 1, 0.0, 0.0]], dtype=torch.float64)
    expected = 4 * (1 - math.cos(a))  # ||R - I||_F^2 = 2 (cos a - 1)^2 + 2 sin^2 a
    for shape in ((16, 16), (64, 48)):
        matrix = affine_from_normalized(rotation, shape)
        assert float(affine_identity_penalty(matrix, shape)) == pytest.approx(expected, rel=1e-12)
    shift = identity_affine(1, 2, torch.float64)
    shift[0, 0, 2] = 2.0
    assert float(affine_identity_penalty(shift, (16, 20))) == pytest.approx(0.0625, rel=1e-12)
    assert float(affine_identity_penalty(identity_affine(3, 3), (8, 8, 8))) == 0.0
    # the matrices of the outputs live on the input grid: affine_to_ddf gives their displacement there
    assert affine_to_ddf(shift, (16, 20))[0, 0].eq(2.0).all()


def test_gradcheck_float64():
    """The loss as a function of the network's outputs (fields, matrices, warped images), tiny 2D, float64."""
    generator = torch.Generator().manual_seed(4)
    rand = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    fixed_levels = (rand(1, 1, 4, 4), rand(1, 1, 8, 8))
    fixed_labels, moving_labels = (rand(1, 2, 8, 8) > 0.5).double(), rand(1, 2, 8, 8)
    inputs = (0.3 * rand(1, 2, 8, 8) + 0.11,  # ddf (no voxel exactly on a grid point: warp is piecewise linear)
              rand(1, 2, 2, 2), rand(1, 2, 4, 4),  # level ddfs
              identity_affine(1, 2, torch.float64) + 0.05 * rand(1, 2, 3), identity_affine(1, 2, torch.float64),
              rand(1, 1, 4, 4), rand(1, 1, 8, 8))  # warped levels
    inputs = tuple(x.requires_grad_() for x in inputs)
    loss = RegistrationPyramidLoss(ncc_window=3)

    def total(ddf, ddf0, ddf1, matrix0, matrix1, warped0, warped1):
        outputs = {"ddf": ddf, "level_ddfs": (ddf0, ddf1), "affine_matrices": (matrix0, matrix1),
                   "fixed_levels": fixed_levels, "warped_levels": (warped0, warped1)}
        return loss(outputs, None, None, fixed_labels, moving_labels)["loss"]

    assert torch.autograd.gradcheck(total, inputs)


def test_bad_inputs():
    out, moving, fixed = _outputs()
    loss = RegistrationPyramidLoss()
    with pytest.raises(ValueError, match=r"RegistrationPyramidLoss\(\): 'outputs' lacks key\(s\) \['level_ddfs'\]"):
        loss({k: v for k, v in out.items() if k != "level_ddfs"})
    with pytest.raises(ValueError, match=r"the per-level outputs must hold the same number"):
        loss({**out, "level_ddfs": out["level_ddfs"][1:]})
    with pytest.raises(ValueError, match=r"give both 'fixed_labels' and 'moving_labels' or neither"):
        loss(out, fixed, moving, _labels(fixed), None)
    for name in ("dice_weight", "gamma", "alpha", "beta"):
        with pytest.raises(ValueError, match=rf"RegistrationPyramidLoss\(\): '{name}' must be a finite number >= 0"):
            RegistrationPyramidLoss(**{name: -1.0})
    with pytest.raises(ValueError, match=r"'window'"):
        RegistrationPyramidLoss(ncc_window=4)
