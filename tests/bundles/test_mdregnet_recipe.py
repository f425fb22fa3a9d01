"""mdregnet's recipe as its configs state it: the paper's settings, the ablation switch, no evaluation data."""

from __future__ import annotations

import json
from pathlib import Path

from monai_diffreg.losses import MDRegNetLoss
from monai_diffreg.methods import read_bundle_config
from monai_diffreg.networks import MDRegNet

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "mdregnet" / "configs"


def test_train_json_uses_the_papers_settings():
    parser = read_bundle_config(CONFIGS.parent, "train")
    network, loss = parser.get_parsed_content("network_def"), parser.get_parsed_content("loss")
    assert isinstance(network, MDRegNet) and isinstance(loss, MDRegNetLoss)
    assert (network.levels, network.num_steps, network.smoothing) == (3, 7, True)
    assert (network.smoothing_sigma, network.smoothing_kernel_size) == (1.732, 3)
    assert [len(s.decoder) for s in network.subnetworks] == [1, 2, 3]  # 1/8, 1/4, 1/2
    assert loss.regularization_weight == 0.35
    base = json.loads((CONFIGS / "train.json").read_text())
    data_settings = json.dumps([base["dataset"], base["shared_data"]])
    assert "test_scan" not in data_settings and "voxelmorph" not in data_settings


def test_inference_matches_training_architecture_and_switches_the_ablation():
    train, infer = read_bundle_config(CONFIGS.parent, "train"), read_bundle_config(CONFIGS.parent, "inference")
    trained = train.get_parsed_content("network_def")
    deployed = infer.get_parsed_content("network_def")
    assert deployed.image_scale == 0.5 and trained.image_scale == 1.0  # trained on 2 mm, deployed on 1 mm
    deployed.load_state_dict(trained.state_dict())  # same architecture
    assert infer.get_parsed_content("weights_file").endswith("models/model.pt")
    infer["smoothing"] = False
    assert infer.get_parsed_content("weights_file").endswith("models/model_no_smoothing.pt")
    assert infer.get_parsed_content("network_def", lazy=False).smoothing is False


def test_refinement_minimises_the_training_loss(bundle_config):
    """inference.json's refine_loss has train.json's loss settings (refine uses its finest-level terms)."""
    inference = bundle_config("mdregnet", "inference")
    trained = bundle_config("mdregnet", "train").get_parsed_content("loss")
    refined = inference.get_parsed_content("refine_loss")
    assert isinstance(refined, MDRegNetLoss)
    assert refined.regularization_weight == trained.regularization_weight
    assert refined.ncc.window == trained.ncc.window and refined.similarity.weights == trained.similarity.weights
    method = inference.get_parsed_content("method")
    assert method.refine_loss is refined and method.refine_steps == 0
    assert method.refine_smoothing_sigma == inference["refine_smoothing_sigma"] == 2.0
    inference["refine_smoothing_sigma"] = "$None"  # 0.2.0's refinement, through the smoothing layer
    assert inference.get_parsed_content("method", lazy=False).refine_smoothing_sigma is None
