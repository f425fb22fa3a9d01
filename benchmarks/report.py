"""Tables (markdown, CSV) and plots (PNG) from the worker records of one benchmark run.

Per case group ``G`` (``brain_synthetic``, ``mni_to_subject``, ``pairs_2d``; validation groups alike):

* ``G.md``: the exact command and settings, then per case family (the case name without its
  seed) a summary table over its cases (mean, and ± standard deviation over cases when there
  are several), then a per-case table;
* ``G.csv``: one row per (method, case) with every scalar;
* ``G_dice_per_label.png``: per family, a box per method of the per-label Dice (each label's
  Dice averaged over the family's cases);
* ``G_time_vs_dice.png``: per family, mean seconds per pair (log scale) against mean Dice.

Timings: ``s/pair`` is the registration call alone (no file I/O); ``x ref`` is that time
divided by the reference (MONAI ``VoxelMorph`` forward pass, full resolution, random weights)
measured in the same run on the same image size, averaged over the cases.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.adapters import REFERENCE  # noqa: E402
from benchmarks.cases import family  # noqa: E402
from benchmarks.evaluate import METRICS  # noqa: E402

__all__ = ["ASEG_NAMES", "write_report"]

#: Short FreeSurfer names of the 30 VoxelMorph aseg labels (plot ticks).
ASEG_NAMES = {
    2: "L-WM", 3: "L-Cortex", 4: "L-LatVent", 7: "L-Cblm-WM", 8: "L-Cblm-Ctx", 10: "L-Thal", 11: "L-Caud",
    12: "L-Put", 13: "L-Pall", 14: "3rd-Vent", 15: "4th-Vent", 16: "Brainstem", 17: "L-Hippo", 18: "L-Amyg",
    24: "CSF", 28: "L-VentDC", 31: "L-Choroid", 41: "R-WM", 42: "R-Cortex", 43: "R-LatVent", 46: "R-Cblm-WM",
    47: "R-Cblm-Ctx", 49: "R-Thal", 50: "R-Caud", 51: "R-Put", 52: "R-Pall", 53: "R-Hippo", 54: "R-Amyg",
    60: "R-VentDC", 63: "R-Choroid",
}
_TIMING = {"seconds": ("s/pair", True), "ratio": ("x ref", True), "peak_mb": ("peak MB", True)}


def _stats(values: list[float]) -> tuple[float, float, int]:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return math.nan, math.nan, 0
    mean = sum(finite) / len(finite)
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else math.nan
    return mean, sd, len(finite)


def _fmt(value: float, key: str) -> str:
    if value is None or math.isnan(value):
        return "—"
    if key in ("seconds", "peak_mb", "hd95", "epe", "ratio"):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    if key == "folding_percent":
        return f"{value:.4f}"
    return f"{value:.3f}"


def _cell(values: list[float], key: str) -> str:
    mean, sd, n = _stats(values)
    return _fmt(mean, key) + (f" ± {_fmt(sd, key)}" if n > 1 and not math.isnan(sd) else "")


def _attach_ratios(records: list[dict]) -> None:
    reference = {tuple(r["shape"]): r["seconds"] for r in records if r.get("reference") and "error" not in r}
    for r in records:
        ref = reference.get(tuple(r.get("shape", ())))
        r["ratio"] = r["seconds"] / ref if ref and "seconds" in r else math.nan


def _markdown(group: str, records: list[dict], refs: list[dict], settings: dict, families: dict, methods: list[str]) -> str:
    columns = list(METRICS.items()) + list(_TIMING.items())
    lines = [
        f"# Benchmark: {group}",
        "",
        *([f"Command: `{settings['commands'][0]}`"] if len(settings["commands"]) == 1 else
          ["Commands (later ones resumed the first with --resume, reusing its results on identical case data):",
           *[f"- `{c}`" for c in settings["commands"]]]),
        "",
        f"Date {settings['date']}; torch threads {settings['threads']} per worker (torch.set_num_threads, "
        f"OMP/MKL/ITK threads the same), device {settings['device']}, OMP_WAIT_POLICY={settings['omp_wait_policy']}, "
        f"{settings['cpu_count']} CPU cores; {'quick run: half-resolution cases (2 mm voxels); ' if settings['quick'] else ''}"
        f"seeds {settings['seeds']}.",
        "Seconds: the registration call alone (no file I/O); x ref: time / MONAI VoxelMorph forward pass "
        "(full resolution, default widths, random weights) on the same image size in the same run; "
        "peak MB: extra resident memory of the call (see benchmarks/README.md).",
    ]
    loads = [v for r in records for v in r.get("load_average", [])]
    if loads:
        lines.append(f"Machine load average (1 min) during the workers: {min(loads):.1f} to {max(loads):.1f}.")
    if settings.get("skipped"):
        lines.append("Not run: " + "; ".join(f"{m} ({why})" for m, why in settings["skipped"].items()) + ".")
    for fam, cases in families.items():
        lines += ["", f"## {fam} ({len(cases)} case{'s' if len(cases) > 1 else ''})", "",
                  "| method | " + " | ".join(title for _, (title, _) in columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        shapes = {tuple(r["shape"]) for r in records if r.get("case") in cases and "shape" in r}
        for ref in [r for r in refs if tuple(r["shape"]) in shapes]:
            lines.append(f"| {REFERENCE} (reference, {'x'.join(map(str, ref['shape']))}) | "
                         + " | ".join("—" for _ in METRICS) + f" | {_fmt(ref['seconds'], 'seconds')} | 1 | "
                         f"{_fmt(ref['peak_mb'], 'peak_mb')} |")
        for method in methods:
            rows = [r for r in records if r.get("method") == method and r.get("case") in cases]
            ok = [r for r in rows if "error" not in r]
            if not ok:
                if rows:
                    lines.append(f"| {method} | failed: {rows[0]['error'][:120]!r} |")
                continue
            lines.append(f"| {method} | " + " | ".join(_cell([r.get(k, math.nan) for r in ok], k) for k, _ in columns) + " |")
    lines += ["", "## Per case", "", "| case | method | Dice | HD95 (mm) | % det J <= 0 | EPE (mm) | s/pair | x ref | peak MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r.get("method") not in methods:
            continue
        if "error" in r:
            lines.append(f"| {r['case']} | {r['method']} | failed | | | | | | |")
            continue
        lines.append(f"| {r['case']} | {r['method']} | " + " | ".join(
            _fmt(r.get(k, math.nan), k) for k in ("dice", "hd95", "folding_percent", "epe", "seconds", "ratio", "peak_mb")) + " |")
    return "\n".join(lines) + "\n"


def _csv(path: Path, records: list[dict]) -> None:
    keys = ["case", "method", "reference", "shape", *METRICS, "seconds", "ratio", "peak_mb", "threads", "device",
            "load_average", "error"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: (" ".join(map(str, r[k])) if isinstance(r.get(k), list) else r.get(k, "")) for k in keys})


def _per_label(records: list[dict], method: str, cases: list[str]) -> dict[str, float]:
    """Each label's Dice averaged over ``cases`` for ``method``."""
    values = defaultdict(list)
    for r in records:
        if r.get("method") == method and r.get("case") in cases and "dice_per_label" in r:
            for label, v in r["dice_per_label"].items():
                values[label].append(v)
    return {label: _stats(v)[0] for label, v in values.items()}


