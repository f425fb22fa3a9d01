"""FLASH's alpha estimate on the built-in sample brain pair, then the registration at the estimate.

Estimates ``alpha`` (and, with ``--estimate-scale``, the prior precision ``tau``; fixed at ``--prior-scale`` otherwise,
``mean``: one over the grid's voxel count, a voxel-mean ``<L v, v>``) by
:func:`monai_diffreg.lddmm.estimate_regularization` on the sample's intensities divided by their maximum,
area-downsampled by ``--factor`` (as ``alpha="map"`` does at its coarsest level), then registers at full resolution
with :func:`monai_diffreg.lddmm.flash_register` at that ``alpha`` and ``sigma sqrt(tau)`` from the estimate's ``v_0``
and reports the mean Dice of the sample's two labels. Writes ``result.json`` (settings, estimate, its history,
timings, Dice) into ``--output``.

    python -m benchmarks.flash_map_sample --output DIR [--factor 2 --iterations 200 --estimate-scale --threads 2]
    python -m benchmarks.flash_map_sample --output DIR --factor 4 --iterations 300 --prior-scale mean
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks import make_output_folder, positive_number_or
from monai_diffreg.engines._optim_common import downsample, level_grid
from monai_diffreg.functional import warp
from monai_diffreg.io import atomic_path
from monai_diffreg.lddmm import estimate_regularization, flash_register
from monai_diffreg.metrics import mean_dice
from monai_diffreg.sample import load_sample


def run(factor: float, iterations: int, estimate_scale: bool, prior_scale: float | str = 1.0) -> dict:
    sample = load_sample(with_fields=False)
    fixed, moving = (sample[k].as_tensor()[None].float() for k in ("fixed", "moving"))
    fixed, moving = fixed / fixed.max(), moving / moving.max()
    fixed_labels, moving_labels = sample["fixed_labels"].as_tensor()[None], sample["moving_labels"].as_tensor()[None]
    grid, spacing = level_grid(fixed.shape[2:], factor, None)
    tau = 1.0 / (grid[0] * grid[1] * grid[2]) if prior_scale == "mean" else prior_scale
    start = time.perf_counter()
    estimate = estimate_regularization(downsample(fixed, grid), downsample(moving, grid), spacing=spacing,
                                       iterations=iterations, estimate_scale=estimate_scale, prior_scale=tau)
    estimation_seconds = time.perf_counter() - start
    start = time.perf_counter()
    registered = flash_register(fixed, moving, alpha=estimate["alpha"], sigma=estimate["sigma"],
                                initial_velocity=estimate["initial_velocity"], inverse=False)
    registration_seconds = time.perf_counter() - start
    return {"factor": factor, "grid": list(grid), "iterations": iterations, "estimate_scale": estimate_scale,
            "prior_scale": prior_scale,
            "alpha": estimate["alpha"], "scale": estimate["scale"], "sigma": estimate["sigma"],
            "estimation_iterations": len(estimate["history"]), "estimation_seconds": estimation_seconds,
            "registration_seconds": registration_seconds, "threads": torch.get_num_threads(),
            "dice_identity": float(mean_dice(moving_labels, fixed_labels)),
            "dice": float(mean_dice(warp(moving_labels.float(), registered["ddf"], mode="nearest"), fixed_labels)),
            "history": estimate["history"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--factor", type=float, default=2.0, help="downsampling factor of the estimate's grid (>= 1)")
    parser.add_argument("--iterations", type=int, default=115, help="at most this many estimation iterations (>= 1)")
    parser.add_argument("--estimate-scale", action="store_true", help="also estimate the prior precision tau")
    parser.add_argument("--prior-scale", default="1", help="tau, fixed (or the start with --estimate-scale): a positive "
                        "number, or 'mean' for one over the grid's voxel count")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.factor < 1 or args.iterations < 1 or args.threads < 1:
        parser.error("--factor, --iterations and --threads must be at least 1")
    prior_scale = positive_number_or(parser, "--prior-scale", args.prior_scale, "mean")
    make_output_folder(parser, args.output)
    torch.set_num_threads(args.threads)
    result = run(args.factor, args.iterations, args.estimate_scale, prior_scale)
    with atomic_path(args.output / "result.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(f"alpha {result['alpha']:.4g}, tau {result['scale']:.3g} after {result['estimation_iterations']} iterations "
          f"({result['estimation_seconds']:.0f} s); Dice {result['dice_identity']:.4f} -> {result['dice']:.4f} "
          f"({result['registration_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
