"""The 2D bull's-eye experiment of Wang & Zhang (Fig. 3): does the estimate of FLASH's alpha recover a known alpha?

For each true alpha, initial velocities are drawn from the prior (:func:`monai_diffreg.lddmm.sample_initial_velocity`),
shot (:func:`monai_diffreg.lddmm.shoot_maps`) and used to deform a 100 x 100 bull's-eye (two ellipses, the paper's
source image); alpha is then estimated from the (target, source) pair from a start of 1.0, with the evidence
(default) and with the paper's joint MAP. Writes ``results.json`` and ``bullseye.png`` (source, targets, the alpha
trajectories against the truth) into the output folder.

    python -m benchmarks.flash_bullseye --output benchmarks/results/<date>-flash-bullseye [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from monai_diffreg.functional import warp
from monai_diffreg.io import atomic_path, save_png
from monai_diffreg.lddmm import band_operators, band_to_ddf, estimate_regularization, sample_initial_velocity, shoot_maps

TRUE_ALPHAS = (3.0, 6.0, 11.0)
SIZE = 100
TRUNCATION = 16  # the paper's; odd truncation: 15 frequencies per axis


def bullseye(n: int = SIZE) -> torch.Tensor:
    """Two nested ellipses (intensities 0.5 and 1), ``(1, 1, n, n)``."""
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
    c = n / 2
    outer = ((x - c) / (0.3 * n)) ** 2 + ((y - c) / (0.2 * n)) ** 2 < 1
    inner = ((x - c) / (0.15 * n)) ** 2 + ((y - c) / (0.1 * n)) ** 2 < 1
    return (0.5 * outer.float() + 0.5 * inner.float())[None, None]


def prior_ddf(shape: tuple[int, ...], alpha: float, seed: int) -> torch.Tensor:
    """The displacement ``phi_1^-1 - id`` (voxels, ``(1, D, *shape)``) of the prior sample ``seed`` of ``alpha``."""
    ops = band_operators(shape, alpha, TRUNCATION, dtype=torch.float64)
    v0 = sample_initial_velocity(shape, alpha, TRUNCATION, generator=torch.Generator().manual_seed(seed))
    inverse, _ = shoot_maps(v0, ops, forward=False)
    return band_to_ddf(inverse, ops).float()


def deformed(source: torch.Tensor, alpha: float, seed: int) -> tuple[torch.Tensor, float]:
    """The source deformed by a prior sample of ``alpha`` (:func:`prior_ddf`); returns it and the largest
    displacement (voxels)."""
    ddf = prior_ddf(tuple(source.shape[2:]), alpha, seed)
    return warp(source, ddf), float(ddf.abs().max())


def run(seeds: int) -> dict:
    source = bullseye()
    rows = []
    for alpha in TRUE_ALPHAS:
        for seed in range(seeds):
            target, displacement = deformed(source, alpha, seed)
            row = {"true_alpha": alpha, "seed": seed, "max_displacement_voxels": displacement}
            for model in ("laplace", "joint"):
                start = time.perf_counter()
                result = estimate_regularization(target, source, alpha=1.0, truncation=TRUNCATION, model=model)
                row[model] = {"alpha": result["alpha"], "seconds": time.perf_counter() - start,
                              "iterations": len(result["history"]),
                              "trajectory": [h["alpha"] for h in result["history"]]}
            row["relative_error_laplace"] = row["laplace"]["alpha"] / alpha - 1
            print(f"alpha {alpha:5.1f} seed {seed}: evidence {row['laplace']['alpha']:8.3f}, "
                  f"joint MAP {row['joint']['alpha']:8.3f}, max displacement {displacement:.2f} voxels", flush=True)
            rows.append(row)
    return {"source": f"bull's-eye {SIZE}x{SIZE}", "truncation": TRUNCATION, "sigma": 0.03, "start_alpha": 1.0,
            "rows": rows}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source = bullseye()
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.8))
    axes[0].imshow(source[0, 0], cmap="gray")
    axes[0].set_title("source")
    for ax, alpha in zip(axes[1:4], TRUE_ALPHAS):
        target, displacement = deformed(source, alpha, 0)
        ax.imshow(target[0, 0], cmap="gray")
        ax.set_title(f"target, alpha {alpha:g} (max |u| {displacement:.2f} vox)")
    for ax in axes[:4]:
        ax.axis("off")
    colours = dict(zip(TRUE_ALPHAS, ("tab:blue", "tab:orange", "tab:green")))
    for row in results["rows"]:
        c = colours[row["true_alpha"]]
        axes[4].plot(row["laplace"]["trajectory"], color=c, lw=1)
        axes[4].plot(row["joint"]["trajectory"], color=c, lw=1, ls=":")
    for alpha, c in colours.items():
        axes[4].axhline(alpha, color=c, ls="--", lw=0.8)
    axes[4].set_yscale("log")
    axes[4].set_xlabel("iteration")
    axes[4].set_ylabel("alpha")
    axes[4].set_title("evidence (solid), joint MAP (dotted),\ntruth (dashed)", fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--seeds", type=int, default=3, help="prior samples per true alpha")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results = run(args.seeds)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    plot(results, out / "bullseye.png")
    print(f"wrote {out / 'results.json'} and {out / 'bullseye.png'}")


if __name__ == "__main__":
    main()
