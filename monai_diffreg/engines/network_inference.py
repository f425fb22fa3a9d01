"""A trained registration network as a registration method (the contract of :mod:`monai_diffreg.methods`).

Bundles build their ``"method"`` id from :class:`NetworkRegistration`: it loads the shipped
weights strictly, scales intensities the way the network was trained (percentiles to [0, 1]),
runs the network without gradients, and optionally adds posterior-sample uncertainty and
instance-specific refinement when the network offers them (the capabilities of
:mod:`monai_diffreg.networks.contract`, as :class:`~monai_diffreg.networks.ProbabilisticVoxelMorph` has).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..functional.compose import compose_ddf
from ..functional.warp import warp
from ..networks.contract import MultiLevelNetwork, RegistrationNetwork, SamplingNetwork
from ..transforms.intensity import normalize_intensity_percentile
from ..validation import check_positive, check_spatial_tensor
from .refinement import check_refinement, refine_network

__all__ = ["NetworkRegistration", "cascade_displacements", "load_weights", "REFINE_PRESETS"]

#: Test-time refinement settings by name (``NetworkRegistration(refine=...)``, ``--refine`` of the
#: bundles, ``--option refine=`` of the CLI, ``register(refine=...)``). ``"none"``: the network
#: alone (the default: the fast setting users expect of a learned method). ``"fast"``: 20 cheap
#: steps on half-size images with a half-size change of the velocity, then 15 at the network's
#: resolution, each stage stopped once its loss stalls (:func:`~.refinement.refine_network`);
#: chosen on validation cases among settings within 0.6x MONAI VoxelMorph's forward time (bundle docs).
REFINE_PRESETS: dict[str, dict] = {
    "none": {},
    "fast": {"refine_coarse_steps": 20, "refine_steps": 15, "refine_tolerance": 1e-4},
}


def load_weights(network: nn.Module, weights: str | os.PathLike, caller: str = "load_weights") -> nn.Module:
    """Load a ``state_dict`` file into ``network`` strictly (every key must match) and return it.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable state dict, or its keys/shapes do not match the network.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{caller}(): 'weights' file not found: {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ValueError(f"{caller}(): 'weights' {str(path)!r} is not a readable PyTorch state dict ({err})") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{caller}(): 'weights' {str(path)!r} holds a {type(state).__name__}, expected a state dict")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{caller}(): 'weights' {str(path)!r} do not fit {type(network).__name__}: {err}") from None
    return network


def cascade_displacements(network: nn.Module, moving: torch.Tensor, fixed: torch.Tensor, passes: int,
                          inverse: bool = True) -> dict[str, torch.Tensor]:
    """The network applied ``passes`` times, each pass to the moving image warped by the fields so far.

    Pass ``k`` predicts ``u_k`` from ``(moving o phi_{k-1}, fixed)``, where ``phi_{k-1}`` is the
    composition of the earlier passes (the original moving image is warped once by the composed
    field, never re-interpolated), and ``phi_k = phi_{k-1} o (id + u_k)``. Each pass is a
    diffeomorphism for diffeomorphic networks, and so is their composition (up to interpolation).
    The inverse is the reversed composition of the passes' inverses.

    Args:
        network: a :class:`~monai_diffreg.networks.contract.RegistrationNetwork`.
        moving, fixed: ``(1, 1, *S)`` intensity-normalised images on one grid.
        passes: number of network passes (>= 1; 1 is the network alone).
        inverse: also return ``"inverse_ddf"``.

    Returns:
        ``{"ddf"[, "inverse_ddf"]}``, ``(1, D, *S)`` displacements in voxels, and the network's ``"affine"``
        when it gives one and ``passes`` is 1 (the composition of several passes is no longer that affine
        followed by a deformation).
    """
    out = network.displacements(moving, fixed, inverse=inverse)
    if passes == 1:
        return dict(out)
    ddf, inverse_ddf = out["ddf"], out.get("inverse_ddf")
    for _ in range(passes - 1):
        step = network.displacements(warp(moving, ddf), fixed, inverse=inverse)
        ddf = compose_ddf(ddf, step["ddf"])
        if inverse:
            inverse_ddf = compose_ddf(step["inverse_ddf"], inverse_ddf)
    return {"ddf": ddf, "inverse_ddf": inverse_ddf} if inverse else {"ddf": ddf}


def _spacing_per_axis(value: float | Sequence[float] | None, ndim: int, caller: str) -> tuple[float, ...] | None:
    """``expected_spacing_mm`` as one positive float per axis (or None)."""
    if value is None:
        return None
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        floats = tuple(float(check_positive(v, "expected_spacing_mm", caller)) for v in values)
    except TypeError:
        floats = ()
    if len(floats) not in (1, ndim):
        raise ValueError(f"{caller}(): 'expected_spacing_mm' must be a positive number or {ndim} positive numbers "
                         f"(mm), got {value!r}")
    return floats * ndim if len(floats) == 1 else floats


