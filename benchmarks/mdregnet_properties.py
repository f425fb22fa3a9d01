"""Properties of the shipped mdregnet models (not a test): what each level adds, and the inverse field.

On the ``brain_synthetic`` cases of the benchmark (``voxelmorph/test_scan`` under known smooth
deformations; evaluation only), with the arrays re-oriented to RAS and normalised as ``register()``
does, for the model with the smoothing layer and the ablation without it:

* **coarse to fine**: Dice over the 30 VoxelMorph labels of the moving labels warped by the field
  accumulated up to level 1 (1/8), level 2 (1/4) and the final field (1/2, smoothed);
* **bidirectional accuracy**: Dice of the fixed labels warped onto the moving image by ``exp(-v)``;
* **folding**: % of voxels with det J <= 0 of the final field, and their count.

Run from the repository root after the benchmark has built its cases::

    python -m benchmarks.mdregnet_properties --seeds 0 1 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from monai_diffreg.functional import jacobian_determinant, warp
from monai_diffreg.metrics import mean_dice

from .properties_common import brain_synthetic_case, bundle_network
from .run import DEFAULT_CACHE


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    print("| model | case | Dice level 1 (1/8) | level 2 (1/4) | final | Dice inverse | % det J <= 0 | voxels det J <= 0 |\n"
          "|---|---|---|---|---|---|---|---|")
    for smoothing in (True, False):
        network = bundle_network("mdregnet", smoothing=smoothing)
        for seed in args.seeds:
            case = brain_synthetic_case(seed, args.cache_dir)
            labels = case["labels"]

            def dice(moving_labels, fixed_labels, ddf):
                return float(mean_dice(warp(moving_labels, ddf, mode="nearest"), fixed_labels, labels=labels)[0])

            with torch.no_grad():
                levels = network.level_displacements(case["moving"], case["fixed"])
                inverse = network.displacements(case["moving"], case["fixed"])["inverse_ddf"]
                per_level = [dice(case["moving_labels"], case["fixed_labels"], ddf) for ddf in levels]
                backward = dice(case["fixed_labels"], case["moving_labels"], inverse)
                folded = int((jacobian_determinant(levels[-1]) <= 0).sum())
            name = "with smoothing layer" if smoothing else "without smoothing layer"
            cells = " | ".join(f"{d:.3f}" for d in per_level)
            print(f"| {name} | brain_synthetic_s{seed} | {cells} | {backward:.3f} | "
                  f"{100 * folded / levels[-1][0, 0].numel():.4f} | {folded} |", flush=True)


if __name__ == "__main__":
    main()
