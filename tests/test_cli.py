"""Tests for the command line (monai_diffreg.cli)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_diffreg import methods
from monai_diffreg.cli import main
from monai_diffreg.functional import warp
from monai_diffreg.io import save_image


class ShiftMethod:
    """Toy method: a constant displacement along axis 0 (voxels)."""

    def __init__(self, shift=1.0):
        self.shift = float(shift)

    def __call__(self, fixed, moving):
        ddf = torch.zeros(1, fixed.ndim - 2, *fixed.shape[2:], device=fixed.device)
        ddf[:, 0] = self.shift
        return {"ddf": ddf}


@pytest.fixture
def shift_method():
    methods.register_method("shift", ShiftMethod, "constant shift (test)")
    yield
    methods.unregister_method("shift")


@pytest.fixture
def pair_files(tmp_path):
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (16, 14, 12)], indexing="ij")
    image = np.exp(-sum((g - c) ** 2 for g, c in zip(grids, (8, 7, 6))) / 20.0)
    labels = (image > 0.3).astype(np.int16) + (image > 0.7)
    paths = {}
    for name, data, lab in (("fixed", image, False), ("m1", image, False), ("m2", np.roll(image, 1, 0), False),
                            ("fl", labels, True), ("l1", labels, True), ("l2", np.roll(labels, 1, 0), True)):
        paths[name] = str(save_image(data, np.diag([-1.0, 1.0, 1.0, 1.0]), tmp_path / f"{name}.nii.gz", label=lab))
    return paths


def test_register_single_pair(shift_method, pair_files, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["register", "--fixed", pair_files["fixed"], "--moving", pair_files["m1"], "--bundle", "shift",
                 "--fixed-labels", pair_files["fl"], "--moving-labels", pair_files["l1"], "--output-dir", str(out),
                 "--option", "shift=0.5", "--no-qc"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["ddf.nii.gz", "summary.json", "warped.nii.gz",
                                                    "warped_labels.nii.gz"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "shift" and summary["method_options"] == {"shift": "0.5"}
    assert summary["metrics"]["dice_before"]["mean"] == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "Dice 1.000 ->" in printed and "det J <= 0: 0.000%" in printed


def test_register_batch_subfolders(shift_method, pair_files, tmp_path, capsys):
    out = tmp_path / "batch"
    code = main(["register", "--fixed", pair_files["fixed"], "--moving", pair_files["m1"], pair_files["m2"],
                 pair_files["m1"], "--bundle", "shift", "--output-dir", str(out), "--no-qc"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["m1", "m1_2", "m2"]
    assert (out / "m2" / "ddf.nii.gz").is_file()
    err = capsys.readouterr().err
    assert "3/3 pairs registered" in err


def test_methods_listing(capsys, monkeypatch, shift_method):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "svf_optim" in text and "shift" in text and "builtin" in text
    assert main(["methods", "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)]
    assert names[0] == "svf_optim" and "shift" in names


@pytest.mark.parametrize("case, match", [
    ("missing", r"register\(\): 'moving' file not found"),
    ("corrupt", r"register\(\): could not read 'moving' from"),
    ("float_labels", r"register\(\): 'moving_labels' must be a label map of integer values"),
    ("2d", r"register\(\): 'moving' is 2D"),
    ("unknown_bundle", r"register\(\): 'bundle' is not a known method or bundle: 'nope'; available: svf_optim"),
    ("device", r"register\(\): 'device' must be a torch device"),
])
def test_user_errors_one_line_no_traceback(shift_method, pair_files, tmp_path, capsys, case, match):
    args = {"--fixed": pair_files["fixed"], "--moving": pair_files["m1"], "--bundle": "shift"}
    if case == "missing":
        args["--moving"] = str(tmp_path / "missing.nii.gz")
    elif case == "corrupt":
        (tmp_path / "corrupt.nii.gz").write_bytes(b"garbage")
        args["--moving"] = str(tmp_path / "corrupt.nii.gz")
    elif case == "float_labels":
        save_image(np.full((16, 14, 12), 0.5, np.float32), np.eye(4), tmp_path / "fl.nii.gz")
        args["--moving-labels"] = str(tmp_path / "fl.nii.gz")
    elif case == "2d":
        save_image(np.random.rand(16, 14).astype(np.float32), np.eye(4), tmp_path / "two.nii.gz")
        args["--moving"] = str(tmp_path / "two.nii.gz")
    elif case == "unknown_bundle":
        args["--bundle"] = "nope"
    elif case == "device":
        args["--device"] = "gpu0"
    out = tmp_path / "out"
    argv = ["register", "--output-dir", str(out)] + [x for kv in args.items() for x in kv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("monai-diffreg: error: ")
    assert pytest.importorskip("re").search(match, err[0])
    assert not out.exists()


def test_argument_errors_exit_2(pair_files, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["register", "--output-dir", str(tmp_path / "o")])
    assert info.value.code == 2
    assert "register needs --fixed and --moving (or --sample)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["register", "--sample", "--fixed", pair_files["fixed"], "--output-dir", str(tmp_path / "o")])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["register", "--fixed", pair_files["fixed"], "--moving", pair_files["m1"], pair_files["m2"],
              "--moving-labels", pair_files["l1"], "--output-dir", str(tmp_path / "o")])
    assert "one label map per moving image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["register", "--fixed", pair_files["fixed"], "--moving", pair_files["m1"], "--option", "noequals",
              "--output-dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_batch_continues_after_a_bad_pair(shift_method, pair_files, tmp_path, capsys):
    out = tmp_path / "batch"
    code = main(["register", "--fixed", pair_files["fixed"], "--moving", pair_files["m1"],
                 str(tmp_path / "missing.nii.gz"), "--bundle", "shift", "--output-dir", str(out), "--no-qc"])
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["m1"]
    assert "1/2 pairs registered" in capsys.readouterr().err


def test_misalignment_warning_printed(shift_method, tmp_path, capsys):
    ball = np.zeros((24, 24, 24), np.float32)
    ball[4:10, 9:15, 9:15] = 1.0
    save_image(ball, np.eye(4), tmp_path / "f.nii.gz")
    save_image(np.roll(ball, 12, 0), np.eye(4), tmp_path / "m.nii.gz")
    code = main(["register", "--fixed", str(tmp_path / "f.nii.gz"), "--moving", str(tmp_path / "m.nii.gz"),
                 "--bundle", "shift", "--output-dir", str(tmp_path / "o"), "--no-qc"])
    assert code == 0
    err = capsys.readouterr().err
    assert "monai-diffreg: warning: register(): the pair looks misaligned" in err and "--affine" in err


_WARNING_METHOD_RUN = """
import sys, warnings
import torch
from monai_diffreg import methods
from monai_diffreg.cli import main

