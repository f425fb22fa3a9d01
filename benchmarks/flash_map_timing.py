"""Time of FLASH's alpha estimate on a 128^3 brain pair (issue 18's target: 30 s on 2 CPU threads; the paper: 257 s),
and of the alpha predictor's prediction on it (issue 18's target: 0.5 s; the paper: 2.16 s).

The built-in sample pair at the paper's preprocessing grid: area-downsampled from 1 mm to 1.25 mm and centre-cropped
to 128 x 128 x 128, intensities divided by their maxima. Runs :func:`monai_diffreg.lddmm.estimate_regularization`
(the paper's settings by default: Euler, 10 steps, 16 -> 15 frequencies, ``u`` 1e-6, ``q_min`` 30, start alpha 3;
``--estimate-scale`` also estimates the prior's scale) and reports its wall time, peak memory, iterations and the
estimate, next to one energy evaluation split into stages (shooting, the map on the image grid, warp and image term,
backward). Then the prediction of :class:`monai_diffreg.lddmm.RegularizationPredictor` (3D, evaluation mode; its time
does not depend on the weights) in :data:`PREDICTORS`' settings: median, fastest and slowest of ``--repeats`` after a
warm-up, peak memory, and the ratio to the estimate's time in the same process. Writes ``result.json`` into
``--output``.

    python -m benchmarks.flash_map_timing --output DIR [--integrator euler --iterations 300 --estimate-scale --threads 2
                                                       --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks import make_output_folder
from benchmarks.memory import measure
from monai_diffreg.engines._optim_common import downsample
from monai_diffreg.functional import warp
from monai_diffreg.io import atomic_path
from monai_diffreg.lddmm import (RegularizationPredictor, band_operators, band_to_ddf, estimate_regularization,
                                 sample_initial_velocity, shoot)
from monai_diffreg.sample import load_sample

SIZE = 128
SPACING_MM = 1.25
TARGET_SECONDS = 30.0
PREDICTION_TARGET_SECONDS = 0.5
#: the predictor settings timed: the paper's two streams, one stream of the stacked pair (the 2D experiment's
#: choice), and the same with 3^3 convolutions instead of the default 5^3
PREDICTORS = {"paper_two_streams": {"fusion": "late"}, "early_fusion": {"fusion": "early"},
              "early_fusion_kernel_3": {"fusion": "early", "kernel_size": 3}}


def brain_pair(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample's fixed and moving images (1 mm, 160 x 192 x 160) at 1.25 mm, centre-cropped to ``size``^3,
    ``(1, 1, *shape)``."""
    sample = load_sample(with_fields=False)
    images = []
    for key in ("fixed", "moving"):
        image = sample[key].as_tensor()[None].float()
        grid = [round(n / SPACING_MM) for n in image.shape[2:]]
        image = downsample(image / image.max(), grid)
        for axis, n in enumerate(grid):  # 128 x 154 x 128: the middle of the second axis
            image = image.narrow(2 + axis, (n - size) // 2, size)
        images.append(image.contiguous())
    return images[0], images[1]


def stage_seconds(fixed: torch.Tensor, moving: torch.Tensor, integrator: str, repeats: int = 3) -> dict:
    """One FLASH energy evaluation and its gradient split into stages (mean of ``repeats``, seconds), at a prior
    sample of alpha 3 scaled to a largest velocity of 2 voxels."""
    shape = tuple(fixed.shape[2:])
    ops = band_operators(shape, 3.0, 15, spacing=(SPACING_MM,) * 3)
    base = sample_initial_velocity(shape, 3.0, 15, generator=torch.Generator().manual_seed(0)).to(torch.complex64)
    base = base * (2.0 / float(band_to_ddf(base, ops).abs().max()))
    totals = {"shooting": 0.0, "map_on_grid": 0.0, "warp_and_image_term": 0.0, "backward": 0.0}
    for _ in range(repeats):
        v = base.clone().requires_grad_(True)
        start = time.perf_counter()
        _, inverse_map = shoot(v, ops, 10, integrator)
        t1 = time.perf_counter()
        ddf = band_to_ddf(inverse_map, ops)
        t2 = time.perf_counter()
        image = (warp(moving, ddf, displacement_gradient="symmetric") - fixed).pow(2).sum()
        t3 = time.perf_counter()
        image.backward()
        t4 = time.perf_counter()
        for key, seconds in zip(totals, (t1 - start, t2 - t1, t3 - t2, t4 - t3)):
            totals[key] += seconds / repeats
    totals["max_displacement_voxels"] = float(ddf.detach().abs().max())
    return totals


def prediction_timing(fixed: torch.Tensor, moving: torch.Tensor, repeats: int) -> dict:
    """Per :data:`PREDICTORS` setting: ``seconds`` (median of ``repeats`` predictions after a warm-up), ``fastest``,
    ``slowest`` and ``peak_mb`` (of the warm-up: the first call's allocations)."""
    timings = {}
    for name, settings in PREDICTORS.items():
        net = RegularizationPredictor(3, **settings).eval()
        with torch.inference_mode():
            _, _, peak_mb = measure(net, fixed, moving)
            seconds = sorted(measure(net, fixed, moving)[1] for _ in range(repeats))
        timings[name] = {**settings, "seconds": seconds[len(seconds) // 2], "fastest": seconds[0],
                         "slowest": seconds[-1], "peak_mb": peak_mb}
    return timings


def run(integrator: str, iterations: int, estimate_scale: bool, size: int = SIZE, repeats: int = 5) -> dict:
    fixed, moving = brain_pair(size)
    stages = stage_seconds(fixed, moving, integrator)
    estimate, seconds, peak_mb = measure(
        estimate_regularization, fixed, moving, alpha=3.0, truncation=16, integrator=integrator, iterations=iterations,
        tolerance=1e-6, min_converged=30, estimate_scale=estimate_scale, spacing=(SPACING_MM,) * 3)
    count = len(estimate["history"])
    predictions = prediction_timing(fixed, moving, repeats)
    for timing in predictions.values():
        timing["ratio_to_estimate"] = timing["seconds"] / seconds
        timing["ratio_to_target"] = timing["seconds"] / PREDICTION_TARGET_SECONDS
    return {"grid": list(fixed.shape[2:]), "spacing_mm": SPACING_MM, "integrator": integrator, "iterations": iterations,
            "estimate_scale": estimate_scale, "threads": torch.get_num_threads(), "seconds": seconds,
            "peak_mb": peak_mb, "target_seconds": TARGET_SECONDS, "ratio_to_target": seconds / TARGET_SECONDS,
            "estimation_iterations": count, "seconds_per_iteration": seconds / max(count, 1),
            "evaluations": estimate["history"][-1]["evaluations"] if count else 0,
            "alpha": estimate["alpha"], "scale": estimate["scale"], "curvature": estimate["curvature"],
            "one_evaluation_stages": stages, "prediction": predictions, "prediction_repeats": repeats,
            "history": [{k: h[k] for k in ("iteration", "alpha", "scale", "objective", "evaluations", "seconds")}
                        for h in estimate["history"]]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--integrator", choices=("euler", "rk4"), default="euler", help="the paper's: euler")
    parser.add_argument("--iterations", type=int, default=300, help="at most this many estimation iterations (>= 1)")
    parser.add_argument("--estimate-scale", action="store_true", help="also estimate the prior precision tau")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed predictions per predictor setting (>= 1)")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.threads < 1 or args.repeats < 1:
        parser.error("--iterations, --threads and --repeats must be at least 1")
    make_output_folder(parser, args.output)
    torch.set_num_threads(args.threads)
    result = run(args.integrator, args.iterations, args.estimate_scale, repeats=args.repeats)
    with atomic_path(args.output / "result.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result["one_evaluation_stages"].items()
                       if k != "max_displacement_voxels")
    print(f"{result['grid']} ({args.integrator}, {result['threads']} threads): alpha {result['alpha']:.4g}, tau "
          f"{result['scale']:.3g} after {result['estimation_iterations']} iterations ({result['evaluations']} evaluations) in {result['seconds']:.1f} s "
          f"({result['ratio_to_target']:.1f}x the {TARGET_SECONDS:.0f} s target; {result['seconds_per_iteration']:.2f} s "
          f"an iteration), peak {result['peak_mb']:.0f} MB; one evaluation: {stages}")
    for name, timing in result["prediction"].items():
        print(f"prediction, {name}: {timing['seconds']:.3f} s (median of {args.repeats}; "
              f"{timing['ratio_to_target']:.1f}x the {PREDICTION_TARGET_SECONDS} s target, "
              f"1/{1 / timing['ratio_to_estimate']:.0f} of the estimate), peak {timing['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
