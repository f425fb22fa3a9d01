"""torch.export of the networks' inference path: exported == eager, .pt2 round trip, errors, CLI."""

from __future__ import annotations

import json
import pydoc
from pathlib import Path

import pytest
import torch
from torch import nn

from monai_diffreg.cli import main
from monai_diffreg.export import export_bundle, export_network, load_exported
from monai_diffreg.networks import MDRegNet, ProbabilisticVoxelMorph

#: every shipped bundle (a folder of bundles/ with an inference.json)
BUNDLES = tuple(sorted(p.name for p in (Path(__file__).resolve().parents[1] / "bundles").iterdir()
                       if (p / "configs" / "inference.json").is_file()))


def _optimises_at_inference(bundle):
    """Whether the bundle's network class says its output is an optimisation (network contract)."""
    target = json.loads((Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs" / "inference.json")
                        .read_text())["network_def"]["_target_"]
    return bool(getattr(pydoc.locate(target), "optimises_at_inference", False))


#: bundles whose network is one forward pass (the others optimise per pair and cannot be exported)
EXPORTABLE = tuple(b for b in BUNDLES if not _optimises_at_inference(b))

# exported and eager run the same aten ops, up to decompositions: float32 rounding only
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _vxm(spatial_dims):
    network = ProbabilisticVoxelMorph(spatial_dims, enc_channels=(4, 8), dec_channels=(8, 8, 8), posterior="smoothed")
    head = network.mean_head
    return network, head


def _mdreg(spatial_dims):
    network = MDRegNet(spatial_dims, enc_channels=(4, 8, 8, 8), up_channels=8, out_channels=(8, 4), levels=3)
    return network, network.subnetworks[-1].flow


def _network(kind, spatial_dims):
    """A small network whose displacements are a few voxels (the shipped heads start near the identity)."""
    network, head = (_vxm if kind == "vxm" else _mdreg)(spatial_dims)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.5)
    return network.eval()


SIZES = {2: (38, 29), 3: (18, 20, 13)}  # not multiples of the networks' divisors: padding and cropping are exported
CASES = [("vxm", 2), ("vxm", 3), ("mdreg", 2), ("mdreg", 3)]


def _pair(batch, size):
    return torch.rand(batch, 1, *size), torch.rand(batch, 1, *size)


def _eager(network, moving, fixed):
    with torch.no_grad():
        out = network.displacements(moving, fixed)
    return out["ddf"], out["inverse_ddf"]


@pytest.mark.parametrize("kind,spatial_dims", CASES)
def test_exported_program_matches_eager_for_any_batch(kind, spatial_dims):
    network = _network(kind, spatial_dims)
    size = SIZES[spatial_dims]
    moving, fixed = _pair(1, size)
    program = export_network(network, moving, fixed)
    module = program.module()
    assert program.example_inputs is None  # not stored in the file
    for batch in (1, 3):  # the batch size is dynamic; the example had batch 1
        moving, fixed = _pair(batch, size)
        ddf, inverse_ddf = _eager(network, moving, fixed)
        assert ddf.abs().max() > 0.1  # a real deformation, not ~0
        with torch.no_grad():
            out = module(moving, fixed)
        assert len(out) == 2
        torch.testing.assert_close(out[0], ddf, **TOLERANCE)
        torch.testing.assert_close(out[1], inverse_ddf, **TOLERANCE)


@pytest.mark.parametrize("kind,spatial_dims", [("vxm", 3), ("mdreg", 2)])
def test_save_load_round_trip(tmp_path, kind, spatial_dims):
    network = _network(kind, spatial_dims)
    size = SIZES[spatial_dims]
    moving, fixed = _pair(2, size)
    path = tmp_path / "sub" / "model.pt2"
    export_network(network, moving, fixed, path=path)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt2"]  # no temporary file left
    run = load_exported(path)
    moving, fixed = _pair(1, size)
    expected = _eager(network, moving, fixed)
    out = run(moving, fixed)
    assert not out[0].requires_grad
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b, **TOLERANCE)
    other = tuple(s + 4 for s in size)
    with pytest.raises(ValueError, match=r"'moving' must have spatial size .* got"):
        run(*_pair(1, other))


def test_static_batch(tmp_path):
    network = _network("vxm", 2)
    moving, fixed = _pair(2, SIZES[2])
    export_network(network, moving, fixed, path=tmp_path / "m.pt2", dynamic_batch=False)
    for a, b in zip(load_exported(tmp_path / "m.pt2")(moving, fixed), _eager(network, moving, fixed)):
        torch.testing.assert_close(a, b, **TOLERANCE)


