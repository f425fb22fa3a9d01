"""Properties of the shipped vxm_prob model that the paper reports (not a test).

On the ``brain_synthetic`` cases of the benchmark (``voxelmorph/test_scan`` under known smooth
deformations; evaluation only), with the arrays re-oriented to RAS as ``register()`` does:

* **bidirectional accuracy**: Dice over the 30 VoxelMorph labels of the forward field
  (moving labels warped onto the fixed image) and of the inverse field ``exp(-z)`` (fixed labels
  warped onto the moving image);
* **posterior samples**: for the same network mean and variance, ``K`` samples drawn with the
  diagonal posterior ``z = mu + D r`` and with the smoothed posterior ``z = mu + C(D r)``: the
  gradient energy of the sampled perturbation (``gradient_loss(z - mu)``) and the percentage of
  voxels with det J <= 0 of ``exp(z)``. The noise ``r`` is the same for both.

Run from the repository root after the benchmark has built its cases::

    python -m benchmarks.vxm_prob_properties --seeds 0 1 2 --samples 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from monai_diffreg.functional import warp
from monai_diffreg.losses import gradient_loss
from monai_diffreg.metrics import folding_percentage, mean_dice
from monai_diffreg.functional.posterior import sample_velocity

from .properties_common import brain_synthetic_case, bundle_network
from .run import DEFAULT_CACHE


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    network = bundle_network("vxm_prob")
    print("| case | Dice forward | Dice inverse | grad. energy diagonal | grad. energy smoothed "
          "| % det J <= 0 diagonal | % det J <= 0 smoothed |\n|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        case = brain_synthetic_case(seed, args.cache_dir)
        fixed_n, moving_n, fixed_labels, moving_labels, labels = (
            case[k] for k in ("fixed", "moving", "fixed_labels", "moving_labels", "labels"))
        with torch.no_grad():
            out = network(moving_n, fixed_n)
            forward = float(mean_dice(warp(moving_labels, out["ddf"], mode="nearest"), fixed_labels, labels=labels)[0])
            inverse = float(mean_dice(warp(fixed_labels, out["inverse_ddf"], mode="nearest"), moving_labels, labels=labels)[0])
            mu, log_var = out["velocity_mean"], out["velocity_log_var"]
            energy = {"diagonal": 0.0, "smoothed": 0.0}
            folding = {"diagonal": 0.0, "smoothed": 0.0}
            for _ in range(args.samples):
                noise = torch.randn_like(mu)
                for posterior in energy:
                    z = sample_velocity(mu, log_var, posterior, network.smoothing_sigma, noise=noise)
                    energy[posterior] += float(gradient_loss(z - mu)) / args.samples
                    ddf = network.velocity_to_ddf(z, fixed_n.shape[2:])
                    folding[posterior] += float(folding_percentage(ddf)[0]) / args.samples
        print(f"| brain_synthetic_s{seed} | {forward:.3f} | {inverse:.3f} | {energy['diagonal']:.3g} | "
              f"{energy['smoothed']:.3g} | {folding['diagonal']:.4f} | {folding['smoothed']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
