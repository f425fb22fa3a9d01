"""Accuracy and speed of the optimisation engines on a real brain with a known transform (not a test).

``test_scan.npz`` (``../shared/data/voxelmorph``, EVALUATION ONLY) is the fixed image; the moving
image and labels are it warped by a known transform, and the script registers moving to fixed:

* ``--engine svf`` (:func:`optimise_svf`): the transform is ``exp(v)`` for a smooth velocity
  ``v`` (random vectors on a control grid of ``--spacing`` voxels, Gaussian-smoothed, upsampled
  with ``resize_field`` and scaled so the control grid's largest vector is ``--amplitude``
  control-grid voxels);
* ``--engine affine`` (:func:`optimise_affine`): rotations (5, -4, 3) degrees, scalings
  (1.05, 0.95, 1.02) and translation (4, -3, 2) voxels about the centre, times ``--amplitude``
  for the angles, scale offsets and translation.

It prints the mean Dice over VoxelMorph's 30 labels before, after, and with the true inverse
(the ceiling set by nearest-neighbour label resampling), the end-point error of the recovered
field inside the brain, the wall and process CPU time of the registration, and folding.

Run from the repository root, e.g.::

    .venv/bin/python benchmarks/engines_test_scan.py --engine svf --threads 1 --seed 0 --amplitude 1.0 --spacing 16
    .venv/bin/python benchmarks/engines_test_scan.py --engine affine --threads 1 \
        --settings "{'levels': (4, 2), 'iterations': (100, 50)}"
"""

from __future__ import annotations

import argparse
import ast
import os
import time
from pathlib import Path

import numpy as np
import torch

from monai_diffreg.engines import optimise_affine, optimise_svf
from monai_diffreg.functional import gaussian_smooth, integrate_velocity, jacobian_determinant, resize_field, warp
from monai_diffreg.functional.affine import affine_to_ddf


def _rotation(degrees: tuple[float, float, float]) -> torch.Tensor:
    result = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(degrees):
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        i, j = [a for a in range(3) if a != axis]
        rotation = torch.eye(3, dtype=torch.float64)
        rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
        result = result @ rotation
    return result


def known_transform(engine: str, shape: tuple[int, ...], args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """(forward, inverse) displacement fields of the known transform; moving = fixed warped by the inverse."""
    if engine == "affine":
        a = args.amplitude
        linear = _rotation((5 * a, -4 * a, 3 * a)) @ torch.diag(
            torch.tensor([1 + 0.05 * a, 1 - 0.05 * a, 1 + 0.02 * a], dtype=torch.float64))
        centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64)
        shift = centre + a * torch.tensor([4.0, -3.0, 2.0], dtype=torch.float64) - linear @ centre
        matrix = torch.cat([linear, shift[:, None]], 1)
        square = torch.cat([matrix, torch.tensor([[0, 0, 0, 1.0]], dtype=torch.float64)])
        inverse = torch.linalg.inv(square)[:3]
        return affine_to_ddf(matrix[None], shape).float(), affine_to_ddf(inverse[None], shape).float()
    gen = torch.Generator().manual_seed(args.seed)
    coarse = gaussian_smooth(torch.randn(1, 3, *(n // args.spacing for n in shape), generator=gen), 1.0)
    velocity = resize_field(coarse / coarse.abs().amax() * args.amplitude, size=shape)
    return integrate_velocity(velocity), integrate_velocity(-velocity)


def mean_dice(a: torch.Tensor, b: torch.Tensor, labels: np.ndarray) -> float:
    """Mean Dice over ``labels`` present in either map."""
    scores = [2 * float(((a == k) & (b == k)).sum()) / float((a == k).sum() + (b == k).sum())
              for k in labels if bool((a == k).any() or (b == k).any())]
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("svf", "affine"), default="svf")
    parser.add_argument("--settings", default="{}", help="keyword arguments of the engine, a dict literal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amplitude", type=float, default=1.0)
    parser.add_argument("--spacing", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shared = Path(os.environ.get("MONAI_DIFFREG_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
    scan = np.load(shared / "data" / "voxelmorph" / "test_scan.npz")
    labels = np.load(shared / "data" / "voxelmorph" / "labels.npz")["labels"]
    vol = torch.from_numpy(scan["vol"]).float()[None, None]
    seg = torch.from_numpy(scan["seg"]).float()[None, None]
    shape = vol.shape[2:]

    forward, inverse = known_transform(args.engine, tuple(shape), args)
    moving, moving_seg = warp(vol, inverse), warp(seg, inverse, mode="nearest")
    brain = vol[0, 0] > 0
    displacement = inverse.norm(dim=1)[0][brain]
    print(f"true displacement in the brain: mean {displacement.mean():.2f}, max {displacement.max():.2f} voxels")
    ceiling = mean_dice(warp(moving_seg, forward, mode="nearest"), seg, labels)
    print(f"Dice before {mean_dice(moving_seg, seg, labels):.4f}, with the true inverse {ceiling:.4f}")

    settings = ast.literal_eval(args.settings)
    engine = optimise_svf if args.engine == "svf" else optimise_affine
    wall, cpu = time.perf_counter(), time.process_time()
    result = engine(vol, moving, **settings)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    det = jacobian_determinant(result["ddf"])
    dice = mean_dice(warp(moving_seg, result["ddf"], mode="nearest"), seg, labels)
    error = (result["ddf"] - forward).norm(dim=1)[0][brain]
    print(f"{args.engine} settings {settings}, threads {torch.get_num_threads()}")
    print(f"Dice after {dice:.4f}; end-point error in the brain mean {error.mean():.2f}, max {error.max():.2f} voxels; "
          f"wall {wall:.1f} s, process CPU {cpu:.1f} s; det J min {float(det.min()):.3f}, "
          f"det J <= 0: {float((det <= 0).float().mean()) * 100:.4f} %")


if __name__ == "__main__":
    main()