class WarningShift:
    def __call__(self, fixed, moving):
        warnings.warn("the stand-in method's own warning", RuntimeWarning)
        ddf = torch.zeros(1, fixed.ndim - 2, *fixed.shape[2:])
        ddf[:, 0] = 1.0
        return {"ddf": ddf}

methods.register_method("warning-shift", WarningShift, "constant shift that warns (test)")
sys.exit(main(["register", "--fixed", sys.argv[1], "--moving", sys.argv[2], "--bundle", "warning-shift",
               "--output-dir", sys.argv[3], "--no-qc"]))
"""


def test_a_method_warning_is_shown_once_and_the_run_ends(pair_files, tmp_path):
    """A warning of a category the command line does not turn into one line (e.g. FLASH's MapFoldingWarning) is shown
    as Python shows it, once, and the run goes on (0.4.11 fixed a loop: showing it inside the recording context
    recorded it again, forever). In a process of its own: under pytest every shown warning is pytest's record."""
    out = tmp_path / "o"
    run = subprocess.run([sys.executable, "-c", _WARNING_METHOD_RUN, pair_files["fixed"], pair_files["m1"], str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (out / "ddf.nii.gz").is_file() and "det J <= 0" in run.stdout
    assert run.stderr.count("the stand-in method's own warning") == 1


def test_console_entry_point_subprocess(tmp_path):
    """The real process: one-line error on stderr, status 1, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "monai_diffreg.cli", "register", "--fixed", str(tmp_path / "nope.nii"),
                           "--moving", str(tmp_path / "nope.nii"), "--bundle", "svf_optim", "--output-dir",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "monai-diffreg: error: register(): 'fixed' file not found" in proc.stderr
    assert not (tmp_path / "o").exists()


_RUN_SHIFT = """
import sys
sys.path.insert(0, {tests!r})
from monai_diffreg import methods
from monai_diffreg.cli import run
from test_cli import ShiftMethod
methods.register_method("shift", ShiftMethod, "constant shift (test)")
run()
"""


def test_run_ends_the_process_at_once_with_every_output_complete(pair_files, tmp_path):
    """The command's entry point (cli.run) ends the process without the interpreter's teardown: the report
    line is flushed, every file is complete, and the statuses are main()'s (2 for bad arguments)."""
    import nibabel as nib
    from PIL import Image

    script = _RUN_SHIFT.format(tests=str(Path(__file__).parent))
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-c", script, "register", "--fixed", str(pair_files["fixed"]), "--moving",
                           str(pair_files["m1"]), "--bundle", "shift", "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "det J <= 0" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["files"]) == sorted(p.name for p in out.iterdir())
    assert np.isfinite(np.asarray(nib.load(out / "ddf.nii.gz").dataobj)).all()
    assert np.asarray(nib.load(out / "warped.nii.gz").dataobj).shape == (16, 14, 12)
    Image.open(out / "qc.png").load()  # the whole PNG decodes
    bad = subprocess.run([sys.executable, "-c", script, "register", "--nonsense"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_shift_is_applied(shift_method, pair_files, tmp_path):
    """End to end through files: the written warped image is the moving image pulled by the method's field."""
    import nibabel as nib

    out = tmp_path / "o"
    assert main(["register", "--fixed", pair_files["fixed"], "--moving", pair_files["m1"], "--bundle", "shift",
                 "--option", "shift=1", "--orientation", "none", "--output-dir", str(out), "--no-qc"]) == 0
    moving = torch.as_tensor(np.asarray(nib.load(pair_files["m1"]).dataobj, dtype=np.float32))[None, None]
    ddf = torch.zeros(1, 3, 16, 14, 12)
    ddf[:, 0] = 1.0
    expected = warp(moving, ddf, padding_mode="zeros")[0, 0].numpy()
    np.testing.assert_allclose(np.asarray(nib.load(out / "warped.nii.gz").dataobj), expected, atol=1e-5)


def test_monailabel_app_prints_the_app_folder(capsys):
    assert main(["monailabel-app"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "main.py").is_file()


@pytest.mark.parametrize("text,value", [("0.5", 0.5), ("true", True), ("False", False), ("None", None),
                                        ("[1, 2]", [1, 2]), ("ncc", "ncc"), ("a=b", "a=b")])
def test_option_values_parse_as_json_then_python_literals(text, value):
    from monai_diffreg.cli import _parse_options, parse_option_value

    assert _parse_options([f"key={text}"]) == {"key": value}
    assert parse_option_value(text) == value


_SLOW_WRITE = """
import sys, time
from monai_diffreg import api, methods
from monai_diffreg.cli import main
sys.path.insert(0, {tests!r})
from test_cli import ShiftMethod
methods.register_method("shift", ShiftMethod, "constant shift (test)")
real = api.RegistrationResult._write
def slow(self, folder, qc, inverse):
    files = real(self, folder, qc, inverse)
    print("staged", flush=True)
    time.sleep(60)
    return files
api.RegistrationResult._write = slow
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_writing_leaves_nothing_behind(pair_files, tmp_path):
    """A killed run (SIGTERM, as schedulers send) unwinds like Ctrl-C: no staging folder, no output folder."""
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "out"
    script = _SLOW_WRITE.format(tests=str(Path(__file__).parent))
    proc = subprocess.Popen([sys.executable, "-c", script, "register", "--fixed", str(pair_files["fixed"]), "--moving",
                             str(pair_files["m1"]), "--bundle", "shift", "--output-dir", str(out), "--no-qc"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if out.is_dir() and any(p.name.startswith(".monai_diffreg-") for p in out.iterdir()):
            time.sleep(0.5)
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not out.exists()


def test_affine_metric_choices_are_the_apis():
    from monai_diffreg import api, cli

    assert cli._AFFINE_METRICS == api.AFFINE_METRICS


def test_a_diverging_registration_is_one_line_and_writes_nothing(pair_files, tmp_path, capsys):
    """A setting that makes LDDMM's shooting blow up: the loop's NonFiniteError is a ValueError, so one line."""
    out = tmp_path / "out"
    argv = ["register", "--fixed", pair_files["fixed"], "--moving", pair_files["m2"], "--bundle", "lddmm",
            "--option", "learning_rate=100000", "--option", "regularization_weight=0", "--option", "levels=[1]",
            "--option", "iterations=[20]", "--option", "image_loss=mse", "--output-dir", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lddmm_register(): the optimisation diverged" in err[0], err
    assert not out.exists()
