"""AffineThenDeformable: composition of the two stages' fields, frozen affine stage, contract, bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_diffreg.functional.affine import affine_to_ddf, identity_affine, invert_affine
from monai_diffreg.functional.compose import compose_ddf
from monai_diffreg.functional.warp import warp
from monai_diffreg.losses.synthmorph import SynthMorphLoss
from monai_diffreg.networks import AffineThenDeformable, KeypointAffine, VoxelMorph
from monai_diffreg.networks.contract import RegistrationNetwork


class _Translation(nn.Module):
    """Deformable test double: a learnable constant displacement (zero: the identity); records what it sees."""

    def __init__(self, spatial_dims: int, shift: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.shift = nn.Parameter(torch.zeros(spatial_dims) if shift is None else torch.tensor(shift))
        self.seen: torch.Tensor | None = None

    def displacements(self, moving, fixed, inverse=True):
        self.seen = moving
        ddf = self.shift.view(1, -1, *([1] * self.spatial_dims)).expand(moving.shape[0], -1, *moving.shape[2:])
        return {"ddf": ddf, "inverse_ddf": -ddf} if inverse else {"ddf": ddf}

    def forward(self, moving, fixed):
        out = self.displacements(moving, fixed)
        return {**out, "velocity": 2.0 * out["ddf"], "warped": warp(moving, out["ddf"])}


class _Affine(nn.Module):
    """Affine test double: a learnable matrix ``(1, D, D + 1)`` (default the identity)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.spatial_dims = matrix.shape[1]
        self.matrix = nn.Parameter(matrix)

    def displacements(self, moving, fixed, inverse=True):
        out = {"affine": self.matrix.expand(moving.shape[0], -1, -1),
               "ddf": affine_to_ddf(self.matrix.expand(moving.shape[0], -1, -1), moving.shape[2:])}
        if inverse:
            out["inverse_ddf"] = affine_to_ddf(invert_affine(self.matrix).expand(moving.shape[0], -1, -1),
                                               moving.shape[2:])
        return out

    def forward(self, moving, fixed):
        out = self.displacements(moving, fixed)
        return {**out, "warped": warp(moving, out["ddf"])}


def _random_matrix(ndim, seed=0):
    g = torch.Generator().manual_seed(seed)
    linear = torch.eye(ndim) + 0.1 * torch.randn(1, ndim, ndim, generator=g)
    return torch.cat([linear, 2.0 * torch.randn(1, ndim, 1, generator=g)], dim=2)


def _pair(shape, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 1, *shape), generator=g), torch.rand((batch, 1, *shape), generator=g)


@pytest.mark.parametrize("shape", [(14, 12), (8, 9, 10)])
def test_identity_deformable_gives_the_affine_fields(shape):
    dims = len(shape)
    affine = _Affine(_random_matrix(dims))
    net = AffineThenDeformable(affine, _Translation(dims))
    moving, fixed = _pair(shape)
    with torch.no_grad():
        out, stage = net(moving, fixed), affine(moving, fixed)
    assert set(out) == {"ddf", "inverse_ddf", "affine", "warped", "velocity"}
    assert stage["ddf"].abs().max() > 1.0
    torch.testing.assert_close(out["ddf"], stage["ddf"])
    torch.testing.assert_close(out["inverse_ddf"], stage["inverse_ddf"])
    torch.testing.assert_close(out["affine"], stage["affine"])
    torch.testing.assert_close(out["warped"], stage["warped"])
    torch.testing.assert_close(net.deformable.seen, stage["warped"])  # the deformable stage sees the moved image


