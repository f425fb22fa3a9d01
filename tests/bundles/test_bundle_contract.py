"""What every shipped bundle must do: metadata, weights, verify_net_in_out, real inference / evaluate /
train / DDP runs with ``monai.bundle run``. Bundle-specific recipes are tested in ``test_<bundle>_*.py``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_diffreg.engines.training_data import VALIDATION_LABEL_MAPS, real_label_maps
from monai_diffreg.io import load_displacement_field
from monai_diffreg.methods import read_bundle_config

REPO = Path(__file__).resolve().parents[2]
BUNDLES = tuple(sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.json").is_file()))
#: bundles whose inference.json offers test-time refinement (a ``refine`` id)
REFINABLE = tuple(b for b in BUNDLES if "refine" in json.loads((REPO / "bundles" / b / "configs" / "inference.json").read_text()))
#: bundles whose train.json fine-tunes from shipped pre-training weights (``initial_weights`` not None)
FINE_TUNED = tuple(b for b in BUNDLES if json.loads((REPO / "bundles" / b / "configs" / "train.json").read_text())
                   .get("initial_weights", "$None") != "$None")

#: outputs beyond ddf / inverse_ddf / warped / velocity, the overrides that produce them, and their files
EXTRA_OUTPUTS = {
    "vxm_prob": (("--num_samples", "2"), {"uncertainty.nii.gz"}),
    "mdregnet": (("--save_levels", "True"), {"warped_levels.nii.gz"}),
}


def _configs(bundle):
    return REPO / "bundles" / bundle / "configs"


def _network_outputs(network, moving, fixed):
    """Every output metadata.json declares, from the network's own entry points."""
    out = dict(network.sample(moving, fixed, num_samples=2)) if hasattr(network, "sample") else dict(network(moving, fixed))
    if hasattr(network, "warped_level_images"):
        out["warped_levels"] = network.warped_level_images(moving, fixed)
    return out


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_declares_inputs_and_outputs(bundle):
    meta = json.loads((_configs(bundle) / "metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "description", "authors", "license", "references"):
        assert meta[key], key
    assert set(meta["network_data_format"]["inputs"]) == {"moving", "fixed"}
    assert {"ddf", "inverse_ddf", "warped", "velocity"} <= set(meta["network_data_format"]["outputs"])
    assert (REPO / "bundles" / bundle / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    assert (REPO / "bundles" / bundle / "docs" / "README.md").is_file()


#: what MONAI's bundle metadata schema (meta_schema_20240725, ``verify_metadata``) requires, checked offline
_SCHEMA_KEYS = {"version": str, "changelog": dict, "monai_version": str, "pytorch_version": str, "numpy_version": str,
                "required_packages_version": dict, "task": str, "description": str, "authors": str,
                "copyright": str, "network_data_format": dict}
_TENSOR_KEYS = {"type": str, "format": str, "num_channels": int, "spatial_shape": list, "dtype": str,
                "value_range": list, "is_patch_data": bool, "channel_def": dict}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_is_valid_offline_and_pins_this_package(bundle):
    """verify_metadata-equivalent without the network: the schema's required keys and types, a changelog
    entry for the current version, and the package version the bundle was released with."""
    import monai_diffreg

    meta = json.loads((_configs(bundle) / "metadata.json").read_text())
    for key, kind in _SCHEMA_KEYS.items():
        assert isinstance(meta.get(key), kind), key
    assert next(iter(meta["changelog"])) == meta["version"]  # newest first
    assert meta["required_packages_version"]["monai_diffreg"] == monai_diffreg.__version__
    for section in ("inputs", "outputs"):
        for name, spec in meta["network_data_format"][section].items():
            for key, kind in _TENSOR_KEYS.items():
                assert isinstance(spec.get(key), kind), (section, name, key)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_network_matches_metadata_inputs_and_outputs(bundle):
    """verify_net_in_out-style: build network_def with the shipped weights (strict), feed inputs as declared."""
    meta = json.loads((_configs(bundle) / "metadata.json").read_text())["network_data_format"]
    parser = read_bundle_config(bundle, "inference")
    network = parser.get_parsed_content("network_def").eval()
    network.load_state_dict(torch.load(parser.get_parsed_content("method#weights"), weights_only=True))
    shape = (1, 1, 40, 48, 36)  # any size: padded internally
    assert all(meta["inputs"][key]["num_channels"] == 1 for key in ("moving", "fixed"))
    with torch.no_grad():
        out = _network_outputs(network, torch.rand(shape), torch.rand(shape))
    for key, spec in meta["outputs"].items():
        assert out[key].shape[:2] == (1, spec["num_channels"]), key
        # the velocity lives on the network's own grid, every other output on the input grid
        if key != "velocity":
            assert out[key].shape[2:] == shape[2:], key
        assert bool(torch.isfinite(out[key]).all()), key


@pytest.mark.parametrize("bundle", BUNDLES)
def test_weights_are_small_and_load_strictly(bundle):
    models = sorted((REPO / "bundles" / bundle / "models").glob("*.pt"))
    assert models
    parser = read_bundle_config(bundle, "inference")
    for path in models:
        assert path.stat().st_size < 25 * 2**20, path.name
        parser.get_parsed_content("network_def", lazy=False).load_state_dict(torch.load(path, weights_only=True))


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_on_a_pair_of_files(bundle_run, bundle, cropped_pair, tmp_path):
    out = tmp_path / "out"
    extra_args, extra_files = EXTRA_OUTPUTS.get(bundle, ((), set()))
    result = bundle_run(bundle, "inference.json", "--fixed", str(cropped_pair["fixed"]), "--moving",
                        str(cropped_pair["moving"]), "--moving_labels", str(cropped_pair["moving_labels"]),
                        "--fixed_labels", str(cropped_pair["fixed_labels"]), *extra_args, "--output_dir", str(out),
                        "--inverse", "true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    expected = {"warped.nii.gz", "ddf.nii.gz", "inverse_ddf.nii.gz", "warped_labels.nii.gz", "summary.json",
                "qc.png", *extra_files}
    assert expected <= {p.name for p in out.iterdir()}
    fixed = nib.load(cropped_pair["fixed"])
    for name in ("warped.nii.gz", "warped_labels.nii.gz", *extra_files):
        img = nib.load(out / name)
        assert img.shape[:3] == fixed.shape and np.allclose(img.affine, fixed.affine), name
    ddf, affine = load_displacement_field(out / "ddf.nii.gz")
    assert ddf.shape == (1, 3, *fixed.shape) and np.allclose(affine, fixed.affine)
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["folding_percent"] < 0.01
    assert metrics["dice_after"]["mean"] >= metrics["dice_before"]["mean"] - 0.01


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_missing_input_fails_and_writes_nothing(bundle_run, bundle, tmp_path):
    out = tmp_path / "out"
    result = bundle_run(bundle, "inference.json", "--fixed", str(tmp_path / "none.nii.gz"), "--moving",
                        str(tmp_path / "none.nii.gz"), "--output_dir", str(out))
    assert result.returncode != 0
    assert "none.nii.gz" in result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_evaluate_writes_a_csv(bundle_run, bundle, cropped_pair, tmp_path):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{k: str(v) for k, v in cropped_pair.items()}]))
    result = bundle_run(bundle, "evaluate.json", "--pairs", str(pairs), "--output_csv", str(tmp_path / "m.csv"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "m.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["folding_percent"]) < 0.01 and 0.0 < float(row["dice_after"]) <= 1.0
    assert float(row["hd95_after_mm"]) >= 0.0


@pytest.mark.slow
@pytest.mark.parametrize("bundle", REFINABLE)
def test_evaluate_with_refinement_improves_dice(bundle_run, bundle, cropped_pair, tmp_path):
    """--refine_steps reaches the method through the bundle: the refined registration is better, still unfolded."""
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{k: str(v) for k, v in cropped_pair.items()}]))
    rows = {}
    for steps in (0, 30):
        result = bundle_run(bundle, "evaluate.json", "--pairs", str(pairs), "--output_csv", str(tmp_path / f"{steps}.csv"),
                            "--refine_steps", str(steps))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        with open(tmp_path / f"{steps}.csv", newline="") as f:
            (rows[steps],) = list(csv.DictReader(f))
    assert float(rows[30]["dice_after"]) > float(rows[0]["dice_after"]) + 0.005
    assert float(rows[30]["folding_percent"]) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("bundle", REFINABLE)
