"""Sweep one option of a registration method over values for one pair: accuracy and smoothness against it.

``sweep_option("hypermorph", "reg_weight", [0, 0.1, ..., 1], fixed, moving, ...)`` registers the pair once
per value (the method loaded with ``{option: value}`` and the other ``method_options``) and writes
``sweep.csv`` (one :func:`~monai_diffreg.evaluation.metrics_row` per value) and ``sweep.png``: mean Dice
(with label maps) and SDlogJ against the value, with the percentage of folding voxels. The CLI is
``monai-diffreg sweep``. Typical sweeps: a HyperMorph model's ``reg_weight`` (one model, no retraining),
FLASH's ``alpha``, ``svf_optim``'s ``regularization_weight``.

With ``select="dice"`` (both label maps needed) the sweep also chooses one value for the pair by the rule
:data:`SELECTION_RULES` ``["dice"]`` (:func:`select_value`) and writes that value's registration outputs
(``selected/``) and ``selected.json``: a per-pair choice of, e.g., HyperMorph's lambda.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .io import save_png

__all__ = ["sweep_option", "plot_sweep", "select_value", "select_index", "SELECTION_RULES",
           "FOLDING_LIMIT_PERCENT", "DICE_TIE"]

#: ``select="dice"``: a value counts as fold-free when its ``folding_percent`` (% of voxels with det J <= 0) is below this.
FOLDING_LIMIT_PERCENT = 0.01
#: ``select="dice"``: mean Dice values at most this far below the highest one count as tied with it.
DICE_TIE = 0.002

#: The selection rules of :func:`sweep_option` (``select=``) and :func:`select_value`: name -> the rule, in words.
SELECTION_RULES: dict[str, str] = {
    "dice": (f"among the values whose folding (folding_percent, the % of voxels with det J <= 0) is below "
             f"{FOLDING_LIMIT_PERCENT} %, the one with the highest mean Dice after registration (dice_after); values "
             f"within {DICE_TIE} Dice of that highest one count as tied with it, and of the tied values the one with "
             f"the smoothest field (lowest sd_log_jacobian) is chosen (then the higher Dice, then the earlier value). "
             f"If no value is below {FOLDING_LIMIT_PERCENT} % folding, the one with the least folding is chosen "
             f"(then the higher Dice, then the lower sd_log_jacobian, then the earlier value)."),
}

_SELECT_KEYS = ("dice_after", "folding_percent", "sd_log_jacobian")


def _check_rule(rule: object, caller: str) -> str:
    if not isinstance(rule, str) or rule not in SELECTION_RULES:
        raise ValueError(f"{caller}(): 'select' must be one of {sorted(SELECTION_RULES)} or None, got {rule!r}")
    return rule


def _number(row: Mapping[str, Any], key: str, index: int, caller: str, bad: float) -> float:
    """``row[key]`` as a float; NaN (and None) becomes ``bad``, the worst value for the rule."""
    if key not in row:
        raise ValueError(f"{caller}(): row {index} has no '{key}' (select='dice' needs {list(_SELECT_KEYS)}: "
                         f"give both label maps)")
    value = row[key]
    if value is None or value == "":
        return bad
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{caller}(): row {index}: '{key}' must be a number, got {row[key]!r}") from None
    return bad if math.isnan(value) else value


def _score(row: Mapping[str, Any], index: int, caller: str) -> tuple[float, float, float]:
    """(dice, folding, sdlogj) of a row; NaN Dice counts as -inf, NaN folding or SDlogJ as +inf."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{caller}(): row {index} must be a mapping, got {type(row).__name__}")
    return (_number(row, "dice_after", index, caller, -math.inf),
            _number(row, "folding_percent", index, caller, math.inf),
            _number(row, "sd_log_jacobian", index, caller, math.inf))


def _scores(rows: Sequence[Mapping[str, Any]], caller: str) -> list[tuple[float, float, float]]:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or len(rows) == 0:
        raise ValueError(f"{caller}(): 'rows' must be a non-empty sequence of metric rows, got {rows!r}")
    return [_score(row, i, caller) for i, row in enumerate(rows)]


def _order(scores: Sequence[tuple[float, float, float]], i: int) -> tuple:
    """Among tied fold-free values: smoother first, then higher Dice, then earlier."""
    dice, _, sd = scores[i]
    return sd, -dice, i


def _fallback_order(scores: Sequence[tuple[float, float, float]], i: int) -> tuple:
    """No fold-free value: least folding first, then higher Dice, then lower SDlogJ, then earlier."""
    dice, folding, sd = scores[i]
    return folding, -dice, sd, i


