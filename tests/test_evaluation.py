"""evaluate_pairs / monai-diffreg evaluate: one CSV row of metrics per pair, failures recorded."""

import csv
import json

import numpy as np
import pytest
import torch

from monai_diffreg import methods
from monai_diffreg.cli import main
from monai_diffreg.evaluation import evaluate_pairs, read_pairs
from monai_diffreg.io import save_image


class ShiftMethod:
    """A stand-in method returning a known constant displacement of one voxel along axis 0."""

    def __call__(self, fixed, moving):
        ddf = torch.zeros(1, fixed.ndim - 2, *fixed.shape[2:])
        ddf[:, 0] = 1.0
        return {"ddf": ddf}


@pytest.fixture
def shift_method():
    methods.register_method("shift", lambda **_: ShiftMethod(), "test: 1-voxel shift")
    yield
    methods.unregister_method("shift")


@pytest.fixture
def pairs_file(tmp_path):
    """A fixed box and a moving box one voxel further along axis 0, with labels; pairs CSV beside them."""
    fixed = np.zeros((16, 16, 16), np.float32)
    fixed[4:10, 5:11, 5:11] = 1.0
    moving = np.roll(fixed, 1, axis=0)
    for name, data in {"f.nii.gz": fixed, "m.nii.gz": moving}.items():
        save_image(data + 0.1 * np.random.default_rng(0).random(data.shape, np.float32), np.eye(4), tmp_path / name)
    save_image(fixed.astype(np.uint8), np.eye(4), tmp_path / "fl.nii.gz", label=True)
    save_image(moving.astype(np.uint8), np.eye(4), tmp_path / "ml.nii.gz", label=True)
    path = tmp_path / "pairs.csv"
    path.write_text("fixed,moving,fixed_labels,moving_labels\nf.nii.gz,m.nii.gz,fl.nii.gz,ml.nii.gz\n"
                    "f.nii.gz,missing.nii.gz,,\n")
    return path


def test_rows_hold_metrics_and_errors(shift_method, pairs_file, tmp_path):
    rows = evaluate_pairs(pairs_file, "shift", tmp_path / "out" / "metrics.csv", qc=False, progress=False)
    good, bad = rows
    assert good["dice_before"] < 0.9 and good["dice_after"] == pytest.approx(1.0)  # the shift undoes the offset
    assert good["hd95_after_mm"] == pytest.approx(0.0) and good["folding_percent"] == 0.0
    assert "missing.nii.gz" in bad["error"] and "dice_after" not in bad
    with open(tmp_path / "out" / "metrics.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 2 and float(written[0]["dice_label_1"]) == pytest.approx(1.0)


def test_cli_exit_status_and_pairs_errors(shift_method, pairs_file, tmp_path, capsys):
    assert main(["evaluate", "--bundle", "shift", "--pairs", str(pairs_file), "--output-csv",
                 str(tmp_path / "m.csv"), "--option", "qc=false"]) == 1  # one pair failed
    assert "1/2 pairs evaluated" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps([{"fixed": "a.nii.gz"}]))
    with pytest.raises(ValueError, match=r"read_pairs\(\): row 0 of .* needs 'fixed' and 'moving'"):
        read_pairs(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match=r"read_pairs\(\): 'path' not found"):
        read_pairs(tmp_path / "none.csv")


class CountingShift(ShiftMethod):
    """ShiftMethod that counts its calls (across instances)."""

    calls = 0

    def __call__(self, fixed, moving):
        CountingShift.calls += 1
        return super().__call__(fixed, moving)


@pytest.fixture
def counting_method():
    CountingShift.calls = 0
    methods.register_method("counting_shift", lambda **_: CountingShift(), "test: counted 1-voxel shift")
    yield CountingShift
    methods.unregister_method("counting_shift")


