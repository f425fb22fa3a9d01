"""Sweep one option of a registration method over values for one pair: accuracy and smoothness against it.

``sweep_option("hypermorph", "reg_weight", [0, 0.1, ..., 1], fixed, moving, ...)`` registers the pair once
per value (the method loaded with ``{option: value}`` and the other ``method_options``) and writes
``sweep.csv`` (one :func:`~monai_diffreg.evaluation.metrics_row` per value) and ``sweep.png``: mean Dice
(with label maps) and SDlogJ against the value, with the percentage of folding voxels. The CLI is
``monai-diffreg sweep``. Typical sweeps: a HyperMorph model's ``reg_weight`` (one model, no retraining),
FLASH's ``alpha``, ``svf_optim``'s ``regularization_weight``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .io import atomic_path

__all__ = ["sweep_option", "plot_sweep"]


def sweep_option(method: str, option: str, values: Sequence[Any], fixed: Any, moving: Any, output_dir: str | os.PathLike,
                 *, fixed_labels: Any = None, moving_labels: Any = None, device: str | None = None,
                 affine: bool = False, plot: bool = True, **method_options: Any) -> list[dict[str, Any]]:
    """Register one pair once per value of ``option`` and write ``sweep.csv`` and ``sweep.png`` into ``output_dir``.

    Args:
        method: method name or bundle folder (:func:`~monai_diffreg.methods.load_method`).
        option: the option (constructor argument or bundle config id) to sweep.
        values: its values, in plotting order (numbers for a plot with a numeric axis).
        fixed, moving, fixed_labels, moving_labels: as :func:`monai_diffreg.register`.
        output_dir: folder to write into (created; checked before any registration).
        device, affine: as :func:`monai_diffreg.register`.
        plot: also write ``sweep.png``.
        method_options: the method's other options.

    Returns:
        one row per value: ``{option: value, **metrics_row}``.
    """
    from .api import check_output_dir, register
    from .evaluation import metrics_row
    from .methods import load_method

    caller = "sweep_option"
    if not isinstance(option, str) or not option:
        raise ValueError(f"{caller}(): 'option' must be an option name, got {option!r}")
    if option in method_options:
        raise ValueError(f"{caller}(): '{option}' is the swept option; do not also give it as a method option")
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{caller}(): 'values' must be a non-empty sequence, got {values!r}")
    out = check_output_dir(output_dir, caller)
    methods = [load_method(method, device=device, **{**method_options, option: value}) for value in values]  # bad values fail first
    rows = []
    for value, loaded in zip(values, methods):
        result = register(fixed, moving, loaded, fixed_labels=fixed_labels, moving_labels=moving_labels,
                          affine=affine, device=device)
        rows.append({option: value, **metrics_row(result)})
    out.mkdir(parents=True, exist_ok=True)  # only now: a failed sweep leaves nothing behind
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(out / "sweep.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    if plot:
        plot_sweep(rows, option, out / "sweep.png", title=f"{method}: {option}")
    return rows


def plot_sweep(rows: Sequence[dict[str, Any]], option: str, path: str | os.PathLike, title: str = "") -> Path:
    """Plot mean Dice (when present) and SDlogJ against ``option``, folding % in the legend; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = [row[option] for row in rows]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = values if numeric else list(range(len(values)))
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)  # Agg rendering without pyplot: the caller's backend is left alone
    left = fig.subplots()
    right = left.twinx()
    if all("dice_after" in row for row in rows):
        left.plot(x, [row["dice_after"] for row in rows], "o-", color="tab:blue", label="mean Dice")
        left.set_ylabel("mean Dice after", color="tab:blue")
    right.plot(x, [row["sd_log_jacobian"] for row in rows], "s--", color="tab:red", label="SDlogJ")
    right.set_ylabel("SDlogJ", color="tab:red")
    for xi, row in zip(x, rows):
        if row["folding_percent"] > 0:
            right.annotate(f"{row['folding_percent']:.2g}% folds", (xi, row["sd_log_jacobian"]), fontsize=7,
                           textcoords="offset points", xytext=(3, 4), color="tab:red")
    left.set_xlabel(option)
    if not numeric:
        left.set_xticks(x, [str(v) for v in values])
    left.set_title(title or option)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path