def test_inference_refine_fast_improves_dice(bundle_run, bundle, cropped_pair, tmp_path):
    """--refine fast reaches the method through a real monai.bundle run and beats the network alone."""
    dice = {}
    for setting in ("none", "fast"):
        out = tmp_path / setting
        args = [f"--{k}" for k in ("fixed", "moving", "fixed_labels", "moving_labels")]
        pair = [x for key, flag in zip(("fixed", "moving", "fixed_labels", "moving_labels"), args)
                for x in (flag, str(cropped_pair[key]))]
        result = bundle_run(bundle, "inference.json", *pair, "--output_dir", str(out), "--refine", setting)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert f"refine={setting!r}" in summary["method_settings"]
        assert summary["metrics"]["folding_percent"] < 0.01
        dice[setting] = summary["metrics"]["dice_after"]["mean"]
    assert dice["fast"] > dice["none"] + 0.005


_TINY_TRAINING = ("--max_iterations", "2", "--patch_size", "[32,32,32]", "--template_probability", "0",
                  "--label_map_probability", "0",
                  "--num_workers", "0", "--log_interval", "1", "--num_threads", "1")


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_json_runs_two_iterations(bundle_run, bundle, tmp_path):
    out = tmp_path / "train"
    result = bundle_run(bundle, "train.json", "--output_dir", str(out), *_TINY_TRAINING, timeout=140)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "iteration 2/2" in (out / "train_log.txt").read_text()
    assert (out / "checkpoint_0000002.pt").exists()
    parser = read_bundle_config(bundle, "train")
    parser.get_parsed_content("network_def").load_state_dict(torch.load(out / "model.pt", weights_only=True))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_multi_gpu_config_only_overrides(bundle):
    base = json.loads((_configs(bundle) / "train.json").read_text())
    overrides = json.loads((_configs(bundle) / "multi_gpu_train.json").read_text())
    assert all(key.split("#")[0] in base for key in overrides)
    parser = read_bundle_config(bundle, ["train", "multi_gpu_train"])
    assert parser["trainer"]["distributed"] is True
    assert parser["trainer"]["_target_"] == base["trainer"]["_target_"]


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_multi_gpu_train_runs_real_ddp_with_gloo(bundle_run, tmp_path):
    """train.json + multi_gpu_train.json under torchrun: 2 CPU processes (gloo), rank 0 writes."""
    out = tmp_path / "ddp"
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    result = bundle_run("mdregnet", ["train.json", "multi_gpu_train.json"], "--output_dir", str(out),
                        *_TINY_TRAINING, timeout=190, launcher=launcher)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = torch.load(out / "checkpoint_0000002.pt", weights_only=False)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng_states"]) == 2
    assert (out / "model.pt").exists()


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_json_holds_out_validation_subjects(bundle, shared_data, monkeypatch):
    """Training maps (the shared recipe, real_anatomy_dataset with its default maps): SynthSeg's and SynthSR's
    label maps less the held-out ones; never the validation subject (niivue) or the evaluation brain."""
    monkeypatch.setenv("MONAI_DIFFREG_SHARED", str(shared_data.parent))
    parser = read_bundle_config(bundle, "train")
    assert parser["dataset"]["_target_"] == "monai_diffreg.bundle_workflow.real_anatomy_dataset"
    assert "label_maps" not in parser["dataset"] and parser.get_parsed_content("shared_data") is None
    maps = [Path(p) for p in real_label_maps()]  # the maps real_anatomy_dataset trains on (shared_data None)
    held_out = set(VALIDATION_LABEL_MAPS)
    assert len(maps) == 25 - len(held_out) and len(held_out) == 3
    assert not held_out & {p.name for p in maps}
    assert {Path(p).name for p in real_label_maps(held_out=True)} == held_out
    assert all(p.parent.name in ("synthseg_label_maps", "synthsr_label_maps") for p in maps)
    assert parser.get_parsed_content("dataset#num_label_channels") == 19


