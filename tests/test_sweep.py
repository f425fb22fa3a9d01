"""monai-diffreg sweep / sweep_option: one registration per value, CSV and plot, bad input before any work;
select="dice" / --select dice: the per-pair choice (select_value), its outputs, nothing left on failure."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_diffreg import methods
from monai_diffreg.api import RegistrationResult
from monai_diffreg.cli import main
from monai_diffreg.sweep import SELECTION_RULES, plot_sweep, select_index, select_value, sweep_option


def write_pair(folder):
    """A smooth 3D image with a two-label map, and a shifted copy of both (NIfTI)."""
    grids = np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij")
    image = sum(np.sin(g / 3.0 + k) for k, g in enumerate(grids)) + 3.0
    labels = (grids[0] > 9).astype(np.int16) + (grids[1] > 12).astype(np.int16)
    paths = {}
    for name, array in (("fixed", image), ("moving", np.roll(image, 2, axis=0)),
                        ("fixed_labels", labels), ("moving_labels", np.roll(labels, 2, axis=0))):
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array.astype(np.int16 if "labels" in name else np.float32), np.eye(4)), paths[name])
    return paths


def test_sweep_writes_one_row_per_value_and_a_plot(tmp_path):
    paths = write_pair(tmp_path)
    rows = sweep_option("svf_optim", "regularization_weight", [0.1, 10.0], paths["fixed"], paths["moving"],
                        tmp_path / "out", fixed_labels=paths["fixed_labels"], moving_labels=paths["moving_labels"],
                        levels=[2, 1], iterations=[15, 5])
    assert [row["regularization_weight"] for row in rows] == [0.1, 10.0]
    assert all(row["dice_after"] > row["dice_before"] for row in rows)
    assert rows[1]["sd_log_jacobian"] < rows[0]["sd_log_jacobian"]  # stiffer: smoother
    with open(tmp_path / "out" / "sweep.csv", newline="") as handle:
        assert [float(r["regularization_weight"]) for r in csv.DictReader(handle)] == [0.1, 10.0]
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 1000


def test_cli_sweep_and_its_errors(tmp_path, capsys):
    paths = write_pair(tmp_path)
    status = main(["sweep", "--bundle", "flash", "--name", "alpha", "--values", "1", "30", "--fixed", str(paths["fixed"]),
                   "--moving", str(paths["moving"]), "--output-dir", str(tmp_path / "s"), "--option", "truncation=5",
                   "--option", "iterations=[5, 5]"])
    assert status == 0
    assert "alpha=1:" in capsys.readouterr().out and (tmp_path / "s" / "sweep.png").exists()
    # a bad value fails before any registration, with one line
    assert main(["sweep", "--bundle", "flash", "--name", "alpha", "--values", "1", "-3", "--fixed", str(paths["fixed"]),
                 "--moving", str(paths["moving"]), "--output-dir", str(tmp_path / "t")]) == 1
    assert not (tmp_path / "t").exists()
    with pytest.raises(ValueError, match="swept option"):
        sweep_option("flash", "alpha", [1.0], paths["fixed"], paths["moving"], tmp_path / "u", alpha=2.0)
    with pytest.raises(ValueError, match="non-empty sequence"):
        sweep_option("flash", "alpha", [], paths["fixed"], paths["moving"], tmp_path / "u")


# ------------------------------------------------------------------------------------------- select="dice"

def row(value, dice, folding=0.0, sd=0.05, **extra):
    return {"lam": value, "dice_after": dice, "folding_percent": folding, "sd_log_jacobian": sd, **extra}


def test_select_value_highest_dice_wins():
    rows = [row(0.0, 0.70), row(0.5, 0.78), row(1.0, 0.74)]
    assert select_value(rows, "lam") == 0.5
    assert select_index(rows) == 1


def test_select_value_skips_folding_even_with_higher_dice():
    rows = [row(0.0, 0.90, folding=0.02), row(0.5, 0.78, folding=0.009), row(1.0, 0.74)]
    assert select_value(rows, "lam") == 0.5  # 0.02 % folding: not fold-free; 0.009 %: below 0.01 %


def test_select_value_tie_within_0002_goes_to_the_smoother_field():
    assert select_value([row(0.0, 0.800, sd=0.09), row(0.5, 0.7985, sd=0.05)], "lam") == 0.5  # 0.0015 apart
    assert select_value([row(0.0, 0.800, sd=0.09), row(0.5, 0.797, sd=0.05)], "lam") == 0.0  # 0.003 apart
    assert select_value([row(0.0, 0.800, sd=0.09), row(0.5, 0.798, sd=0.05)], "lam") == 0.5  # exactly 0.002: tied
    # the tie is with the highest Dice, not pairwise: 0.801 is tied with 0.803, 0.800 is not
    rows = [row(0.0, 0.800, sd=0.05), row(0.5, 0.801, sd=0.06), row(1.0, 0.803, sd=0.07)]
    assert select_value(rows, "lam") == 0.5
    # equal SDlogJ: the higher Dice, then the earlier value
    assert select_value([row(0.0, 0.800, sd=0.05), row(0.5, 0.801, sd=0.05)], "lam") == 0.5
    assert select_value([row(0.0, 0.800, sd=0.05), row(0.5, 0.800, sd=0.05)], "lam") == 0.0


def test_select_value_all_folding_takes_the_least_folding():
    rows = [row(0.0, 0.90, folding=1.5), row(0.5, 0.80, folding=0.2), row(1.0, 0.85, folding=0.4)]
    assert select_value(rows, "lam") == 0.5


def test_select_value_reads_csv_text_and_treats_nan_as_worst():
    rows = [{k: str(v) for k, v in r.items()} for r in (row(0.0, 0.7), row(0.5, 0.8), row(1.0, float("nan")))]
    assert select_value(rows, "lam") == "0.5"
    assert select_value([row(0.0, 0.7, sd=float("nan")), row(0.5, 0.7, sd=0.1)], "lam") == 0.5


def test_select_value_errors():
    with pytest.raises(ValueError, match=r"row 1 has no 'dice_after'.*give both label maps"):
        select_value([row(0.0, 0.7), {"lam": 1.0, "folding_percent": 0.0, "sd_log_jacobian": 0.1}], "lam")
    with pytest.raises(ValueError, match=r"non-empty sequence"):
        select_value([], "lam")
    with pytest.raises(ValueError, match=r"'select' must be one of \['dice'\]"):
        select_value([row(0.0, 0.7)], "lam", rule="hd95")
    with pytest.raises(ValueError, match=r"no column 'alpha'"):
        select_value([row(0.0, 0.7)], "alpha")
    with pytest.raises(ValueError, match=r"'dice_after' must be a number"):
        select_value([row(0.0, "high")], "lam")


class ShiftSweep:
    """Toy method: a constant displacement of ``shift`` voxels along axis 0 (no folding, SDlogJ 0)."""

    calls = 0

    def __init__(self, shift=0.0):
        self.shift = float(shift)

    def __call__(self, fixed, moving):
        type(self).calls += 1
        ddf = torch.zeros(1, fixed.ndim - 2, *fixed.shape[2:], device=fixed.device)
        ddf[:, 0] = self.shift
        return {"ddf": ddf}


@pytest.fixture
def shift_sweep():
    methods.register_method("shift_sweep", ShiftSweep, "constant shift (test)")
    ShiftSweep.calls = 0
    yield
    methods.unregister_method("shift_sweep")


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.filterwarnings("ignore::monai_diffreg.api.DissimilarityWarning")  # shift -2 undoes nothing: on purpose
def test_sweep_select_dice_writes_the_selected_registration(tmp_path, shift_sweep):
    paths = write_pair(tmp_path)
    out = tmp_path / "out"
    labels = {"fixed_labels": paths["fixed_labels"], "moving_labels": paths["moving_labels"]}
    rows = sweep_option("shift_sweep", "shift", [0, 1, 2, 3, -2], paths["fixed"], paths["moving"], out,
                        select="dice", **labels)
    assert ShiftSweep.calls == 6  # one registration per value, and the selected one's again for its outputs
    assert [r["selected"] for r in rows] == [False, False, True, False, False]
    assert rows[2]["dice_after"] == max(r["dice_after"] for r in rows)
    assert select_value(rows, "shift") == 2
    table = read_csv(out / "sweep.csv")
    assert [r["selected"] for r in table].count("True") == 1 and table[2]["selected"] == "True"
    assert select_value(table, "shift") == "2"
    selected = json.loads((out / "selected.json").read_text())
    assert selected["option"] == "shift" and selected["value"] == 2 and selected["index"] == 2
    assert selected["rule"] == SELECTION_RULES["dice"] and "0.002" in selected["rule"] and "0.01 %" in selected["rule"]
    assert selected["row"]["dice_after"] == pytest.approx(rows[2]["dice_after"])
    files = {p.name for p in (out / "selected").iterdir()}
    assert {"warped.nii.gz", "ddf.nii.gz", "warped_labels.nii.gz", "summary.json", "qc.png"} <= files
    summary = json.loads((out / "selected" / "summary.json").read_text())
    assert summary["method"] == "shift_sweep" and summary["method_options"] == {"shift": "2"}
    assert summary["sweep"]["option"] == "shift" and summary["sweep"]["value"] == 2
    assert summary["metrics"]["dice_after"]["mean"] == pytest.approx(rows[2]["dice_after"])
    ddf = nib.load(out / "selected" / "ddf.nii.gz").get_fdata()
    assert np.abs(ddf).max() == pytest.approx(2.0)  # the selected shift's field (1 mm voxels)
    assert (out / "sweep.png").stat().st_size > 1000
    assert not [p for p in out.rglob(".*")]  # no staging folder left

    # again into the same folder: selected/ replaced; without select: the earlier choice removed
    sweep_option("shift_sweep", "shift", [1, 3], paths["fixed"], paths["moving"], out, select="dice", **labels)
    assert json.loads((out / "selected" / "summary.json").read_text())["method_options"] == {"shift": "1"}
    sweep_option("shift_sweep", "shift", [1, 3], paths["fixed"], paths["moving"], out, **labels)
    assert sorted(p.name for p in out.iterdir()) == ["sweep.csv", "sweep.png"]
    assert "selected" not in read_csv(out / "sweep.csv")[0]


def test_sweep_select_fails_before_any_work(tmp_path, shift_sweep):
    paths = write_pair(tmp_path)
    for labels in ({}, {"fixed_labels": paths["fixed_labels"]}, {"moving_labels": paths["moving_labels"]}):
        with pytest.raises(ValueError, match=r"select='dice' chooses by Dice and needs both label maps"):
            sweep_option("shift_sweep", "shift", [0, 2], paths["fixed"], paths["moving"], tmp_path / "out",
                         select="dice", **labels)
    with pytest.raises(ValueError, match=r"'select' must be one of \['dice'\] or None, got 'hd95'"):
        sweep_option("shift_sweep", "shift", [0, 2], paths["fixed"], paths["moving"], tmp_path / "out", select="hd95",
                     fixed_labels=paths["fixed_labels"], moving_labels=paths["moving_labels"])
    assert ShiftSweep.calls == 0 and not (tmp_path / "out").exists()


def test_sweep_select_failure_leaves_nothing(tmp_path, shift_sweep, monkeypatch):
    paths = write_pair(tmp_path)

    def broken(self, output_dir, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(RegistrationResult, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        sweep_option("shift_sweep", "shift", [0, 2], paths["fixed"], paths["moving"], tmp_path / "out", select="dice",
                     fixed_labels=paths["fixed_labels"], moving_labels=paths["moving_labels"])
    assert not (tmp_path / "out").exists()


def test_plot_marks_the_selected_value(tmp_path):
    rows = [row(0.0, 0.70, sd=0.09), row(0.5, 0.78, sd=0.06), row(1.0, 0.74, sd=0.04)]
    plain = plot_sweep(rows, "lam", tmp_path / "plain.png").read_bytes()
    marked = [dict(r, selected=i == 1) for i, r in enumerate(rows)]
    assert plot_sweep(marked, "lam", tmp_path / "marked.png").read_bytes() != plain
    assert plot_sweep([dict(r, selected=False) for r in rows], "lam", tmp_path / "none.png").read_bytes() == plain


def test_cli_sweep_select_dice(tmp_path, shift_sweep, capsys):
    from monai_diffreg.cli import _SWEEP_SELECT

    assert _SWEEP_SELECT == tuple(SELECTION_RULES)
    paths = write_pair(tmp_path)
    common = ["sweep", "--bundle", "shift_sweep", "--name", "shift", "--values", "0", "2", "3",
              "--fixed", str(paths["fixed"]), "--moving", str(paths["moving"])]
    labels = ["--fixed-labels", str(paths["fixed_labels"]), "--moving-labels", str(paths["moving_labels"])]
    assert main([*common, *labels, "--output-dir", str(tmp_path / "s"), "--select", "dice"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("selected")] == [
        next(line for line in lines if line.startswith("selected (dice): shift=2: Dice "))]
    assert json.loads((tmp_path / "s" / "selected.json").read_text())["value"] == 2
    assert (tmp_path / "s" / "selected" / "warped.nii.gz").exists()
    # without label maps: one error line, status 1, nothing written
    assert main([*common, "--output-dir", str(tmp_path / "t"), "--select", "dice"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs both label maps" in err[0]
    assert not (tmp_path / "t").exists() and ShiftSweep.calls == 4  # 3 values + the selected one again; none for the failed call
    with pytest.raises(SystemExit) as exc:
        main([*common, *labels, "--output-dir", str(tmp_path / "u"), "--select", "hd95"])
    assert exc.value.code == 2
