"""metric_learning's recipe as its configs state it: the learned-metric vSVF trained on inter-subject pairs of the
shared real-anatomy data, deployed with the same weight network on 1 mm inputs, its settings reaching the method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_diffreg.engines.training import energy_step
from monai_diffreg.mermaid.learned_metric import LearnedMetricVSVF

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "metric_learning"


def test_train_json_learns_the_local_metric_on_inter_subject_pairs(recipe_config):
    parser = recipe_config("metric_learning", "train.json")
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, LearnedMetricVSVF)
    assert network.input_spacing == (2.0, 2.0, 2.0) and network.weight_network.config["spacing"] == [2.0, 2.0, 2.0]
    assert network.registration["sigmas"] == (2.0, 4.0, 8.0, 16.0)
    assert (network.training_level, network.training_steps) == (2.0, 30)
    assert parser.get_parsed_content("step_fn") is energy_step and parser["trainer"]["loss_function"] is None
    dataset = parser["dataset"]
    assert dataset["inter_subject_probability"] == 1.0 and dataset["t1_contrast_probability"] == 1.0
    assert parser.get_parsed_content("initial_weights") is None  # learned from the untrained (vSVF) metric
    base = json.loads((BUNDLE / "configs" / "train.json").read_text())
    assert "test_scan" not in json.dumps([base["dataset"], base["shared_data"]])


def test_inference_uses_the_trained_weight_network_on_1mm_inputs(recipe_config):
    train, infer = recipe_config("metric_learning", "train.json"), recipe_config("metric_learning", "inference.json")
    infer["bundle_root"] = str(BUNDLE)
    trained, deployed = train.get_parsed_content("network_def"), infer.get_parsed_content("network_def")
    deployed.load_state_dict(trained.state_dict())  # same architecture
    assert deployed.input_spacing == (1.0, 1.0, 1.0)
    assert deployed.weight_network.config == trained.weight_network.config  # predicts at the training's 2 mm
    for key in ("sigmas", "regularization_weight", "image_loss", "learning_rate", "num_steps"):
        assert deployed.registration[key] == trained.registration[key], key
    assert infer.get_parsed_content("method#expected_spacing_mm") == 1.0


@pytest.mark.slow
def test_a_bad_setting_is_one_error_line_and_writes_nothing(bundle_run, tmp_path):
    out = tmp_path / "out"
    result = bundle_run("metric_learning", "inference.json", "--regularization_weight", "-1", "--output_dir", str(out))
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode != 0 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "LearnedMetricVSVF(): 'regularization_weight' must be" in errors[0], errors
    assert not out.exists()