@pytest.mark.parametrize("bundle", FINE_TUNED)
def test_train_json_fine_tunes_from_shipped_weights(bundle):
    """Fine-tuning starts from pre-training weights that ship in the bundle and fit its network."""
    parser = read_bundle_config(bundle, "train")
    initial = Path(parser.get_parsed_content("initial_weights"))
    assert initial.is_file() and initial.parent == _configs(bundle).parent / "models"
    parser.get_parsed_content("network_def").load_state_dict(torch.load(initial, weights_only=True))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_eval_metrics_are_the_measured_ones(bundle):
    """metadata's eval_metrics come from the benchmark run they name: each Dice equals that run's group mean."""
    import csv as csv_module
    import statistics

    meta = json.loads((_configs(bundle) / "metadata.json").read_text())["eval_metrics"]
    run = REPO / meta["measured_by"].split(" ")[0]
    for key, value in meta.items():
        if not key.startswith("mean_dice_"):
            continue
        case = key[len("mean_dice_"):].removesuffix("_refine_fast")
        method = bundle + ("@fast" if key.endswith("_refine_fast") else "")
        with open(run / f"{case}.csv", newline="") as f:
            dice = [float(r["dice"]) for r in csv_module.DictReader(f) if r["method"] == method]
        assert dice and round(statistics.fmean(dice), 3) == value, (key, dice)
