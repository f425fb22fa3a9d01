"""Evaluate a registration method over a list of pairs and write one CSV row per pair.

The rows hold the metrics suite of :mod:`monai_diffreg.metrics` as :func:`monai_diffreg.register`
computes them (Dice before/after and per label, HD95 in mm, % det J <= 0, both SDlogJ
variants, field error against a known field) plus timings. A pair that fails is recorded with
its error message and the others still run.

Population scale:

* **Streaming**: a CSV pairs file is read row by row, and each finished pair is appended at once
  to a progress file beside the output (``<output>.progress-<rank>.jsonl``), so thousands of
  pairs never sit in memory and a killed run loses at most the pair in progress.
* **Resuming**: a re-run with the same output skips the pairs already registered successfully
  (same index, same fixed and moving files) in the progress files or in an earlier CSV; failed
  pairs are tried again.
* **Several processes / GPUs / nodes**: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes
  the pairs ``index % world_size == rank`` (on ``cuda:<LOCAL_RANK>`` when CUDA is there), and
  rank 0 gathers every rank's rows into the one CSV once all are done.

The CSV is written atomically at the end (one row per pair, in pair order) and the progress
files are then removed.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_path

__all__ = ["PAIR_COLUMNS", "read_pairs", "iter_pairs", "evaluate_pairs", "metrics_row"]

#: columns of a pairs file; ``fixed`` and ``moving`` are required
PAIR_COLUMNS = ("fixed", "moving", "fixed_labels", "moving_labels")


def _raw_rows(path: str | os.PathLike) -> Iterator[Mapping[str, Any]]:
    """The rows of a pairs file as written (a CSV row by row, a JSON list whole)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_pairs(): 'path' not found: {str(path)!r}")
    count = 0
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(rows, list) and all(isinstance(r, Mapping) for r in rows):
                count = len(rows)
                yield from rows
        else:
            with path.open(newline="", encoding="utf-8") as f:
                for count, row in enumerate(csv.DictReader(f), start=1):
                    yield row
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise ValueError(f"read_pairs(): cannot read {str(path)!r}: {err}") from None
    if not count:
        raise ValueError(f"read_pairs(): {str(path)!r} must hold a non-empty list of pairs with columns {PAIR_COLUMNS}")


def _pair(row: Mapping[str, Any], index: int, source: Path | None) -> dict[str, str | None]:
    """A row as a pair: :data:`PAIR_COLUMNS`, paths relative to the pairs file ``source``'s folder made absolute."""
    if not row.get("fixed") or not row.get("moving"):
        where = f" of {str(source)!r}" if source is not None else ""
        raise ValueError(f"read_pairs(): row {index}{where} needs 'fixed' and 'moving', got {dict(row)}")
    folder = source.parent if source is not None else None
    return {key: (str(folder / row[key]) if folder is not None else str(row[key])) if row.get(key) else None
            for key in PAIR_COLUMNS}


def iter_pairs(path: str | os.PathLike) -> Iterator[dict[str, str | None]]:
    """Pairs of a CSV (header with :data:`PAIR_COLUMNS`, read row by row) or a JSON list of objects.

    Relative paths are taken relative to the pairs file's folder.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, no pairs, or a row without ``fixed``/``moving`` (when that row is reached).
    """
    for index, row in enumerate(_raw_rows(path)):
        yield _pair(row, index, Path(path))


def read_pairs(path: str | os.PathLike) -> list[dict[str, str | None]]:
    """All pairs of a pairs file as a list (:func:`iter_pairs`)."""
    return list(iter_pairs(path))


def _spacing(affine: np.ndarray) -> list[float]:
    return [float(v) for v in np.linalg.norm(np.asarray(affine)[:-1, :-1], axis=0)]


def metrics_row(result: Any) -> dict[str, Any]:
    """One flat row of a :class:`~monai_diffreg.api.RegistrationResult`'s metrics: folding, SDlogJ, field errors
    (with a known field), Dice before/after and per label, HD95 (mm) with labels, and the registration time."""
    from .metrics import mean_hausdorff95

    spacing = _spacing(result.affine)
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


