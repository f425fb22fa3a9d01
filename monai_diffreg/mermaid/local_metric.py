"""Metric learning, local variant: spatially varying kernel weights predicted by a network (Mermaid's
``svf_vector_momentum_map`` with a deep smoother; Niethammer, Kwitt, Vialard, CVPR 2019).

vSVF (:mod:`.vsvf`) whose multi-Gaussian kernel varies in space. With ``N`` Gaussians ``G_{sigma_i}``
(:mod:`.kernels`) and local weights ``w_i(x) >= 0``, ``sum_i w_i(x) = 1``, the velocity of the momentum ``m`` is::

    v = sum_i sqrt(w_i) G_{sigma_i} * (sqrt(w_i) m)

(:func:`~.rdmm.rdmm_velocity` with weights ``sqrt(w)``): symmetric and positive semi-definite, and where the
weights are constant, ``w = g``, it is vSVF's ``(sum_i g_i G_{sigma_i}) * m``. The transform is stationary,
``phi = exp(v)`` by scaling and squaring (:func:`~.vsvf.vsvf_fields`: the moving image is warped by ``exp(v)``,
as in vSVF). The energy of a pair is::

    E = image_term(moving o exp(v), fixed) + regularization_weight * <m, v>
        + omt_weight * mean_x OMT(w(x)) + tv_weight * TV(w)

with ``<m, v>`` the mean over voxels of ``m . v`` (:func:`~.kernels.kernel_energy`), ``OMT`` the penalty of
:func:`~.kernels.omt_penalty` at every voxel and ``TV(w) = mean_x sum_i sum_d |w_i(x + e_d) - w_i(x)| / h_d``
(anisotropic total variation, periodic forward differences in the units of ``spacing``, like the kernels'
periodic convolution: :func:`weights_total_variation`).

The weights come from the moving image through :class:`LocalWeightNetwork`: conv, BatchNorm, leaky ReLU, conv,
BatchNorm, then :func:`weighted_linear_softmax` around the global weights ``g`` (zero logits give ``g``), then
smoothing by a small Gaussian (``weight_sigma``; a convex combination of simplex vectors stays on the simplex).
The last BatchNorm starts with zero scale, so an untrained network predicts ``g`` everywhere: learning starts
from the global metric (:mod:`.metric_learning`). :func:`learn_local_weights` trains the network jointly with the
momenta of a population of pairs; :func:`local_metric_register` registers a new pair with the trained network
(weights predicted once, then vSVF's coarse-to-fine loop on ``m``, :func:`~._momentum.optimise_momentum`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from ..engines._optim_common import EngineSettings, ProgressReporter, check_pair, downsample, level_grid, progress_reporter
from ..functional import resize_image
from ..validation import NonFiniteError, all_finite, check_integer, check_positive
from ._momentum import MOMENTUM_IMAGE_LOSSES, MomentumModel, image_energy, optimise_momentum
from .kernels import (_spacing, apply_kernel, check_kernel, check_simplex, gaussian_multiplier, gaussian_multipliers,
                      kernel_energy, omt_penalty)
from .metric_learning import DEFAULT_OMT_WEIGHT, _stack_pairs
from .rdmm import rdmm_velocity
from .vsvf import DEFAULT_LEARNING_RATE, DEFAULT_REGULARIZATION_WEIGHT, DEFAULT_SIGMAS, vsvf_fields
from .vsvf import _check_settings as _check_vsvf_settings

__all__ = ["weighted_linear_softmax", "smooth_local_weights", "local_velocity",
           "weights_total_variation", "local_metric_energy", "LocalWeightNetwork", "predict_local_weights",
           "learn_local_weights",
           "local_metric_register", "LocalMetricRegistration"]

DEFAULT_WEIGHT_SIGMA = 2.0  # units of spacing; provisional, like the penalties' weights (not tuned on real data)
DEFAULT_TV_WEIGHT = 0.01
DEFAULT_NETWORK_LEARNING_RATE = 0.01
#: Below this weight ``sqrt`` is continued linearly (same value and slope 1/sqrt(floor) at the floor): bounded
#: gradients where the softmax clamps a weight to 0; the velocity changes by less than ``floor`` there.
SQRT_FLOOR = 1e-8


def weighted_linear_softmax(logits: torch.Tensor, global_weights: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Mermaid's weighted linear softmax: ``w_i = c_i / sum_k c_k``, ``c_i = clamp(x_i - mean_j x_j + g_i, 0, 1)``.

    Args:
        logits: ``x``, e.g. ``(B, N, *S)``; global_weights: ``g`` ``(N,)`` (>= 0, summing to 1); dim: the ``N`` axis.

    Returns:
        weights on the simplex along ``dim`` (zero logits give ``g`` exactly). No guard for a zero denominator is
        needed: the unclamped ``x_i - mean_j x_j + g_i`` sum to 1, so the largest is >= 1/N and ``sum_k c_k >= 1/N``.
    """
    view = [1] * logits.ndim
    view[dim] = -1
    clamped = (logits - logits.mean(dim, keepdim=True) + global_weights.to(logits).view(view)).clamp(0.0, 1.0)
    return clamped / clamped.sum(dim, keepdim=True)


