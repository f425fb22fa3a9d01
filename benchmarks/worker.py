"""Measure one method on one case, in a fresh process (called by :mod:`benchmarks.run`).

    python -m benchmarks.worker --method NAME --case CASE.pt --out RESULT.json [--threads 2]

A fresh process per (method, case) keeps memory measurements independent (allocator caches
and high-water marks start clean) and isolates crashes. The case is read and the method
built before timing; the ``register`` step alone is timed (:mod:`benchmarks.adapters`).
With ``--warmup W --repeats R`` the method runs W untimed + R timed times: seconds = the
median of the timed runs, peak memory = that of the first run (later runs reuse memory the
allocator kept, which would hide it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from .adapters import PackageMethod, make_adapter
from .cases import CASE_AXCODES, family
from .evaluate import evaluate
from .memory import measure


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--case", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--options", default="{}", help="JSON dict of method options")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-hd95", action="store_true", help="skip HD95 (slow on large 3D label maps)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    case = torch.load(args.case, weights_only=True)
    adapter = make_adapter(args.method, args.device, args.threads, json.loads(args.options))
    load_before = os.getloadavg()[0]
    orientation = {"axcodes": CASE_AXCODES.get(family(case["name"]))} if isinstance(adapter, PackageMethod) else {}
    adapter.prepare(case["fixed"], case["moving"], **orientation)
    times, peaks = [], []
    for _ in range(args.warmup + args.repeats):
        _, seconds, peak = measure(adapter.register)
        times.append(seconds)
        peaks.append(peak)
    out = adapter.result()
    record = {
        "method": args.method,
        "case": case["name"],
        "group": case["group"],
        "fingerprint": case["fingerprint"],
        "shape": list(case["fixed"].shape[2:]),
        "reference": adapter.reference,
        "seconds": out.get("seconds", statistics.median(times[args.warmup:])),
        "seconds_all": times,
        "peak_mb": out.get("peak_mb", peaks[0]),
        "threads": args.threads,
        "device": args.device,
        "options": json.loads(args.options),
        "torch": torch.__version__,
        "host": platform.node(),
        "load_average": [load_before, os.getloadavg()[0]],
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if not adapter.reference:
        started = time.perf_counter()
        record.update(evaluate(case, out["ddf"], hd95=not args.no_hd95))
        record["evaluation_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