@pytest.mark.parametrize("shape", [(14, 12), (8, 9, 10)])
def test_identity_affine_gives_the_deformable_fields(shape):
    dims = len(shape)
    deformable = _Translation(dims, (1.5, -0.5, 0.25)[:dims])
    net = AffineThenDeformable(_Affine(identity_affine(1, dims)), deformable)
    moving, fixed = _pair(shape)
    with torch.no_grad():
        out, stage = net(moving, fixed), deformable(moving, fixed)
    torch.testing.assert_close(out["ddf"], stage["ddf"])
    torch.testing.assert_close(out["inverse_ddf"], stage["inverse_ddf"])
    torch.testing.assert_close(out["velocity"], stage["velocity"])
    torch.testing.assert_close(out["affine"], identity_affine(2, dims))
    torch.testing.assert_close(out["warped"], stage["warped"])


def test_two_translations_add_up_and_the_inverse_undoes_them():
    """phi_affine o phi_deformable of two translations is their sum; the inverse is minus the sum."""
    matrix = identity_affine(1, 2)
    matrix[0, :, 2] = torch.tensor([2.0, 1.0])
    net = AffineThenDeformable(_Affine(matrix), _Translation(2, (0.5, -1.0)))
    moving, fixed = _pair((16, 16))
    with torch.no_grad():
        out = net(moving, fixed)
    expected = torch.tensor([2.5, 0.0]).view(1, 2, 1, 1).expand(2, 2, 16, 16)
    torch.testing.assert_close(out["ddf"], expected)
    torch.testing.assert_close(out["inverse_ddf"], -expected)
    torch.testing.assert_close(out["warped"], warp(moving, expected))


def _inside(ddf):
    """Voxels ``x`` whose ``x + ddf(x)`` lies inside the grid (where compose_ddf interpolates without clamping)."""
    shape = ddf.shape[2:]
    points = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=ddf.dtype) for s in shape], indexing="ij")) + ddf[0]
    return torch.stack([(points[i] >= 0) & (points[i] <= s - 1) for i, s in enumerate(shape)]).all(0)


def test_general_composition_order():
    """``ddf`` = the affine after the deformation (compose_ddf's, where it does not clamp), ``inverse =
    compose_ddf(inverse deformable, inverse affine)``."""
    affine = _Affine(_random_matrix(2, seed=3))
    torch.manual_seed(0)
    deformable = VoxelMorph(2, enc_channels=(4, 8), dec_channels=(8, 8, 4))
    for parameter in (deformable.flow_head.weight, deformable.flow_head.bias):  # a non-trivial field
        torch.nn.init.normal_(parameter, 0.0, 1.0)
    net = AffineThenDeformable(affine, deformable)
    moving, fixed = _pair((16, 20))
    with torch.no_grad():
        out = net(moving, fixed)
        a = affine(moving, fixed)
        d = deformable(warp(moving, a["ddf"]), fixed)
    assert d["ddf"].abs().max() > 0.5
    inside = _inside(d["ddf"])
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(out["ddf"][:, :, inside], compose_ddf(a["ddf"], d["ddf"])[:, :, inside])
    torch.testing.assert_close(out["inverse_ddf"], compose_ddf(d["inverse_ddf"], a["inverse_ddf"]))
    torch.testing.assert_close(out["velocity"], d["velocity"])
    torch.testing.assert_close(out["warped"], warp(moving, out["ddf"]))


def test_contract_and_displacements_match_forward():
    net = AffineThenDeformable(_Affine(_random_matrix(3)), _Translation(3, (1.0, 0.5, -0.5)))
    assert isinstance(net, RegistrationNetwork) and net.spatial_dims == 3
    moving, fixed = _pair((8, 9, 10))
    with torch.no_grad():
        full, lean, only = net(moving, fixed), net.displacements(moving, fixed), net.displacements(moving, fixed, False)
    assert set(lean) == {"affine", "ddf", "inverse_ddf"} and set(only) == {"affine", "ddf"}
    torch.testing.assert_close(lean["affine"], full["affine"])
    torch.testing.assert_close(lean["ddf"], full["ddf"])
    torch.testing.assert_close(lean["inverse_ddf"], full["inverse_ddf"])
    torch.testing.assert_close(only["ddf"], full["ddf"])