def smooth_local_weights(weights: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """``G * w`` of weights ``(B, N, *S)`` on the simplex, by the multiplier ``smoothing`` (:func:`~.kernels.gaussian_multiplier`).

    Kept on the simplex: negative values are clamped to 0 and the sum renormalised. They are rounding (below 1e-7)
    for a width of at least 2 voxels, about 1e-4 of the largest weight at 1 voxel (the Fourier Gaussian's aliasing,
    :mod:`.kernels`), where the mean of ``w`` then changes by as much.
    """
    smoothed = apply_kernel(weights, smoothing).clamp_min(0.0)
    return smoothed / smoothed.sum(1, keepdim=True)


def _sqrt_with_bounded_slope(weights: torch.Tensor) -> torch.Tensor:
    """``sqrt(w)`` for ``w >= SQRT_FLOOR``, ``w / sqrt(SQRT_FLOOR)`` below (continuous, slope at most 1e4)."""
    root = SQRT_FLOOR ** 0.5
    return torch.where(weights >= SQRT_FLOOR, weights.clamp_min(SQRT_FLOOR).sqrt(), weights / root)


def local_velocity(momentum: torch.Tensor, weights: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """``v = sum_i sqrt(w_i) G_i * (sqrt(w_i) m)`` ``(B, D, *S)`` (module docstring; units of ``m``).

    Args:
        momentum: ``(B, D, *S)``; weights: local weights ``(B, N, *S)`` on the simplex; multipliers: ``(N, *F)``
            (:func:`~.kernels.gaussian_multipliers`).
    """
    return rdmm_velocity(momentum, _sqrt_with_bounded_slope(weights), multipliers)[0]


def weights_total_variation(weights: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """``mean_x sum_i sum_d |w_i(x + e_d) - w_i(x)| / h_d`` per batch item ``(B,)`` of weights ``(B, N, *S)``
    (periodic forward differences, ``h`` the voxel size in the units of ``spacing``)."""
    ndim = weights.ndim - 2
    return sum((weights.roll(-1, dims=2 + axis) - weights).abs() / h for axis, h in zip(range(ndim), spacing)
               ).sum(1).flatten(1).mean(1)


def local_metric_energy(momentum: torch.Tensor, weights: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor,
                        multipliers: torch.Tensor, spacing: Sequence[float], *, sigmas: Sequence[float],
                        regularization_weight: float, omt_weight: float = DEFAULT_OMT_WEIGHT,
                        tv_weight: float = DEFAULT_TV_WEIGHT, omt_power: float = 1.0, image_loss: str = "ncc",
                        num_steps: int = 7, ncc_window: int = 9, image_sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """The energy of the module docstring at ``m`` ``(B, D, *S')`` with local weights ``w`` ``(B, N, *S')``.

    ``multipliers`` (:func:`~.kernels.gaussian_multipliers`) and ``spacing`` belong to the grid ``S'``; the images
    ``(B, C, *S)`` may be finer (the field is upsampled, :func:`~._momentum.image_energy`). ``sigmas``: the
    ``N`` widths (two distinct ones at least when ``omt_weight > 0``; with equal widths the OMT term is 0).

    Returns:
        ``"total"``, ``"image"``, ``"prior"`` (``<m, v>``), ``"omt"``, ``"tv"`` (scalars: batch means, unweighted)
        and ``"ddf"`` ``(B, D, *S)`` in voxels of ``S``.
    """
    velocity = local_velocity(momentum, weights, multipliers)
    ddf, image = image_energy(vsvf_fields(momentum, velocity, multipliers, spacing, False, num_steps=num_steps)["ddf"],
                              fixed, moving, image_loss=image_loss, ncc_window=ncc_window, image_sigma=image_sigma)
    prior = kernel_energy(momentum, velocity).mean()
    omt = (torch.zeros((), dtype=weights.dtype, device=weights.device) if min(sigmas) == max(sigmas)
           else omt_penalty(weights.movedim(1, -1), sigmas, omt_power).mean())
    tv = weights_total_variation(weights, spacing).mean()
    total = image + regularization_weight * prior + omt_weight * omt + tv_weight * tv
    return {"total": total, "image": image, "prior": prior, "omt": omt, "tv": tv, "ddf": ddf}


class LocalWeightNetwork(nn.Module):
    """Local kernel weights ``(B, N, *S)`` from an image ``(B, C, *S)``: conv, BatchNorm, leaky ReLU, conv, BatchNorm,
    :func:`weighted_linear_softmax` around ``global_weights``, Gaussian smoothing (module docstring).

    Args:
        spatial_dims: 2 or 3; num_gaussians: ``N``; global_weights: ``g`` (``N`` numbers >= 0 summing to 1).
        hidden_channels: channels of the first convolution; kernel_size: odd size of both convolutions (voxels).
        weight_sigma: width of the smoothing Gaussian in the units of ``spacing``.
        spacing: the voxel size per axis of the images it is trained on (None: voxel units); :meth:`forward` uses it
            unless given another, :func:`predict_local_weights` resamples images of another voxel size to it.
        in_channels: the image's channels.
    """

    def __init__(self, spatial_dims: int, num_gaussians: int, global_weights: Sequence[float] | torch.Tensor, *,
                 hidden_channels: int = 16, kernel_size: int = 3, weight_sigma: float = DEFAULT_WEIGHT_SIGMA,
                 spacing: Sequence[float] | None = None, in_channels: int = 1) -> None:
        super().__init__()
        caller = type(self).__name__
        if spatial_dims not in (2, 3):
            raise ValueError(f"{caller}(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
        check_integer(num_gaussians, "num_gaussians", caller, minimum=1)
        check_integer(hidden_channels, "hidden_channels", caller, minimum=1)
        check_integer(in_channels, "in_channels", caller, minimum=1)
        if check_integer(kernel_size, "kernel_size", caller, minimum=1) % 2 == 0:
            raise ValueError(f"{caller}(): 'kernel_size' must be odd (same-size convolutions), got {kernel_size!r}")
        self.config = {"spatial_dims": spatial_dims, "num_gaussians": num_gaussians,
                       "global_weights": check_simplex(global_weights, num_gaussians, "global_weights",
                                                       caller).detach().double().tolist(),
                       "hidden_channels": hidden_channels, "kernel_size": kernel_size,
                       "weight_sigma": check_positive(weight_sigma, "weight_sigma", caller),
                       "spacing": None if spacing is None else list(_spacing(spacing, spatial_dims, caller)),
                       "in_channels": in_channels}
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        self.layers = nn.Sequential(conv(in_channels, hidden_channels, kernel_size, padding=kernel_size // 2),
                                    norm(hidden_channels), nn.LeakyReLU(0.2),
                                    conv(hidden_channels, num_gaussians, kernel_size, padding=kernel_size // 2),
                                    norm(num_gaussians))
        nn.init.zeros_(self.layers[-1].weight)  # an untrained network predicts the global weights
        self.register_buffer("global_weights", torch.tensor(self.config["global_weights"]))

    @property
    def num_gaussians(self) -> int:
        return self.config["num_gaussians"]

    def forward(self, image: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
        """Weights ``(B, N, *S)`` on the simplex of ``image`` ``(B, C, *S)`` with voxel size ``spacing``
        (None: the network's ``spacing``)."""
        spacing = spacing if spacing is not None else self.config["spacing"]
        weights = weighted_linear_softmax(self.layers(image), self.global_weights)
        smoothing = gaussian_multiplier(image.shape[2:], self.config["weight_sigma"], spacing, device=image.device,
                                        dtype=weights.dtype)
        return smooth_local_weights(weights, smoothing)

    def save(self, path: str | os.PathLike) -> None:
        """Save the configuration and parameters (:meth:`load` rebuilds the network)."""
        torch.save({"config": self.config, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LocalWeightNetwork:
        """The network saved at ``path`` by :meth:`save`, in eval mode."""
        saved = torch.load(path, map_location=map_location, weights_only=True)
        config = dict(saved["config"])
        network = cls(config.pop("spatial_dims"), config.pop("num_gaussians"), config.pop("global_weights"), **config)
        network.load_state_dict(saved["state_dict"])
        return network.eval()


def _describe(network: object) -> str:
    """One line naming a network for error messages."""
    if not isinstance(network, LocalWeightNetwork):
        return repr(network) if isinstance(network, (str, os.PathLike)) else type(network).__name__
    config = network.config
    return (f"a LocalWeightNetwork for {config['spatial_dims']}D images of {config['in_channels']} channel(s) and "
            f"{config['num_gaussians']} Gaussians")


def _check_network(network: object, ndim: int, channels: int, widths: Sequence[float], caller: str) -> LocalWeightNetwork:
    if not isinstance(network, LocalWeightNetwork) or network.config["spatial_dims"] != ndim \
            or network.config["in_channels"] != channels or network.num_gaussians != len(widths):
        raise ValueError(f"{caller}(): 'network' must be a LocalWeightNetwork for {ndim}D images of {channels} "
                         f"channel(s) and {len(widths)} Gaussians (one per sigma), got {_describe(network)}")
    return network


def predict_local_weights(network: LocalWeightNetwork, image: torch.Tensor,
                          spacing: Sequence[float] | None = None) -> torch.Tensor:
    """The weights ``(B, N, *S')`` the network predicts for ``image`` ``(B, C, *S)`` of voxel size ``spacing``.

    The network's convolutions work in voxels of the images it was trained on: when it states their voxel size
    (``network.config["spacing"]``) and ``image`` has another, the image is resampled to that voxel size first
    (area averaging when coarser, linear otherwise; same extent), so ``S'`` is that grid; otherwise ``S' = S``.
    Resize the weights to any other grid linearly (:func:`~monai_diffreg.functional.resize_image`): a convex
    combination of simplex vectors stays on the simplex.
    """
    caller = "predict_local_weights"
    ndim = image.ndim - 2
    spacing = _spacing(spacing, ndim, caller)
    own = network.config["spacing"]
    if own is None or all(math.isclose(h, o, rel_tol=1e-6) for h, o in zip(spacing, own)):
        return network(image, spacing)
    shape = tuple(image.shape[2:])
    size = tuple(max(1, round(n * h / o)) for n, h, o in zip(shape, spacing, own))
    coarser = all(m <= n for m, n in zip(size, shape))
    resampled = resize_image(image, size=size, mode="area" if coarser else "linear")
    return network(resampled, tuple(h * n / m for h, n, m in zip(spacing, shape, size)))


def learn_local_weights(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    global_weights: Sequence[float] | None = None,
    weight_sigma: float = DEFAULT_WEIGHT_SIGMA,
    regularization_weight: float = DEFAULT_REGULARIZATION_WEIGHT,
    omt_weight: float = DEFAULT_OMT_WEIGHT,
    tv_weight: float = DEFAULT_TV_WEIGHT,
    omt_power: float = 1.0,
    image_loss: str = "ncc",
    ncc_window: int = 9,
    image_sigma: float = 1.0,
    iterations: int = 100,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    network_learning_rate: float = DEFAULT_NETWORK_LEARNING_RATE,
    num_steps: int = 7,
    level: float = 1.0,
    spacing: Sequence[float] | None = None,
    network: LocalWeightNetwork | None = None,
    callback: ProgressReporter | None = None,
    progress: bool = False,
) -> dict:
    """Train the local weight network over a population of pairs, jointly with each pair's momentum (module docstring).

    The energy is the mean over the pairs of :func:`local_metric_energy`, the weights of pair ``p`` being
    ``network(moving_p)`` (the population is one batch, BatchNorm in training mode); Adam updates the momenta and
    the network's parameters.

    Args:
        pairs: ``(fixed, moving)`` tensors ``(1, C, *S)``, 2D or 3D, all on the same grid.
        sigmas: Gaussian widths in the units of ``spacing`` (at least two distinct ones).
        global_weights: ``g`` of a new network (>= 0, sum 1; None: equal); must be None with ``network``.
        weight_sigma: a new network's smoothing width (units of ``spacing``).
        regularization_weight, omt_weight, tv_weight: weights of ``<m, v>``, the OMT and the TV terms (>= 0);
            omt_power: the OMT's ``r`` (> 0).
        image_loss, ncc_window, image_sigma, num_steps: vSVF's image term and integration (:func:`~.vsvf.vsvf_register`).
        iterations: joint Adam steps; learning_rate: the momenta's step (units of ``spacing``);
            network_learning_rate: the network's step.
        level: downsampling factor (>= 1) of the grid everything runs on (images area-downsampled; a new network
            then sees the downsampled images and records their voxel size as its ``spacing``).
        spacing: voxel size per axis of the full grid (None: voxel units).
        network: a :class:`LocalWeightNetwork` to train further (None: a new one, predicting ``g`` at first).
        callback: ``callback(0, iteration, energy)`` after each step; progress: a progress bar.

    Returns:
        dict with ``"network"`` (trained, in eval mode, on the images' device), ``"momenta"`` (one ``(1, D, *S')``
        per pair, on the level's grid) and ``"history"`` (per step, before it: ``loss``, ``image``, ``prior``,
        ``omt``, ``tv``).
    """
    caller = "learn_local_weights"
    fixed, moving = _stack_pairs(pairs, caller)
    ndim = fixed.ndim - 2
    widths, start = check_kernel(sigmas, global_weights, caller, "global_weights")
    if max(widths) == min(widths):
        raise ValueError(f"{caller}(): 'sigmas' must hold at least two distinct widths, got {sigmas!r}")
    if network is not None and global_weights is not None:
        raise ValueError(f"{caller}(): 'global_weights' must be None when 'network' is given (its own are used), "
                         f"got {global_weights!r}")
    for name, value in (("regularization_weight", regularization_weight), ("omt_weight", omt_weight),
                        ("tv_weight", tv_weight)):
        check_positive(value, name, caller, allow_zero=True)
    check_positive(omt_power, "omt_power", caller)
    check_positive(weight_sigma, "weight_sigma", caller)
    if image_loss not in MOMENTUM_IMAGE_LOSSES:
        raise ValueError(f"{caller}(): 'image_loss' must be one of {list(MOMENTUM_IMAGE_LOSSES)}, got {image_loss!r}")
    check_integer(iterations, "iterations", caller)
    check_positive(learning_rate, "learning_rate", caller)
    check_positive(network_learning_rate, "network_learning_rate", caller)
    if check_positive(level, "level", caller) < 1:
        raise ValueError(f"{caller}(): 'level' must be a downsampling factor >= 1, got {level!r}")
    check_integer(num_steps, "num_steps", caller)
    shape = tuple(fixed.shape[2:])
    grid, grid_spacing = level_grid(shape, float(level), _spacing(spacing, ndim, caller))
    if network is None:  # it states the voxel size it learns at (predict_local_weights resamples other images to it)
        network = LocalWeightNetwork(ndim, len(widths), start, weight_sigma=weight_sigma, spacing=grid_spacing,
                                     in_channels=fixed.shape[1])
    network = _check_network(network, ndim, fixed.shape[1], widths, caller).to(fixed.device).train()

    fixed, moving = downsample(fixed, grid), downsample(moving, grid)
    multipliers = gaussian_multipliers(grid, widths, grid_spacing, device=fixed.device)
    momentum = torch.zeros(fixed.shape[0], ndim, *grid, device=fixed.device, requires_grad=True)
    optimizer = torch.optim.Adam([{"params": [momentum], "lr": learning_rate},
                                  {"params": list(network.parameters()), "lr": network_learning_rate}])
    energy = partial(local_metric_energy, sigmas=widths, regularization_weight=regularization_weight,
                     omt_weight=omt_weight, tv_weight=tv_weight, omt_power=omt_power, image_loss=image_loss,
                     num_steps=num_steps, ncc_window=ncc_window, image_sigma=image_sigma)
    history = []
    with progress_reporter(iterations, caller, progress, callback) as report:
        for iteration in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            out = energy(momentum, network(moving, grid_spacing), fixed, moving, multipliers, grid_spacing)
            out["total"].backward()
            optimizer.step()
            history.append({"loss": float(out["total"].detach()),
                            **{key: float(out[key].detach()) for key in ("image", "prior", "omt", "tv")}})
            report(0, iteration, history[-1]["loss"])
    return {"network": network.eval(), "momenta": list(momentum.detach().split(1)), "history": history}


def local_metric_register(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    network: LocalWeightNetwork,
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    regularization_weight: float = DEFAULT_REGULARIZATION_WEIGHT,
    image_loss: str = "ncc",
    ncc_window: int = 9,
    image_sigma: float = 1.0,
    levels: Sequence[float] | None = None,
    iterations: Sequence[int] | None = None,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    num_steps: int = 7,
    tolerance: float = 1e-4,
    map_factor: float = 1.0,
    spacing: Sequence[float] | None = None,
    initial_momentum: torch.Tensor | None = None,
    inverse: bool = True,
    callback: ProgressReporter | None = None,
    progress: bool = False,
) -> dict:
    """Register ``moving`` to ``fixed`` (same grid) by vSVF with the local weights ``network(moving)`` (module docstring).

    The weights are predicted once (network in eval mode, no gradient; on the grid of the voxel size the network
    was trained at when it states one, :func:`predict_local_weights`), then kept: at each level they are resized to
    the momentum's grid (linearly: still on the simplex) and only ``m`` is optimised, by vSVF's loop (:func:`~._momentum.optimise_momentum`). The OMT and TV
    terms are then constants: they are reported in the history but not weighted.

    Args:
        fixed, moving: ``(B, C, *S)`` images, 2D or 3D, intensities of order 1.
        network: a trained :class:`LocalWeightNetwork` (:func:`learn_local_weights`) for these images.
        sigmas: the widths of its ``N`` Gaussians, in the units of ``spacing``.
        The others: as :func:`~.vsvf.vsvf_register`'s.

    Returns:
        dict with ``"ddf"`` (fixed to moving, voxels), ``"inverse_ddf"`` (with ``inverse``), ``"velocity"`` (voxels),
        ``"momentum"`` (physical units), ``"warped"``, ``"energy"`` (last level), ``"history"`` (per step: ``level``,
        ``iteration``, ``loss``, ``image``, ``prior``, ``omt``, ``tv``) and ``"local_weights"`` ``(B, N, *S)``.
    """
    caller = "local_metric_register"
    check_pair(fixed, moving, caller)
    (widths, _), factors, counts = _check_vsvf_settings(
        caller, sigmas=sigmas, weights=None, regularization_weight=regularization_weight, image_loss=image_loss,
        levels=levels, iterations=iterations, learning_rate=learning_rate, num_steps=num_steps, tolerance=tolerance,
        map_factor=map_factor, ndim=fixed.ndim - 2)
    network = _check_network(network, fixed.ndim - 2, fixed.shape[1], widths, caller)
    with torch.no_grad():
        local_weights = predict_local_weights(network.to(fixed.device).eval(), moving.float(), spacing)
    if not all_finite(local_weights):
        raise NonFiniteError(f"{caller}(): the weight network predicted non-finite kernel weights (NaN or Inf) for "
                             f"this image: its parameters are unusable (a corrupt or untrained weights file?)")
    model = MomentumModel(
        operators=lambda grid, grid_spacing, device: gaussian_multipliers(grid, widths, grid_spacing, device=device),
        energy=partial(local_metric_energy, sigmas=widths, regularization_weight=regularization_weight, omt_weight=0.0,
                       tv_weight=0.0, image_loss=image_loss, num_steps=num_steps, ncc_window=ncc_window,
                       image_sigma=image_sigma),
        fields=lambda m, w, multipliers, grid_spacing, inv: vsvf_fields(
            m, local_velocity(m, w, multipliers), multipliers, grid_spacing, inv, num_steps=num_steps))
    out = optimise_momentum(fixed, moving, model, caller=caller, factors=factors, counts=counts,
                            learning_rate=learning_rate, tolerance=tolerance, map_factor=map_factor, spacing=spacing,
                            initial_momentum=initial_momentum, inverse=inverse, callback=callback, progress=progress,
                            extra=local_weights, extra_learning_rate=0.0)
    del out["extra"]  # the weights resized to the map grid; the full-grid ones are returned
    out["local_weights"] = resize_image(local_weights, size=fixed.shape[2:])
    return out


class LocalMetricRegistration(EngineSettings):
    """Settings holder for :func:`local_metric_register`: ``LocalMetricRegistration(network, iterations=(40, 20))(fixed, moving)``.

    Args:
        network: a trained :class:`LocalWeightNetwork` or the path of one saved by :meth:`LocalWeightNetwork.save`.
        **settings: any keyword of :func:`local_metric_register` except ``initial_momentum``, ``inverse`` and
            ``callback``.
    """

    engine = staticmethod(local_metric_register)
    per_call = ("initial_momentum", "callback", "inverse")

    def __init__(self, network: LocalWeightNetwork | str | os.PathLike, **settings: object) -> None:
        super().__init__(**settings)
        caller = type(self).__name__
        self.network = LocalWeightNetwork.load(network) if isinstance(network, (str, os.PathLike)) else network
        checked = ("sigmas", "regularization_weight", "image_loss", "levels", "iterations", "learning_rate",
                   "num_steps", "tolerance", "map_factor")
        (widths, _), _, _ = _check_vsvf_settings(caller, weights=None, **{k: self.settings[k] for k in checked})
        if not isinstance(self.network, LocalWeightNetwork) or self.network.num_gaussians != len(widths):
            raise ValueError(f"{caller}(): 'network' must be a LocalWeightNetwork (or the path of a saved one) with "
                             f"{len(widths)} Gaussians (one per sigma), got {_describe(self.network)}")

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor, inverse: bool = True,
                 callback: ProgressReporter | None = None) -> dict:
        """Register ``moving`` to ``fixed``; see :func:`local_metric_register`."""
        return local_metric_register(fixed, moving, self.network, inverse=inverse, callback=callback, **self.settings)
