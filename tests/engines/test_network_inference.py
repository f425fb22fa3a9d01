"""NetworkRegistration: strict weight loading, the method contract, uncertainty, refinement, bad input."""

import pytest
import torch

from monai_diffreg.engines import network_inference
from monai_diffreg.engines.network_inference import REFINE_PRESETS, NetworkRegistration, load_weights
from monai_diffreg.engines.refinement import refine_network
from monai_diffreg.functional import gaussian_smooth
from monai_diffreg.methods import check_method_output, run_method
from monai_diffreg.losses import MDRegNetLoss
from monai_diffreg.losses.prob_svf import ProbabilisticSVFLoss
from monai_diffreg.networks import MDRegNet, ProbabilisticVoxelMorph


def tiny_network(spatial_dims=3):
    return ProbabilisticVoxelMorph(spatial_dims, enc_channels=(4, 8), dec_channels=(8, 8, 4), int_downsize=1)


class ZeroNetwork(torch.nn.Module):
    """The smallest registration network of the contract: the identity, no optional capabilities."""

    spatial_dims = 3

    def forward(self, moving, fixed):
        return self.displacements(moving, fixed)

    def displacements(self, moving, fixed, inverse=True):
        zero = torch.zeros(moving.shape[0], 3, *moving.shape[2:])
        return {"ddf": zero, "inverse_ddf": zero} if inverse else {"ddf": zero}


def smooth_pair(shape):
    fixed = gaussian_smooth(torch.rand(1, 1, *shape), 2.0) * 100  # intensities as read from a file
    moving = torch.roll(fixed, shifts=1, dims=2)
    return fixed, moving


def test_a_network_of_the_contract_alone_is_a_method():
    fixed, moving = smooth_pair((8, 8, 8))
    out = check_method_output(NetworkRegistration(ZeroNetwork(), device="cpu")(fixed, moving), fixed, "zero")
    assert set(out) == {"ddf", "inverse_ddf"} and not out["ddf"].any()


@pytest.mark.parametrize("network", [tiny_network(), MDRegNet(3, levels=2, enc_channels=(4, 8), up_channels=8,
                                                              out_channels=(8, 4))])
def test_the_inverse_is_skipped_when_nobody_asks(network):
    """inverse=False (register() without inverse=True): the same forward field, no inverse computed."""
    fixed, moving = smooth_pair((16, 16, 16))
    method = NetworkRegistration(network, device="cpu")
    both, forward_only = method(fixed, moving), run_method(method, fixed, moving, inverse=False)
    assert set(forward_only) == {"ddf"} and torch.equal(forward_only["ddf"], both["ddf"])
    assert set(run_method(lambda f, m: {"ddf": f}, fixed, moving, inverse=False)) == {"ddf"}  # no keyword: plain call


def test_output_follows_the_method_contract_and_matches_the_network(tmp_path):
    network = tiny_network()
    torch.save(network.state_dict(), tmp_path / "model.pt")
    method = NetworkRegistration(tiny_network(), tmp_path / "model.pt", device="cpu")
    fixed, moving = smooth_pair((16, 16, 16))
    out = check_method_output(method(fixed, moving), fixed, "tiny")
    assert set(out) == {"ddf", "inverse_ddf"}
    # same weights and percentile-normalised inputs -> the network's own eval output
    lo, hi = (torch.quantile(x.flatten(), torch.tensor([0.005, 0.995])) for x in (fixed, moving))
    expected = network.eval()(((moving - hi[0]) / (hi[1] - hi[0])).clamp(0, 1),
                              ((fixed - lo[0]) / (lo[1] - lo[0])).clamp(0, 1))
    torch.testing.assert_close(out["ddf"], expected["ddf"], atol=1e-5, rtol=1e-4)


def test_uncertainty_and_refinement():
    fixed, moving = smooth_pair((16, 16, 16))
    network = tiny_network()
    with torch.no_grad():
        network.log_var_head.bias.fill_(-2.0)  # a visible posterior variance
    out = NetworkRegistration(network, num_samples=3, refine_steps=2, refine_loss=ProbabilisticSVFLoss("ncc"),
                              device="cpu")(fixed, moving)
    assert out["uncertainty"].shape == (1, 1, 16, 16, 16) and bool((out["uncertainty"] > 0).all())
    assert out["ddf"].requires_grad is False