def test_export_leaves_the_network_as_it_was():
    """The identity-grid caches must not keep tracing's fake tensors, and the network's mode is restored."""
    network = _network("mdreg", 3)
    moving, fixed = _pair(1, SIZES[3])
    before = _eager(network, moving, fixed)  # fills the grid caches
    network.train()
    export_network(network, moving, fixed)
    assert network.training
    network.eval()
    for a, b in zip(_eager(network, moving, fixed), before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_export_network_argument_errors(tmp_path):
    network = _network("vxm", 2)
    moving, fixed = _pair(1, SIZES[2])
    with pytest.raises(ValueError, match="export_network\\(\\): 'network' must be an nn.Module with a displacements"):
        export_network(nn.Linear(2, 2), moving, fixed)
    with pytest.raises(TypeError, match="'example_moving' must be a torch.Tensor"):
        export_network(network, moving.numpy(), fixed)
    with pytest.raises(ValueError, match="'example_fixed' must be a floating-point tensor"):
        export_network(network, moving, fixed.to(torch.int32))
    with pytest.raises(ValueError, match="must share batch and spatial sizes"):
        export_network(network, moving, torch.rand(1, 1, 30, 29))
    with pytest.raises(ValueError, match="'path' must be a file path ending in .pt2"):
        export_network(network, moving, fixed, path=tmp_path / "model.pt")
    with pytest.raises(ValueError, match="'dynamic_batch' must be True or False"):
        export_network(network, moving, fixed, dynamic_batch=1)
    assert list(tmp_path.iterdir()) == []


def test_load_exported_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="load_exported\\(\\): 'path' file not found"):
        load_exported(tmp_path / "missing.pt2")
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="load_exported\\(\\): 'path' .* is not a readable torch.export program"):
        load_exported(corrupt)
    with pytest.raises(ValueError, match="'path' must be a file path ending in .pt2"):
        load_exported(tmp_path / "model.pt")

    class Single(nn.Module):
        def forward(self, x):
            return x * 2

    other = tmp_path / "other.pt2"
    torch.export.save(torch.export.export(Single(), (torch.rand(1, 1, 4, 4),)), other)
    with pytest.raises(ValueError, match=r"1 inputs and 1 outputs, expected \(moving, fixed\) -> \(ddf, inverse_ddf\)"):
        load_exported(other)


def test_export_bundle_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="export_bundle\\(\\): 'output' must be a file path ending in .pt2"):
        export_bundle("vxm_prob", output=tmp_path / "model.pt")
    with pytest.raises(ValueError, match="is a built-in method, not a bundle"):
        export_bundle("svf_optim", output=tmp_path / "model.pt2")
    with pytest.raises(ValueError, match="export_bundle\\(\\): 'size' must be 3 integers >= 8"):
        export_bundle("vxm_prob", output=tmp_path / "model.pt2", size=(32, 40))
    assert list(tmp_path.iterdir()) == []


def test_export_network_refuses_a_network_that_optimises_at_inference(tmp_path):
    from monai_diffreg.mermaid.learned_metric import LearnedMetricVSVF

    pair = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"^export_network\(\): LearnedMetricVSVF optimises each registration at "
                                         r"inference .* torch.export cannot capture"):
        export_network(LearnedMetricVSVF(2, (1.0, 2.0)), pair, pair, path=tmp_path / "m.pt2")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bundle", sorted(set(BUNDLES) - set(EXPORTABLE)))
def test_cli_export_of_an_optimising_bundle_is_one_line(tmp_path, capsys, bundle):
    assert main(["export", "--bundle", bundle, "--output", str(tmp_path / "m.pt2"), "--size", "32", "40", "32"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "torch.export cannot capture" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bundle", EXPORTABLE)
def test_cli_export_of_a_shipped_bundle(tmp_path, capsys, bundle):
    from monai_diffreg.methods import load_method

    path = tmp_path / f"{bundle}.pt2"
    assert main(["export", "--bundle", bundle, "--output", str(path), "--size", "32", "40", "32"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{bundle} -> {path}: (moving, fixed) -> (ddf, inverse_ddf) for 32x40x32 images")
    assert float(line.split("max |exported - eager| ")[1].split()[0]) < 1e-4
    network = load_method(bundle, device="cpu").network
    moving, fixed = _pair(2, (32, 40, 32))
    for a, b in zip(load_exported(path)(moving, fixed), _eager(network, moving, fixed)):
        torch.testing.assert_close(a, b, **TOLERANCE)


def test_cli_export_errors(tmp_path, capsys):
    assert main(["export", "--bundle", "vxm_prob", "--output", str(tmp_path / "model.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("monai-diffreg: error: export_bundle(): 'output' must be")
    assert main(["export", "--bundle", "vxm_prob", "--output", str(tmp_path / "m.pt2"), "--size", "32", "40"]) == 1
    assert "'size' must be 3 integers" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
