"""Where each method puts an object's outline on a 2D pair: the warped image's outline against the fixed image's,
next to the warped mask's against the fixed mask.

A mask's Dice scores the registration and how the two masks were drawn at once. This script separates the two
on a pair whose mask follows an intensity outline (``elastix_2d``: the head's outline in two subjects' MR):

* **outline regions**: the largest connected region, holes filled, of an image (Gaussian-smoothed, 0.7 px)
  above ``c`` times its 99th percentile inside the fixed mask, for each level ``c`` of :data:`LEVELS`;
* **offset**: :func:`mean_outline_offset` of a region's outline from the fixed mask's outline (px, + outside);
* per method, the **outline error** at level ``c``: the warped image's offset minus the fixed image's (0: the
  warped outline lies on the fixed image's outline), and the **mask offset** of the warped moving mask
  (0: the warped mask lies on the fixed mask). Where the outline errors are near 0 and the mask offset is not,
  the masks were drawn at different places of their images' outlines (``fixed_offsets`` and
  ``moving_offsets_from_moving_mask``: each image's offsets from its own mask, the moving one on the moving grid).

    python -m benchmarks.outline_offsets --case elastix_2d --methods lddmm rdmm vsvf ants elastix --output DIR

Writes ``DIR/outline_offsets.json`` and ``DIR/outline_offsets.png`` (outline error against the level, per method).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from benchmarks import DEFAULT_DATA_DIR, make_output_folder
from benchmarks.adapters import PackageMethod, make_adapter
from benchmarks.cases import CASE_AXCODES, GROUPS, VALIDATION_GROUPS, case_names, family, get_case
from benchmarks.run import DEFAULT_CACHE
from monai_diffreg.functional import warp
from monai_diffreg.io import atomic_path, save_png
from monai_diffreg.metrics import mean_dice

#: intensity levels of the outline regions, as fractions of the image's 99th percentile inside the fixed mask
LEVELS = (0.1, 0.15, 0.2, 0.3)


def outline_length(mask: np.ndarray) -> float:
    """Length (px) of a 2D boolean mask's outline by the Cauchy-Crofton formula over 4 line directions.

    ``L = pi / 8 (n_0 + n_90 + (n_45 + n_135) / sqrt 2)``, ``n_theta``: pairs of neighbours along ``theta`` that
    differ (exact for a disk in the limit of fine pixels, unlike the staircase's count of pixel edges).
    """
    mask = np.pad(np.asarray(mask, bool), 1)
    axial = np.count_nonzero(mask[1:] != mask[:-1]) + np.count_nonzero(mask[:, 1:] != mask[:, :-1])
    diagonal = np.count_nonzero(mask[1:, 1:] != mask[:-1, :-1]) + np.count_nonzero(mask[1:, :-1] != mask[:-1, 1:])
    return math.pi / 8 * (axial + diagonal / math.sqrt(2))


def mean_outline_offset(region: np.ndarray, reference: np.ndarray) -> float:
    """Mean offset (px; + outside) of ``region``'s outline from ``reference``'s: ``2 (|R| - |M|) / (L_R + L_M)``.

    The area between the outlines over their mean length (:func:`outline_length`): exact for parallel outlines
    (concentric disks give the difference of their radii); inward and outward parts cancel, so it measures a
    bias of the outline's position, not its scatter. 2D boolean arrays.
    """
    region, reference = np.asarray(region, bool), np.asarray(reference, bool)
    if not region.any() or not reference.any():
        raise ValueError("mean_outline_offset(): both masks need an outline (neither may be empty)")
    return 2 * float(region.sum() - reference.sum()) / (outline_length(region) + outline_length(reference))


def outline_region(image: np.ndarray, level: float, scale_mask: np.ndarray) -> np.ndarray:
    """The largest connected region, holes filled, of ``image`` (smoothed 0.7 px) above ``level`` times its 99th
    percentile inside ``scale_mask`` (module docstring)."""
    smooth = ndimage.gaussian_filter(np.asarray(image, float), 0.7)
    above = ndimage.binary_fill_holes(smooth > level * np.quantile(smooth[scale_mask], 0.99))
    components, count = ndimage.label(above)
    if count == 0:
        return above
    sizes = ndimage.sum(above, components, range(1, count + 1))
    return components == 1 + int(np.argmax(sizes))


def offsets(image: np.ndarray, mask: np.ndarray, scale_mask: np.ndarray) -> list[float]:
    """:func:`mean_outline_offset` of ``image``'s outline regions (each of :data:`LEVELS`) from ``mask``."""
    return [mean_outline_offset(outline_region(image, level, scale_mask), mask) for level in LEVELS]


def measure(case: dict, methods: list[str], threads: int = 1) -> dict:
    """Dice, mask offset and outline errors of each method on a 2D ``case`` (a dict of :mod:`benchmarks.cases`)."""
    fixed, moving = case["fixed"], case["moving"]
    if fixed.ndim != 4:
        raise SystemExit(f"outline_offsets: a 2D case is needed, {case.get('name')} is {fixed.ndim - 2}D")
    fixed_mask = (case["fixed_labels"][0, 0] > 0).numpy()
    moving_mask = (case["moving_labels"][0, 0] > 0).numpy()
    fixed_offsets = offsets(fixed[0, 0].numpy(), fixed_mask, fixed_mask)
    result = {"levels": list(LEVELS), "fixed_offsets": fixed_offsets,
              "moving_offsets_from_moving_mask": offsets(moving[0, 0].numpy(), moving_mask, moving_mask), "methods": {}}
    for name in ["identity", *(m for m in methods if m != "identity")]:
        adapter = make_adapter(name, "cpu", threads, {})
        orientation = {"axcodes": CASE_AXCODES.get(family(case.get("name", "")))}
        adapter.prepare(fixed, moving, **(orientation if isinstance(adapter, PackageMethod) else {}))
        adapter.register()
        ddf = adapter.result()["ddf"].float()
        warped = warp(moving, ddf)[0, 0].numpy()
        warped_labels = warp(case["moving_labels"].float(), ddf, mode="nearest")
        warped_mask = warped_labels[0, 0].numpy() > 0
        errors = [o - f for o, f in zip(offsets(warped, fixed_mask, fixed_mask), fixed_offsets)]
        result["methods"][name] = {
            "dice": float(mean_dice(warped_labels, case["fixed_labels"].float(), case.get("labels", [1]))),
            "mask_offset": mean_outline_offset(warped_mask, fixed_mask), "outline_errors": errors}
        print(f"{name}: Dice {result['methods'][name]['dice']:.4f}, mask offset "
              f"{result['methods'][name]['mask_offset']:+.2f} px, outline errors "
              + " ".join(f"{e:+.2f}" for e in errors) + " px", flush=True)
    return result


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, row in result["methods"].items():
        line, = ax.plot(result["levels"], row["outline_errors"], marker="o",
                        label=f"{name} (Dice {row['dice']:.4f}, mask {row['mask_offset']:+.2f} px)")
        ax.axhline(row["mask_offset"], color=line.get_color(), lw=0.8, ls=":")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="outline level (fraction of the 99th percentile inside the fixed mask)",
           ylabel="warped outline - fixed outline (px, + outside)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="elastix_2d", help="a 2D case of benchmarks.cases")
    parser.add_argument("--methods", nargs="+", default=["lddmm", "rdmm", "vsvf", "ants", "elastix"])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="built cases are cached here")
    args = parser.parse_args(argv)
    groups = {name: group for group in (*GROUPS, *VALIDATION_GROUPS) for _, name in case_names([group], [0])}
    if args.case not in groups:
        parser.error(f"--case must be a case of benchmarks.cases (seed 0), got {args.case!r}")
    if not args.data_dir.is_dir():
        parser.error(f"data folder not found: {args.data_dir} (set --data-dir or $MONAI_DIFFREG_SHARED)")
    make_output_folder(parser, args.output)
    torch.set_num_threads(args.threads)
    case = torch.load(get_case(args.data_dir, groups[args.case], args.case, 1.0, args.cache_dir), weights_only=True)
    result = {"case": args.case, **measure(case, args.methods, args.threads)}
    with atomic_path(args.output / "outline_offsets.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    plot(result, args.output / "outline_offsets.png", f"{args.case}: where the warped outline lies")


if __name__ == "__main__":
    main()