def test_refinement_minimises_the_given_loss():
    """refine_loss is what refine_network minimises: the result is refine_network(..., refine_loss)'s."""
    from monai_diffreg.transforms.intensity import normalize_intensity_percentile

    fixed, moving = smooth_pair((16, 16, 16))
    network = tiny_network()
    with torch.no_grad():
        network.mean_head.weight.normal_(0.0, 0.3)
    loss = ProbabilisticSVFLoss("ncc", image_weight=50.0, bidirectional=False)
    out = NetworkRegistration(network, refine_steps=3, refine_loss=loss, device="cpu")(fixed, moving)
    norm_fixed = normalize_intensity_percentile(fixed, name="fixed", caller="t")
    norm_moving = normalize_intensity_percentile(moving, name="moving", caller="t")
    weighted = refine_network(network, norm_moving, norm_fixed, loss, 3, learning_rate=0.1)["ddf"]
    default = refine_network(network, norm_moving, norm_fixed, ProbabilisticSVFLoss("ncc"), 3, learning_rate=0.1)["ddf"]
    torch.testing.assert_close(out["ddf"], weighted)
    assert (weighted - default).abs().max() > 1e-3


def test_refinement_preconditioning_reaches_the_network():
    """refine_smoothing_sigma is refine_network(..., smoothing_sigma=)'s; a bad value is a clear error."""
    from monai_diffreg.transforms.intensity import normalize_intensity_percentile

    fixed, moving = smooth_pair((16, 16, 16))
    network = tiny_network()
    with torch.no_grad():
        network.mean_head.weight.normal_(0.0, 0.3)
    loss = ProbabilisticSVFLoss("ncc")
    out = NetworkRegistration(network, refine_steps=3, refine_smoothing_sigma=2.0, refine_loss=loss,
                              device="cpu")(fixed, moving)
    norm_fixed = normalize_intensity_percentile(fixed, name="fixed", caller="t")
    norm_moving = normalize_intensity_percentile(moving, name="moving", caller="t")
    smoothed = refine_network(network, norm_moving, norm_fixed, loss, 3, learning_rate=0.1, smoothing_sigma=2.0)["ddf"]
    default = refine_network(network, norm_moving, norm_fixed, loss, 3, learning_rate=0.1)["ddf"]
    torch.testing.assert_close(out["ddf"], smoothed)
    assert (smoothed - default).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"'refine_smoothing_sigma' must be a finite number > 0"):
        NetworkRegistration(network, refine_steps=3, refine_smoothing_sigma=0.0, refine_loss=loss, device="cpu")


@pytest.mark.parametrize("network_factory,loss", [
    (lambda: ProbabilisticVoxelMorph(3, enc_channels=(4, 8), dec_channels=(8, 8, 4)), ProbabilisticSVFLoss("ncc")),
    (lambda: MDRegNet(3, levels=2, enc_channels=(4, 8), up_channels=8, out_channels=(8, 4)), MDRegNetLoss()),
])
def test_refine_fast_is_the_preset_passed_to_the_engine(monkeypatch, network_factory, loss):
    """refine="fast" = REFINE_PRESETS["fast"]'s steps, coarse steps and tolerance reach refine_network (both networks)."""
    network = network_factory()
    calls = []
    monkeypatch.setattr(network_inference, "refine_network",
                        lambda *a, **k: calls.append((a, k)) or refine_network(*a, **k))
    fixed, moving = smooth_pair((16, 16, 16))
    out = NetworkRegistration(network, refine="fast", refine_loss=loss, device="cpu")(fixed, moving)
    preset = REFINE_PRESETS["fast"]
    (args, kwargs), = calls
    assert args[3] is loss and args[4] == preset["refine_steps"] and kwargs["coarse_steps"] == preset["refine_coarse_steps"]
    assert kwargs["tolerance"] == preset["refine_tolerance"]
    assert out["ddf"].shape == (1, 3, 16, 16, 16) and torch.isfinite(out["ddf"]).all()
    assert NetworkRegistration(network_factory(), device="cpu").refine == "none"  # the network alone by default


def test_refine_option_errors():
    with pytest.raises(ValueError, match=r"'refine' must be one of \['none', 'fast'\], got 'quick'"):
        NetworkRegistration(tiny_network(), refine="quick")
    with pytest.raises(ValueError, match=r"leave 'refine_steps' and 'refine_coarse_steps' at 0"):
        NetworkRegistration(tiny_network(), refine="fast", refine_steps=5)
    with pytest.raises(ValueError, match=r"'refine_coarse_steps' must be an integer >= 0"):
        NetworkRegistration(tiny_network(), refine_coarse_steps=-1)
    with pytest.raises(ValueError, match=r"'network' must be a registration network"):
        NetworkRegistration(torch.nn.Identity(), refine="fast")
    with pytest.raises(ValueError, match=r"'refine_loss' must offer refinement_terms\(context\), normally the loss the weights were trained with"):
        NetworkRegistration(tiny_network(), refine="fast")


