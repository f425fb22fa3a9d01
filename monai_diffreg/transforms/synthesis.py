"""SynthMorph-style synthesis of images from label maps, one stateless function per step.

SynthMorph (Hoffmann et al., "SynthMorph: learning contrast-invariant registration without
acquired images", IEEE TMI 2022; arXiv:2004.10282) trains registration networks on images
synthesised from label maps, with random contrast, blur, bias and noise, so that the network
never sees a real image yet works on any contrast. Its label maps can themselves be random
smooth shapes (:func:`random_label_map`), so no labelled data is needed at all.

Pipeline of :func:`synthesize_image` (every random number is in the parameter dict from
:func:`sample_synthesis_params`, so a synthesis can be replayed exactly):

1. per-label Gaussian intensities (GMM): ``x = mean[l] + std[l] * n``, ``n ~ N(0, 1)`` per voxel;
2. Gaussian blur of standard deviation ``blur_sigma`` voxels (one per axis);
3. multiplicative smooth bias field ``exp(b)``, ``b`` smooth from coarse control values;
4. min-max scaling to [0, 1] (:func:`~monai_diffreg.transforms.intensity.min_max_normalize`)
   and gamma: ``x <- x ** gamma``;
5. additive Gaussian noise of standard deviation ``noise_std``, then min-max scaling to [0, 1].

Tensors follow the package layout: label maps ``(B, 1, *spatial)`` integer, images
``(B, 1, *spatial)`` float, 2D or 3D.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..functional import gaussian_smooth, warp
from ..validation import check_positive, check_spatial_tensor
from .control_grid import as_spatial_shape, control_grid_shape, per_axis, upsample_control_grid
from .deformation import deformation_from_params, sample_smooth_velocity_params
from .intensity import min_max_normalize

__all__ = [
    "random_label_map",
    "sample_synthesis_params",
    "label_intensity_image",
    "gaussian_blur",
    "bias_field_from_coefficients",
    "apply_gamma",
    "add_gaussian_noise",
    "synthesize_image",
]

_PARAM_KEYS = ("label_values", "means", "stds", "blur_sigma", "bias_coefficients", "gamma", "noise_std", "seed")


def _check_labels(labels: object, caller: str) -> int:
    ndim = check_spatial_tensor(labels, "labels", caller, channels=1)
    dtype = labels.dtype  # type: ignore[union-attr]
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ValueError(f"{caller}(): 'labels' must hold integers (e.g. torch.int64), got dtype {dtype}")
    return ndim


def _range(value: Sequence[float], name: str, caller: str) -> tuple[float, float]:
    ok = isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, (int, float)) and math.isfinite(v) for v in value)
    if not ok or value[0] > value[1]:
        raise ValueError(f"{caller}(): '{name}' must be (low, high) finite numbers with low <= high, got {value!r}")
    return float(value[0]), float(value[1])


def random_label_map(
    spatial_shape: Sequence[int],
    num_labels: int = 8,
    blob_spacing: float = 8.0,
    max_displacement: float = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random label map of smooth blobs, for training without any labelled data (SynthMorph).

    ``num_labels`` smooth random fields are drawn (normal values on a control grid of spacing
    ``blob_spacing``, made dense by :func:`.control_grid.upsample_control_grid`), optionally
    warped together by a random smooth diffeomorphism (control spacing ``blob_spacing / 2``,
    components bounded by ``max_displacement`` voxels) to make the shapes less regular, and
    each voxel takes the index of the largest field (argmax). Not every label is guaranteed
    to appear in a small image.

    Args:
        spatial_shape: ``(*spatial)``, 2D or 3D.
        num_labels: number of labels ``L`` (>= 1); values are ``0 .. L - 1``.
        blob_spacing: typical blob size in voxels (> 0).
        max_displacement: bound of the warp of the blobs in voxels (0: no warp).
        generator: optional CPU ``torch.Generator`` for reproducible draws.

    Returns:
        ``(1, 1, *spatial)`` int64 label map.
    """
    caller = "random_label_map"
    shape = as_spatial_shape(spatial_shape, caller)
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"{caller}(): 'num_labels' must be an integer >= 1, got {num_labels!r}")
    spacing = check_positive(blob_spacing, "blob_spacing", caller)
    magnitude = check_positive(max_displacement, "max_displacement", caller, allow_zero=True)
    grid = control_grid_shape(shape, spacing)
    fields = upsample_control_grid(torch.randn((1, num_labels, *grid), generator=generator), shape, is_field=False)
    if magnitude > 0:
        params = sample_smooth_velocity_params(shape, spacing / 2, magnitude, generator=generator)
        fields = warp(fields, deformation_from_params(params)["ddf"])
    return fields.argmax(dim=1, keepdim=True)