def _pairs_csv(folder, rows):
    path = folder / "many.csv"
    path.write_text("fixed,moving,fixed_labels,moving_labels\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_a_rerun_skips_the_pairs_done_and_retries_the_failed(counting_method, pairs_file, tmp_path):
    """Progress is kept per pair: a re-run registers only what is missing or failed; the CSV is complete."""
    out = tmp_path / "metrics.csv"
    good = "f.nii.gz,m.nii.gz,fl.nii.gz,ml.nii.gz"
    path = _pairs_csv(pairs_file.parent, [good, "f.nii.gz,late.nii.gz,,", good])
    rows = evaluate_pairs(path, "counting_shift", out, progress=False)
    assert counting_method.calls == 2 and "error" in rows[1]
    assert not list(tmp_path.glob("metrics.csv.progress-*"))  # removed once the CSV is written
    (pairs_file.parent / "late.nii.gz").write_bytes((pairs_file.parent / "m.nii.gz").read_bytes())  # the file arrives
    rows = evaluate_pairs(path, "counting_shift", out, progress=False)
    assert counting_method.calls == 3  # only the pair that had failed
    assert [r["pair"] for r in rows] == [0, 1, 2] and all("error" not in r for r in rows)
    with open(out, newline="") as f:
        assert [int(r["pair"]) for r in csv.DictReader(f)] == [0, 1, 2]


def test_a_killed_run_resumes_from_its_progress_file(counting_method, pairs_file, tmp_path):
    """A run killed after two pairs left its progress file (and no CSV); the re-run does the rest."""
    out = tmp_path / "metrics.csv"
    good = "f.nii.gz,m.nii.gz,fl.nii.gz,ml.nii.gz"
    path = _pairs_csv(pairs_file.parent, [good] * 4)
    original = CountingShift.__call__

    def dies_on_the_third(self, fixed, moving):
        if CountingShift.calls == 2:
            raise KeyboardInterrupt
        return original(self, fixed, moving)

    CountingShift.__call__ = dies_on_the_third
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate_pairs(path, "counting_shift", out, progress=False)
    finally:
        CountingShift.__call__ = original
    assert not out.exists() and len(list(tmp_path.glob("metrics.csv.progress-*.jsonl"))) == 1
    rows = evaluate_pairs(path, "counting_shift", out, progress=False)
    assert CountingShift.calls == 4 and [r["pair"] for r in rows] == [0, 1, 2, 3]


def test_a_bad_row_is_a_failed_pair_not_a_failed_run(shift_method, pairs_file, tmp_path):
    path = _pairs_csv(pairs_file.parent, [",m.nii.gz,,", "f.nii.gz,m.nii.gz,fl.nii.gz,ml.nii.gz"])
    bad, good = evaluate_pairs(path, "shift", tmp_path / "m.csv", progress=False)
    assert "row 0 of" in bad["error"] and "needs 'fixed' and 'moving'" in bad["error"]
    assert good["dice_after"] == pytest.approx(1.0)


_DISTRIBUTED = """
import sys
sys.path.insert(0, {tests!r})
from monai_diffreg import methods
from monai_diffreg.cli import main
from test_evaluation import ShiftMethod
methods.register_method("shift", lambda **_: ShiftMethod(), "test")
sys.exit(main(["evaluate", "--bundle", "shift", "--pairs", {pairs!r}, "--output-csv", {out!r}]))
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_evaluation_runs_on_several_processes_with_torchrun(pairs_file, tmp_path):
    """torchrun, 2 CPU processes (gloo): pairs split by rank, one CSV gathered by rank 0, a failed pair reported."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    good = "f.nii.gz,m.nii.gz,fl.nii.gz,ml.nii.gz"
    path = _pairs_csv(pairs_file.parent, [good, good, "f.nii.gz,missing.nii.gz,,", good, good])
    out = tmp_path / "ddp" / "metrics.csv"
    script = tmp_path / "evaluate.py"
    script.write_text(_DISTRIBUTED.format(tests=str(Path(__file__).parent), pairs=str(path), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, timeout=220, env=env)
    assert done.returncode != 0  # a pair failed: the exit status says so
    assert "4/5 pairs evaluated" in done.stderr and "missing.nii.gz" in done.stderr, done.stderr[-3000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["pair"]) for r in rows] == [0, 1, 2, 3, 4]
    assert rows[2]["error"] and all(float(r["dice_after"]) == pytest.approx(1.0) for i, r in enumerate(rows) if i != 2)
    assert not list(out.parent.glob("*.progress-*"))
