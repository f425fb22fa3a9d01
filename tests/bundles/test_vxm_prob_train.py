"""vxm_prob bundle training configs: a real ``monai.bundle run`` of train.json, and the DDP overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_diffreg.networks import ProbabilisticVoxelMorph

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "vxm_prob" / "configs"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_train_json_runs_two_iterations(tmp_path):
    out = tmp_path / "train"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train.json"),
        "--output_dir", str(out), "--max_iterations", "2", "--patch_size", "[32,32,32]",
        "--template_folder", "None", "--num_workers", "0", "--log_interval", "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (out / "train_log.txt").read_text()
    assert "iteration 2/2" in log and "kl=" in log and "dice=" in log
    assert (out / "checkpoint_0000002.pt").exists()
    parser = ConfigParser()
    parser.read_config(CONFIGS / "train.json")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(out / "model.pt", weights_only=True))  # strict: same architecture
    assert isinstance(network, ProbabilisticVoxelMorph)


def test_multi_gpu_config_only_overrides():
    base = json.loads((CONFIGS / "train.json").read_text())
    overrides = json.loads((CONFIGS / "multi_gpu_train.json").read_text())
    assert all(key.split("#")[0] in base for key in overrides)
    parser = ConfigParser()
    parser.read_config([CONFIGS / "train.json", CONFIGS / "multi_gpu_train.json"])
    assert parser["trainer"]["distributed"] is True
    assert parser["trainer"]["_target_"] == base["trainer"]["_target_"]


def test_train_json_defaults_match_the_shipped_recipe():
    parser = ConfigParser()
    parser.read_config(CONFIGS / "train.json")
    network = parser.get_parsed_content("network_def")
    loss = parser.get_parsed_content("loss")
    assert (network.posterior, network.prior_lambda, network.int_downsize, network.num_steps) == ("smoothed", 10.0, 1, 7)
    assert network.unet.norm == "instance"
    assert (loss.posterior, loss.prior_lambda, loss.image_loss, loss.bidirectional) == ("smoothed", 10.0, "ncc", True)
    base = json.loads((CONFIGS / "train.json").read_text())
    data_settings = json.dumps([base["dataset"], base["template_folder"], base["shared_data"]])
    assert "test_scan" not in data_settings and "voxelmorph" not in data_settings


def test_metadata_declares_inputs_and_outputs():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "description", "authors", "license"):
        assert meta[key]
    assert set(meta["network_data_format"]["inputs"]) == {"moving", "fixed"}
    assert {"ddf", "inverse_ddf", "uncertainty"} <= set(meta["network_data_format"]["outputs"])
    assert (CONFIGS.parent / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
