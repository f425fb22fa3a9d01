"""vxm_prob's training recipe as train.json states it (the bundle contract is in test_bundle_contract.py)."""

from __future__ import annotations

import json
from pathlib import Path

from monai_diffreg.methods import read_bundle_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "vxm_prob" / "configs"


def test_train_json_defaults_match_the_shipped_recipe():
    parser = read_bundle_config(CONFIGS.parent, "train")
    network = parser.get_parsed_content("network_def")
    loss = parser.get_parsed_content("loss")
    assert (network.posterior, network.prior_lambda, network.int_downsize, network.num_steps) == ("smoothed", 10.0, 2, 7)
    assert network.unet.norm == "instance"
    assert (loss.posterior, loss.prior_lambda, loss.image_loss, loss.bidirectional) == ("smoothed", 10.0, "ncc", True)
    base = json.loads((CONFIGS / "train.json").read_text())
    data_settings = json.dumps([base["dataset"], base["shared_data"]])
    assert "test_scan" not in data_settings and "voxelmorph" not in data_settings


def test_refinement_minimises_the_training_loss(bundle_config):
    """inference.json's refine_loss is train.json's loss without the Dice term (no labels at test time):
    the balance of image term and KL decides where the test-time refinement converges."""
    inference = bundle_config("vxm_prob", "inference")
    trained = bundle_config("vxm_prob", "train").get_parsed_content("loss")
    refined = inference.get_parsed_content("refine_loss")
    for setting in ("image_loss", "image_weight", "bidirectional", "prior_lambda", "posterior", "ncc_window"):
        assert getattr(refined, setting) == getattr(trained, setting), setting
    method = inference.get_parsed_content("method")
    assert method.refine_loss is refined and method.refine_smoothing_sigma is None  # chosen on validation cases
