"""Run the registration benchmark and write tables (markdown + CSV) and plots.

From the repository root::

    .venv/bin/python -m benchmarks.run --quick                       # smoke run, < 2 min
    .venv/bin/python -m benchmarks.run --methods identity svf_optim elastix ants --seeds 0 1 2
    python benchmarks/run.py --cases pairs_2d --methods svf_optim

Every (method, case) runs in its own worker process (:mod:`benchmarks.worker`) with
``--threads`` torch/ITK/OpenMP threads (default 2); the timing reference, MONAI's
``VoxelMorph`` forward pass, runs in the same way once per image size, and every time is also
reported as a ratio to it. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(REPO))
# passive OpenMP waiting: idle threads sleep instead of spinning, which on a shared,
# oversubscribed machine is several times faster (must be set before torch loads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
#: the workers' choices (--omp-wait-policy); "unset" leaves the variable out of their environment
WAIT_POLICIES = ("PASSIVE", "ACTIVE", "unset")

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from benchmarks import DEFAULT_DATA_DIR  # noqa: E402
from benchmarks.adapters import REFERENCE, peer_available  # noqa: E402
from benchmarks.cases import (  # noqa: E402
    CROSS_CONTRAST_GROUPS,
    GROUPS,
    UNALIGNED_GROUPS,
    VALIDATION_GROUPS,
    case_names,
    get_case,
)
from benchmarks.report import write_report  # noqa: E402
from monai_diffreg.cli import parse_option_value  # noqa: E402

DEFAULT_METHODS = ("identity", "svf_optim", "elastix", "ants")
QUICK_METHODS = ("identity", "svf_optim")
#: method options of quick runs (a smoke test, not a measurement), unless --option sets them
QUICK_OPTIONS = {"svf_optim": {"iterations": [40, 10]}}
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "monai_diffreg" / "benchmarks"


def _parse_options(items: list[str]) -> dict[str, dict]:
    """``METHOD:KEY=VALUE`` items -> {method: {key: value}} (values parsed as the CLI's ``--option``)."""
    options: dict[str, dict] = {}
    for item in items:
        method, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not (sep and eq and method and key):
            raise SystemExit(f"--option must look like METHOD:KEY=VALUE, got {item!r}")
        options.setdefault(method, {})[key] = parse_option_value(value)
    return options


def _default_wait_policy() -> str:
    """The harness's own ``OMP_WAIT_POLICY`` (PASSIVE unless set otherwise) as a :data:`WAIT_POLICIES` choice."""
    policy = os.environ.get("OMP_WAIT_POLICY", "PASSIVE").upper()
    return policy if policy in WAIT_POLICIES else "PASSIVE"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--cases", nargs="+", choices=GROUPS + CROSS_CONTRAST_GROUPS + UNALIGNED_GROUPS + VALIDATION_GROUPS,
                        default=list(GROUPS),
                        help=f"case groups; {', '.join(CROSS_CONTRAST_GROUPS)}: the moving image in another MR contrast; "
                             f"{', '.join(UNALIGNED_GROUPS)}: brain_synthetic plus a known random affine; "
                             f"{', '.join(VALIDATION_GROUPS)}: held-out validation cases for choosing settings")
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"methods (default {' '.join(DEFAULT_METHODS)}; quick: {' '.join(QUICK_METHODS)}); "
                             "identity, elastix, ants, or any monai_diffreg.methods.load_method name")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds of synthetic cases (default 0 1 2; quick: 0)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: half-resolution cases, one seed, few methods, fewer svf_optim iterations")
    parser.add_argument("--output-dir", type=Path, default=None, help="default benchmarks/results/<date>[-quick]")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="built cases are cached here")
    parser.add_argument("--threads", type=int, default=2, help="torch / ITK / OpenMP threads per worker")
    parser.add_argument("--device", default="cpu", help="device of torch methods (cpu, cuda)")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD:KEY=VALUE",
                        help="method option (load_method keyword / bundle config id), repeatable")
    parser.add_argument("--warmup", type=int, default=0, help="untimed runs before the timed ones (methods)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per (method, case); the median is reported")
    parser.add_argument("--reference-repeats", type=int, default=None, help="timed reference forward passes (default 3; quick: 1), after 1 warm-up")
    parser.add_argument("--no-hd95", action="store_true", help="skip HD95")
    parser.add_argument("--build-only", action="store_true", help="build and cache the cases, run nothing")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the records already in OUTPUT_DIR/raw that were computed on the same case data")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per (method, case)")
    parser.add_argument("--omp-wait-policy", choices=WAIT_POLICIES, default=_default_wait_policy(),
                        help="OMP_WAIT_POLICY of the workers: PASSIVE (idle threads sleep: the fair setting on a "
                             "loaded machine), ACTIVE, or unset (the OpenMP runtime's own default, what a user's "
                             "process gets: the setting for timings on an idle machine)")
    return parser


