"""VoxelMorph (deterministic, diffeomorphic): keys and shapes, initialisation, geometry, contract, refinement, bad inputs."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.engines.refinement import refine_network
from monai_diffreg.engines.training import registration_step
from monai_diffreg.functional.compose import compose_ddf
from monai_diffreg.functional.jacobian import jacobian_determinant
from monai_diffreg.functional.smoothing import gaussian_smooth
from monai_diffreg.losses.mdreg import MDRegNetLoss
from monai_diffreg.losses.synthmorph import SynthMorphLoss
from monai_diffreg.networks import VoxelMorph
from monai_diffreg.networks.contract import RefinableNetwork, RegistrationNetwork

KEYS = {"ddf", "inverse_ddf", "velocity", "warped", "warped_fixed"}
SMALL = {"enc_channels": (4, 8), "dec_channels": (8, 8, 4)}


def _net(spatial_dims=2, head_std=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    net = VoxelMorph(spatial_dims, **{**SMALL, **kwargs})
    if head_std is not None:  # a non-trivial velocity (the head starts at ~0)
        torch.nn.init.normal_(net.flow_head.weight, 0.0, head_std)
        torch.nn.init.normal_(net.flow_head.bias, 0.0, head_std)
    return net


def _pair(shape, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 1, *shape), generator=g), torch.rand((batch, 1, *shape), generator=g)


def _blobs(size=24, fixed_centre=(12.0, 12.0), moving_centre=(14.0, 11.0), width=12.0):
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")

    def blob(c):
        return torch.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / width).view(1, 1, size, size)

    return blob(moving_centre), blob(fixed_centre)


@pytest.mark.parametrize("shape, scale, velocity_size", [
    ((20, 18), 1.0, (10, 9)),
    ((20, 18), 0.5, (5, 5)),  # network grid (10, 9)
    ((12, 14, 10), 1.0, (6, 7, 5)),
    ((12, 14, 10), 0.5, (3, 4, 3)),  # network grid (6, 7, 5)
])
def test_keys_and_shapes(shape, scale, velocity_size):
    dims = len(shape)
    net = _net(dims, image_scale=scale)
    moving, fixed = _pair(shape, batch=2)
    out = net(moving, fixed)
    assert set(out) == KEYS
    assert out["ddf"].shape == out["inverse_ddf"].shape == (2, dims, *shape)
    assert out["velocity"].shape == (2, dims, *velocity_size) and net.velocity_size(shape) == velocity_size
    assert out["warped"].shape == moving.shape and out["warped_fixed"].shape == fixed.shape


def test_zero_velocity_at_initialisation():
    net = _net(2)
    moving, fixed = _pair((16, 16), batch=2)
    with torch.no_grad():
        out = net(moving, fixed)
    assert out["velocity"].abs().max() < 1e-3 and out["ddf"].abs().max() < 1e-3
    assert out["inverse_ddf"].abs().max() < 1e-3 and (out["warped"] - moving).abs().max() < 1e-3


@pytest.mark.parametrize("scale, expected", [(1.0, (2.0, -1.0)), (0.5, (4.0, -2.0))])
def test_constant_velocity_is_a_translation_in_input_voxels(scale, expected):
    """exp of a constant velocity ``v`` is a translation by ``v * int_downsize / image_scale`` input voxels."""
    net = _net(2, image_scale=scale)
    with torch.no_grad():
        net.flow_head.weight.zero_()
        net.flow_head.bias.copy_(torch.tensor([1.0, -0.5]))
        out = net(*_pair((20, 18)))
    torch.testing.assert_close(out["ddf"], torch.tensor(expected).view(1, 2, 1, 1).expand(1, 2, 20, 18))
    torch.testing.assert_close(out["inverse_ddf"], -out["ddf"])


def test_contract_and_displacements_match_forward():
    net = _net(3, head_std=0.5)
    assert isinstance(net, RegistrationNetwork) and isinstance(net, RefinableNetwork) and net.spatial_dims == 3
    moving, fixed = _pair((12, 14, 10))
    with torch.no_grad():
        full, lean, only = net(moving, fixed), net.displacements(moving, fixed), net.displacements(moving, fixed, False)
        from_velocity = net.velocity_to_ddf(full["velocity"], (12, 14, 10))
    assert full["ddf"].abs().max() > 0.5
    assert set(lean) == {"ddf", "inverse_ddf"} and set(only) == {"ddf"}
    assert torch.equal(lean["ddf"], full["ddf"]) and torch.equal(lean["inverse_ddf"], full["inverse_ddf"])
    assert torch.equal(only["ddf"], full["ddf"])
    torch.testing.assert_close(from_velocity, full["ddf"])


@pytest.mark.parametrize("shape", [(16, 16), (12, 12, 12)])
def test_diffeomorphic(shape):
    dims = len(shape)
    net = _net(dims, head_std=1.0)
    with torch.no_grad():
        out = net(*_pair(shape, batch=2))
    assert out["ddf"].abs().max() > 1.5  # a real deformation, not the identity
    assert (jacobian_determinant(out["ddf"]) > 0).all() and (jacobian_determinant(out["inverse_ddf"]) > 0).all()
    # a rough velocity that would fold if used as a displacement stays invertible once integrated
    velocity = 4.0 * gaussian_smooth(torch.randn((2, dims, *net.velocity_size(shape)),
                                                 generator=torch.Generator().manual_seed(0)), 1.0)
    assert jacobian_determinant(velocity).min() < -1.0
    assert (jacobian_determinant(net.velocity_to_ddf(velocity, shape)) > 0).all()
    assert (jacobian_determinant(net.velocity_to_ddf(-velocity, shape)) > 0).all()


@pytest.mark.parametrize("shape", [(20, 18), (12, 14, 10)])
def test_ddf_and_inverse_compose_to_identity(shape):
    """``phi o phi^-1`` and ``phi^-1 o phi`` are the identity up to integration and interpolation error
    (a few hundredths of a voxel for a smooth field of ~4 voxels), away from the border."""
    dims = len(shape)
    net = _net(dims)
    velocity = 3.0 * gaussian_smooth(torch.randn((2, dims, *net.velocity_size(shape)),
                                                 generator=torch.Generator().manual_seed(0)), 1.5)
    out = net.outputs_from_velocity(*_pair(shape, batch=2), velocity)
    ddf, inverse = out["ddf"], out["inverse_ddf"]
    inner = (slice(None), slice(None), *(slice(3, s - 3) for s in shape))
    assert ddf.abs().max() > 3.0
    for outer_field, inner_field in ((ddf, inverse), (inverse, ddf)):
        residual = compose_ddf(outer_field, inner_field)[inner].abs()
        # without the inverse (inner_field = 0) the residual would be the field itself
        assert residual.max() < 0.1 * outer_field.abs().max(), (residual.max(), outer_field.abs().max())
        assert residual.mean() < 0.1 * outer_field[inner].abs().mean(), (residual.mean(), outer_field[inner].abs().mean())


def test_refine_network_registers_a_shifted_pair():
    """The network offers refinement; with MDReg-Net's loss (NCC both ways + L1 velocity gradient, the one
    existing loss whose refinement terms need no context) Adam on the velocity finds the blobs' shift."""
    net = _net(2).eval()
    moving, fixed = _blobs(fixed_centre=(12.0, 12.0), moving_centre=(14.0, 11.0))
    loss = MDRegNetLoss(ncc_window=5)
    with torch.no_grad():
        before = net(moving, fixed)
    unrefined = refine_network(net, moving, fixed, loss, 0)
    assert set(unrefined) == KEYS and torch.equal(unrefined["ddf"], before["ddf"])
    history = []
    after = refine_network(net, moving, fixed, loss, 40, learning_rate=0.3, callback=lambda i, value: history.append(value))
    assert set(after) == KEYS and len(history) == 40 and history[-1] < history[0] - 0.1
    error_before = float(((before["warped"] - fixed) ** 2).mean())
    assert float(((after["warped"] - fixed) ** 2).mean()) < 0.05 * error_before
    # moving(x + (2, -1)) == fixed(x): the displacement at the blob is the shift
    torch.testing.assert_close(after["ddf"][0, :, 10:15, 10:15].mean((1, 2)), torch.tensor([2.0, -1.0]), atol=0.25, rtol=0)
    assert float(jacobian_determinant(after["ddf"]).min()) > 0 and float(jacobian_determinant(after["inverse_ddf"]).min()) > 0
    lean = refine_network(net, moving, fixed, loss, 2, learning_rate=0.3, displacements_only=True, inverse=False)
    assert set(lean) == {"ddf"} and lean["ddf"].shape == (1, 2, 24, 24)