class NetworkRegistration:
    """Register a pair with a trained network: ``method(fixed, moving) -> {"ddf", "inverse_ddf"[, "uncertainty"]}``.

    Args:
        network: a :class:`~monai_diffreg.networks.contract.RegistrationNetwork`; for
            ``num_samples`` also a ``SamplingNetwork``, for refinement a ``RefinableNetwork``,
            for ``save_levels`` a ``MultiLevelNetwork`` (:mod:`monai_diffreg.networks.contract`).
        weights: path of the ``state_dict`` to load (strictly); None keeps the network's weights.
        device: where to run; default CUDA when available, else CPU.
        num_samples: posterior samples for the ``"uncertainty"`` output (0: none; else >= 2).
        refine_steps: instance-specific optimisation steps from the network's prediction (0: none).
        refine_learning_rate: Adam step size of the refinement.
        refine_loss: the loss the refinement minimises (a
            :class:`~monai_diffreg.engines.refinement.RefinementLoss`), normally the one the weights
            were trained with (e.g. a :class:`~monai_diffreg.losses.prob_svf.ProbabilisticSVFLoss`
            with the training's image weight); required when refining.
        refine_smoothing_sigma: Gaussian preconditioning of the refinement's updates, in voxels of
            the velocity grid; None: the network's default.
        refine: a preset of :data:`REFINE_PRESETS` (``"none"`` or ``"fast"``); ``"fast"`` sets the
            refinement's steps, coarse steps and tolerance (with ``refine_steps`` left at 0).
        refine_coarse_steps: refinement steps on half-size images before ``refine_steps`` at full size.
        refine_tolerance: stop a refinement stage when its loss stalls (absolute change, 5 steps).
        save_levels: also return ``"warped_levels"`` ``(1, L, *S)``, the (intensity-normalised)
            moving image warped by each level's field (multi-level networks such as
            :class:`~monai_diffreg.networks.MDRegNet`); costs one more forward pass.
        cascade: number of network passes (:func:`cascade_displacements`): each further pass
            registers the moving image warped by the earlier ones and is composed with them
            (1: the network alone; not combined with ``num_samples``, refinement or ``save_levels``).
        name: the method's name in error messages.
        expected_spacing_mm: the voxel size (mm) of the images the network expects, one number or
            one per axis: the spacing it was trained at times the scale factor it applies to its inputs
            (the bundles: trained on 2 mm, ``image_scale`` 0.5, so 1 mm); None: not stated. Kept as the attribute
            ``expected_spacing_mm`` (a tuple per axis), which :func:`monai_diffreg.register`
            compares with the images' spacing (method contract, :mod:`monai_diffreg.methods`).
    """

    def __init__(self, network: nn.Module, weights: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, num_samples: int = 0, refine_steps: int = 0,
                 refine_learning_rate: float = 0.1, refine_loss: nn.Module | None = None,
                 refine_smoothing_sigma: float | None = None, save_levels: bool = False, name: str = "network",
                 refine: str = "none", refine_coarse_steps: int = 0, refine_tolerance: float | None = None,
                 expected_spacing_mm: float | Sequence[float] | None = None, cascade: int = 1) -> None:
        caller = "NetworkRegistration"
        if not isinstance(refine, str) or refine not in REFINE_PRESETS:
            raise ValueError(f"{caller}(): 'refine' must be one of {list(REFINE_PRESETS)}, got {refine!r}")
        if refine != "none":
            if refine_steps or refine_coarse_steps:
                raise ValueError(f"{caller}(): 'refine' = {refine!r} sets the refinement steps itself; leave "
                                 f"'refine_steps' and 'refine_coarse_steps' at 0 (got {refine_steps}, {refine_coarse_steps})")
            preset = REFINE_PRESETS[refine]
            refine_steps, refine_coarse_steps = preset["refine_steps"], preset["refine_coarse_steps"]
            refine_tolerance = preset["refine_tolerance"]
        if not isinstance(refine_coarse_steps, int) or isinstance(refine_coarse_steps, bool) or refine_coarse_steps < 0:
            raise ValueError(f"{caller}(): 'refine_coarse_steps' must be an integer >= 0, got {refine_coarse_steps!r}")
        if refine_tolerance is not None:
            refine_tolerance = check_positive(refine_tolerance, "refine_tolerance", caller, allow_zero=True)
        if not isinstance(num_samples, int) or num_samples < 0 or num_samples == 1:
            raise ValueError(f"{caller}(): 'num_samples' must be 0 or an integer >= 2, got {num_samples!r}")
        if not isinstance(refine_steps, int) or refine_steps < 0:
            raise ValueError(f"{caller}(): 'refine_steps' must be an integer >= 0, got {refine_steps!r}")
        if refine_smoothing_sigma is not None:
            refine_smoothing_sigma = check_positive(refine_smoothing_sigma, "refine_smoothing_sigma", caller)
        if not isinstance(network, RegistrationNetwork):
            raise ValueError(f"{caller}(): 'network' must be a registration network (forward(moving, fixed) and "
                             f"displacements(moving, fixed), monai_diffreg.networks.contract), got {type(network).__name__}")
        if num_samples and not isinstance(network, SamplingNetwork):
            raise ValueError(f"{caller}(): {type(network).__name__} has no 'sample' method, so 'num_samples' must be 0")
        if refine_steps or refine_coarse_steps:
            check_refinement(network, refine_loss, caller, "refine_loss")
        if not isinstance(save_levels, bool):
            raise ValueError(f"{caller}(): 'save_levels' must be True or False, got {save_levels!r}")
        if save_levels and not isinstance(network, MultiLevelNetwork):
            raise ValueError(f"{caller}(): {type(network).__name__} has no 'warped_level_images' method, "
                             "so 'save_levels' must be False")
        if not isinstance(cascade, int) or isinstance(cascade, bool) or cascade < 1:
            raise ValueError(f"{caller}(): 'cascade' must be an integer >= 1, got {cascade!r}")
        if cascade > 1 and (num_samples or refine_steps or refine_coarse_steps or save_levels):
            raise ValueError(f"{caller}(): 'cascade' > 1 composes several network passes and cannot be combined with "
                             "'num_samples', a refinement or 'save_levels' (each of these works on one pass's velocity)")
        expected_spacing_mm = _spacing_per_axis(expected_spacing_mm, network.spatial_dims, caller)
        if weights is not None:
            load_weights(network, weights, caller)
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.network = network.to(self.device).eval()
        self.num_samples = num_samples
        self.refine_steps = refine_steps
        self.refine_learning_rate = refine_learning_rate
        self.refine_loss = refine_loss
        self.refine_smoothing_sigma = refine_smoothing_sigma
        self.refine = refine
        self.refine_coarse_steps = refine_coarse_steps
        self.refine_tolerance = refine_tolerance
        self.save_levels = save_levels
        self.name = name
        self.expected_spacing_mm = expected_spacing_mm
        self.cascade = cascade

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor, inverse: bool = True) -> dict[str, torch.Tensor]:
        """Register ``moving`` to ``fixed``, both ``(1, 1, *S)`` on the fixed grid (see :mod:`monai_diffreg.methods`);
        ``inverse=False``: the caller does not need ``"inverse_ddf"``, which the network alone then skips."""
        expected = self.network.spatial_dims
        for key, image in (("fixed", fixed), ("moving", moving)):
            ndim = check_spatial_tensor(image, key, self.name, channels=1)
            if ndim != expected:
                raise ValueError(f"{self.name}(): this model registers {expected}D images, "
                                 f"got a {ndim}D '{key}' of shape {tuple(image.shape)}")
        fixed = normalize_intensity_percentile(fixed.to(self.device), name="fixed", caller=self.name)
        moving = normalize_intensity_percentile(moving.to(self.device), name="moving", caller=self.name)
        refining = bool(self.refine_steps or self.refine_coarse_steps)
        with torch.no_grad():
            if self.num_samples:
                out = self.network.sample(moving, fixed, num_samples=self.num_samples)
            elif refining:  # the refinement runs the network itself
                out = {}
            else:
                out = cascade_displacements(self.network, moving, fixed, self.cascade, inverse=inverse)
            if self.save_levels:
                out["warped_levels"] = self.network.warped_level_images(moving, fixed)
        if refining:
            refined = refine_network(self.network, moving, fixed, self.refine_loss, self.refine_steps,
                                     coarse_steps=self.refine_coarse_steps, learning_rate=self.refine_learning_rate,
                                     smoothing_sigma=self.refine_smoothing_sigma, tolerance=self.refine_tolerance,
                                     displacements_only=True, inverse=inverse)
            out.update(refined)
        keys = ("ddf", "inverse_ddf", "affine", "uncertainty", "warped_levels") if inverse else (
            "ddf", "affine", "uncertainty", "warped_levels")
        return {key: out[key] for key in keys if key in out}

    @property
    def learns_affine(self) -> bool:
        """Whether the network aligns the pair affinely itself (:mod:`monai_diffreg.networks.contract`)."""
        return bool(getattr(self.network, "learns_affine", False))

    def __repr__(self) -> str:
        network = type(self.network).__name__
        settings = self.network.extra_repr()  # the network's own inference settings (HyperMorph: its lambda)
        if settings:
            network = f"{network}({settings})"
        return (f"NetworkRegistration({network}, device={self.device}, "
                f"num_samples={self.num_samples}, refine={self.refine!r}, refine_steps={self.refine_steps}, "
                f"refine_coarse_steps={self.refine_coarse_steps}, cascade={self.cascade})")
