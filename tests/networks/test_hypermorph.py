"""HyperMorph network: hyper-convolutions, batching over different lambdas, geometry, contract, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from monai_diffreg.functional.jacobian import jacobian_determinant
from monai_diffreg.functional.smoothing import gaussian_smooth
from monai_diffreg.networks.contract import RegistrationNetwork
from monai_diffreg.networks.hypermorph import HyperConv, HyperMorph, HyperNetwork, HyperVxmUNet, hyper_conv

SMALL = {"enc_channels": (4, 8), "dec_channels": (8, 8, 4)}


def _net(spatial_dims=2, head_std=None, **kwargs):
    torch.manual_seed(0)
    net = HyperMorph(spatial_dims, **{**SMALL, **kwargs})
    if head_std is not None:  # a non-trivial velocity (the flow head starts at ~0)
        torch.nn.init.normal_(net.flow_head.generator.weight, 0.0, head_std)
        torch.nn.init.normal_(net.flow_head.generator.bias, 0.0, head_std)
    return net


def _pair(shape, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 1, *shape), generator=g), torch.rand((batch, 1, *shape), generator=g)


@pytest.mark.parametrize("dims, padding", [(2, 1), (3, 1), (2, 0)])
def test_hyper_conv_matches_per_item_convolution(dims, padding):
    g = torch.Generator().manual_seed(0)
    x = torch.randn((3, 2, *(5,) * dims), generator=g)
    w = torch.randn((3, 4, 2, *(3,) * dims), generator=g)
    b = torch.randn((3, 4), generator=g)
    conv = (F.conv2d, F.conv3d)[dims - 2]
    expected = torch.cat([conv(x[i:i + 1], w[i], b[i], padding=padding) for i in range(3)])
    torch.testing.assert_close(hyper_conv(x, w, b, padding=padding), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_hyper_conv_module_gradcheck_float64(dims):
    torch.manual_seed(0)
    conv = HyperConv(dims, 2, 2, embedding_dim=3).double()
    x = torch.randn((2, 2, *(4,) * dims), dtype=torch.float64, requires_grad=True)
    h = torch.randn((2, 3), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h: conv(x, h), (x, h))
    params = tuple(conv.parameters())
    assert torch.autograd.gradcheck(lambda *p: torch.func.functional_call(
        conv, dict(zip(["generator.weight", "generator.bias"], p)), (x.detach(), h.detach())), params)


def test_hyper_conv_kernels_depend_on_embedding():
    torch.manual_seed(0)
    conv = HyperConv(2, 3, 5, embedding_dim=4)
    w, b = conv.kernels(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.5, 0.0, 2.0]]))
    assert w.shape == (2, 5, 3, 3, 3) and b.shape == (2, 5)
    # at zero embedding the generated kernels are the constant part, elsewhere they move (at the init scale)
    torch.testing.assert_close(w[0].flatten(), conv.generator.bias[: w[0].numel()])
    assert 0.05 < (w[1] - w[0]).std() / w[0].std() < 10


def test_hypernetwork_shape_and_relu():
    net = HyperNetwork((8, 16))
    out = net(torch.rand(5, 1))
    assert out.shape == (5, 16) and net.out_features == 16 and (out >= 0).all()


@pytest.mark.parametrize("shape", [(16, 16), (17, 13), (12, 12, 12), (11, 13, 9)])
def test_forward_shapes_and_keys(shape):
    dims = len(shape)
    net = _net(dims)
    moving, fixed = _pair(shape, batch=2)
    out = net(moving, fixed, reg_weight=torch.tensor([0.2, 0.7]))
    n = tuple(math.ceil(s / 2) for s in shape)
    assert set(out) == {"ddf", "inverse_ddf", "velocity", "warped", "warped_fixed", "reg_weight"}
    assert out["ddf"].shape == out["inverse_ddf"].shape == (2, dims, *shape)
    assert out["velocity"].shape == (2, dims, *n)
    assert out["warped"].shape == moving.shape and out["warped_fixed"].shape == fixed.shape
    torch.testing.assert_close(out["reg_weight"], torch.tensor([[0.2], [0.7]]))


def test_unet_output_resolution_and_image_scale():
    unet = HyperVxmUNet(2, 2, (4, 8, 8), (8, 8, 8, 4), int_downsize=4, embedding_dim=5)
    assert unet(torch.rand(2, 2, 16, 24), torch.rand(2, 5)).shape == (2, 4, 4, 6)
    net = _net(2, image_scale=0.5)
    moving, fixed = _pair((20, 18))
    out = net(moving, fixed, 0.5)
    assert out["velocity"].shape == (1, 2, 5, 5) and out["ddf"].shape == (1, 2, 20, 18)


def test_contract_and_default_weight():
    net = _net(2, head_std=0.05, default_reg_weight=0.3)
    assert isinstance(net, RegistrationNetwork) and net.spatial_dims == 2
    moving, fixed = _pair((16, 16), batch=2)
    with torch.no_grad():
        default, explicit = net(moving, fixed), net(moving, fixed, 0.3)
        disp = net.displacements(moving, fixed)
        only = net.displacements(moving, fixed, inverse=False, reg_weight=0.3)
    torch.testing.assert_close(default["ddf"], explicit["ddf"])
    torch.testing.assert_close(default["reg_weight"], torch.full((2, 1), 0.3))
    assert set(disp) == {"ddf", "inverse_ddf"} and set(only) == {"ddf"}
    torch.testing.assert_close(disp["ddf"], default["ddf"])
    torch.testing.assert_close(disp["inverse_ddf"], default["inverse_ddf"])
    torch.testing.assert_close(only["ddf"], default["ddf"])


def test_zero_velocity_at_initialisation():
    net = _net(2)
    moving, fixed = _pair((16, 16), batch=3)
    with torch.no_grad():
        out = net(moving, fixed, torch.tensor([0.0, 0.5, 1.0]))
    assert out["velocity"].abs().max() < 1e-3 and out["ddf"].abs().max() < 1e-3


@pytest.mark.parametrize("shape", [(16, 16), (12, 12, 12)])
def test_mixed_lambdas_in_one_batch_equal_separate_calls(shape):
    net = _net(len(shape), head_std=0.05)
    lams = [0.1, 0.5, 0.9]
    moving, fixed = _pair(shape, batch=3)
    with torch.no_grad():
        batched = net(moving, fixed, torch.tensor(lams))
        for i, lam in enumerate(lams):
            single = net(moving[i:i + 1], fixed[i:i + 1], lam)
            for key in ("velocity", "ddf", "inverse_ddf", "warped"):
                torch.testing.assert_close(batched[key][i:i + 1], single[key], atol=1e-5, rtol=1e-4)


def test_output_depends_on_lambda():
    net = _net(2, head_std=0.05)
    moving, fixed = _pair((16, 16), batch=2)
    lam = torch.tensor([[0.2], [0.8]], requires_grad=True)
    out = net(moving, fixed, lam)
    (grad,) = torch.autograd.grad(out["velocity"].square().sum(), lam)
    assert (grad.abs() > 1e-6).all()
    with torch.no_grad():
        a = net(moving[:1], fixed[:1], 0.1)["velocity"]
        b = net(moving[:1], fixed[:1], 0.9)["velocity"]
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


@pytest.mark.parametrize("shape", [(16, 16), (12, 12, 12)])
def test_diffeomorphic_positive_jacobian(shape):
    dims = len(shape)
    net = _net(dims, head_std=1.0)
    moving, fixed = _pair(shape, batch=2)
    with torch.no_grad():
        out = net(moving, fixed, torch.tensor([0.0, 1.0]))
    assert out["ddf"].abs().max() > 2.0  # a real deformation, not the identity
    assert (jacobian_determinant(out["ddf"]) > 0).all() and (jacobian_determinant(out["inverse_ddf"]) > 0).all()
    # a rough velocity that would fold if used as a displacement stays invertible once integrated
    g = torch.Generator().manual_seed(0)
    n = net.velocity_size(shape)
    velocity = 4.0 * gaussian_smooth(torch.randn((2, dims, *n), generator=g), 1.0)
    assert jacobian_determinant(velocity).min() < -1.0
    assert (jacobian_determinant(net.velocity_to_ddf(velocity, shape)) > 0).all()
    assert (jacobian_determinant(net.velocity_to_ddf(-velocity, shape)) > 0).all()


@pytest.mark.parametrize("reg_weight, match", [
    (-0.1, "reg_weight"), (1.5, "reg_weight"), (float("nan"), "reg_weight"), (True, "reg_weight"), ("0.5", "reg_weight"),
    (torch.tensor([0.5, float("nan")]), "reg_weight"), (torch.tensor([0.5, 1.01]), "reg_weight"),
    (torch.tensor([0.5, 0.5, 0.5]), "reg_weight"), (torch.tensor([[0.5, 0.5]]), "reg_weight"),
    (torch.tensor([0, 1]), "reg_weight"),
])
def test_bad_reg_weight(reg_weight, match):
    net = _net(2)
    moving, fixed = _pair((16, 16), batch=2)
    with pytest.raises(ValueError, match=match):
        net(moving, fixed, reg_weight)
    with pytest.raises(ValueError, match=match):
        net.displacements(moving, fixed, reg_weight=reg_weight)


def test_bad_construction_and_inputs():
    with pytest.raises(ValueError, match="default_reg_weight"):
        HyperMorph(2, default_reg_weight=1.2)
    with pytest.raises(ValueError, match="in_channels"):
        HyperMorph(2, in_channels=3)
    with pytest.raises(ValueError, match="int_downsize"):
        HyperMorph(2, enc_channels=(4,), dec_channels=(4,), int_downsize=4)
    with pytest.raises(ValueError, match="kernel_size"):
        HyperConv(2, 1, 1, 4, kernel_size=2)
    with pytest.raises(ValueError, match="hidden"):
        HyperNetwork(())
    with pytest.raises(ValueError, match="embedding"):
        HyperConv(2, 1, 1, 4)(torch.rand(1, 1, 4, 4), torch.rand(1, 3))
    with pytest.raises(ValueError, match="weight"):
        hyper_conv(torch.rand(2, 1, 4, 4), torch.rand(1, 1, 1, 3, 3))
    net = _net(2)
    with pytest.raises(ValueError, match="moving"):
        net(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8))
