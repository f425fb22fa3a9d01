"""The classic large-deformation test of LDDMM, as a picture: a disk registered onto a "C" by the Mermaid family.

The pair of the benchmark case ``circle_to_c`` (:func:`benchmarks.cases.circle_and_c`, blurred by one voxel):
the fixed C, the moving disk, and per method the warped disk with the C's outline, the deformed grid
(``x + u(x)`` of the returned field, every 8th line), the Dice of the warped disk mask with the C and the
percentage of folded pixels::

    python -m benchmarks.circle_to_c_figure --methods lddmm rdmm vsvf --output monai_diffreg/mermaid/circle_to_c.png

``--option KEY=VALUE`` (repeatable, values as the CLI's ``--option``: JSON, a Python literal or text) passes the same setting to every method, e.g. the shape
settings of the docs: ``--option image_loss='"mse"' --option image_sigma=0.1 --option 'sigmas=[8,16]'``.
"""

from __future__ import annotations

import argparse

import torch
from scipy import ndimage

from benchmarks.cases import circle_and_c
from monai_diffreg import register
from monai_diffreg.cli import parse_option_value
from monai_diffreg.functional import jacobian_determinant, warp
from monai_diffreg.io import save_png


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Dice of two binary masks."""
    return float(2 * (a * b).sum() / (a.sum() + b.sum()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["lddmm", "rdmm", "vsvf"], help="built-in methods or bundles")
    parser.add_argument("--output", required=True, help="the PNG file to write")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of every method (value as JSON), repeatable")
    args = parser.parse_args(argv)
    options = {}
    for item in args.option:
        key, eq, value = item.partition("=")
        if not (key and eq):
            raise SystemExit(f"--option must look like KEY=VALUE, got {item!r}")
        options[key] = parse_option_value(value)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    disk, c_shape = circle_and_c()
    fixed, moving = (torch.as_tensor(ndimage.gaussian_filter(mask[0, 0].numpy(), 1.0)) for mask in (c_shape, disk))
    fig, axes = plt.subplots(1, 2 + len(args.methods), figsize=(3 * (2 + len(args.methods)), 3.4))
    for ax, image, title in ((axes[0], fixed, "fixed: C"), (axes[1], moving, "moving: disk")):
        ax.imshow(image.T, cmap="gray", origin="lower")
        ax.set_title(title)
    scores = {}
    for ax, method in zip(axes[2:], args.methods):
        result = register(fixed.numpy(), moving.numpy(), bundle=method, qc=False, **options)
        ddf = result.ddf.float()
        folded = 100 * float((jacobian_determinant(ddf) <= 0).float().mean())
        scores[method] = {"dice": round(dice(warp(disk, ddf, mode="nearest"), c_shape), 3),
                          "folding_percent": round(folded, 4)}
        ax.imshow(result.warped[0, 0].T, cmap="gray", origin="lower")
        ax.contour(c_shape[0, 0].T, levels=[0.5], colors="tab:orange", linewidths=0.8, origin="lower")
        grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in fixed.shape), indexing="ij"))
        mapped = (grid + ddf[0]).numpy()
        for i in range(0, fixed.shape[0], 8):
            ax.plot(mapped[0, i, :], mapped[1, i, :], color="tab:cyan", linewidth=0.5)
        for j in range(0, fixed.shape[1], 8):
            ax.plot(mapped[0, :, j], mapped[1, :, j], color="tab:cyan", linewidth=0.5)
        ax.set_xlim(-0.5, fixed.shape[0] - 0.5)
        ax.set_ylim(-0.5, fixed.shape[1] - 0.5)
        ax.set_title(f"{method}: Dice {scores[method]['dice']:.3f}\n{folded:.2f} % det J <= 0")
    for ax in axes:
        ax.axis("off")
    save_png(fig, args.output, dpi=80, bbox_inches="tight")
    print(scores)


if __name__ == "__main__":
    main()
