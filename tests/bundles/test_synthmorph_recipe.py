"""synthmorph's training recipe as its train.json states it: label maps only, a contrast per image, a Dice loss."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from monai_diffreg.engines.training_data import real_label_maps
from monai_diffreg.losses import SynthMorphLoss
from monai_diffreg.networks import VoxelMorph

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "synthmorph"



def test_train_json_builds_the_papers_network_and_loss(recipe_config):
    parser = recipe_config(BUNDLE.name)
    network, loss = parser.get_parsed_content("network_def"), parser.get_parsed_content("loss")
    assert isinstance(network, VoxelMorph) and isinstance(loss, SynthMorphLoss)
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in network.modules())  # contrast-free features
    assert (loss.reg_field, loss.penalty, loss.regularization_weight) == ("ddf", "l2", 1.0)
    assert parser.get_parsed_content("initial_weights") is None  # from scratch
    base = json.loads((BUNDLE / "configs" / "train.json").read_text())
    assert "test_scan" not in json.dumps([base["dataset"], base["shared_data"]])


def test_training_pairs_come_from_label_maps_with_a_contrast_per_image(recipe_config, shared_data_dir):
    """No template (an acquired image), no T1 prior, independent contrasts, the held-out maps left out."""
    parser = recipe_config(BUNDLE.name)
    parser["dataset"]["shared_data"] = str(shared_data_dir)
    parser["dataset"]["spatial_size"] = [40, 48, 40]
    dataset = parser.get_parsed_content("dataset")
    assert dataset.template is None and dataset.label_map_probability == 0.8  # the rest: random shapes
    assert dataset.t1_contrast_probability == 0.0 and dataset.independent_contrasts
    assert "label_maps" not in parser["dataset"]  # the training maps of real_label_maps: held-out ones excluded
    assert len(dataset.subject_maps) == len(real_label_maps(shared_data_dir)) > 0
    item = dataset[3]
    assert item["moving"].shape == item["fixed"].shape == (1, 40, 48, 40)
    assert item["moving_labels"].shape[0] == parser["dataset"]["num_label_channels"]



def test_affine_stage_recipe_trains_keypoints_on_large_affines_with_the_same_data(recipe_config):
    """train_affine.json: KeypointAffine, Dice only, the deformable recipe's data plus large random affines."""
    from monai_diffreg.networks import KeypointAffine

    parser = recipe_config("synthmorph", "train_affine.json")
    network, loss = parser.get_parsed_content("network_def"), parser.get_parsed_content("loss")
    assert isinstance(network, KeypointAffine) and isinstance(loss, SynthMorphLoss)
    assert loss.regularization_weight == 0.0  # an affine needs no smoothness term
    deformable = json.loads((BUNDLE / "configs" / "train.json").read_text())["dataset"]
    affine = dict(parser["dataset"])
    limits = ("max_rotation_degrees", "max_translation", "max_log_scaling")
    assert {k: v for k, v in affine.items() if k not in limits} == {k: v for k, v in deformable.items() if k not in limits}
    assert affine["max_rotation_degrees"] >= 20 and affine["max_translation"] * 2.0 >= 20  # 2 mm voxels: >= 20 mm
    assert affine["max_log_scaling"] >= 0.1