@pytest.mark.parametrize("freeze", [False, True])
def test_gradients_reach_the_affine_stage_only_when_not_frozen(freeze):
    affine = _Affine(_random_matrix(2))
    deformable = _Translation(2)
    net = AffineThenDeformable(affine, deformable, freeze_affine=freeze)
    moving, fixed = _pair((16, 16))
    net(moving, fixed)["warped"].sub(fixed).square().mean().backward()
    assert deformable.shift.grad is not None and deformable.shift.grad.abs().sum() > 0
    if freeze:
        assert affine.matrix.grad is None and not affine.matrix.requires_grad
    else:
        assert affine.matrix.grad is not None and affine.matrix.grad.abs().sum() > 0


def test_frozen_affine_stage_stays_in_eval_mode():
    frozen = AffineThenDeformable(_Affine(_random_matrix(2)), _Translation(2), freeze_affine=True)
    trained = AffineThenDeformable(_Affine(_random_matrix(2)), _Translation(2))
    frozen.train()
    trained.train()
    assert not frozen.affine.training and frozen.deformable.training and frozen.training
    assert trained.affine.training
    frozen.eval()
    assert not frozen.deformable.training


def test_keypoint_affine_then_voxelmorph_trains_the_deformable_stage_with_synthmorph_loss():
    """The SynthMorph 2024 recipe on the real networks: Dice on the total field, smoothness on the velocity."""
    torch.manual_seed(0)
    affine = KeypointAffine(2, num_keypoints=6, enc_channels=(4, 8), dec_channels=(8, 8))
    deformable = VoxelMorph(2, enc_channels=(4, 8), dec_channels=(8, 8, 4))
    net = AffineThenDeformable(affine, deformable, freeze_affine=True)
    assert "freeze_affine=True" in repr(net)
    moving, fixed = _pair((20, 24))
    labels = [nn.functional.one_hot((image[:, 0] * 3).long(), 3).movedim(-1, 1).float() for image in (moving, fixed)]
    out = net(moving, fixed)
    assert set(out) == {"ddf", "inverse_ddf", "affine", "warped", "velocity"}
    assert out["ddf"].shape == out["inverse_ddf"].shape == (2, 2, 20, 24) and out["affine"].shape == (2, 2, 3)
    terms = SynthMorphLoss()(out, fixed, moving, labels[1], labels[0])
    terms["loss"].backward()
    assert all(p.grad is None for p in affine.parameters())
    assert deformable.flow_head.weight.grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"AffineThenDeformable\(\): 'affine' and 'deformable' must have the same "
                                         r"spatial_dims, got 2 and 3"):
        AffineThenDeformable(_Affine(identity_affine(1, 2)), _Translation(3))
    with pytest.raises(TypeError, match=r"AffineThenDeformable\(\): 'deformable' must be an nn.Module with forward"):
        AffineThenDeformable(_Affine(identity_affine(1, 2)), nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match=r"AffineThenDeformable\(\): 'freeze_affine' must be True or False"):
        AffineThenDeformable(_Affine(identity_affine(1, 2)), _Translation(2), freeze_affine=1)
    net = AffineThenDeformable(_Translation(2), _Translation(2))
    with pytest.raises(ValueError, match=r"AffineThenDeformable\(\): the affine stage \(_Translation\) must return "
                                         r"an 'affine' matrix"):
        net(*_pair((8, 8)))


def test_repr_names_both_stages_and_their_settings():
    """What summary.json's method_settings records (NetworkRegistration's repr uses the network's extra_repr)."""
    from monai_diffreg.engines.network_inference import NetworkRegistration
    from monai_diffreg.networks import KeypointAffine

    net = AffineThenDeformable(KeypointAffine(2, num_keypoints=4, enc_channels=(4, 8), dec_channels=(8, 8)),
                               _Translation(2), freeze_affine=True)
    text = repr(NetworkRegistration(net, device="cpu"))
    assert "AffineThenDeformable(affine=KeypointAffine(spatial_dims=2, num_keypoints=4, image_scale=0.5" in text
    assert "deformable=_Translation(), freeze_affine=True)" in text
