"""The kernel weights a learned-metric bundle predicts for the built-in sample's moving image, as a picture.

One axial slice of the moving image (resampled to the weight network's voxel size) and, per Gaussian of the
kernel, its local weight ``w_i(x)`` (:func:`monai_diffreg.mermaid.predict_local_weights`) with its mean::

    python -m benchmarks.learned_weights_figure --bundle metric_learning --output bundles/metric_learning/docs/learned_weights.png
"""

from __future__ import annotations

import argparse

import torch

from monai_diffreg.io import save_png
from monai_diffreg.mermaid import predict_local_weights
from monai_diffreg.methods import load_method
from monai_diffreg.sample import sample_paths
from monai_diffreg.transforms.intensity import normalize_intensity_percentile
from monai_diffreg.transforms.spatial import load_channel_first


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="metric_learning", help="a bundle whose network is a LearnedMetricVSVF")
    parser.add_argument("--output", required=True, help="the PNG file to write")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = load_method(args.bundle, device="cpu").network
    moving = load_channel_first(sample_paths()["moving"], "moving", "learned_weights_figure").float()[None]
    moving = normalize_intensity_percentile(moving, name="moving", caller="learned_weights_figure")
    with torch.no_grad():
        weights = predict_local_weights(model.weight_network.eval(), moving, model.input_spacing)
    image = torch.nn.functional.interpolate(moving, size=weights.shape[2:], mode="area")
    z = weights.shape[-1] // 2
    sigmas = model.registration["sigmas"]
    fig, axes = plt.subplots(1, 1 + len(sigmas), figsize=(3 * (1 + len(sigmas)), 3.4))
    axes[0].imshow(image[0, 0, :, :, z].T, cmap="gray", origin="lower")
    axes[0].set_title("moving image (network grid)")
    for i, (ax, sigma) in enumerate(zip(axes[1:], sigmas)):
        shown = ax.imshow(weights[0, i, :, :, z].T, cmap="viridis", vmin=0, vmax=1, origin="lower")
        ax.set_title(f"weight of G({sigma:g} mm)\nmean {float(weights[0, i].mean()):.2f}")
    for ax in axes:
        ax.axis("off")
    fig.colorbar(shown, ax=axes[1:], shrink=0.8)
    save_png(fig, args.output, dpi=80, bbox_inches="tight")
    print({sigma: round(float(weights[0, i].mean()), 3) for i, sigma in enumerate(sigmas)})


if __name__ == "__main__":
    main()
