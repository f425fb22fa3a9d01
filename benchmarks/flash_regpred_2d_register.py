"""FLASH at the predicted alpha against FLASH at the MAP alpha, on the 2D predictor experiment's held-out pairs.

Reads ``symmetric.json`` of a cross-validated run of :mod:`benchmarks.flash_regpred_2d` (every pair's held-out
prediction, averaged over the square's symmetries, and its MAP label), takes ``--pairs`` of them evenly spaced by
index, and registers each pair's source to its target with :func:`monai_diffreg.lddmm.flash_register` (the labels'
band, full resolution only, as the paper) once at each alpha. Reported per pair and on average: the endpoint error
against the pair's true displacement (the prior sample that made it, :func:`benchmarks.flash_bullseye.prior_ddf`;
mean over the image, voxels; the true displacement's own mean is the error of no registration), the image RMSE, the
folding (det J <= 0, %), and how far the two registrations' displacements lie apart (mean and largest, voxels).
Writes ``registration.json`` and ``registration.png`` into the run's folder.

    python -m benchmarks.flash_regpred_2d_register --output DIR [--pairs 50 --threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from benchmarks.flash_bullseye import prior_ddf
from benchmarks.flash_regpred_2d import TRUNCATION, pair, true_alpha
from monai_diffreg.io import save_json, save_png
from monai_diffreg.lddmm import flash_register
from monai_diffreg.metrics.jacobian import folding_percentage

#: the alphas each pair is registered at: the predictor's (symmetric average) and the MAP label
ALPHAS = ("predicted", "map")


def register_pair(index: int, alphas: dict[str, float]) -> dict:
    """Pair ``index`` registered at each of ``alphas`` (name -> alpha): endpoint error against the true displacement,
    RMSE, folding, seconds per alpha, and the displacement fields' mean and largest difference (voxels)."""
    target, source = pair(index)
    truth = prior_ddf(tuple(source.shape[2:]), true_alpha(index), index)
    row, fields = {"index": index, "true_displacement_mean_voxels": float(truth.norm(dim=1).mean())}, []
    for name, alpha in alphas.items():
        tic = time.perf_counter()
        result = flash_register(target, source, alpha=alpha, truncation=TRUNCATION, levels=(1,), iterations=(100,),
                                inverse=False)
        seconds = time.perf_counter() - tic
        ddf = result["ddf"]
        row[name] = {"alpha": alpha, "seconds": seconds,
                     "endpoint_error_voxels": float((ddf - truth).norm(dim=1).mean()),
                     "rmse": float((result["warped"] - target).pow(2).mean().sqrt()),
                     "folding_percent": float(folding_percentage(ddf))}
        fields.append(ddf)
    difference = (fields[0] - fields[1]).norm(dim=1)
    row["field_difference_mean_voxels"] = float(difference.mean())
    row["field_difference_max_voxels"] = float(difference.max())
    return row


def run(output: Path, pairs: int) -> dict:
    """Register ``pairs`` held-out pairs of ``output/symmetric.json`` at both alphas (module docstring)."""
    path = output / "symmetric.json"
    if not path.is_file():
        raise SystemExit(f"flash_regpred_2d_register: no {path}: run flash_regpred_2d train --folds and symmetric "
                         f"first (the same --output)")
    try:
        held = sorted(json.loads(path.read_text())["held_out"], key=lambda r: r["index"])
        alphas = [(r["index"], {"predicted": r["symmetric"], "map": r["map_alpha"]}) for r in held]
    except (ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"flash_regpred_2d_register: {path} is not a symmetric step's output ({error!r}): run "
                         f"flash_regpred_2d symmetric again") from None
    if not alphas:
        raise SystemExit(f"flash_regpred_2d_register: {path} holds no held-out pairs")
    if not os.access(output, os.W_OK):
        raise SystemExit(f"flash_regpred_2d_register: cannot write registration.json into {output}")
    chosen = [alphas[round(k * (len(alphas) - 1) / max(pairs - 1, 1))] for k in range(min(pairs, len(alphas)))]
    rows = []
    for number, (index, pair_alphas) in enumerate(chosen, 1):
        row = register_pair(index, pair_alphas)
        rows.append(row)
        print(f"pair {row['index']} ({number}/{len(chosen)}): endpoint error at the predicted alpha "
              f"{row['predicted']['endpoint_error_voxels']:.4f}, at MAP's {row['map']['endpoint_error_voxels']:.4f} "
              f"voxels (no registration {row['true_displacement_mean_voxels']:.4f}); the two fields "
              f"{row['field_difference_mean_voxels']:.4f} voxels apart", flush=True)
    mean = {name: {key: sum(r[name][key] for r in rows) / len(rows)
                   for key in ("alpha", "endpoint_error_voxels", "rmse", "folding_percent", "seconds")}
            for name in ALPHAS}
    summary = {"pairs": len(rows), "mean": mean,
               "true_displacement_mean_voxels": sum(r["true_displacement_mean_voxels"] for r in rows) / len(rows),
               "field_difference_mean_voxels": sum(r["field_difference_mean_voxels"] for r in rows) / len(rows),
               "threads": torch.get_num_threads(), "rows": rows}
    save_json(summary, output / "registration.json")
    plot(summary, output / "registration.png")
    return summary


def plot(summary: dict, path: Path) -> None:
    """Each pair's endpoint error at the predicted alpha against its error at the MAP alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at_map = [r["map"]["endpoint_error_voxels"] for r in summary["rows"]]
    at_predicted = [r["predicted"]["endpoint_error_voxels"] for r in summary["rows"]]
    fig, ax = plt.subplots(figsize=(5.0, 4.6))
    ax.scatter(at_map, at_predicted, s=14, alpha=0.7)
    bounds = [min(at_map + at_predicted) * 0.9, max(at_map + at_predicted) * 1.1]
    ax.plot(bounds, bounds, "k--", lw=0.8)
    ax.set(xlabel="endpoint error (voxels), FLASH at the MAP alpha",
           ylabel="endpoint error (voxels), at the predicted alpha",
           title=f"{summary['pairs']} held-out pairs: means {summary['mean']['predicted']['endpoint_error_voxels']:.4f}"
                 f" and {summary['mean']['map']['endpoint_error_voxels']:.4f}")
    fig.tight_layout()
    save_png(fig, path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="a cross-validated run's folder (symmetric.json)")
    parser.add_argument("--pairs", type=int, default=50, help="held-out pairs registered, evenly spaced by index")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.threads < 1:
        parser.error("--pairs and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    summary = run(args.output, args.pairs)
    predicted, at_map = (summary["mean"][name]["endpoint_error_voxels"] for name in ALPHAS)
    print(f"{summary['pairs']} pairs: mean endpoint error {predicted:.4f} voxels at the predicted alpha, {at_map:.4f} "
          f"at MAP's (no registration {summary['true_displacement_mean_voxels']:.4f}); the two fields "
          f"{summary['field_difference_mean_voxels']:.4f} voxels apart on average")


if __name__ == "__main__":
    main()
