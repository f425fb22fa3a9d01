"""RegistrationTrainer: bitwise resume, NaN stop without saving, logging, checkpoints, real DDP (gloo)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from monai_diffreg.engines.training import (
    RegistrationTrainer,
    export_stage_weights,
    export_weights,
    latest_checkpoint,
    save_atomic,
)
from monai_diffreg.engines.training_data import SyntheticPairDataset
from monai_diffreg.losses.prob_svf import ProbabilisticSVFLoss
from monai_diffreg.networks import ProbabilisticVoxelMorph

REPO = Path(__file__).resolve().parents[2]


def _trainer(output_dir, max_iterations, resume=False, loss=None, **kwargs):
    torch.manual_seed(0)
    network = ProbabilisticVoxelMorph(2, enc_channels=(4, 8), dec_channels=(8, 8, 8), posterior="smoothed", prior_lambda=2.0)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    dataset = SyntheticPairDataset((16, 16), seed=3, shape_labels=4, num_label_channels=4)
    loss = loss or ProbabilisticSVFLoss("mse", image_sigma=0.1, prior_lambda=2.0, posterior="smoothed", dice_weight=1.0)
    return RegistrationTrainer(network, loss, optimizer, dataset, max_iterations, output_dir, batch_size=2,
                               checkpoint_interval=kwargs.pop("checkpoint_interval", 2), log_interval=1,
                               resume=resume, seed=5, **kwargs)


def test_resume_is_bitwise_identical(tmp_path):
    straight = _trainer(tmp_path / "a", 4)
    straight.run()
    first = _trainer(tmp_path / "b", 2)
    first.run()
    resumed = _trainer(tmp_path / "b", 4, resume=True)
    resumed.run()
    assert resumed.iteration == 4
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    start = torch.load(tmp_path / "b" / "checkpoint_0000002.pt", weights_only=False)["model"]
    assert any(not torch.equal(start[k], b[k]) for k in b)  # the resumed half did train
    log = (tmp_path / "b" / "train_log.txt").read_text()
    assert "resumed from" in log and "iteration 4/4" in log and "loss=" in log and "s/it=" in log


def _with_decay(trainer, milestone):
    trainer.lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(trainer.optimizer, [milestone], gamma=0.1)
    return trainer


def test_schedule_added_on_resume_equals_the_schedule_from_the_start(tmp_path):
    """A run without a schedule, resumed with a learning-rate decay that starts later, ends with the
    weights of a run that had the decay all along (the schedule is stepped to the checkpoint)."""
    straight = _with_decay(_trainer(tmp_path / "a", 4), milestone=3)
    straight.run()
    _trainer(tmp_path / "b", 2).run()
    resumed = _with_decay(_trainer(tmp_path / "b", 4, resume=True), milestone=3)
    resumed.run()
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # decayed once, at iteration 3
    no_decay = _trainer(tmp_path / "c", 4)
    no_decay.run()
    c = torch.load(tmp_path / "c" / "model.pt", weights_only=True)
    assert any(not torch.equal(a[key], c[key]) for key in a)  # the decay did change the run
    assert "schedule was stepped to iteration 2" in (tmp_path / "b" / "train_log.txt").read_text()


def test_schedule_added_on_resume_warns_when_it_would_have_changed_the_past(tmp_path):
    _trainer(tmp_path / "b", 2).run()
    _with_decay(_trainer(tmp_path / "b", 3, resume=True), milestone=1).run()
    assert "differs from one with the schedule from the start" in (tmp_path / "b" / "train_log.txt").read_text()


def test_checkpoint_of_a_longer_run_exports_the_weights_of_a_shorter_one(tmp_path):
    """No schedule depends on max_iterations: iteration 2 of a 4-iteration run == a 2-iteration run."""
    _trainer(tmp_path / "long", 4).run()
    _trainer(tmp_path / "short", 2).run()
    assert export_weights(tmp_path / "long" / "checkpoint_0000002.pt", tmp_path / "exported.pt") == 2
    exported = torch.load(tmp_path / "exported.pt", weights_only=True)
    short = torch.load(tmp_path / "short" / "model.pt", weights_only=True)
    assert exported.keys() == short.keys() and all(torch.equal(exported[k], short[k]) for k in short)
    with pytest.raises(ValueError, match="not a RegistrationTrainer checkpoint"):
        export_weights(tmp_path / "short" / "model.pt", tmp_path / "x.pt")


def test_separately_trained_stages_become_one_strictly_loadable_network(tmp_path):
    """export_stage_weights: an affine stage's and a deformable stage's checkpoints -> AffineThenDeformable's weights."""
    from monai_diffreg.networks import AffineThenDeformable, KeypointAffine, VoxelMorph

    def stage_checkpoint(network, name):
        path = tmp_path / f"{name}.pt"
        torch.save({"model": network.state_dict(), "iteration": 7 if name == "affine" else 9}, path)
        return path

    torch.manual_seed(1)
    affine = KeypointAffine(2, num_keypoints=4, enc_channels=(4, 8), dec_channels=(8, 8))
    deformable = VoxelMorph(2, enc_channels=(4, 8), dec_channels=(8, 8, 8))
    iterations = export_stage_weights({"affine": stage_checkpoint(affine, "affine"),
                                       "deformable": stage_checkpoint(deformable, "deformable")}, tmp_path / "model.pt")
    assert iterations == {"affine": 7, "deformable": 9}
    torch.manual_seed(2)
    composed = AffineThenDeformable(KeypointAffine(2, num_keypoints=4, enc_channels=(4, 8), dec_channels=(8, 8)),
                                    VoxelMorph(2, enc_channels=(4, 8), dec_channels=(8, 8, 8)))
    composed.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    assert all(torch.equal(composed.affine.state_dict()[k], v) for k, v in affine.state_dict().items())
    assert all(torch.equal(composed.deformable.state_dict()[k], v) for k, v in deformable.state_dict().items())
    with pytest.raises(ValueError, match=r"export_stage_weights\(\): .* is not a RegistrationTrainer checkpoint"):
        export_stage_weights({"affine": tmp_path / "model.pt"}, tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match=r"export_stage_weights\(\): checkpoint not found: .*none\.pt"):
        export_stage_weights({"affine": tmp_path / "none.pt"}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_checkpoints_rotation_and_atomic_files(tmp_path):
    _trainer(tmp_path, 5, checkpoint_interval=1, keep_checkpoints=2).run()
    names = sorted(p.name for p in tmp_path.glob("checkpoint_*.pt"))
    assert names == ["checkpoint_0000004.pt", "checkpoint_0000005.pt"]
    assert latest_checkpoint(tmp_path).name == "checkpoint_0000005.pt"
    assert not list(tmp_path.glob(".*tmp*"))
    checkpoint = torch.load(tmp_path / "checkpoint_0000005.pt", weights_only=False)
    assert checkpoint["iteration"] == 5 and {"model", "optimizer", "rng_states", "lr_scheduler"} <= set(checkpoint)


class _NaNAtSecondCall(ProbabilisticSVFLoss):
    calls = 0

    def forward(self, *args, **kwargs):
        terms = super().forward(*args, **kwargs)
        type(self).calls += 1
        if type(self).calls == 2:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


def test_nan_loss_stops_without_saving(tmp_path):
    loss = _NaNAtSecondCall("mse", image_sigma=0.1, prior_lambda=2.0)
    trainer = _trainer(tmp_path, 5, loss=loss, checkpoint_interval=1)
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at iteration 2 .*nothing saved"):
        trainer.run()
    assert not (tmp_path / "model.pt").exists()
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_0000001.pt"]


def test_save_atomic_replaces(tmp_path):
    save_atomic({"a": 1}, tmp_path / "x.pt")
    save_atomic({"a": 2}, tmp_path / "x.pt")
    assert torch.load(tmp_path / "x.pt") == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_initial_weights_start_a_fresh_run_but_not_a_resumed_one(tmp_path):
    """Fine-tuning: the run starts from the file's weights; resuming keeps the checkpoint's."""
    pretrained = _trainer(tmp_path / "pre", 2)
    pretrained.run()
    start = tmp_path / "pre" / "model.pt"
    trainer = _trainer(tmp_path / "fine", 1, initial_weights=start)
    trainer.optimizer.param_groups[0]["lr"] = 0.0  # one step that changes nothing: the weights are the file's
    trainer.run()
    loaded = torch.load(tmp_path / "fine" / "model.pt", weights_only=True)
    for key, value in torch.load(start, weights_only=True).items():
        assert torch.equal(loaded[key], value), key
    assert "initial weights from" in (tmp_path / "fine" / "train_log.txt").read_text()
    scratch = _trainer(tmp_path / "scratch", 1)
    scratch.run()
    resumed = _trainer(tmp_path / "scratch", 2, resume=True, initial_weights=start)
    resumed.run()
    assert "initial weights from" not in (tmp_path / "scratch" / "train_log.txt").read_text()


def test_bad_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'initial_weights' is not a file"):
        _trainer(tmp_path, 1, initial_weights=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"RegistrationTrainer\(\): 'max_iterations' must be an integer >= 1, got 0"):
        _trainer(tmp_path, 0)
    with pytest.raises(ValueError, match=r"'num_workers' must be an integer >= 0, got -1"):
        _trainer(tmp_path, 1, num_workers=-1)


_DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_training import _trainer
trainer = _trainer({out!r}, 3, distributed=True)
trainer.run()
"""


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_ddp_two_processes_gloo(tmp_path):
    """Real DDP: 2 CPU processes (gloo) train 3 iterations; replicas stay identical, rank 0 writes."""
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "run"))))
    # loopback only; --standalone lets the launcher bind a free port itself (no probe-then-bind race)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        stdout, stderr = launcher.communicate(timeout=110)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the launcher stop its workers (each in a session of its own), then kill what is left
        launcher.terminate()
        try:
            stdout, stderr = launcher.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            stdout, stderr = launcher.communicate()
        pytest.fail("DDP run did not finish in 110 s (a rank hung):\n" + stdout[-3000:] + stderr[-3000:])
    assert launcher.returncode == 0, stdout[-3000:] + stderr[-3000:]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint_0000003.pt", weights_only=False)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng_states"]) == 2
    assert not torch.equal(checkpoint["rng_states"][0], checkpoint["rng_states"][1])
    assert (tmp_path / "run" / "model.pt").exists()
    # DDP averaged the gradients of different data: the result differs from one process on rank 0's data
    single = _trainer(tmp_path / "single", 3)
    single.run()
    ddp_weights = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    single_weights = torch.load(tmp_path / "single" / "model.pt", weights_only=True)
    assert any(not torch.equal(ddp_weights[k], single_weights[k]) for k in ddp_weights)
