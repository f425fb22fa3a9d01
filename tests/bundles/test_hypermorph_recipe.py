"""hypermorph's recipe as its configs state it, and lambda reaching the trained network from every interface."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import monai_diffreg
from monai_diffreg.cli import main
from monai_diffreg.engines.training import hypermorph_step
from monai_diffreg.losses import HyperMorphLoss
from monai_diffreg.methods import load_method, read_bundle_config
from monai_diffreg.networks import HyperMorph
from monai_diffreg.sample import sample_paths

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "hypermorph"


def test_train_json_samples_lambda_uniformly_with_the_papers_loss():
    parser = read_bundle_config(BUNDLE, "train")
    network, loss = parser.get_parsed_content("network_def"), parser.get_parsed_content("loss")
    assert isinstance(network, HyperMorph) and isinstance(loss, HyperMorphLoss)
    assert (loss.image_loss, loss.reg_field, loss.penalty) == ("ncc", "velocity", "l2")
    step = parser.get_parsed_content("step_fn")
    assert step.func is hypermorph_step and step.keywords == {"distribution": "uniform"}
    assert parser.get_parsed_content("initial_weights") is None  # trained from scratch
    base = json.loads((BUNDLE / "configs" / "train.json").read_text())
    assert "test_scan" not in json.dumps([base["dataset"], base["shared_data"]])


def test_inference_matches_training_and_both_configs_share_the_default_lambda():
    train, infer = read_bundle_config(BUNDLE, "train"), read_bundle_config(BUNDLE, "inference")
    trained, deployed = train.get_parsed_content("network_def"), infer.get_parsed_content("network_def")
    assert deployed.image_scale == 0.5 and trained.image_scale == 1.0  # trained on 2 mm, deployed on 1 mm
    deployed.load_state_dict(trained.state_dict())  # same architecture
    default = infer["reg_weight"]
    assert 0.0 <= default <= 1.0 and read_bundle_config(BUNDLE, "evaluate")["reg_weight"] == default
    assert deployed.default_reg_weight == default


@pytest.mark.parametrize("reg_weight", [0.0, 0.35, 1.0])
def test_reg_weight_reaches_the_network_through_load_method(reg_weight):
    method = load_method("hypermorph", device="cpu", reg_weight=reg_weight)
    assert method.network.default_reg_weight == reg_weight
    assert f"HyperMorph(reg_weight={reg_weight})" in repr(method)  # what summary.json records


def test_bundle_run_records_its_lambda(bundle_run, tmp_path):
    """--reg_weight through a real monai.bundle run on the built-in sample: summary.json says which lambda was used."""
    result = bundle_run("hypermorph", "inference.json", "--reg_weight", "0.9", "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "HyperMorph(reg_weight=0.9)" in summary["method_settings"]
    assert summary["metrics"]["dice_after"]["mean"] > summary["metrics"]["dice_before"]["mean"]


def test_larger_lambda_gives_smoother_fields_on_the_sample(tmp_path):
    """The trained model's trade-off (issue target: SDlogJ decreasing with lambda), through register()."""
    paths = sample_paths()
    rows = {}
    for lam in (0.0, 0.5, 1.0):
        result = monai_diffreg.register(str(paths["fixed"]), str(paths["moving"]), "hypermorph", reg_weight=lam,
                                        fixed_labels=str(paths["fixed_labels"]), moving_labels=str(paths["moving_labels"]))
        rows[lam] = result.metrics
    sd = [rows[lam]["sd_log_jacobian"] for lam in (0.0, 0.5, 1.0)]
    assert sd[0] > sd[1] > sd[2], sd
    assert all(r["folding_percent"] < 0.01 for r in rows.values())
    assert rows[0.5]["dice_after"]["mean"] > rows[0.5]["dice_before"]["mean"]


def test_cli_sweep_over_lambda_writes_one_row_per_value(tmp_path, capsys):
    paths = sample_paths()
    out = tmp_path / "sweep"
    assert main(["sweep", "--bundle", "hypermorph", "--name", "reg_weight", "--values", "0.1", "0.9",
                 "--fixed", str(paths["fixed"]), "--moving", str(paths["moving"]), "--output-dir", str(out)]) == 0
    with open(out / "sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["reg_weight"]) for r in rows] == [0.1, 0.9]
    assert float(rows[1]["sd_log_jacobian"]) < float(rows[0]["sd_log_jacobian"])
    assert (out / "sweep.png").stat().st_size > 1000


@pytest.mark.parametrize("bad", [1.5, -0.1, "high"])
def test_bad_reg_weight_is_one_clear_error(bad, tmp_path):
    paths = sample_paths()
    with pytest.raises(ValueError, match=r"HyperMorph\(\): 'default_reg_weight' must be a number in \[0, 1\], got"):
        monai_diffreg.register(str(paths["fixed"]), str(paths["moving"]), "hypermorph", reg_weight=bad,
                               output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
