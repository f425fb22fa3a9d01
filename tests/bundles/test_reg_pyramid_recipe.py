"""reg_pyramid's training recipe as its train.json states it: the paper's network (diffeomorphic, affine head) and loss,
the shared real-anatomy data with label maps and random affine differences, the schedule; never test_scan."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from monai_diffreg.engines.training_data import real_label_maps
from monai_diffreg.losses import RegistrationPyramidLoss
from monai_diffreg.networks import RegistrationPyramid

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "reg_pyramid"



def test_train_json_builds_the_papers_network_and_loss(recipe_config):
    parser = recipe_config(BUNDLE.name)
    network, loss = parser.get_parsed_content("network_def"), parser.get_parsed_content("loss")
    assert isinstance(network, RegistrationPyramid) and isinstance(loss, RegistrationPyramidLoss)
    assert (network.spatial_dims, network.in_channels) == (3, 1)
    assert network.filters == (16, 32, 32, 32) and network.search_range == 2
    assert network.deform_filters == (64, 64, 32, 18, 8)
    assert network.affine and len(network.affine_heads) == 4  # the affine head at every level
    assert network.diffeomorphic and network.residual and network.cost_volume  # no folding; refinement; cost volume
    assert network.image_scale == 1.0  # the loss's level weights assume it (RegistrationPyramid's docstring)
    assert (loss.dice_weight, loss.gamma, loss.alpha, loss.beta, loss.ncc.window) == (5.0, 5.0, 1.0, 1.0, 9)
    assert parser.get_parsed_content("initial_weights") is None  # from scratch


def test_train_json_schedule(recipe_config):
    parser = recipe_config(BUNDLE.name)
    assert parser["max_iterations"] == 4000 and parser["checkpoint_interval"] == 50 and parser["batch_size"] == 1
    assert parser["optimizer"]["_target_"] == "torch.optim.Adam" and parser["learning_rate"] == 1e-4
    assert parser["lr_scheduler"]["_target_"] == "torch.optim.lr_scheduler.MultiStepLR"
    assert parser["lr_decay_iterations"] == [3200] and parser["lr_decay_factor"] == 0.2
    assert parser["trainer"]["_target_"] == "monai_diffreg.engines.training.RegistrationTrainer"
    assert parser["patch_size"] == [80, 96, 80]  # 2 mm voxels, as the other bundles


def test_dataset_config_is_the_shared_recipe_with_random_affines_and_no_test_scan():
    base = json.loads((BUNDLE / "configs" / "train.json").read_text())
    dataset = base["dataset"]
    assert dataset["_target_"] == "monai_diffreg.bundle_workflow.real_anatomy_dataset"
    assert (base["label_map_probability"], base["template_probability"]) == (0.6, 0.2)  # as vxm_prob and hypermorph
    assert dataset["num_label_channels"] == 19
    # the target, 10 degrees and 15 mm: translations in voxels of 2 mm
    assert dataset["max_rotation_degrees"] == 10.0 and dataset["max_translation"] * 2.0 == 15.0
    assert dataset["max_log_scaling"] == 0.05
    # T1-like + random contrasts: the dataset's defaults, as vxm_prob and hypermorph
    assert "t1_contrast_probability" not in dataset and "independent_contrasts" not in dataset
    assert "label_maps" not in dataset  # the training maps of real_label_maps: held-out ones excluded
    assert "test_scan" not in json.dumps([dataset, base["shared_data"]])  # evaluation only



def test_training_pairs_have_labels_and_random_affines(recipe_config, shared_data_dir):
    """The dataset built from train.json: subject, template and shape pairs, all with one-hot labels for the Dice
    term, the random affine limits set; one forward pass of train.json's network and loss on an item."""
    parser = recipe_config(BUNDLE.name)
    parser["dataset"]["shared_data"] = str(shared_data_dir)
    parser["dataset"]["spatial_size"] = [40, 48, 40]
    dataset = parser.get_parsed_content("dataset")
    assert dataset.template is not None and dataset.template_probability == 0.2
    assert dataset.label_map_probability == 0.6  # the rest: random shapes
    assert dataset.t1_contrast_probability == 0.5 and not dataset.independent_contrasts
    assert dataset.affine_limits == {"max_rotation_degrees": 10.0, "max_translation": 7.5, "max_log_scaling": 0.05}
    assert len(dataset.subject_maps) == len(real_label_maps(shared_data_dir)) > 0
    item = dataset[3]
    assert item["moving"].shape == item["fixed"].shape == (1, 40, 48, 40)
    assert item["moving_labels"].shape == item["fixed_labels"].shape == (19, 40, 48, 40)
    network, loss = parser.get_parsed_content("network_def").eval(), parser.get_parsed_content("loss")
    batch = {key: value[None] for key, value in item.items()}
    with torch.no_grad():
        terms = loss(network(batch["moving"], batch["fixed"]), batch["fixed"], batch["moving"],
                     batch["fixed_labels"], batch["moving_labels"])
    assert all(torch.isfinite(value) for value in terms.values())
    assert float(terms["segmentation"]) > 0  # the Dice term has labels (the identity does not align the pair)