def test_strict_weight_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"NetworkRegistration\(\): 'weights' file not found"):
        NetworkRegistration(tiny_network(), tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"is not a readable PyTorch state dict"):
        load_weights(tiny_network(), tmp_path / "corrupt.pt")
    torch.save(ProbabilisticVoxelMorph(3, enc_channels=(4, 8, 8), dec_channels=(8, 8, 4)).state_dict(),
               tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"do not fit ProbabilisticVoxelMorph"):
        NetworkRegistration(tiny_network(), tmp_path / "other.pt")


def test_bad_input_and_options():
    method = NetworkRegistration(tiny_network(), device="cpu", name="vxm_prob")
    fixed2d, moving2d = smooth_pair((16, 16))
    with pytest.raises(ValueError, match=r"vxm_prob\(\): this model registers 3D images, got a 2D 'fixed'"):
        method(fixed2d, moving2d)
    with pytest.raises(ValueError, match=r"vxm_prob\(\): 'fixed' must have 1 channel"):
        method(torch.rand(1, 2, 8, 8, 8), torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"'fixed' is constant"):
        method(torch.ones(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"'num_samples' must be 0 or an integer >= 2, got 1"):
        NetworkRegistration(tiny_network(), num_samples=1)
    with pytest.raises(ValueError, match=r"ZeroNetwork does not offer refinement"):
        NetworkRegistration(ZeroNetwork(), refine_steps=3, refine_loss=ProbabilisticSVFLoss())
    with pytest.raises(ValueError, match=r"ZeroNetwork has no 'sample' method"):
        NetworkRegistration(ZeroNetwork(), num_samples=2)
    with pytest.raises(ValueError, match=r"has no 'warped_level_images' method"):
        NetworkRegistration(tiny_network(), save_levels=True)
    with pytest.raises(ValueError, match=r"'save_levels' must be True or False, got 'False'"):
        NetworkRegistration(tiny_network(), save_levels="False")


def test_a_learned_affine_part_reaches_the_caller_only_for_a_single_pass():
    """A network with an affine part (KeypointAffine, AffineThenDeformable) gives its matrix through the method, for
    affine.tfm; a cascade composes several passes, which is no longer one affine, so then no matrix is passed on."""
    from monai_diffreg.networks import AffineThenDeformable, KeypointAffine, VoxelMorph

    torch.manual_seed(0)
    network = AffineThenDeformable(KeypointAffine(3, num_keypoints=8, enc_channels=(4, 8), dec_channels=(8, 8)),
                                   VoxelMorph(3, enc_channels=(4, 8), dec_channels=(8, 8, 8)))
    fixed, moving = smooth_pair((16, 16, 16))
    out = check_method_output(NetworkRegistration(network, device="cpu")(fixed, moving), fixed, "joint")
    assert set(out) == {"ddf", "inverse_ddf", "affine"} and out["affine"].shape == (1, 3, 4)
    lean = run_method(NetworkRegistration(network, device="cpu"), fixed, moving, inverse=False)
    assert set(lean) == {"ddf", "affine"} and torch.equal(lean["affine"], out["affine"])
    assert "affine" not in NetworkRegistration(network, device="cpu", cascade=2)(fixed, moving)
    with pytest.raises(ValueError, match="returned 'affine' of shape"):
        check_method_output({**out, "affine": out["affine"][:, :2]}, fixed, "joint")


def test_learns_affine_is_the_networks():
    from monai_diffreg.networks import AffineThenDeformable, KeypointAffine, VoxelMorph

    affine = KeypointAffine(2, num_keypoints=4, enc_channels=(4, 8), dec_channels=(8, 8))
    deformable = VoxelMorph(2, enc_channels=(4, 8), dec_channels=(8, 8, 8))
    assert NetworkRegistration(AffineThenDeformable(affine, deformable), device="cpu").learns_affine
    assert NetworkRegistration(affine, device="cpu").learns_affine
    assert not NetworkRegistration(deformable, device="cpu").learns_affine