def worker_environment(threads: int, wait_policy: str) -> dict[str, str]:
    """The environment of a worker: ``threads`` for torch's OpenMP, MKL and ITK, and ``OMP_WAIT_POLICY``
    (one of :data:`WAIT_POLICIES`; ``"unset"`` removes it)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads), OMP_WAIT_POLICY=wait_policy)
    if wait_policy == "unset":
        del env["OMP_WAIT_POLICY"]
    return env


def _run_worker(method: str, group: str, name: str, case: Path, out: Path, args, options: dict, warmup: int,
                repeats: int, fingerprint: str) -> dict:
    """Run one worker; returns its record, or a failure record. With ``--resume``, an earlier
    successful record of the same method on the same case data (``fingerprint``) is reused."""
    if args.resume and out.is_file():
        earlier = json.loads(out.read_text())
        if "error" not in earlier and earlier.get("fingerprint") == fingerprint:
            if "folding_pct" in earlier:  # a record from before the key was the API's "folding_percent"
                earlier["folding_percent"] = earlier.pop("folding_pct")
            return earlier
    env = worker_environment(args.threads, args.omp_wait_policy)
    cmd = [sys.executable, "-m", "benchmarks.worker", "--method", method, "--case", str(case), "--out", str(out),
           "--threads", str(args.threads), "--device", args.device, "--options", json.dumps(options),
           "--warmup", str(warmup), "--repeats", str(repeats)] + (["--no-hd95"] if args.no_hd95 else [])
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
        error = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-1500:]}"
    except subprocess.TimeoutExpired:
        error = f"timed out after {args.timeout:g} s"
    if error is None:
        return json.loads(out.read_text())
    return {"method": method, "group": group, "case": name, "reference": method == REFERENCE, "error": error}


def main(argv=None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    methods = args.methods or list(QUICK_METHODS if args.quick else DEFAULT_METHODS)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    ref_repeats = args.reference_repeats or (1 if args.quick else 3)
    scale = 0.5 if args.quick else 1.0
    options = _parse_options(args.option)
    if args.quick:
        for method, defaults in QUICK_OPTIONS.items():
            options[method] = {**defaults, **options.get(method, {})}
    out_dir = args.output_dir or REPO / "benchmarks" / "results" / (time.strftime("%Y-%m-%d") + ("-quick" if args.quick else ""))
    raw = out_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if not args.data_dir.is_dir():
        raise SystemExit(f"data folder not found: {args.data_dir} (set --data-dir or $MONAI_DIFFREG_SHARED)")

    skipped = {}
    for method in list(methods):
        ok, why = peer_available(method)
        if not ok:
            skipped[method] = why
            methods.remove(method)
            print(f"[skip] {method}: {why}", flush=True)

    torch.set_num_threads(args.threads)
    cases = []
    for group, name in case_names(args.cases, seeds):
        start = time.perf_counter()
        path = get_case(args.data_dir, group, name, scale, args.cache_dir)
        print(f"[case] {name}: {path} ({time.perf_counter() - start:.1f} s)", flush=True)
        cases.append((group, name, path))

    if args.build_only:
        return args.cache_dir

    records, reference_done = [], {}
    for group, name, path in cases:
        case = torch.load(path, weights_only=True)
        shape, fingerprint = tuple(case["fixed"].shape[2:]), case["fingerprint"]
        del case
        if shape not in reference_done:  # one timing reference per image size
            rec = _run_worker(REFERENCE, group, name, path, raw / f"{REFERENCE}__{path.stem}.json", args, options.get(REFERENCE, {}),
                              warmup=1, repeats=ref_repeats, fingerprint=fingerprint)
            reference_done[shape] = rec
            records.append(rec)
            print(f"[ref ] {shape}: {rec.get('seconds', float('nan')):.2f} s {rec.get('error', '')}", flush=True)
        for method in methods:
            rec = _run_worker(method, group, name, path, raw / f"{method}__{path.stem}.json", args, options.get(method, {}),
                              args.warmup, args.repeats, fingerprint)
            records.append(rec)
            summary = rec.get("error") or f"Dice {rec.get('dice', float('nan')):.3f}, {rec['seconds']:.1f} s, {rec['peak_mb']:.0f} MB"
            print(f"[run ] {method} on {path.stem}: {summary}", flush=True)

    commands = [command]
    if args.resume and (out_dir / "settings.json").is_file():
        earlier = json.loads((out_dir / "settings.json").read_text())
        commands = earlier.get("commands", [earlier.get("command")]) + commands
    settings = {"commands": commands, "threads": args.threads, "device": args.device, "quick": args.quick,
                "scale": scale, "seeds": seeds, "methods": methods, "skipped": skipped, "options": options,
                "omp_wait_policy": args.omp_wait_policy, "cpu_count": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d %H:%M")}
    (out_dir / "settings.json").write_text(json.dumps(settings, indent=1))
    write_report(records, settings, out_dir)
    print(f"[done] {out_dir}", flush=True)
    return out_dir


if __name__ == "__main__":
    main()
