"""metric_learning's recipe as its configs state it: the learned-metric vSVF trained on inter-subject pairs of the
shared real-anatomy data, deployed with the same weight network on 1 mm inputs, its settings reaching the method."""

from __future__ import annotations

import json
from pathlib import Path

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
