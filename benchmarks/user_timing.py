"""Speed at the level users meet it: ``register()`` on arrays and the CLI on files, next to the network call.

    python -m benchmarks.user_timing --bundles vxm_prob mdregnet [--case brain_synthetic_s0] \
        [--threads 2] [--repeats 3] [--refine none fast] [--cli-repeats 3] [--output-dir benchmarks/results/DATE-user-timing]

One process, one 1 mm pair (a benchmark case, :mod:`benchmarks.cases`; 160x192x224 for the brain
cases), timed in turn:

* **reference**: MONAI's ``VoxelMorph`` forward pass at full resolution (the harness's timing
  reference, :class:`benchmarks.adapters.MonaiVoxelMorph`), after one warm-up;
* per bundle and ``--refine`` setting, **network call**: the method object (``monai_diffreg.methods.load_method``) on the
  two images already in memory as ``(1, 1, *S)`` tensors; **register()**:
  ``monai_diffreg.register(fixed_array, moving_array, bundle=B)`` with default settings (what a
  user calls; ``refine="fast"`` as a second setting), its per-stage seconds (``RegistrationResult.timings``) and peak memory
  (:func:`benchmarks.memory.measure`); then its metrics (first use) and ``save()`` (every
  default output file);
* per bundle, **CLI**: ``monai-diffreg register --fixed F --moving M --bundle B --output-dir D``
  as a new process on NIfTI files, from start to exit (Python start-up, imports, reading,
  registration, every default output written), and its peak RSS.

Every figure is the median of ``--repeats`` runs (min and max beside it) and every ratio is to
the reference's median in the same process. Results: ``timing.json`` and ``timing.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from benchmarks import DEFAULT_DATA_DIR
from benchmarks.adapters import REFERENCE, make_adapter
from benchmarks.cases import get_case
from benchmarks.memory import measure

__all__ = ["main"]


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _timed(fn, repeats: int) -> tuple[dict[str, float], list[float], object]:
    """Median/min/max seconds of ``repeats`` calls after one warm-up, peak MB of each, last result."""
    fn()
    seconds, peaks, result = [], [], None
    for _ in range(repeats):
        result, s, peak = measure(fn)
        seconds.append(s)
        peaks.append(peak)
    return _stats(seconds), peaks, result


def _cli(bundle: str, fixed: Path, moving: Path, out: Path, threads: int, repeats: int) -> dict:
    """Wall seconds and peak RSS (MB) of the CLI as a new process, ``repeats`` runs after one warm-up."""
    command = [sys.executable, "-m", "monai_diffreg.cli", "register", "--fixed", str(fixed), "--moving", str(moving),
               "--bundle", bundle, "--output-dir", str(out), "--device", "cpu"]
    # GNU time reports the child's own peak RSS (a forked child's ru_maxrss would start at this process's size)
    timed = ["/usr/bin/time", "-f", "peak_rss_kb=%M", *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    seconds, peaks = [], []
    for run in range(repeats + 1):
        start = time.perf_counter()
        done = subprocess.run(timed, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"CLI failed ({done.returncode}): {done.stderr[-2000:]}")
        if run:
            seconds.append(elapsed)
            peaks.append(int(done.stderr.rsplit("peak_rss_kb=", 1)[1].split()[0]) / 1024.0)
    return {"seconds": _stats(seconds), "peak_rss_mb": max(peaks), "files": sorted(p.name for p in out.iterdir()),
            "command": " ".join(command[1:])}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", nargs="+", default=["vxm_prob", "mdregnet"])
    parser.add_argument("--case", default="niivue_synthetic_s100",
                        help="benchmark case name (benchmarks.cases); default a validation case of the 1 mm shape 160x192x224")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cli-repeats", type=int, default=3, help="CLI runs per bundle (0: skip the CLI)")
    parser.add_argument("--refine", nargs="+", default=["none", "fast"],
                        help="register() settings timed per bundle (the CLI runs the first, the default)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "monai_diffreg" / "benchmarks")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results") / f"{date.today()}-user-timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import monai_diffreg
    from monai_diffreg.io import save_image
    from monai_diffreg.methods import load_method

    group = args.case.rsplit("_s", 1)[0] if args.case[-1].isdigit() else args.case
    case = torch.load(get_case(args.data_dir, group, args.case, 1.0, args.cache_dir), weights_only=False)
    fixed_t, moving_t = case["fixed"].float(), case["moving"].float()
    fixed, moving = fixed_t[0, 0].numpy(), moving_t[0, 0].numpy()
    report = {"case": args.case, "shape": list(fixed.shape), "threads": args.threads, "repeats": args.repeats,
              "torch": torch.__version__, "bundles": {}}

    reference = make_adapter(REFERENCE, torch.device("cpu"), args.threads, {})
    reference.prepare(fixed_t, moving_t)
    report["reference_seconds"], _, _ = _timed(reference.register, args.repeats)
    ref = report["reference_seconds"]["median"]
    print(f"reference (MONAI VoxelMorph forward): {ref:.2f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / f"{name}.nii.gz" for name in ("fixed", "moving")}
        for name, data in (("fixed", fixed), ("moving", moving)):
            save_image(data, np.eye(4), files[name])
        for bundle, refine in [(b, r) for b in args.bundles for r in args.refine]:
            options = {} if refine == "none" else {"refine": refine}  # "none" is every bundle's default (and the
            method = load_method(bundle, device="cpu", **options)     # only setting of one without refinement)
            network, _, _ = _timed(lambda: method(fixed_t, moving_t), args.repeats)
            stages = []

            def call():
                result = monai_diffreg.register(fixed, moving, bundle=bundle, device="cpu", **options)
                stages.append(dict(result.timings))
                return result

            api, peaks, result = _timed(call, args.repeats)
            start = time.perf_counter()
            result.metrics  # noqa: B018 (first use computes them)
            metrics_s = time.perf_counter() - start
            start = time.perf_counter()
            result.save(Path(tmp) / f"api-{bundle}-{refine}")
            save_s = time.perf_counter() - start
            entry = {
                "network_seconds": network,
                "register_seconds": api,
                "register_peak_mb": max(peaks),
                "register_stages_median": {k: statistics.median(s[k] for s in stages[1:]) for k in stages[-1]},
                "metrics_seconds": metrics_s,
                "save_seconds": save_s,
                "reference_over_network": ref / network["median"],
                "reference_over_register": ref / api["median"],
            }
            if args.cli_repeats and refine == args.refine[0]:
                cli = _cli(bundle, files["fixed"], files["moving"], Path(tmp) / f"cli-{bundle}", args.threads,
                           args.cli_repeats)
                entry["cli"] = cli
                entry["cli_over_reference"] = cli["seconds"]["median"] / ref
            report["bundles"][f"{bundle} (refine={refine})"] = entry
            print(json.dumps({bundle: entry}, indent=1), flush=True)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "timing.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# User-level timing ({args.case}, {'x'.join(map(str, fixed.shape))}, {args.threads} threads, "
             f"median of {args.repeats})", "",
             f"Reference, MONAI VoxelMorph forward: {ref:.2f} s", "",
             "| bundle | network call s | register() s | ref / register() | register() peak MB | stages (median s) | "
             "metrics s | save() s | CLI s (files in to files out) | CLI / ref | CLI peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for bundle, e in report["bundles"].items():
        stages = ", ".join(f"{k} {v:.2f}" for k, v in e["register_stages_median"].items())
        cli = e.get("cli")
        lines.append(f"| {bundle} | {e['network_seconds']['median']:.2f} | {e['register_seconds']['median']:.2f} | "
                     f"{e['reference_over_register']:.1f}x | {e['register_peak_mb']:.0f} | {stages} | "
                     f"{e['metrics_seconds']:.2f} | {e['save_seconds']:.2f} | "
                     + (f"{cli['seconds']['median']:.2f} | {e['cli_over_reference']:.2f} | {cli['peak_rss_mb']:.0f} |"
                        if cli else "| | |"))
    (args.output_dir / "timing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