def _plots(group: str, records: list[dict], families: dict, methods: list[str], out: Path) -> list[Path]:
    written = []
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families) + 1, 4.5), squeeze=False)
    for ax, (fam, cases) in zip(axes[0], families.items()):
        data, names = [], []
        for method in methods:
            per_label = [v for v in _per_label(records, method, cases).values() if not math.isnan(v)]
            if per_label:
                data.append(per_label)
                names.append(method)
        if data:
            ax.boxplot(data, tick_labels=names)
        ax.set_title(f"{fam}: Dice per label")
        ax.set_ylabel("Dice (label mean over cases)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    written.append(out / f"{group}_dice_per_label.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families) + 1, 4.5), squeeze=False)
    for ax, (fam, cases) in zip(axes[0], families.items()):
        for method in methods:
            ok = [r for r in records if r.get("method") == method and r.get("case") in cases and "dice" in r]
            if ok:
                sec, dice = _stats([r["seconds"] for r in ok])[0], _stats([r["dice"] for r in ok])[0]
                ax.scatter([max(sec, 1e-3)], [dice], label=method, s=50)
                ax.annotate(method, (max(sec, 1e-3), dice), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("seconds per pair (log)")
        ax.set_ylabel("mean Dice")
        ax.set_title(fam)
    fig.tight_layout()
    written.append(out / f"{group}_time_vs_dice.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    aseg = [c for fam, c in families.items() if fam.startswith(("brain_synthetic", "niivue_synthetic"))]
    if aseg:
        fig, ax = plt.subplots(figsize=(14, 4.5))
        labels = sorted(ASEG_NAMES)
        for method in methods:
            per_label = _per_label(records, method, aseg[0])
            if per_label:
                ax.plot(range(len(labels)), [per_label.get(str(lab), math.nan) for lab in labels], "o-", label=method)
        ax.set_xticks(range(len(labels)), [ASEG_NAMES[lab] for lab in labels], rotation=60, fontsize=8)
        ax.set_ylabel("Dice (mean over seeds)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(out / f"{group}_dice_by_structure.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


def write_report(records: list[dict], settings: dict, out: Path) -> list[Path]:
    """Write every group's markdown table, CSV and plots into ``out``; returns the paths."""
    _attach_ratios(records)
    methods = list(settings["methods"])
    written = []
    refs = [r for r in records if r.get("reference") and "error" not in r]
    for group in dict.fromkeys(r["group"] for r in records):
        group_records = [r for r in records if r["group"] == group and not r.get("reference")]
        families: dict[str, list[str]] = {}
        for r in group_records:
            cases = families.setdefault(family(r["case"]), [])
            if r["case"] not in cases:
                cases.append(r["case"])
        (out / f"{group}.md").write_text(_markdown(group, group_records, refs, settings, families, methods))
        _csv(out / f"{group}.csv", [r for r in refs if tuple(r["shape"]) in {tuple(q.get("shape", ())) for q in group_records}] + group_records)
        written += [out / f"{group}.md", out / f"{group}.csv"] + _plots(group, group_records, families, methods, out)
    return written
