"""Evaluate a registration method over a list of pairs and write one CSV row per pair.

The rows hold the metrics suite of :mod:`monai_diffreg.metrics` as :func:`monai_diffreg.register`
computes them (Dice before/after and per label, HD95 in mm, % det J <= 0, both SDlogJ
variants, field error against a known field) plus timings. A pair that fails is recorded with
its error message and the others still run; the CSV is written atomically at the end.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_path

__all__ = ["PAIR_COLUMNS", "read_pairs", "evaluate_pairs"]

#: columns of a pairs file; ``fixed`` and ``moving`` are required
PAIR_COLUMNS = ("fixed", "moving", "fixed_labels", "moving_labels")


def read_pairs(path: str | os.PathLike) -> list[dict[str, str | None]]:
    """Read pairs from a CSV (header with :data:`PAIR_COLUMNS`) or a JSON list of objects.

    Relative paths are taken relative to the pairs file's folder.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, no pairs, or a row without ``fixed``/``moving``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_pairs(): 'path' not found: {str(path)!r}")
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
        else:
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
    except (OSError, ValueError, csv.Error) as err:
        raise ValueError(f"read_pairs(): cannot read {str(path)!r}: {err}") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError(f"read_pairs(): {str(path)!r} must hold a non-empty list of pairs with columns {PAIR_COLUMNS}")
    pairs = []
    for i, row in enumerate(rows):
        if not row.get("fixed") or not row.get("moving"):
            raise ValueError(f"read_pairs(): row {i} of {str(path)!r} needs 'fixed' and 'moving', got {dict(row)}")
        pairs.append({key: (str(path.parent / row[key]) if row.get(key) else None) for key in PAIR_COLUMNS})
    return pairs


def _spacing(affine: np.ndarray) -> list[float]:
    return [float(v) for v in np.linalg.norm(np.asarray(affine)[:-1, :-1], axis=0)]


def _row(result: Any, spacing: list[float]) -> dict[str, Any]:
    from .metrics import mean_hausdorff95

    m = result.metrics
    row: dict[str, Any] = {key: m[key] for key in ("folding_percent", "sd_log_jacobian", "sd_log_jacobian_learn2reg")}
    for key in ("epe_mm", "epe_before_mm", "epe_foreground_mm", "epe_foreground_before_mm"):
        if key in m:
            row[key] = m[key]
    if "dice_after" in m:
        row["dice_before"] = m["dice_before"]["mean"]
        row["dice_after"] = m["dice_after"]["mean"]
        row["hd95_after_mm"] = float(mean_hausdorff95(result.warped_labels, result.fixed_labels, spacing=spacing)[0])
        row.update({f"dice_label_{k}": v for k, v in m["dice_after"]["per_label"].items()})
    row["seconds_registration"] = m["seconds"]["registration"]
    row["seconds_total"] = m["seconds"]["total"]
    return row


def evaluate_pairs(pairs: Sequence[Mapping[str, Any]] | str | os.PathLike | None, bundle: Any,
                   output_csv: str | os.PathLike, *, device: str | None = None, affine: bool = False,
                   progress: bool = True, **method_options: Any) -> list[dict[str, Any]]:
    """Register every pair with ``bundle`` and write the metrics to ``output_csv``.

    Args:
        pairs: a pairs file (see :func:`read_pairs`), a list of dicts with :data:`PAIR_COLUMNS`,
            or None for the built-in sample (which also reports the error against its true field).
        bundle: method name or bundle path (:func:`monai_diffreg.methods.load_method`, loaded
            once with ``method_options``), or a method object.
        output_csv: CSV to write (atomically); its folder is created.
        device: device to run on.
        affine: run the affine stage first.
        progress: show a progress bar.
        method_options: options of a method given by name (:func:`~monai_diffreg.methods.load_method`).

    Returns:
        the rows written, one per pair (a failed pair has an ``error`` entry).
    """
    from tqdm.auto import tqdm

    from .api import register
    from .methods import load_method
    from .sample import load_sample

    true_ddf = None
    if pairs is None:
        sample = load_sample()
        pairs = [{"fixed": str(sample["paths"]["fixed"]), "moving": str(sample["paths"]["moving"]),
                  "fixed_labels": str(sample["paths"]["fixed_labels"]),
                  "moving_labels": str(sample["paths"]["moving_labels"])}]
        true_ddf = sample["true_ddf"]
    elif isinstance(pairs, (str, os.PathLike)):
        pairs = read_pairs(pairs)
    if isinstance(bundle, (str, os.PathLike)):  # loaded once for all pairs; a bad option fails before any pair
        name, method = str(bundle), load_method(bundle, device=device, **method_options)
    else:
        name, method = str(getattr(bundle, "name", type(bundle).__name__)), bundle
    rows = []
    for index, pair in enumerate(tqdm(pairs, desc="evaluating", unit="pair", disable=not progress)):
        row: dict[str, Any] = {"pair": index, "method": name, "fixed": pair["fixed"], "moving": pair["moving"]}
        try:
            result = register(pair["fixed"], pair["moving"], method, fixed_labels=pair.get("fixed_labels"),
                              moving_labels=pair.get("moving_labels"), affine=affine, true_ddf=true_ddf,
                              device=device)
            row.update(_row(result, _spacing(result.affine)))
        except (ValueError, FileNotFoundError, OSError, RuntimeError) as err:
            row["error"] = str(err).splitlines()[0]
        rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    output_csv = Path(output_csv)
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_csv) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows)
    return rows