def _distributed(device: str | None) -> tuple[int, int, str | None]:
    """(rank, world size, device) of this process; joins the process group under ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return dist.get_rank(), dist.get_world_size(), device


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _progress_files(output_csv: Path) -> list[Path]:
    return sorted(output_csv.parent.glob(f"{output_csv.name}.progress-*.jsonl"))


def _earlier_rows(output_csv: Path) -> dict[int, dict[str, Any]]:
    """Rows of an earlier run with this output (its CSV, then its progress files), by pair index."""
    rows: dict[int, dict[str, Any]] = {}
    if output_csv.is_file():
        with output_csv.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                row = {k: v for k, v in row.items() if v != ""}
                rows[int(row["pair"])] = {k: _number(v) for k, v in row.items()}
    for path in _progress_files(output_csv):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut by a kill
                    continue
                rows[int(row["pair"])] = row
    return rows


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _done(row: dict[str, Any] | None, pair: Mapping[str, Any]) -> bool:
    return row is not None and "error" not in row and row.get("fixed") == pair["fixed"] and row.get("moving") == pair["moving"]


def _write_csv(output_csv: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(output_csv) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows)


def evaluate_pairs(pairs: Sequence[Mapping[str, Any]] | str | os.PathLike | None, bundle: Any,
                   output_csv: str | os.PathLike, *, device: str | None = None, affine: bool = False,
                   progress: bool = True, **method_options: Any) -> list[dict[str, Any]]:
    """Register every pair with ``bundle`` and write the metrics to ``output_csv`` (module docstring).

    Args:
        pairs: a pairs file (see :func:`iter_pairs`), a list of dicts with :data:`PAIR_COLUMNS`,
            or None for the built-in sample (which also reports the error against its true field).
        bundle: method name or bundle path (:func:`monai_diffreg.methods.load_method`, loaded
            once with ``method_options``), or a method object.
        output_csv: CSV to write (atomically); its folder is created. Progress files beside it
            make a re-run skip the pairs done.
        device: device to run on (under ``torchrun`` with CUDA: each rank's own GPU by default).
        affine: run the affine stage first.
        progress: show a progress bar.
        method_options: options of a method given by name (:func:`~monai_diffreg.methods.load_method`).

    Returns:
        every pair's row, in pair order (a failed pair has an ``error`` entry); under ``torchrun``
        rank 0 returns them all and the other ranks an empty list.
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
    source = None
    if isinstance(pairs, (str, os.PathLike)):
        source, pairs = Path(pairs), _raw_rows(pairs)
    output_csv = Path(output_csv)
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    rank, world, device = _distributed(device)
    if isinstance(bundle, (str, os.PathLike)):  # loaded once for all pairs; a bad option fails before any pair
        name, method = str(bundle), load_method(bundle, device=device, **method_options)
    else:
        name, method = str(getattr(bundle, "name", type(bundle).__name__)), bundle
    earlier = _earlier_rows(output_csv)
    log = output_csv.parent / f"{output_csv.name}.progress-{rank}.jsonl"
    count = 0
    with log.open("a", encoding="utf-8") as out:
        for index, raw in enumerate(tqdm(pairs, desc="evaluating", unit="pair", disable=not progress or rank != 0)):
            count = index + 1
            if index % world != rank:
                continue
            try:
                pair = _pair(raw, index, source)
            except ValueError as err:  # a bad row is a failed pair, not a failed run
                pair, error = {"fixed": raw.get("fixed"), "moving": raw.get("moving")}, str(err)
            else:
                error = None
            if _done(earlier.get(index), pair):
                continue
            row: dict[str, Any] = {"pair": index, "method": name, "fixed": pair["fixed"], "moving": pair["moving"]}
            try:
                if error is not None:
                    raise ValueError(error)
                result = register(pair["fixed"], pair["moving"], method, fixed_labels=pair.get("fixed_labels"),
                                  moving_labels=pair.get("moving_labels"), affine=affine, true_ddf=true_ddf,
                                  device=device)
                row.update(metrics_row(result))
            except (ValueError, FileNotFoundError, OSError, RuntimeError) as err:
                row["error"] = str(err).splitlines()[0]
            out.write(json.dumps(row) + "\n")
            out.flush()
    _barrier(world)  # every rank's progress file is complete
    ordered: list[dict[str, Any]] = []
    if rank == 0:
        rows = _earlier_rows(output_csv)
        ordered = [rows[i] for i in sorted(rows) if i < count]
        _write_csv(output_csv, ordered)
        for path in _progress_files(output_csv):
            path.unlink()
    _barrier(world)  # nobody returns before the CSV is there
    return ordered
