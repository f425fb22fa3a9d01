"""Export a registration network's inference path with ``torch.export`` (``.pt2`` files).

TorchScript is deprecated; ``torch.export`` programs are what PyTorch keeps supporting and
what MONAI's bundle format is moving to. The exported program is the network's
``displacements(moving, fixed)`` (posterior mean for the probabilistic model, the finest
accumulated velocity for MDReg-Net), without the warped images::

    program(moving, fixed) -> (ddf, inverse_ddf)

* ``moving``, ``fixed``: ``(B, C, *S)`` float tensors on the grid the program was exported
  for, intensities normalised as :class:`~monai_diffreg.engines.network_inference.NetworkRegistration`
  normalises them (percentiles 0.5 / 99.5 mapped to [0, 1], clipped), for a bundle: 1 mm images
  (the bundles' ``image_scale`` 0.5 resamples them to 2 mm inside the program).
* ``ddf``, ``inverse_ddf``: ``(B, D, *S)`` displacements in voxels of that grid, pull-back
  (package convention, :mod:`monai_diffreg.functional`): ``ddf`` warps ``moving`` onto ``fixed``.

Shapes. The **batch size is dynamic** (any ``B >= 1``); the **spatial size is fixed** to the
example's. Spatial dimensions cannot be dynamic with the current networks: their size
bookkeeping turns sizes into Python integers (``int(s)`` in ``scaled_size``,
``crop_spatial``, ``resize_image``'s target size and the cached identity grids), which
specialises every spatial dimension of a ``torch.export.Dim``; ``Dim.DYNAMIC`` is refused
("specialized it to be a constant") and ``Dim.AUTO`` silently gives a static program. In an
experiment that made those helpers keep symbolic sizes (no ``int()``, uncached grids, the
``warp`` scale computed from tensors), both networks (small widths, ``image_scale`` 1) exported
with ``Dim.DYNAMIC`` spatial sizes (multiples of the network's divisor, checked at run time) and
matched eager outputs on a second size; that change belongs to ``networks/pair_geometry.py`` and
``functional/``, not here.
:func:`load_exported` checks the spatial size and names the one the program takes.

The identity grids of :mod:`monai_diffreg.functional` are cached by shape for eager calls and
built afresh while tracing (:func:`~monai_diffreg.functional.grid.identity_grid`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from .networks.contract import RegistrationNetwork
from .validation import check_spatial_tensor

__all__ = ["export_network", "load_exported", "export_bundle", "BundleExport", "DEFAULT_EXPORT_SIZE"]

#: spatial size of a bundle's example pair when none is given: the built-in sample's 1 mm grid.
DEFAULT_EXPORT_SIZE = (160, 192, 160)

class _Displacements(nn.Module):
    """``forward(moving, fixed) -> (ddf, inverse_ddf)`` from ``network.displacements`` (the exported path)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.network.displacements(moving, fixed)
        return out["ddf"], out["inverse_ddf"]


def _check_pt2_path(path: object, caller: str, argument: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path).endswith(".pt2"):
        raise ValueError(f"{caller}(): '{argument}' must be a file path ending in .pt2, got {path!r}")
    return Path(path)


def _check_example(x: object, name: str) -> torch.Tensor:
    check_spatial_tensor(x, name, "export_network")  # raises unless a (B, C, *S) tensor
    image = cast(torch.Tensor, x)
    if not image.is_floating_point():
        raise ValueError(f"export_network(): '{name}' must be a floating-point tensor, got {image.dtype}")
    return image