def _index(scores: Sequence[tuple[float, float, float]]) -> int:
    free = [i for i, (_, folding, _) in enumerate(scores) if folding < FOLDING_LIMIT_PERCENT]
    if not free:
        return min(range(len(scores)), key=lambda i: _fallback_order(scores, i))
    best = max(scores[i][0] for i in free)
    tied = [i for i in free if scores[i][0] >= best - DICE_TIE - 1e-12]  # 1e-12: "within 0.002" despite rounding
    return min(tied, key=lambda i: _order(scores, i))


def select_index(rows: Sequence[Mapping[str, Any]], rule: str = "dice") -> int:
    """The index of the row :func:`select_value` chooses (pure; the rows are not modified).

    Rule ``"dice"``: :data:`SELECTION_RULES` ``["dice"]``. A row's ``dice_after``, ``folding_percent`` and
    ``sd_log_jacobian`` are read as numbers (``sweep.csv``'s text too); a NaN or empty one counts as the worst.

    Raises:
        ValueError: an unknown rule, no rows, or a row without one of those three metrics (no label maps).
    """
    caller = "select_index"
    _check_rule(rule, caller)
    return _index(_scores(rows, caller))


def select_value(rows: Sequence[Mapping[str, Any]], option: str, rule: str = "dice") -> Any:
    """The value of ``option`` that the rule chooses among a sweep's rows (pure).

    Rule ``"dice"``: :data:`SELECTION_RULES` ``["dice"]`` (the highest mean Dice among the fold-free values,
    ties within :data:`DICE_TIE` going to the smoothest field).

    Args:
        rows: :func:`sweep_option`'s rows (or ``sweep.csv`` read with :class:`csv.DictReader`).
        option: the swept option (each row's key holding its value).
        rule: the rule's name.

    Raises:
        ValueError: an unknown rule, no rows, a row without Dice (no label maps) or without ``option``.
    """
    caller = "select_value"
    _check_rule(rule, caller)
    index = _index(_scores(rows, caller))
    if option not in rows[index]:
        raise ValueError(f"{caller}(): the rows have no column {option!r}")
    return rows[index][option]


