"""Score several option sets of one method on named cases: the tool for choosing a setting on validation cases.

    python -m benchmarks.compare_settings --method vxm_prob \
        --cases mni_synthetic_s100 mni_synthetic_s101 niivue_synthetic_s100 niivue_mni \
        --settings '[{}, {"refine": "fast"}, {"refine_coarse_steps": 10, "refine_steps": 10}]' [--threads 2]

Each setting (a dict of ``load_method`` options: built-in constructor arguments or bundle config
ids) registers every case exactly as the harness does (:class:`benchmarks.adapters.PackageMethod`:
RAS inputs, the field mapped back to the case's axes) and is scored by
:func:`benchmarks.evaluate.evaluate` (mean Dice over the case's labels; EPE in mm where the field is
known). One line per setting: per-case ``(case, Dice, EPE, % det J <= 0, seconds)`` and the mean Dice. Use
validation cases (``benchmarks.cases.VALIDATION_GROUPS``) to choose; never the evaluation brain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks import DEFAULT_DATA_DIR
from benchmarks.adapters import PackageMethod
from benchmarks.cases import CASE_AXCODES, family, get_case
from benchmarks.evaluate import evaluate

__all__ = ["score", "main"]


def _group(name: str) -> str:
    """``mni_synthetic_s100`` -> ``mni_synthetic``; a case without a seed is its own group."""
    stem, _, seed = name.rpartition("_s")
    return stem if stem and seed.isdigit() else name


def score(method: str, options: dict, cases: list[str], data_dir: Path, cache_dir: Path, threads: int) -> list[tuple]:
    """``[(case, dice, epe, folding_percent, seconds), ...]`` of ``method`` with ``options`` on full-size ``cases``."""
    rows = []
    for name in cases:
        case = torch.load(get_case(data_dir, _group(name), name, 1.0, cache_dir), weights_only=False)
        adapter = PackageMethod(method, torch.device("cpu"), threads, dict(options))
        adapter.prepare(case["fixed"].float(), case["moving"].float(), CASE_AXCODES.get(family(name)))
        start = time.perf_counter()
        adapter.register()
        seconds = time.perf_counter() - start
        scores = evaluate(case, adapter.result()["ddf"], hd95=False)
        rows.append((name, round(scores["dice"], 4), round(scores["epe"], 3), round(scores["folding_percent"], 4),
                     round(seconds, 1)))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--cases", nargs="+", required=True)
    parser.add_argument("--settings", type=json.loads, default=[{}], help="JSON list of option dicts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "monai_diffreg" / "benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for options in args.settings:
        rows = score(args.method, options, args.cases, args.data_dir, args.cache_dir, args.threads)
        print(json.dumps(options), rows, "mean dice", round(statistics.fmean(r[1] for r in rows), 4), flush=True)


if __name__ == "__main__":
    main()