def test_state_dict_round_trip_after_training():
    net = _net(2)
    g = torch.Generator().manual_seed(2)
    labels = torch.zeros(2, 3, 16, 16).scatter_(1, torch.randint(0, 3, (2, 1, 16, 16), generator=g), 1.0)
    batch = {"moving": torch.rand(2, 1, 16, 16, generator=g), "fixed": torch.rand(2, 1, 16, 16, generator=g),
             "moving_labels": labels, "fixed_labels": labels.roll(2, dims=3)}
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        registration_step(net, SynthMorphLoss(), batch)["loss"].backward()
        optimizer.step()
    assert not torch.equal(net.flow_head.weight, initial["flow_head.weight"])
    copy = _net(2, seed=5)
    copy.load_state_dict(net.state_dict())
    with torch.no_grad():
        a, b = net(batch["moving"], batch["fixed"]), copy(batch["moving"], batch["fixed"])
    for key in KEYS:
        assert torch.equal(a[key], b[key])


@pytest.mark.parametrize("kwargs, match", [
    ({"in_channels": 3}, r"VoxelMorph\(\): 'in_channels' must be an even integer >= 2"),
    ({"num_steps": -1}, r"VoxelMorph\(\): 'num_steps' must be an integer >= 0"),
    ({"image_scale": 0.0}, r"VoxelMorph\(\): 'image_scale' must be a finite number > 0"),
    ({"image_scale": -0.5}, r"VoxelMorph\(\): 'image_scale' must be a finite number > 0"),
    # the U-Net owns the int_downsize check (shared with ProbabilisticVoxelMorph), so it names itself
    ({"int_downsize": 3}, r"VxmUNet\(\): 'int_downsize' must be a power of two between 1 and 4"),
    ({"int_downsize": 8}, r"VxmUNet\(\): 'int_downsize' must be a power of two between 1 and 4"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _net(2, **kwargs)


def test_bad_inputs():
    net = _net(3)
    a = torch.rand(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match=r"VoxelMorph\(\): 'moving' must be 5D"):
        net(torch.rand(1, 1, 8, 8), a)
    with pytest.raises(ValueError, match=r"VoxelMorph\(\): 'moving' and 'fixed' must share batch and spatial sizes"):
        net.displacements(a, torch.rand(1, 1, 8, 8, 9))
    with pytest.raises(ValueError, match=r"VoxelMorph\(\): 'moving' and 'fixed' channels must add up to in_channels=2"):
        net(torch.rand(1, 2, 8, 8, 8), a)
    with pytest.raises(ValueError, match=r"VoxelMorph.velocity_to_ddf\(\): 'velocity' must have spatial shape \(4, 4, 4\)"):
        net.velocity_to_ddf(torch.zeros(1, 3, 5, 4, 4), (8, 8, 8))
    with pytest.raises(ValueError, match=r"VoxelMorph.velocity_to_ddf\(\): 'velocity' must have 3 channels"):
        net.velocity_to_ddf(torch.zeros(1, 2, 4, 4, 4), (8, 8, 8))
    with pytest.raises(ValueError, match=r"VoxelMorph.images_on_network_grid\(\): 'image' must be 5D"):
        net.images_on_network_grid(torch.rand(1, 1, 8, 8))
