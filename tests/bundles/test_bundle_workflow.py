"""What the bundle configs call (monai_diffreg.bundle_workflow), through real ``monai.bundle run`` processes:
a copied bundle runs its own weights, misspelled options and bad values are one line, nothing is written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from monai_diffreg.bundle_workflow import bundle_root
from monai_diffreg.methods import read_bundle_config

from .conftest import REPO


def _copy(bundle, folder):
    copy = folder / f"my_{bundle}"
    shutil.copytree(REPO / "bundles" / bundle, copy)
    return copy


def _run(copy, config, *overrides, env=None):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(copy / "configs" / config), *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})})


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if "error:" in line]


def test_bundle_root_needs_a_running_workflow():
    with pytest.raises(ValueError, match=r"bundle_root\(\): no monai.bundle workflow is running this config"):
        bundle_root()
    parser = read_bundle_config("vxm_prob")  # a parser for Python use gets the folder set
    assert parser.get_parsed_content("bundle_root") == str(REPO / "bundles" / "vxm_prob")


@pytest.mark.slow
def test_a_copied_bundle_runs_its_own_weights(tmp_path):
    """The copy's model.pt (the network with a zero velocity head: the identity) is what runs, not bundles/vxm_prob's."""
    copy = _copy("vxm_prob", tmp_path)
    parser = read_bundle_config(copy)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(copy / "models" / "model.pt", weights_only=True))
    with torch.no_grad():
        network.mean_head.weight.zero_()
        network.mean_head.bias.zero_()
    torch.save(network.state_dict(), copy / "models" / "model.pt")
    result = _run(copy, "inference.json", "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    metrics = summary["metrics"]
    assert metrics["dice_after"]["mean"] == pytest.approx(metrics["dice_before"]["mean"], abs=1e-3)  # the identity
    assert metrics["dice_before"]["mean"] < 0.85  # the shipped weights would reach 0.93 here


@pytest.mark.slow
def test_a_copy_without_weights_names_its_own_file(tmp_path):
    copy = _copy("mdregnet", tmp_path)
    (copy / "models" / "model.pt").unlink()
    result = _run(copy, "inference.json", "--output_dir", str(tmp_path / "out"))
    assert result.returncode != 0
    (line,) = _error_lines(result.stderr)
    assert "'weights' file not found" in line and str(copy / "models" / "model.pt") in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("config,overrides,message,status", [
    ("inference.json", ("--refine_stepz", "5"), "'--refine_stepz' (did you mean '--refine_steps'?) is not an id of", 2),
    ("inference.json", ("--method#refine_stepz", "5"), "'--method#refine_stepz' (did you mean '--method#refine_steps'?)", 2),
    ("evaluate.json", ("--pair", "x.csv"), "'--pair' (did you mean '--pairs'?)", 2),
    ("train.json", ("--max_iteration", "5"), "'--max_iteration' (did you mean '--max_iterations'?)", 2),
    ("inference.json", ("--refine_steps", "-1"), "'refine_steps' must be an integer >= 0, got -1", 1),
    ("inference.json", ("--refine", "quick"), "'refine' must be one of ['none', 'fast'], got 'quick'", 1),
    ("inference.json", ("--fixed", "f.nii.gz"), "give both --fixed and --moving", 2),
    ("inference.json", ("--inverse", "maybe"), "--inverse must be true or false, got 'maybe'", 2),
])
def test_bad_options_are_one_line_and_write_nothing(tmp_path, config, overrides, message, status):
    out = tmp_path / "out"
    result = _run(REPO / "bundles" / "vxm_prob", config, "--output_dir", str(out), *overrides)
    assert result.returncode == status, result.stderr[-3000:]
    (line,) = _error_lines(result.stderr)
    assert line.startswith("monai.bundle run: error: ") and message in line
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_the_traceback_is_there_on_request(tmp_path):
    result = _run(REPO / "bundles" / "vxm_prob", "inference.json", "--output_dir", str(tmp_path / "out"),
                  "--refine_steps", "-1", env={"MONAI_DIFFREG_TRACEBACK": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr and "RuntimeError" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("overrides,message", [
    ((), "no label maps found under '/nonexistent/data'"),
    (("--label_map_probability", "0"), "the MNI template folder '/nonexistent/data/mni152_2009a' does not exist"),
])
def test_train_json_names_the_missing_data_folder(tmp_path, overrides, message):
    """Without the shared data train.json stops before training with one line saying where it looked and what to set."""
    result = _run(REPO / "bundles" / "vxm_prob", "train.json", "--output_dir", str(tmp_path / "run"), *overrides,
                  env={"MONAI_DIFFREG_SHARED": "/nonexistent"})
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = _error_lines(result.stderr)
    assert message in line and "MONAI_DIFFREG_SHARED" in line
    assert not (tmp_path / "run").exists()
