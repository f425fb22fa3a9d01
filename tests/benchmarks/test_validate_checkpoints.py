"""The held-out validation tool builds each network as its training run did (``--override``)."""

import argparse

import pytest
import torch

from benchmarks.validate_checkpoints import main, parse_override, train_config
from monai_diffreg.engines.training_data import VALIDATION_LABEL_MAPS


@pytest.mark.parametrize("text, expected", [
    ("smoothing=False", ("smoothing", False)),
    ("regularization_weight=0.2", ("regularization_weight", 0.2)),
    ("name=text", ("name", "text")),
    ("widths=[8, 16]", ("widths", [8, 16])),
])
def test_parse_override_reads_python_literals_else_text(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["smoothing", "=False", ""])
def test_parse_override_rejects_text_without_key_and_value(text):
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_override(text)


def test_train_config_builds_the_ablation_network_with_the_override(tmp_path):
    default = train_config("mdregnet", tmp_path, seed=999).get_parsed_content("network_def")
    ablation = train_config("mdregnet", tmp_path, seed=999, overrides={"smoothing": False}).get_parsed_content("network_def")
    assert default.smoothing is True
    assert ablation.smoothing is False


def test_train_config_names_an_unknown_override(tmp_path):
    with pytest.raises(ValueError, match="'smothing' is not an entry of mdregnet's train.json"):
        train_config("mdregnet", tmp_path, seed=999, overrides={"smothing": False})


def test_main_exits_with_the_reason_for_an_unknown_override(tmp_path):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(SystemExit, match="'smothing' is not an entry"):
        main(["--bundle", "mdregnet", "--checkpoints", str(checkpoint), "--data-dir", str(tmp_path),
              "--override", "smothing=False"])


def _run_main(tmp_path, checkpoint):
    with pytest.raises(SystemExit) as exit_info:
        main(["--bundle", "mdregnet", "--checkpoints", str(checkpoint), "--data-dir", str(tmp_path)])
    return str(exit_info.value)


def test_main_names_an_unreadable_checkpoint(tmp_path):
    checkpoint = tmp_path / "corrupt.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    assert "corrupt.pt is not a readable PyTorch checkpoint" in _run_main(tmp_path, checkpoint)


def test_main_names_a_checkpoint_that_holds_no_state_dict(tmp_path):
    checkpoint = tmp_path / "list.pt"
    torch.save([1, 2], checkpoint)
    assert "list.pt holds a list, expected a state dict" in _run_main(tmp_path, checkpoint)


def test_main_names_another_networks_weights_before_building_any_pair(tmp_path):
    checkpoint = tmp_path / "other.pt"
    torch.save({"unet.weight": torch.zeros(1)}, checkpoint)
    message = _run_main(tmp_path, checkpoint)  # tmp_path holds no shared data: no pair was built
    assert "other.pt does not fit the network of train.json" in message
    assert "unexpected keys (e.g. 'unet.weight')" in message and "missing keys" in message


def test_main_names_weights_of_another_shape(tmp_path):
    network = train_config("mdregnet", tmp_path, seed=999).get_parsed_content("network_def")
    state = network.state_dict()
    name = next(iter(state))
    state[name] = torch.zeros(2, *state[name].shape)
    checkpoint = tmp_path / "shape.pt"
    torch.save({"model": state, "iteration": 10}, checkpoint)
    message = _run_main(tmp_path, checkpoint)
    assert "shape.pt does not fit the network of train.json" in message and f"size mismatch for {name}" in message


@pytest.mark.parametrize("bundle", ["vxm_prob", "mdregnet"])
def test_held_out_subjects_use_only_the_maps_training_leaves_out(bundle, shared_data):
    config = train_config(bundle, shared_data, seed=999, held_out_subjects=True)
    assert {p.split("/")[-1] for p in config.get_parsed_content("dataset#label_maps")} == set(VALIDATION_LABEL_MAPS)
    dataset = config.get_parsed_content("dataset")
    assert dataset.label_map_probability == 1.0 and dataset.template_probability == 0.0
    assert dataset.subject_maps.shape[0] == len(VALIDATION_LABEL_MAPS)


def test_held_out_subjects_need_the_maps(tmp_path):
    with pytest.raises(ValueError, match="held-out label maps"):
        train_config("vxm_prob", tmp_path, seed=999, held_out_subjects=True)


def test_compare_settings_finds_each_case_group():
    from benchmarks.compare_settings import _group

    assert _group("mni_synthetic_s100") == "mni_synthetic"
    assert _group("niivue_mni") == "niivue_mni"
    assert _group("brain_synthetic_s0") == "brain_synthetic"


def test_train_config_of_a_bundle_in_training_and_of_another_stage(tmp_path):
    """A bundle folder without inference.json (still in training) and a config other than train.json (a stage)."""
    from pathlib import Path

    from monai_diffreg.networks import KeypointAffine, VoxelMorph

    folder = Path(__file__).resolve().parents[2] / "bundles" / "synthmorph"
    assert isinstance(train_config(str(folder), tmp_path, seed=999).get_parsed_content("network_def"), VoxelMorph)
    affine = train_config(str(folder), tmp_path, seed=999, config="train_affine")
    assert isinstance(affine.get_parsed_content("network_def"), KeypointAffine)
    assert affine["seed"] == 999 and affine["shared_data"] == str(tmp_path)
    with pytest.raises(ValueError, match="'nope' is not an entry of .*synthmorph's train_affine.json"):
        train_config(str(folder), tmp_path, seed=999, overrides={"nope": 1}, config="train_affine")


def test_main_names_a_missing_config(tmp_path):
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "bundles" / "synthmorph"
    checkpoint = tmp_path / "c.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(SystemExit, match=r"validate_checkpoints: .*has no config .*nope\.json"):
        main(["--bundle", str(folder), "--config", "nope", "--checkpoints", str(checkpoint), "--data-dir", str(tmp_path)])