def sweep_option(method: str, option: str, values: Sequence[Any], fixed: Any, moving: Any, output_dir: str | os.PathLike,
                 *, fixed_labels: Any = None, moving_labels: Any = None, device: str | None = None,
                 affine: bool = False, plot: bool = True, select: str | None = None,
                 **method_options: Any) -> list[dict[str, Any]]:
    """Register one pair once per value of ``option`` and write ``sweep.csv`` and ``sweep.png`` into ``output_dir``.

    With ``select="dice"`` the sweep also chooses one value for this pair (:func:`select_value`, rule
    :data:`SELECTION_RULES` ``["dice"]``) and writes, into ``output_dir``:

    * ``selected/``: that value's registration outputs (:meth:`~monai_diffreg.api.RegistrationResult.save`:
      ``warped.nii.gz``, ``ddf.nii.gz``, ``warped_labels.nii.gz``, ``summary.json`` with
      ``method_options[option]`` the value and ``"sweep"`` the option, value and rule, ``qc.png``);
    * ``selected.json``: ``{"option": ..., "value": ..., "index": ..., "rule": "<the rule in words>", "row": {...}}``;

    and the rows (and ``sweep.csv``) get a ``"selected"`` column, True for the chosen value only, which
    ``sweep.png`` marks (dotted line, star). The chosen value is registered once more for those outputs
    (one more pass; no result is held in memory during the sweep).

    Everything is checked before any registration (bad values, ``select`` without both label maps), and
    the files are written only after the last registration, through a hidden staging folder: a failed
    sweep leaves nothing behind (a new sweep into the same folder without ``select`` removes an earlier
    one's ``selected.json`` and ``selected/``).

    Args:
        method: method name or bundle folder (:func:`~monai_diffreg.methods.load_method`).
        option: the option (constructor argument or bundle config id) to sweep.
        values: its values, in plotting order (numbers for a plot with a numeric axis).
        fixed, moving, fixed_labels, moving_labels: as :func:`monai_diffreg.register`.
        output_dir: folder to write into (created; checked before any registration).
        device, affine: as :func:`monai_diffreg.register`.
        plot: also write ``sweep.png``.
        select: None, or the name of a rule in :data:`SELECTION_RULES` (``"dice"``).
        method_options: the method's other options.

    Returns:
        one row per value: ``{option: value, **metrics_row}`` (plus ``"selected": bool`` with ``select``).
    """
    from .api import check_output_dir, register
    from .evaluation import metrics_row
    from .io import save_json
    from .methods import find_method, load_method

    caller = "sweep_option"
    if not isinstance(option, str) or not option:
        raise ValueError(f"{caller}(): 'option' must be an option name, got {option!r}")
    if option in method_options:
        raise ValueError(f"{caller}(): '{option}' is the swept option; do not also give it as a method option")
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{caller}(): 'values' must be a non-empty sequence, got {values!r}")
    if select is not None:
        _check_rule(select, caller)
        if fixed_labels is None or moving_labels is None:
            missing = [n for n, v in (("fixed_labels", fixed_labels), ("moving_labels", moving_labels)) if v is None]
            raise ValueError(f"{caller}(): select={select!r} chooses by Dice and needs both label maps; "
                             f"{' and '.join(missing)} not given")
        if option == "selected":
            raise ValueError(f"{caller}(): with 'select', the swept option cannot be called 'selected' (a column)")
    out = check_output_dir(output_dir, caller)
    if select is not None and (out / "selected").exists() and not (out / "selected").is_dir():
        raise ValueError(f"{caller}(): {out / 'selected'} is an existing file; select={select!r} writes a folder there")
    methods = [load_method(method, device=device, **{**method_options, option: value}) for value in values]  # bad values fail first
    rows = []
    for value, loaded in zip(values, methods):
        result = register(fixed, moving, loaded, fixed_labels=fixed_labels, moving_labels=moving_labels,
                          affine=affine, device=device)
        rows.append({option: value, **metrics_row(result)})
        del result
    chosen = None
    if select is not None:
        chosen = _index(_scores(rows, caller))
        for i, row in enumerate(rows):
            row["selected"] = i == chosen
    # only now: a failed sweep leaves nothing behind
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".monai_diffreg-sweep-", dir=out))
    try:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        with open(staging / "sweep.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        names = ["sweep.csv"]
        if plot:
            plot_sweep(rows, option, staging / "sweep.png", title=f"{method}: {option}")
            names.append("sweep.png")
        if chosen is not None:
            value = values[chosen]
            result = register(fixed, moving, methods[chosen], fixed_labels=fixed_labels, moving_labels=moving_labels,
                              affine=affine, device=device)
            info = find_method(method, caller, "method")
            # what register(fixed, moving, method, **{option: value}, ...) writes, plus the sweep's choice
            result.info.update({"method": info.name, "method_location": info.location,
                                "method_options": {k: repr(v) for k, v in {**method_options, option: value}.items()},
                                "sweep": {"option": option, "value": value, "index": chosen, "select": select,
                                          "rule": SELECTION_RULES[select]}})
            result.save(staging / "selected")
            del result
            save_json({"option": option, "value": value, "index": chosen, "select": select,
                       "rule": SELECTION_RULES[select], "row": rows[chosen]}, staging / "selected.json")
        # into place: the folder first, the CSV (what a reader looks for) last
        if chosen is not None:
            if (out / "selected").exists():
                os.replace(out / "selected", staging / "previous-selected")
            os.replace(staging / "selected", out / "selected")
            names.insert(0, "selected.json")
        elif (out / "selected.json").is_file():  # an earlier sweep's choice: not this sweep's
            (out / "selected.json").unlink()
            if (out / "selected").is_dir():
                shutil.rmtree(out / "selected", ignore_errors=True)
        for name in names:
            os.replace(staging / name, out / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return rows


def plot_sweep(rows: Sequence[dict[str, Any]], option: str, path: str | os.PathLike, title: str = "") -> Path:
    """Plot mean Dice (when present) and SDlogJ against ``option``, folding % in the legend; written atomically.

    A row with ``"selected"`` true (``sweep_option(select=...)``) is marked: a dotted vertical line and a star.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = [row[option] for row in rows]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = values if numeric else list(range(len(values)))
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)  # Agg rendering without pyplot: the caller's backend is left alone
    left = fig.subplots()
    right = left.twinx()
    has_dice = all("dice_after" in row for row in rows)
    if has_dice:
        left.plot(x, [row["dice_after"] for row in rows], "o-", color="tab:blue", label="mean Dice")
        left.set_ylabel("mean Dice after", color="tab:blue")
    right.plot(x, [row["sd_log_jacobian"] for row in rows], "s--", color="tab:red", label="SDlogJ")
    right.set_ylabel("SDlogJ", color="tab:red")
    for xi, row in zip(x, rows):
        if row["folding_percent"] > 0:
            right.annotate(f"{row['folding_percent']:.2g}% folds", (xi, row["sd_log_jacobian"]), fontsize=7,
                           textcoords="offset points", xytext=(3, 4), color="tab:red")
    chosen = [i for i, row in enumerate(rows) if row.get("selected") is True]
    if len(chosen) == 1:
        i = chosen[0]
        left.axvline(x[i], color="tab:green", linestyle=":", linewidth=1.5)
        axis, key = (left, "dice_after") if has_dice else (right, "sd_log_jacobian")
        axis.plot([x[i]], [rows[i][key]], "*", color="tab:green", markersize=14, zorder=5,
                  label=f"selected: {option}={values[i]!r}")
        axis.legend(loc="best", fontsize=8)
    left.set_xlabel(option)
    if not numeric:
        left.set_xticks(x, [str(v) for v in values])
    left.set_title(title or option)
    fig.tight_layout()
    return save_png(fig, path, dpi=100)
