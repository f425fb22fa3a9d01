"""LearnedMetricVSVF: an untrained one is vSVF with its equal global weights; amortised learning (train mode, one
network step per pair after an inner momentum optimisation) puts narrow kernels where deformations are fine, as the
population learning does; the network contract under no_grad; one-line errors."""

from __future__ import annotations

import pytest
import torch

from monai_diffreg.engines.training import energy_step
from monai_diffreg.mermaid.learned_metric import LearnedMetricVSVF
from monai_diffreg.mermaid.local_metric import predict_local_weights
from monai_diffreg.mermaid.vsvf import vsvf_register
from monai_diffreg.metrics import folding_percentage
from monai_diffreg.networks.contract import RegistrationNetwork

from .test_local_metric import _assert_on_simplex, _blob, _half_and_half_population

SIGMAS = (1.0, 2.0, 4.0)
SMALL = {"levels": (2, 1), "iterations": (20, 10), "image_loss": "mse", "image_sigma": 0.1, "learning_rate": 0.2,
         "regularization_weight": 0.01}


def test_untrained_is_vsvf_with_its_global_weights():
    """An untrained network predicts the global weights everywhere, so the registration is vSVF's with that kernel."""
    shape = (24, 20, 16)
    fixed, moving = _blob(shape, (12, 10, 8)), _blob(shape, (13, 10, 7))
    model = LearnedMetricVSVF(3, SIGMAS, [0.2, 0.3, 0.5], network_spacing=1.0, input_spacing=1.0, **SMALL).eval()
    assert isinstance(model, RegistrationNetwork)
    with torch.no_grad():  # as NetworkRegistration calls it: the momentum is still optimised
        out = model(moving, fixed)
        only = model.displacements(moving, fixed, inverse=False)
    reference = vsvf_register(fixed, moving, sigmas=SIGMAS, weights=[0.2, 0.3, 0.5], **SMALL)
    assert set(out) == {"ddf", "inverse_ddf", "warped", "velocity"} and set(only) == {"ddf"}
    for key in ("ddf", "inverse_ddf", "warped"):
        torch.testing.assert_close(out[key], reference[key], atol=1e-4, rtol=0)
    torch.testing.assert_close(only["ddf"], out["ddf"], atol=0, rtol=0)
    at_centre = out["ddf"][0, :, 12, 10, 8]
    torch.testing.assert_close(at_centre, torch.tensor([1.0, 0.0, -1.0]), atol=0.3, rtol=0)
    assert float(folding_percentage(out["ddf"])) == 0.0
    assert "levels=(2.0, 1.0), iterations=(20, 10)" in model.extra_repr()


def test_amortised_learning_puts_narrow_kernels_where_the_deformation_is_fine():
    """One network step per pair (train mode through energy_step), pairs cycled: the narrow kernel's weight ends
    larger where the population's deformations are fine-scale (left half) than where they are smooth."""
    pairs = _half_and_half_population()
    torch.manual_seed(0)
    model = LearnedMetricVSVF(2, SIGMAS, network_spacing=1.0, input_spacing=1.0, weight_sigma=1.0, omt_weight=0.005,
                              tv_weight=0.001, training_level=1.0, training_steps=15, **SMALL).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for step in range(48):
        fixed, moving = pairs[step % len(pairs)]
        optimizer.zero_grad()
        terms = energy_step(model, None, {"fixed": fixed, "moving": moving})
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
        assert set(terms) == {"loss", "image", "prior", "omt", "tv"}
    assert sum(losses[-4:]) < sum(losses[:4])
    model.eval()
    with torch.no_grad():
        weights = torch.cat([predict_local_weights(model.weight_network, moving) for _, moving in pairs])
    _assert_on_simplex(weights)
    narrow_left, narrow_right = float(weights[:, 0, :, 2:14].mean()), float(weights[:, 0, :, 18:30].mean())
    assert narrow_left > narrow_right + 0.1, (narrow_left, narrow_right)  # measured 0.25 against 0.03


def test_weights_move_with_the_state_dict():
    """The trained part is the weight network: a state dict carries it (the bundle's models/model.pt)."""
    torch.manual_seed(0)
    a = LearnedMetricVSVF(2, SIGMAS, network_spacing=2.0)
    with torch.no_grad():
        a.weight_network.layers[-1].weight.uniform_(0.5, 1.0)
    b = LearnedMetricVSVF(2, SIGMAS, network_spacing=2.0)
    b.load_state_dict(a.state_dict())
    image = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(predict_local_weights(a.weight_network.eval(), image),
                                   predict_local_weights(b.weight_network.eval(), image))


@pytest.mark.parametrize("options, match", [
    ({"spatial_dims": 4}, r"'spatial_dims' must be 2 or 3"),
    ({"sigmas": (2.0, 2.0)}, r"'sigmas' must hold at least two distinct widths"),
    ({"training_level": 0.5}, r"'training_level' must be a downsampling factor >= 1"),
    ({"training_steps": 0}, r"'training_steps' must be an integer >= 1"),
    ({"omt_weight": -1.0}, r"'omt_weight'"),
    ({"input_spacing": 0.0}, r"'spacing' must be 3 voxel sizes > 0"),
    ({"levels": (2, 1), "iterations": (5,)}, r"LearnedMetricVSVF\(\): "),
])
def test_bad_settings_are_one_line(options, match):
    with pytest.raises(ValueError, match=r"^LearnedMetricVSVF\(\): .*" + match.removeprefix(r"LearnedMetricVSVF\(\): ")):
        LearnedMetricVSVF(**{"spatial_dims": 3, **options})
