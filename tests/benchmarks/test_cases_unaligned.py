"""Unaligned pairs (benchmarks.cases): the aligned synthetic twin further moved by a known random affine.

The data-free tests check the affine draws (bounds, spread, centre) and the order of the composition
(pull-back: ``true_ddf`` = the twin's field, then the affine) on a small smooth volume. The data tests build
the validation twin ``niivue_synthetic_unaligned`` at quick scale (0.5: 2 mm, 80x96x112) through ``get_case``
as ``benchmarks.run`` does, next to its aligned twin ``niivue_synthetic``, and skip when ``../shared/data`` is
absent.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import benchmarks.cases as cases
from benchmarks.run import DEFAULT_CACHE, build_parser
from monai_diffreg.functional import affine_to_ddf, compose_ddf, identity_grid, invert_affine, warp
from monai_diffreg.metrics import dice_per_label
from monai_diffreg.transforms import deformation_from_params, sample_smooth_velocity_params

SCALE = 0.5
SEEDS = (100, 101)  # validation seeds of niivue_synthetic_unaligned
LARGE = (2, 41, 8, 47, 16)  # cerebral and cerebellar white matter / cerebellar cortex, brain stem


def _turn(angle: float, plane: tuple[int, int]) -> torch.Tensor:
    """The rotation of ``sample_random_affine`` in ``plane`` (its sign convention)."""
    i, j = plane
    turn = torch.eye(3, dtype=torch.float64)
    turn[i, i] = turn[j, j] = math.cos(angle)
    turn[i, j], turn[j, i] = -math.sin(angle), math.sin(angle)
    return turn


def _decompose(matrix: torch.Tensor, centre) -> tuple[list[float], list[float], list[float]]:
    """``y = R S (x - c) + c + t`` -> (angles about axes 0, 1, 2 in degrees, with ``R = R2 R1 R0``; scalings; ``t``).

    The decomposition is checked by recomposing ``R`` from the angles."""
    linear = matrix[0, :, :3].double()
    scaling = torch.linalg.norm(linear, dim=0)
    rotation = linear / scaling
    # R[2] = [s1, c1 s0, c1 c0], R[:, 0] = [c2 c1, s2 c1, s1]
    a1 = math.asin(float(rotation[2, 0]))
    a0 = math.atan2(float(rotation[2, 1]), float(rotation[2, 2]))
    a2 = math.atan2(float(rotation[1, 0]), float(rotation[0, 0]))
    recomposed = _turn(a2, (0, 1)) @ _turn(a1, (0, 2)) @ _turn(a0, (1, 2))
    torch.testing.assert_close(recomposed, rotation, atol=1e-5, rtol=0)
    centre = torch.as_tensor(centre, dtype=torch.float64)
    translation = linear @ centre + matrix[0, :, 3].double() - centre
    return [math.degrees(a) for a in (a0, a1, a2)], scaling.tolist(), translation.tolist()


def test_groups_are_named_not_default_and_the_validation_twin_exists():
    assert cases.UNALIGNED_GROUPS == ("brain_synthetic_unaligned",)
    for group in cases.UNALIGNED_GROUPS:
        assert group not in cases.GROUPS and group not in cases.VALIDATION_GROUPS and group in cases.CASE_VERSIONS
        assert cases.CASE_AXCODES[group] == cases.CASE_AXCODES["brain_synthetic"]
        assert build_parser().parse_args(["--cases", group]).cases == [group]
        twin = group.replace("brain_synthetic", "niivue_synthetic")
        assert twin in cases.VALIDATION_GROUPS and twin in cases.CASE_VERSIONS and cases.CASE_AXCODES[twin] == "LIA"
        assert build_parser().parse_args(["--cases", twin]).cases == [twin]
    assert build_parser().parse_args([]).cases == list(cases.GROUPS)
    assert cases.case_names(["brain_synthetic_unaligned", "niivue_synthetic_unaligned"], [0, 1]) == [
        ("brain_synthetic_unaligned", "brain_synthetic_unaligned_s0"),
        ("brain_synthetic_unaligned", "brain_synthetic_unaligned_s1"),
        ("niivue_synthetic_unaligned", "niivue_synthetic_unaligned_s0"),
        ("niivue_synthetic_unaligned", "niivue_synthetic_unaligned_s1")]
    assert cases.family("niivue_synthetic_unaligned_s100") == "niivue_synthetic_unaligned"


def test_affine_draws_are_within_the_stated_bounds_and_spread_over_them():
    shape, centre, spacing = (80, 96, 112), (41.5, 47.0, 60.25), 2.0
    angles, scalings, translations = [], [], []
    for seed in range(200):
        generator = torch.Generator().manual_seed(cases.UNALIGNED_SEED_OFFSET + seed)
        matrix = cases.random_brain_affine(shape, centre, spacing, generator)
        assert matrix.shape == (1, 3, 4) and matrix.dtype == torch.float64
        a, s, t = _decompose(matrix, centre)
        angles += a
        scalings += s
        translations += [x * spacing for x in t]  # mm
    assert max(abs(a) for a in angles) <= cases.UNALIGNED_MAX_ROTATION_DEGREES + 1e-6
    assert 1 / cases.UNALIGNED_MAX_SCALING - 1e-9 <= min(scalings) and max(scalings) <= cases.UNALIGNED_MAX_SCALING + 1e-9
    assert max(abs(t) for t in translations) <= cases.UNALIGNED_MAX_TRANSLATION_MM + 1e-6
    # spread over the whole range (uniform draws), not all tiny
    assert max(abs(a) for a in angles) > 18 and min(scalings) < 0.92 and max(scalings) > 1.08
    assert max(abs(t) for t in translations) > 18
    assert sum(abs(a) > 5 for a in angles) > len(angles) / 2


def test_the_rotation_centre_is_the_given_point():
    """The drawn ``R S`` and ``t`` do not depend on the centre; the centre moves by exactly ``t``."""
    shape = (80, 96, 112)
    one, other = ((cases.random_brain_affine(shape, c, 2.0, torch.Generator().manual_seed(7)), c)
                  for c in ((39.5, 47.5, 55.5), (30.0, 60.0, 50.0)))
    torch.testing.assert_close(one[0][0, :, :3], other[0][0, :, :3], atol=0, rtol=0)
    assert _decompose(*one)[2] == pytest.approx(_decompose(*other)[2], abs=1e-9)


def _smooth_volume(shape):
    """A smooth image with structure everywhere inside (a blob times ripples) and its 3-level label map."""
    grid = identity_grid(shape, "cpu", torch.float64)
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64).view(3, 1, 1, 1)
    radius2 = ((grid - centre) ** 2).sum(0)
    image = torch.exp(-radius2 / (2 * 9.0**2)) * (1 + 0.3 * torch.sin(grid[0] / 2.5) * torch.cos(grid[1] / 3.0))
    labels = (image > 0.3).double() + (image > 0.7).double()
    return image.float()[None, None], labels.float()[None, None]


def test_true_ddf_is_the_deformation_then_the_affine():
    """On a smooth volume: the new moving image sampled by ``true_ddf`` gives back the fixed image as well as the
    aligned pair does; the other order of composition, or a field without the affine's linear part on the
    deformation, does not."""
    shape = (40, 40, 40)
    image, labels = _smooth_volume(shape)
    generator = torch.Generator().manual_seed(3)
    fields = deformation_from_params(sample_smooth_velocity_params(shape, 12.0, 5.0, generator=generator))
    pair = {"moving": warp(image, fields["ddf"]), "true_ddf": fields["inverse_ddf"], "ddf": fields["ddf"]}
    matrix = cases.random_brain_affine(shape, (19.5, 19.5, 19.5), 4.0, torch.Generator().manual_seed(11))
    assert _decompose(matrix, (19.5, 19.5, 19.5))[0] != pytest.approx([0, 0, 0], abs=3)  # a real rotation
    out = cases.unalign(pair, labels, matrix)
    assert out["moving"].shape == image.shape and out["true_ddf"].shape == pair["true_ddf"].shape

    inner = (slice(None), slice(None)) + (slice(12, 28),) * 3  # the blob, well inside the field of view
    def error(moving, ddf):
        return float((warp(moving, ddf) - image)[inner].abs().mean())

    affine = affine_to_ddf(matrix, shape).float()
    aligned, right = error(pair["moving"], pair["true_ddf"]), error(out["moving"], out["true_ddf"])
    # measured: 0.0048 aligned, 0.0072 (one more linear interpolation), 0.041 affine first, 0.026 without L u
    assert right < 1.8 * aligned
    assert error(out["moving"], compose_ddf(pair["true_ddf"], affine)) > 4 * right  # the affine first
    assert error(out["moving"], affine + pair["true_ddf"]) > 2.5 * right  # the deformation not carried by L
    # the moving side is the aligned one at A^-1 y, image and labels alike
    torch.testing.assert_close(out["moving"], warp(pair["moving"], affine_to_ddf(invert_affine(matrix), shape).float(),
                                                   padding_mode="zeros"))
    # labels moved back by A agree with the aligned moving labels up to one voxel (two nearest-neighbour steps)
    back, aligned_labels = warp(out["moving_labels"], affine, mode="nearest"), warp(labels, pair["ddf"], mode="nearest")
    for label in (1, 2):
        mine, theirs = (x[inner] == label for x in (back, aligned_labels))
        assert float((mine & _dilated(theirs)).sum() / mine.sum()) > 0.995, label
        assert float((theirs & _dilated(mine)).sum() / theirs.sum()) > 0.995, label


def _dilated(mask: torch.Tensor) -> torch.Tensor:
    """``(1, 1, *S)`` bool mask grown by one voxel (3x3x3 neighbourhood)."""
    return F.max_pool3d(mask.float(), 3, 1, 1) > 0


@pytest.fixture(scope="module")
def built(shared_data, tmp_path_factory):
    """``{seed: (aligned, unaligned)}`` niivue_synthetic(_unaligned) cases at quick scale."""
    cache = tmp_path_factory.mktemp("unaligned_cases")
    def build(group, name):
        return torch.load(cases.get_case(shared_data, group, name, SCALE, cache), weights_only=True)
    return {seed: (build("niivue_synthetic", f"niivue_synthetic_s{seed}"),
                   build("niivue_synthetic_unaligned", f"niivue_synthetic_unaligned_s{seed}")) for seed in SEEDS}


def test_unaligned_case_is_its_aligned_twin_moved_by_the_recorded_affine(built):
    for seed, (aligned, case) in built.items():
        shape = tuple(case["fixed"].shape[2:])
        for key in ("fixed", "fixed_labels", "mask"):  # same grid, same fixed side
            assert torch.equal(case[key], aligned[key]), key
        assert case["labels"] == aligned["labels"] and case["spacing"] == aligned["spacing"]
        matrix = case["true_affine"]
        assert matrix.shape == (1, 3, 4)
        settings = case["settings"]
        assert settings["seed"] == seed and settings["affine_seed"] == cases.UNALIGNED_SEED_OFFSET + seed
        # the drawn affine, about the fixed brain's centre, within the bounds
        centre = settings["affine_centre_voxel"]
        angles, scalings, translation = _decompose(matrix, centre)
        assert max(map(abs, angles)) <= cases.UNALIGNED_MAX_ROTATION_DEGREES + 1e-6
        assert all(1 / cases.UNALIGNED_MAX_SCALING - 1e-6 <= s <= cases.UNALIGNED_MAX_SCALING + 1e-6 for s in scalings)
        translation_mm = [t * case["spacing"][0] for t in translation]
        assert max(map(abs, translation_mm)) <= cases.UNALIGNED_MAX_TRANSLATION_MM + 1e-6
        assert settings["affine_translation_mm"] == pytest.approx(translation_mm, abs=1e-6)
        assert settings["affine_scaling"] == pytest.approx(scalings, abs=1e-6)
        # the moving image: the twin's (same deformation and intensity change) resampled at A^-1 y
        back = affine_to_ddf(invert_affine(matrix), shape).float()
        assert torch.equal(case["moving"], warp(aligned["moving"], back, padding_mode="zeros"))
        # true_ddf = (A - I) x + t + L u with u the twin's field: the same deformation, exactly
        twin_field = torch.einsum("ij,bj...->bi...", torch.linalg.inv(matrix[0, :, :3]),
                                  case["true_ddf"].double() - affine_to_ddf(matrix, shape))
        torch.testing.assert_close(twin_field.float(), aligned["true_ddf"], atol=1e-4, rtol=0)
        # the labels: the twin's labels moved by the affine, up to one voxel of nearest-neighbour resampling
        moved = warp(aligned["moving_labels"], back, mode="nearest", padding_mode="zeros")
        for label in LARGE:
            mine, theirs = (x == label for x in (case["moving_labels"], moved))
            assert float((mine & _dilated(theirs)).sum() / mine.sum()) > 0.995, (seed, label)
            assert float((theirs & _dilated(mine)).sum() / theirs.sum()) > 0.995, (seed, label)
            assert float(dice_per_label(case["moving_labels"], moved, [label])[0, 0]) > 0.8, (seed, label)
    assert max(built[s][1]["settings"]["affine_rotation_degrees"] for s in SEEDS) > 5  # not all tiny


def test_true_field_registers_as_well_as_the_twins_and_identity_is_clearly_worse(built):
    def dice(case, ddf):
        warped = case["moving_labels"] if ddf is None else warp(case["moving_labels"], ddf, mode="nearest")
        return float(dice_per_label(warped, case["fixed_labels"], case["labels"])[0].nanmean())

    for seed, (aligned, case) in built.items():
        twin_true, true = dice(aligned, aligned["true_ddf"]), dice(case, case["true_ddf"])
        assert true > twin_true - 0.03, (seed, true, twin_true)  # measured: 0.96 against 0.975
        twin_identity, identity = dice(aligned, None), dice(case, None)
        assert identity < twin_identity - 0.2, (seed, identity, twin_identity)  # measured: 0.08 against 0.63
        assert case["settings"]["affine_lost_brain_fraction"] < 0.05


def test_aligned_twin_matches_the_default_cache(shared_data, tmp_path):
    """The unaligned groups leave the aligned cases as they were: a freshly built aligned twin has the fingerprint of
    the copy in the default benchmark cache (built by earlier code of the same CASE_VERSIONS), when there is one."""
    found = []
    for group, name in (("niivue_synthetic", "niivue_synthetic_s100"), ("brain_synthetic", "brain_synthetic_s0")):
        path = DEFAULT_CACHE / f"{name}@{SCALE:g}.pt"
        if path.is_file():
            stored = torch.load(path, weights_only=True)
            if stored.get("version") == cases.CASE_VERSIONS[group]:
                found.append((group, name, stored["fingerprint"]))
    if not found:
        pytest.skip(f"no quick-scale aligned twin of the current version in the default cache {DEFAULT_CACHE}")
    for group, name, expected in found:
        fresh = torch.load(cases.get_case(shared_data, group, name, SCALE, tmp_path), weights_only=True)
        assert fresh["fingerprint"] == expected, name
