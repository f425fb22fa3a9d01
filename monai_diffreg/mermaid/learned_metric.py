"""vSVF with a learned local metric as a registration network (the ``metric_learning`` bundle's ``network_def``).

:class:`LearnedMetricVSVF` holds a :class:`~.local_metric.LocalWeightNetwork` and the registration settings, and obeys
the network contract of :mod:`monai_diffreg.networks.contract`, so a bundle's ``NetworkRegistration``, ``register()``,
the CLI and the MONAI Label app use it as any trained network. Its output is an optimisation, not one forward pass:

* **eval mode** (inference): ``forward(moving, fixed)`` runs :func:`~.local_metric.local_metric_register`, the
  momentum optimised coarse to fine with the weights the network predicts from the moving image (autograd is
  switched on inside, also under ``torch.no_grad``); returns ``ddf``, ``inverse_ddf``, ``warped``, ``velocity``.
* **train mode** (learning the metric, amortised over a stream of pairs): ``forward(moving, fixed)`` returns the
  learning energy of the batch, ``{"loss", "image", "prior", "omt", "tv"}``. Each pair's momentum is optimised
  from zero for ``training_steps`` Adam steps on a grid ``training_level`` times coarser, with the predicted
  weights held fixed; the loss is then :func:`~.local_metric.local_metric_energy` at that momentum, with the
  weights' gradient. When the inner problem is solved this is the gradient of ``min_m E(m, w(theta))`` in the
  network's parameters ``theta`` (envelope theorem), i.e. of the population energy of Niethammer, Kwitt, Vialard
  (CVPR 2019) over pairs drawn afresh each step instead of one fixed population with stored momenta
  (:func:`~.local_metric.learn_local_weights`). Train it with
  :class:`~monai_diffreg.engines.training.RegistrationTrainer` and
  :func:`~monai_diffreg.engines.training.energy_step` (models that return their own loss), DDP included.

Units: ``sigmas``, ``weight_sigma`` and ``learning_rate`` in mm; the inputs' voxel size is ``input_spacing`` (mm)
and the weight network sees images resampled to ``network_spacing`` (mm), the voxel size it is trained at
(:func:`~.local_metric.predict_local_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from ..engines._optim_common import downsample, level_grid
from ..functional import resize_image
from ..validation import check_integer, check_positive
from .kernels import _spacing, gaussian_multipliers
from .local_metric import (DEFAULT_TV_WEIGHT, DEFAULT_WEIGHT_SIGMA, LocalWeightNetwork, local_metric_energy,
                           local_metric_register, predict_local_weights)
from .metric_learning import DEFAULT_OMT_WEIGHT
from .vsvf import DEFAULT_LEARNING_RATE, DEFAULT_REGULARIZATION_WEIGHT, DEFAULT_SIGMAS
from .vsvf import _check_settings as _check_vsvf_settings

__all__ = ["LearnedMetricVSVF"]


class LearnedMetricVSVF(nn.Module):
    """vSVF whose kernel weights a :class:`~.local_metric.LocalWeightNetwork` predicts (module docstring).

    Args:
        spatial_dims: 2 or 3.
        sigmas: the ``N`` Gaussian widths (mm); global_weights: the weights an untrained network predicts
            everywhere (``N`` numbers >= 0 summing to 1; None: equal, vSVF's default kernel).
        hidden_channels, kernel_size, weight_sigma: the weight network's (``weight_sigma`` in mm).
        network_spacing: the voxel size (mm, one number or one per axis) the weight network is trained at and
            applied at; input_spacing: the voxel size (mm) of the images ``forward`` receives.
        regularization_weight, image_loss, ncc_window, image_sigma, levels, iterations, learning_rate, num_steps,
            tolerance, map_factor: the registration's (:func:`~.vsvf.vsvf_register`'s).
        omt_weight, tv_weight: weights of the OMT and total-variation penalties of the learning energy.
        training_level: downsampling factor (>= 1) of the inner optimisation's grid in train mode;
            training_steps: its Adam steps.
    """

    #: the registration is an optimisation, not one forward pass (:mod:`monai_diffreg.networks.contract`)
    optimises_at_inference = True

    def __init__(self, spatial_dims: int = 3, sigmas: Sequence[float] = DEFAULT_SIGMAS,
                 global_weights: Sequence[float] | None = None, *, hidden_channels: int = 16, kernel_size: int = 3,
                 weight_sigma: float = DEFAULT_WEIGHT_SIGMA, network_spacing: float | Sequence[float] = 2.0,
                 input_spacing: float | Sequence[float] = 1.0,
                 regularization_weight: float = DEFAULT_REGULARIZATION_WEIGHT, image_loss: str = "ncc",
                 ncc_window: int = 9, image_sigma: float = 1.0, levels: Sequence[float] | None = None,
                 iterations: Sequence[int] | None = None, learning_rate: float = DEFAULT_LEARNING_RATE,
                 num_steps: int = 7, tolerance: float = 1e-4, map_factor: float = 1.0,
                 omt_weight: float = DEFAULT_OMT_WEIGHT, tv_weight: float = DEFAULT_TV_WEIGHT,
                 training_level: float = 2.0, training_steps: int = 30) -> None:
        super().__init__()
        caller = type(self).__name__
        if spatial_dims not in (2, 3):
            raise ValueError(f"{caller}(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
        self.spatial_dims = spatial_dims
        (widths, _), factors, counts = _check_vsvf_settings(
            caller, sigmas=sigmas, weights=None, regularization_weight=regularization_weight, image_loss=image_loss,
            levels=levels, iterations=iterations, learning_rate=learning_rate, num_steps=num_steps,
            tolerance=tolerance, map_factor=map_factor, ndim=spatial_dims)
        self.registration = {"sigmas": tuple(widths), "regularization_weight": regularization_weight,
                             "image_loss": image_loss, "ncc_window": ncc_window, "image_sigma": image_sigma,
                             "levels": tuple(factors), "iterations": tuple(counts), "learning_rate": learning_rate,
                             "num_steps": num_steps, "tolerance": tolerance, "map_factor": map_factor}
        if len(set(widths)) < 2:
            raise ValueError(f"{caller}(): 'sigmas' must hold at least two distinct widths, got {sigmas!r}")
        self.input_spacing = _spacing(_per_axis(input_spacing, spatial_dims), spatial_dims, caller)
        start = [1.0 / len(widths)] * len(widths) if global_weights is None else global_weights
        self.weight_network = LocalWeightNetwork(
            spatial_dims, len(widths), start, hidden_channels=hidden_channels, kernel_size=kernel_size,
            weight_sigma=weight_sigma, spacing=_spacing(_per_axis(network_spacing, spatial_dims), spatial_dims, caller))
        self.omt_weight = check_positive(omt_weight, "omt_weight", caller, allow_zero=True)
        self.tv_weight = check_positive(tv_weight, "tv_weight", caller, allow_zero=True)
        if check_positive(training_level, "training_level", caller) < 1:
            raise ValueError(f"{caller}(): 'training_level' must be a downsampling factor >= 1, got {training_level!r}")
        self.training_level = float(training_level)
        self.training_steps = check_integer(training_steps, "training_steps", caller, minimum=1)

    def extra_repr(self) -> str:
        """The registration settings (summary.json names them)."""
        return ", ".join(f"{k}={v}" for k, v in self.registration.items() if k not in ("ncc_window", "image_sigma"))

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval mode: the registration ``{"ddf", "inverse_ddf", "warped", "velocity"}`` ``(B, D|C, *S)``; train mode:
        the learning energy ``{"loss", "image", "prior", "omt", "tv"}`` (scalars; module docstring)."""
        if self.training:
            return self._learning_energy(moving, fixed)
        out = self._register(moving, fixed, inverse=True)
        return {key: out[key] for key in ("ddf", "inverse_ddf", "warped", "velocity")}

    def displacements(self, moving: torch.Tensor, fixed: torch.Tensor, inverse: bool = True) -> dict[str, torch.Tensor]:
        """``"ddf"`` and (``inverse``) ``"inverse_ddf"`` ``(B, D, *S)`` in voxels (the network contract)."""
        out = self._register(moving, fixed, inverse=inverse)
        return {key: out[key] for key in (("ddf", "inverse_ddf") if inverse else ("ddf",))}

    def _register(self, moving: torch.Tensor, fixed: torch.Tensor, inverse: bool) -> dict:
        with torch.enable_grad():  # the momentum is optimised, also under a caller's no_grad
            return local_metric_register(fixed, moving, self.weight_network, spacing=self.input_spacing,
                                         inverse=inverse, **self.registration)

    def _learning_energy(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        settings = self.registration
        weights = predict_local_weights(self.weight_network, moving, self.input_spacing)  # with the network's graph
        grid, grid_spacing = level_grid(tuple(fixed.shape[2:]), self.training_level, self.input_spacing)
        images = (downsample(fixed, grid), downsample(moving, grid))
        multipliers = gaussian_multipliers(grid, settings["sigmas"], grid_spacing, device=fixed.device)
        weights = resize_image(weights, size=grid)
        energy = partial(local_metric_energy, sigmas=settings["sigmas"],
                         regularization_weight=settings["regularization_weight"], omt_weight=self.omt_weight,
                         tv_weight=self.tv_weight, image_loss=settings["image_loss"], num_steps=settings["num_steps"],
                         ncc_window=settings["ncc_window"], image_sigma=settings["image_sigma"])
        momentum = torch.zeros(fixed.shape[0], self.spatial_dims, *grid, device=fixed.device, requires_grad=True)
        optimizer = torch.optim.Adam([momentum], lr=settings["learning_rate"])
        held = weights.detach()
        for _ in range(self.training_steps):
            optimizer.zero_grad(set_to_none=True)
            energy(momentum, held, *images, multipliers, grid_spacing)["total"].backward()
            optimizer.step()
        out = energy(momentum.detach(), weights, *images, multipliers, grid_spacing)
        return {"loss": out["total"], **{key: out[key] for key in ("image", "prior", "omt", "tv")}}


def _per_axis(value: float | Sequence[float], ndim: int) -> Sequence[float]:
    return [value] * ndim if isinstance(value, (int, float)) and not isinstance(value, bool) else value