def export_network(network: nn.Module, example_moving: torch.Tensor, example_fixed: torch.Tensor,
                   path: str | os.PathLike | None = None, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """Export ``network.displacements`` as ``(moving, fixed) -> (ddf, inverse_ddf)`` with ``torch.export``.

    The network is traced in ``eval()`` mode (its mode is restored afterwards) on the device of
    its parameters and the examples. The spatial size is fixed to the examples' (see the module
    docstring for why); the batch size is dynamic unless ``dynamic_batch`` is False.

    Args:
        network: a module with ``displacements(moving, fixed) -> {"ddf", "inverse_ddf", ...}``
            (:class:`~monai_diffreg.networks.ProbabilisticVoxelMorph`, :class:`~monai_diffreg.networks.MDRegNet`).
        example_moving, example_fixed: ``(B, C, *S)`` example inputs (values do not matter for
            the program, only shapes, dtype and device).
        path: where to save the program (``.pt2``, written atomically; parent folders are
            created); None: do not save.
        dynamic_batch: let the batch size vary (the examples are repeated to batch 2 for
            tracing when they have batch 1, since ``torch.export`` specialises sizes 0 and 1).

    Returns:
        the :class:`torch.export.ExportedProgram`; ``program.module()(moving, fixed)`` runs it.
        Its ``example_inputs`` are dropped (saved, they would make the file as large as the pair).

    Raises:
        TypeError: an example is not a tensor.
        ValueError: a bad argument (named in the message).
    """
    caller = "export_network"
    if not isinstance(network, nn.Module) or not isinstance(network, RegistrationNetwork):
        raise ValueError(f"{caller}(): 'network' must be an nn.Module with a displacements(moving, fixed) method, "
                         f"got {type(network).__name__}")
    if getattr(network, "optimises_at_inference", False):
        raise ValueError(f"{caller}(): {type(network).__name__} optimises each registration at inference (an "
                         "optimisation loop under autograd, not one forward pass), which torch.export cannot capture; "
                         "run it through its bundle, register() or the CLI")
    moving, fixed = _check_example(example_moving, "example_moving"), _check_example(example_fixed, "example_fixed")
    if moving.shape[0] != fixed.shape[0] or moving.shape[2:] != fixed.shape[2:]:
        raise ValueError(f"{caller}(): 'example_moving' and 'example_fixed' must share batch and spatial sizes, "
                         f"got {tuple(moving.shape)} and {tuple(fixed.shape)}")
    if not isinstance(dynamic_batch, bool):
        raise ValueError(f"{caller}(): 'dynamic_batch' must be True or False, got {dynamic_batch!r}")
    target = None if path is None else _check_pt2_path(path, caller, "path")
    dynamic_shapes = None
    if dynamic_batch:
        if moving.shape[0] == 1:
            moving, fixed = moving.expand(2, *moving.shape[1:]), fixed.expand(2, *fixed.shape[1:])
        batch = torch.export.Dim.DYNAMIC
        dynamic_shapes = ({0: batch}, {0: batch})
    was_training = network.training
    network.eval()
    try:  # the functional grid caches are bypassed while tracing (functional.grid)
        program = torch.export.export(_Displacements(network), (moving.contiguous(), fixed.contiguous()),
                                      dynamic_shapes=dynamic_shapes)
    finally:
        network.train(was_training)
    program.example_inputs = None  # torch.export.save would store them: 79 MB for a 160x192x160 pair
    if target is not None:
        from .io import atomic_path

        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp, open(tmp, "wb") as f:  # a file object: the archive's root is "archive"
            torch.export.save(program, f)
    return program


def _input_shapes(program: torch.export.ExportedProgram) -> list[tuple[object, ...]]:
    """Shapes of the program's user inputs (ints where static, symbols where dynamic)."""
    names = set(program.graph_signature.user_inputs)
    shapes = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            value = node.meta.get("val")
            shapes.append(tuple(value.shape) if isinstance(value, torch.Tensor) else ())
    return shapes


def load_exported(path: str | os.PathLike) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Load a program saved by :func:`export_network` as ``run(moving, fixed) -> (ddf, inverse_ddf)``.

    ``run`` works without gradients (``torch.no_grad``) and checks that the images have the
    spatial size the program was exported for.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a readable ``torch.export`` program taking ``(moving, fixed)``
            and returning ``(ddf, inverse_ddf)``.
    """
    caller = "load_exported"
    file = _check_pt2_path(path, caller, "path")
    if not file.is_file():
        raise FileNotFoundError(f"{caller}(): 'path' file not found: {str(file)!r}")
    try:
        program = torch.export.load(file)
    except Exception as err:  # a corrupt archive raises several types
        message = " ".join(str(err).split())[:200]
        raise ValueError(f"{caller}(): 'path' {str(file)!r} is not a readable torch.export program "
                         f"({type(err).__name__}: {message})") from None
    shapes = _input_shapes(program)
    num_outputs = len(program.graph_signature.user_outputs)
    if len(shapes) != 2 or num_outputs != 2 or any(len(s) not in (4, 5) for s in shapes):
        raise ValueError(f"{caller}(): 'path' {str(file)!r} holds a program with {len(shapes)} inputs and "
                         f"{num_outputs} outputs, expected (moving, fixed) -> (ddf, inverse_ddf)")
    spatial = shapes[1][2:]  # the fixed image's
    module = program.module()

    def run(moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, *S)`` normalised images -> ``(ddf, inverse_ddf)`` ``(B, D, *S)`` in voxels."""
        for name, image in (("moving", moving), ("fixed", fixed)):
            if not isinstance(image, torch.Tensor) or image.ndim != len(spatial) + 2:
                got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise ValueError(f"exported program {file.name}: '{name}' must be a tensor (B, C, *S) with "
                                 f"{len(spatial)} spatial dimensions, got {got}")
            if any(isinstance(s, int) and s != n for s, n in zip(spatial, image.shape[2:])):
                raise ValueError(f"exported program {file.name}: '{name}' must have spatial size {spatial} (the "
                                 f"size it was exported for; export again with that size), "
                                 f"got {tuple(image.shape[2:])}")
        with torch.no_grad():
            ddf, inverse_ddf = module(moving, fixed)
        return ddf, inverse_ddf

    run.program = program  # type: ignore[attr-defined]
    return run


@dataclass(frozen=True)
class BundleExport:
    """What :func:`export_bundle` wrote.

    Attributes:
        path: the ``.pt2`` file.
        spatial_size: the spatial size the program takes.
        max_abs_difference: largest ``|exported - eager|`` over ``ddf`` and ``inverse_ddf`` on
            the example pair, in voxels.
        seconds: time to export, save and check.
    """

    path: Path
    spatial_size: tuple[int, ...]
    max_abs_difference: float
    seconds: float


def _example_pair(size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The built-in sample pair ``(1, 1, *size)``, resized and normalised as NetworkRegistration does."""
    from .functional.resize import resize_image
    from .sample import load_sample
    from .transforms.intensity import normalize_intensity_percentile

    sample = load_sample(with_fields=False)
    pair = []
    for name in ("moving", "fixed"):
        image = sample[name].as_tensor()[None].float()
        if len(size) == 2:
            image = image[..., image.shape[-1] // 2]  # the central axial slice
        image = resize_image(image, size=size, mode="linear")
        pair.append(normalize_intensity_percentile(image, name=name))
    return pair[0], pair[1]


def export_bundle(bundle: str | os.PathLike, output: str | os.PathLike | None = None,
                  size: Sequence[int] | None = None, options: Mapping[str, Any] | None = None) -> BundleExport:
    """Export a bundle's network, with its shipped weights, to a ``.pt2`` file and check it against eager.

    The network is built by :func:`monai_diffreg.methods.load_method` on the CPU (so the
    bundle's config and weights are used exactly as for registration), exported by
    :func:`export_network` with the built-in sample pair resized to ``size`` (normalised as at
    inference), and the saved file is loaded back and compared with the eager network on that pair.

    Args:
        bundle: a bundle name (``"vxm_prob"``, ``"mdregnet"``) or folder.
        output: the ``.pt2`` file to write; default ``outputs/<bundle>.pt2`` (never inside the bundle).
        size: the spatial size of the images the program will take (1 mm grid for the shipped
            bundles); default :data:`DEFAULT_EXPORT_SIZE` for 3D networks.
        options: bundle config overrides by id, as for ``load_method`` (e.g. ``{"smoothing": False}``).

    Raises:
        ValueError: a bad argument (named in the message), or a bundle without a network.
    """
    import time

    from .methods import load_method, resolve_bundle

    caller = "export_bundle"
    start = time.perf_counter()
    folder = resolve_bundle(bundle)
    target = Path("outputs") / f"{folder.name}.pt2" if output is None else _check_pt2_path(output, caller, "output")
    method = load_method(folder, device="cpu", **dict(options or {}))
    network = getattr(method, "network", None)
    if not isinstance(network, nn.Module) or not isinstance(network, RegistrationNetwork):
        raise ValueError(f"{caller}(): 'bundle' {folder.name!r} has no network with a displacements(moving, fixed) "
                         f"method to export (its method is a {type(method).__name__})")
    spatial_dims = network.spatial_dims
    if size is None:
        if spatial_dims != 3:
            raise ValueError(f"{caller}(): 'size' is required for a {spatial_dims}D network")
        size = DEFAULT_EXPORT_SIZE
    if (isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != spatial_dims
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 8 for s in size)):
        raise ValueError(f"{caller}(): 'size' must be {spatial_dims} integers >= 8 (the network's spatial dimensions), "
                         f"got {size!r}")
    size = tuple(size)
    moving, fixed = _example_pair(size)
    export_network(network, moving, fixed, path=target)
    with torch.no_grad():
        eager = network.displacements(moving, fixed)
    exported = load_exported(target)(moving, fixed)
    difference = max(float((a - eager[k]).abs().max()) for a, k in zip(exported, ("ddf", "inverse_ddf")))
    return BundleExport(target, size, difference, time.perf_counter() - start)