def sample_synthesis_params(
    label_values: torch.Tensor | Sequence[int],
    spatial_shape: Sequence[int],
    mean_range: Sequence[float] = (0.0, 1.0),
    std_range: Sequence[float] = (0.0, 0.1),
    max_blur_sigma: float = 1.0,
    max_bias_std: float = 0.3,
    bias_control_spacing: float | Sequence[float] = 32.0,
    gamma_std: float = 0.25,
    max_noise_std: float = 0.05,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Draw every random number of one synthesis (SynthMorph's generative model).

    Args:
        label_values: the label values the map may contain (e.g. ``labels.unique()``).
        spatial_shape: the image grid ``(*spatial)`` (sets the bias control grid).
        mean_range: per-label mean intensity ~ ``U(mean_range)``.
        std_range: per-label intensity standard deviation ~ ``U(std_range)``.
        max_blur_sigma: blur standard deviation per axis ~ ``U(0, max_blur_sigma)`` voxels.
        max_bias_std: the log bias values are ``N(0, s^2)`` with ``s ~ U(0, max_bias_std)``.
        bias_control_spacing: distance between bias control points in voxels.
        gamma_std: ``gamma = exp(N(0, gamma_std^2))``.
        max_noise_std: additive noise standard deviation ~ ``U(0, max_noise_std)`` (on the [0, 1] scale).
        generator: optional CPU ``torch.Generator`` for reproducible draws.

    Returns:
        dict with ``"label_values"`` ``(K,)`` int64 sorted unique; ``"means"``, ``"stds"`` ``(K,)``
        float32; ``"blur_sigma"`` tuple of D floats; ``"bias_coefficients"`` ``(1, 1, *grid)``
        log-bias control values; ``"gamma"``, ``"noise_std"`` floats; ``"seed"`` int for the
        per-voxel draws (GMM texture and noise).
    """
    caller = "sample_synthesis_params"
    values = torch.as_tensor(label_values).flatten().unique()
    if values.numel() == 0 or values.dtype.is_floating_point:
        raise ValueError(f"{caller}(): 'label_values' must be a non-empty set of integers, got {label_values!r}")
    shape = as_spatial_shape(spatial_shape, caller)
    mean_low, mean_high = _range(mean_range, "mean_range", caller)
    std_low, std_high = _range(std_range, "std_range", caller)
    if std_low < 0:
        raise ValueError(f"{caller}(): 'std_range' must be >= 0, got {std_range!r}")
    blur = check_positive(max_blur_sigma, "max_blur_sigma", caller, allow_zero=True)
    bias = check_positive(max_bias_std, "max_bias_std", caller, allow_zero=True)
    spacing = per_axis(bias_control_spacing, len(shape), "bias_control_spacing", caller)
    gamma_spread = check_positive(gamma_std, "gamma_std", caller, allow_zero=True)
    noise = check_positive(max_noise_std, "max_noise_std", caller, allow_zero=True)

    def uniform(size, low, high):
        return low + (high - low) * torch.rand(size, generator=generator)

    grid = control_grid_shape(shape, spacing)
    return {
        "label_values": values.to(torch.int64),
        "means": uniform(values.numel(), mean_low, mean_high),
        "stds": uniform(values.numel(), std_low, std_high),
        "blur_sigma": tuple(float(s) for s in uniform(len(shape), 0.0, blur)),
        "bias_coefficients": torch.randn((1, 1, *grid), generator=generator) * float(uniform(1, 0.0, bias)),
        "gamma": float(torch.exp(torch.randn(1, generator=generator) * gamma_spread)),
        "noise_std": float(uniform(1, 0.0, noise)),
        "seed": int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
    }


def label_intensity_image(labels: torch.Tensor, label_values: torch.Tensor, means: torch.Tensor, stds: torch.Tensor,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian mixture image: ``x = means[k] + stds[k] * n`` where ``labels == label_values[k]``, ``n ~ N(0, 1)``.

    Args:
        labels: ``(B, 1, *spatial)`` integer label map.
        label_values: ``(K,)`` sorted label values; every value in ``labels`` must be one of them.
        means: ``(K,)`` mean intensity per label.
        stds: ``(K,)`` standard deviation per label.
        generator: CPU generator for the per-voxel draws (drawn on CPU, so replay is device-independent).

    Returns:
        ``(B, 1, *spatial)`` float32 image on ``labels``' device.
    """
    caller = "label_intensity_image"
    _check_labels(labels, caller)
    values = label_values.to(labels.device)
    if not (means.shape == stds.shape == values.shape and values.ndim == 1):
        raise ValueError(f"{caller}(): 'label_values', 'means' and 'stds' must all be (K,), got "
                         f"{tuple(values.shape)}, {tuple(means.shape)}, {tuple(stds.shape)}")
    index = torch.searchsorted(values, labels).clamp(max=values.numel() - 1)
    unknown = values[index] != labels
    if bool(unknown.any()):
        missing = sorted(set(labels[unknown].unique().tolist()))
        raise ValueError(f"{caller}(): 'labels' holds value(s) {missing[:10]} missing from 'label_values' "
                         f"{values.tolist()[:20]}")
    noise = torch.randn(labels.shape, generator=generator).to(labels.device)
    return means.to(labels.device, torch.float32)[index] + stds.to(labels.device, torch.float32)[index] * noise


def gaussian_blur(image: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """Gaussian blur with one standard deviation per axis in voxels; an axis with ``sigma < 1e-3`` is left as is."""
    ndim = check_spatial_tensor(image, "image", "gaussian_blur")
    if len(sigma) != ndim or any(s < 0 for s in sigma):
        raise ValueError(f"gaussian_blur(): 'sigma' must be {ndim} numbers >= 0, got {sigma!r}")
    if max(sigma) < 1e-3:
        return image
    # a 1e-3 voxel Gaussian on 3 taps has weights (0, 1, 0) exactly: those axes stay untouched
    return gaussian_smooth(image, [max(float(s), 1e-3) for s in sigma])


def bias_field_from_coefficients(coefficients: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Multiplicative bias ``exp(b)``, ``b`` the smooth dense map of the log-bias control values.

    Args:
        coefficients: ``(1, 1, *grid)`` log-bias control values.
        spatial_shape: ``(*spatial)`` of the image.

    Returns:
        ``(1, 1, *spatial)`` positive bias field.
    """
    return torch.exp(upsample_control_grid(coefficients, spatial_shape, is_field=False))


def apply_gamma(image: torch.Tensor, gamma: float) -> torch.Tensor:
    """Gamma contrast change ``x ** gamma`` of an image in [0, 1] (stays in [0, 1])."""
    check_positive(gamma, "gamma", "apply_gamma")
    return image.clamp(min=0.0) ** gamma


def add_gaussian_noise(image: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x + std * n``, ``n ~ N(0, 1)`` drawn on CPU with ``generator``; ``std = 0`` returns ``x``."""
    check_positive(std, "std", "add_gaussian_noise", allow_zero=True)
    if std == 0:
        return image
    return image + std * torch.randn(image.shape, generator=generator).to(image.device, image.dtype)


def synthesize_image(labels: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
    """Deterministic synthesis of an image from a label map with the parameters ``params``.

    Args:
        labels: ``(B, 1, *spatial)`` integer label map.
        params: output of :func:`sample_synthesis_params` for these labels.

    Returns:
        ``(B, 1, *spatial)`` float32 image in [0, 1], finite.
    """
    caller = "synthesize_image"
    ndim = _check_labels(labels, caller)
    if not isinstance(params, Mapping) or any(k not in params for k in _PARAM_KEYS):
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"{caller}(): 'params' must be a dict with keys {list(_PARAM_KEYS)} "
                         f"(from sample_synthesis_params), got {got}")
    if len(params["blur_sigma"]) != ndim or params["bias_coefficients"].ndim != ndim + 2:
        raise ValueError(f"{caller}(): 'params' were drawn for {len(params['blur_sigma'])}D images, "
                         f"got {ndim}D labels of shape {tuple(labels.shape)}")
    generator = torch.Generator().manual_seed(int(params["seed"]))
    image = label_intensity_image(labels, params["label_values"], params["means"], params["stds"], generator)
    image = gaussian_blur(image, params["blur_sigma"])
    image = image * bias_field_from_coefficients(params["bias_coefficients"].to(image.device), labels.shape[2:])
    image = apply_gamma(min_max_normalize(image), params["gamma"])
    return min_max_normalize(add_gaussian_noise(image, params["noise_std"], generator))
