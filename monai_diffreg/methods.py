"""Registration methods by name: the built-in optimisation method and learned MONAI bundles.

The method contract
-------------------
A registration method is any callable object implementing :class:`RegistrationMethod`::

    out = method(fixed, moving)

* ``fixed``, ``moving``: float tensors ``(1, 1, *S)`` (2D or 3D) on the **fixed grid** (the
  moving image is already resampled onto it, and affinely pre-aligned when the caller asked
  for an affine stage), on the device the method was loaded for. Intensities are as read
  from the files: intensity normalisation is the method's own business.
* ``out``: a dict with at least ``"ddf"``, ``(1, D, *S)`` in fixed-grid voxels, pull-back
  from fixed to moving (package convention, :mod:`monai_diffreg.functional`); optionally
  ``"inverse_ddf"`` (same layout, moving to fixed), ``"velocity"`` (the stationary velocity
  field) and ``"uncertainty"`` ``(1, 1, *S)`` (e.g. the posterior standard deviation of a
  probabilistic model) and ``"warped_levels"`` ``(1, L, *S)`` (the moving image warped by each
  level of a multi-level method, coarse to fine, for inspection) and ``"summary"``, a dict of
  JSON-serialisable values the method reports about the call (e.g. an estimated regularisation
  weight), which the API copies into ``summary.json`` as ``"method_summary"``. Other keys are ignored.
* A method may take the keyword ``inverse`` (``method(fixed, moving, inverse=False)``): the caller
  then does not need ``"inverse_ddf"`` and the method may skip computing it (:func:`run_method`
  passes it to the methods whose ``__call__`` accepts it).
* Optional attributes that :func:`monai_diffreg.register` reads before any heavy work:
  ``expected_spacing_mm``, the voxel size the method was made for (a tuple of ``D`` millimetres
  in the working grid's axis order, one number for all axes, or None / absent: any spacing; a
  learned method states the spacing it was trained at times the scale factor it applies to its
  inputs, e.g. the bundles' networks, trained at 2 mm, with ``image_scale`` 0.5 expect 1 mm). A fixed image more than
  2 times finer or coarser on some axis, or strongly anisotropic, gets a ``SpacingWarning``.
  ``memory_bytes_per_voxel``: the memory its call needs per fixed-grid voxel at its peak, when
  more than the 64 bytes the shipped networks need (e.g. a full-resolution optimisation);
  :func:`monai_diffreg.input_checks.estimate_memory` adds the difference when it runs on the CPU.

Where methods come from
-----------------------
* **Built-in** methods, registered by name in :data:`BUILTIN_METHODS`: ``"flash"`` is
  :class:`monai_diffreg.lddmm.FLASHRegistration` (Fourier-space LDDMM); ``"vsvf"`` is
  :class:`monai_diffreg.mermaid.VSVFRegistration` (Mermaid's vSVF); ``"lddmm"`` is
  :class:`monai_diffreg.mermaid.LDDMMRegistration` (Mermaid's LDDMM shooting); ``"rdmm"`` is
  :class:`monai_diffreg.mermaid.RDMMRegistration` (Mermaid's RDMM, optimised weights); ``"svf_optim"`` is
  :class:`monai_diffreg.engines.svf_optim.SVFRegistration` (multi-resolution optimisation of
  a stationary velocity field) on percentile-normalised inputs (:class:`PercentileNormalised`);
  options are its settings (``levels``, ``iterations``, ``regularization_weight``, ...).
  :func:`register_method` adds one from Python; another installed package adds its own through
  the entry-point group :data:`ENTRY_POINT_GROUP` (``name = package.module:factory`` in its
  package metadata), so no list in this package is edited to add a method.
* **Bundles**: a MONAI bundle folder whose ``configs/inference.json`` defines the id
  ``"method"``, which :class:`monai.bundle.ConfigParser` instantiates into an object obeying
  the contract above. Before parsing, ``bundle_root`` is set to the bundle folder and, when a
  device is requested, ``device`` to ``$torch.device('<device>')`` (the config should build
  its network on ``@device``). Options are config overrides by id (``"method#iterations"``);
  an id that the config does not define is an error.

A bundle is found by name (:func:`resolve_bundle`), in this order: a path to a bundle folder;
each folder of ``$MONAI_DIFFREG_BUNDLES`` (``os.pathsep``-separated); the package's ``bundles``
folder (``Path(monai_diffreg.__file__).parent / "bundles"``: in a source checkout a link to the
repository's ``bundles/``, in an installed copy the bundles themselves, shipped as package data);
``<repo>/bundles`` (a checkout whose link was not created, e.g. on a file system without links).
"""

from __future__ import annotations

import inspect
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from .validation import all_finite

__all__ = [
    "RegistrationMethod",
    "PercentileNormalised",
    "MethodInfo",
    "BUILTIN_METHODS",
    "ENTRY_POINT_GROUP",
    "register_method",
    "unregister_method",
    "bundle_search_paths",
    "available_methods",
    "find_method",
    "resolve_bundle",
    "read_bundle_config",
    "load_method",
    "shared_method",
    "run_method",
    "user_cause",
    "check_method_output",
]

_INFERENCE_CONFIG = Path("configs") / "inference.json"
_METHOD_ID = "method"


@runtime_checkable
class RegistrationMethod(Protocol):
    """A registration method: ``method(fixed, moving) -> {"ddf": ..., ...}`` (module docstring)."""

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """Register ``moving`` to ``fixed``, both ``(1, 1, *S)`` on the fixed grid."""


class PercentileNormalised:
    """Run a method on inputs scaled to [0, 1] by their 0.5th and 99.5th percentiles (clipped).

    Optimisation engines expect intensities of order 1 (MSE noise level, learning rates), and
    the method contract leaves normalisation to the method; this adapter gives it to one.

    Args:
        method: a callable ``method(fixed, moving) -> dict`` (see the module docstring).
    """

    def __init__(self, method: Callable[[torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]]) -> None:
        self.method = method

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor, inverse: bool = True) -> Mapping[str, torch.Tensor]:
        """``method`` on the normalised pair; ``inverse`` is passed on when it takes it (:func:`run_method`)."""
        from .transforms.intensity import normalize_intensity_percentile

        return run_method(self.method, normalize_intensity_percentile(fixed, name="fixed", caller="PercentileNormalised"),
                          normalize_intensity_percentile(moving, name="moving", caller="PercentileNormalised"),
                          inverse=inverse)

    def __repr__(self) -> str:
        return f"PercentileNormalised({self.method!r})"


def _svf_optim(**options: Any) -> PercentileNormalised:
    from .engines.svf_optim import SVFRegistration

    return PercentileNormalised(SVFRegistration(**options))


def _flash(**options: Any) -> PercentileNormalised:
    from .lddmm import FLASHRegistration

    return PercentileNormalised(FLASHRegistration(**options))


def _vsvf(**options: Any) -> PercentileNormalised:
    from .mermaid import VSVFRegistration

    return PercentileNormalised(VSVFRegistration(**options))


def _lddmm(**options: Any) -> PercentileNormalised:
    from .mermaid import LDDMMRegistration

    return PercentileNormalised(LDDMMRegistration(**options))


def _rdmm(**options: Any) -> PercentileNormalised:
    from .mermaid import RDMMRegistration

    return PercentileNormalised(RDMMRegistration(**options))


#: name -> (factory called with the method's options, one-line description); extended by
#: :func:`register_method` and by other packages' ``monai_diffreg.methods`` entry points
BUILTIN_METHODS: dict[str, tuple[Callable[..., object], str]] = {
    "svf_optim": (_svf_optim, "built-in: multi-resolution optimisation of a stationary velocity field (no training); "
                              "options: monai_diffreg.engines.svf_optim.optimise_svf arguments"),
    "flash": (_flash, "built-in: FLASH, geodesic shooting of a band-limited velocity (LDDMM in Fourier space, "
                      "no training); options: monai_diffreg.lddmm.flash_register arguments (alpha, sigma, ...)"),
    "vsvf": (_vsvf, "built-in: vSVF (Mermaid), a stationary velocity v = K * m of a momentum m with a multi-Gaussian "
                    "kernel (no training); options: monai_diffreg.mermaid.vsvf_register arguments"),
    "lddmm": (_lddmm, "built-in: LDDMM (Mermaid), geodesic shooting of a vector momentum in the spatial domain with a "
                      "multi-Gaussian kernel (no training); options: monai_diffreg.mermaid.lddmm_register arguments"),
    "rdmm": (_rdmm, "built-in: RDMM (Mermaid), LDDMM shooting with a spatially varying multi-Gaussian kernel whose "
                    "weights are advected and optimised (no training); options: monai_diffreg.mermaid.rdmm_register arguments"),
}

#: entry-point group through which another installed package adds methods (``name = module:factory``)
ENTRY_POINT_GROUP = "monai_diffreg.methods"
_entry_points_loaded = False


def register_method(name: str, factory: Callable[..., object], description: str = "", *,
                    replace: bool = False) -> None:
    """Make a method available by name to :func:`load_method`, ``register()``, the CLI and evaluation.

    Args:
        name: the method's name (letters, digits, ``_`` and ``-``); a bundle of the same name is then shadowed.
        factory: called as ``factory(**options)``, returns an object obeying the method contract
            (module docstring); a ``TypeError`` it raises for an unknown option is reported as a bad option.
        description: one line for ``monai-diffreg methods`` (default: the factory's docstring's first line).
        replace: allow replacing a method already registered under ``name``.

    Raises:
        ValueError: a bad name, a factory that is not callable, or a name already taken (without ``replace``).
    """
    _load_entry_points()
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"register_method(): 'name' must be a non-empty name of letters, digits, '_' or '-', got {name!r}")
    if not callable(factory):
        raise ValueError(f"register_method(): 'factory' must be callable, got {type(factory).__name__}")
    if name in BUILTIN_METHODS and not replace:
        raise ValueError(f"register_method(): a method called {name!r} is already registered (replace=True replaces it)")
    doc = (getattr(factory, "__doc__", None) or "").strip().splitlines()
    BUILTIN_METHODS[name] = (factory, description or (doc[0] if doc else name))


def unregister_method(name: str) -> None:
    """Remove a method added by :func:`register_method` (a ``KeyError``-free no-op for unknown names)."""
    BUILTIN_METHODS.pop(name, None)


def _load_entry_points() -> None:
    """Register the methods other installed packages declare in :data:`ENTRY_POINT_GROUP` (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name not in BUILTIN_METHODS:
            BUILTIN_METHODS[point.name] = (_deferred(point), f"from the installed package entry point {point.value}")


def _deferred(point) -> Callable[..., object]:
    """A factory that imports an entry point's factory on first use (listing methods imports nothing)."""
    def factory(**options: Any) -> object:
        return point.load()(**options)
    return factory


def _build_builtin(name: str, options: Mapping[str, Any]) -> object:
    """Instantiate a built-in method; a constructor rejecting an option becomes a ValueError."""
    try:
        return BUILTIN_METHODS[name][0](**options)
    except TypeError as err:
        raise ValueError(f"load_method(): bad option(s) {sorted(options)} for '{name}': {err}") from None


@dataclass(frozen=True)
class MethodInfo:
    """One available method: its name, kind (``"builtin"`` or ``"bundle"``), location and description."""

    name: str
    kind: str
    location: str
    description: str


def bundle_search_paths() -> list[Path]:
    """Folders searched for bundles by name, in order (module docstring)."""
    paths = [Path(p) for p in os.environ.get("MONAI_DIFFREG_BUNDLES", "").split(os.pathsep) if p]
    paths.append(Path(__file__).resolve().parent / "bundles")
    paths.append(Path(__file__).resolve().parents[1] / "bundles")
    return paths


def _is_bundle(folder: Path) -> bool:
    return (folder / _INFERENCE_CONFIG).is_file()


def _description(bundle: Path) -> str:
    meta = bundle / "configs" / "metadata.json"
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "MONAI bundle"
    return str(data.get("description") or data.get("name") or "MONAI bundle").splitlines()[0]


def _bundles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in bundle_search_paths():
        if root.is_dir():
            for folder in sorted(root.iterdir()):
                if folder.name not in found and _is_bundle(folder):
                    found[folder.name] = folder.resolve()  # its real place, not through a link
    return found


def available_methods() -> list[MethodInfo]:
    """Every method :func:`load_method` accepts by name: built-in ones first, then bundles found."""
    _load_entry_points()
    infos = [MethodInfo(name, "builtin", "monai_diffreg", desc) for name, (_, desc) in BUILTIN_METHODS.items()]
    infos += [MethodInfo(name, "bundle", str(path), _description(path))
              for name, path in _bundles().items() if name not in BUILTIN_METHODS]
    return infos


def find_method(name_or_path: str | os.PathLike, caller: str = "find_method",
                argument: str = "name_or_path") -> MethodInfo:
    """Look a method up by built-in name, bundle name or bundle path (no code is run).

    Args:
        name_or_path: what the user asked for.
        caller, argument: public callable and argument names for the error message.

    Raises:
        ValueError: no such method; the message lists the available methods.
    """
    _load_entry_points()
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_METHODS:
        return MethodInfo(name_or_path, "builtin", "monai_diffreg", BUILTIN_METHODS[name_or_path][1])
    if isinstance(name_or_path, (str, os.PathLike)) and os.fspath(name_or_path):
        path = Path(name_or_path).expanduser()
        if path.is_dir() and _is_bundle(path):
            return MethodInfo(path.name, "bundle", str(path.resolve()), _description(path))
        found = _bundles().get(os.fspath(name_or_path)) if isinstance(name_or_path, str) else None
        if found is not None:
            return MethodInfo(found.name, "bundle", str(found), _description(found))
    names = ", ".join(info.name for info in available_methods())
    raise ValueError(f"{caller}(): '{argument}' is not a known method or bundle: {name_or_path!r}; available: {names} "
                     f"(or a path to a bundle folder with {_INFERENCE_CONFIG.as_posix()})")


def resolve_bundle(name: str | os.PathLike) -> Path:
    """Folder of the bundle called ``name`` (or at path ``name``).

    Raises:
        ValueError: no such bundle; the message lists the available methods.
    """
    info = find_method(name, "resolve_bundle", "name")
    if info.kind != "bundle":
        raise ValueError(f"resolve_bundle(): '{name}' is a built-in method, not a bundle")
    return Path(info.location)


def read_bundle_config(bundle: str | os.PathLike, configs: str | Sequence[str] = "inference"):
    """A :class:`monai.bundle.ConfigParser` of a bundle's configs, as ``monai.bundle run`` would read them.

    Args:
        bundle: bundle name or folder (:func:`resolve_bundle`).
        configs: config name(s) under ``configs/`` without ``.json`` (several are merged in order,
            e.g. ``["train", "multi_gpu_train"]``).

    Returns:
        the parser, with ``metadata.json`` read and ``bundle_root`` set to the bundle folder.

    Raises:
        ValueError: unknown bundle; FileNotFoundError: no such config.
    """
    from monai.bundle import ConfigParser

    folder = resolve_bundle(bundle)
    names = [configs] if isinstance(configs, str) else list(configs)
    files = [folder / "configs" / f"{name}.json" for name in names]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"read_bundle_config(): {folder.name} has no config {str(file)!r}")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    meta = folder / "configs" / "metadata.json"
    if meta.is_file():
        parser.read_meta(str(meta))
    parser["bundle_root"] = str(folder)
    return parser


def _load_bundle_method(bundle: Path, device: str | torch.device | None, options: Mapping[str, Any]) -> object:
    parser = read_bundle_config(bundle)
    if _METHOD_ID not in parser:
        raise ValueError(f"load_method(): bundle {str(bundle)!r} defines no id '{_METHOD_ID}' in "
                         f"{_INFERENCE_CONFIG.as_posix()} (see monai_diffreg.methods for the contract)")
    unknown = [key for key in options if key not in parser]
    if unknown:
        raise ValueError(f"load_method(): option(s) {unknown} are not ids of {bundle.name}'s "
                         f"{_INFERENCE_CONFIG.as_posix()}; pass config ids such as '{_METHOD_ID}#<argument>'")
    if device is not None:
        parser["device"] = f"$torch.device('{torch.device(device)}')"
    for key, value in options.items():
        parser[key] = value
    try:
        return parser.get_parsed_content(_METHOD_ID)
    except RuntimeError as error:  # MONAI's parser wraps what a component raised in RuntimeErrors
        raise user_cause(error) or error from None


def user_cause(error: BaseException, kinds: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError)
               ) -> BaseException | None:
    """The first exception of ``kinds`` in ``error``'s chain (MONAI's config parser wraps what a component
    raised in RuntimeErrors), or None."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, kinds):
        cause = cause.__cause__ or cause.__context__
    return cause


def load_method(name_or_path: str | os.PathLike, device: str | torch.device | None = None,
                **options: Any) -> RegistrationMethod:
    """Instantiate a registration method by name or bundle path.

    Args:
        name_or_path: a built-in name (``"svf_optim"``), a bundle name (``"vxm_prob"``) or a
            path to a bundle folder.
        device: device to run on (``"cpu"``, ``"cuda"``, ``"cuda:1"``); default: the method's
            own default. Built-in ``nn.Module`` methods are moved there; bundles get it as
            their ``device`` id.
        options: built-in methods: constructor arguments; bundles: config overrides by id.

    Returns:
        the method object (see the module docstring for its contract).

    Raises:
        ValueError: unknown name (the message lists the available methods) or bad options.
    """
    info = find_method(name_or_path, "load_method", "name_or_path")
    if info.kind == "builtin":
        method = _build_builtin(info.name, options)
        if device is not None and isinstance(method, torch.nn.Module):
            method = method.to(torch.device(device))
    else:
        method = _load_bundle_method(Path(info.location), device, options)
    if not callable(method):
        raise TypeError(f"load_method(): '{name_or_path}' built a {type(method).__name__}, which is not callable")
    return method  # type: ignore[return-value]


_SHARED: OrderedDict[tuple, RegistrationMethod] = OrderedDict()
_SHARED_SIZE = 2


def _bundle_files_stamp(folder: Path) -> tuple:
    """(name, size, mtime) of every file under the bundle's ``configs/`` and ``models/``: changes when either does."""
    stamp = []
    for part in ("configs", "models"):
        for root, _, names in os.walk(folder / part):
            for name in names:
                st = os.stat(os.path.join(root, name))
                stamp.append((os.path.join(root, name), st.st_size, st.st_mtime_ns))
    return tuple(sorted(stamp))


def shared_method(name_or_path: str | os.PathLike, device: str | torch.device | None = None,
                  **options: Any) -> RegistrationMethod:
    """:func:`load_method`, reusing the object an earlier call built for the same bundle (its config and weight
    files unchanged), device and options; for callers that run one method on many pairs (:func:`monai_diffreg.register`
    in a loop skips re-reading the config and weights, ~25 ms). Built-in methods, and options that are not plain
    JSON values, are built anew each time. The object is shared: do not modify it.
    """
    info = find_method(name_or_path, "load_method", "name_or_path")
    try:
        key = (info.location, str(device), json.dumps(options, sort_keys=True))
    except TypeError:  # objects among the options: nothing to compare them by
        key = None
    if info.kind != "bundle" or key is None:
        return load_method(name_or_path, device, **options)
    key = (*key, _bundle_files_stamp(Path(info.location)))
    if key in _SHARED:
        _SHARED.move_to_end(key)
        return _SHARED[key]
    method = load_method(name_or_path, device, **options)
    _SHARED[key] = method
    while len(_SHARED) > _SHARED_SIZE:
        _SHARED.popitem(last=False)
    return method


def run_method(method: RegistrationMethod, fixed: torch.Tensor, moving: torch.Tensor, inverse: bool = True) -> object:
    """``method(fixed, moving)``, telling a method that accepts the keyword whether ``"inverse_ddf"`` is wanted."""
    try:
        accepts = "inverse" in inspect.signature(method).parameters
    except (TypeError, ValueError):  # no introspectable signature (e.g. some builtins)
        accepts = False
    return method(fixed, moving, inverse=inverse) if accepts else method(fixed, moving)


def check_method_output(out: object, fixed: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    """Validate a method's output against the contract and return it as a dict.

    Args:
        out: what ``method(fixed, moving)`` returned.
        fixed: the fixed input ``(1, 1, *S)``.
        name: the method's name, for messages.

    Returns:
        the output dict (the API uses ``ddf``, ``inverse_ddf``, ``velocity``, ``uncertainty``, ``warped_levels``,
        ``summary``, and ``affine``: the voxel matrix of a learned affine part already in ``ddf``).
    """
    spatial = tuple(fixed.shape[2:])
    ndim = len(spatial)
    if not isinstance(out, Mapping) or "ddf" not in out:
        got = sorted(map(str, out)) if isinstance(out, Mapping) else type(out).__name__
        raise ValueError(f"method '{name}' must return a dict with key 'ddf', got {got}")
    expected = {"ddf": (1, ndim, *spatial), "inverse_ddf": (1, ndim, *spatial), "velocity": (1, ndim, *spatial),
                "uncertainty": (1, 1, *spatial), "affine": (1, ndim, ndim + 1)}
    levels = out.get("warped_levels")
    if isinstance(levels, torch.Tensor) and levels.ndim == ndim + 2 and levels.shape[1] >= 1:
        expected["warped_levels"] = (1, levels.shape[1], *spatial)
    elif levels is not None:
        expected["warped_levels"] = (1, "L", *spatial)
    for key, shape in expected.items():
        value = out.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"method '{name}' returned '{key}' of shape {got}, expected {shape}")
        if not all_finite(value):
            raise ValueError(f"method '{name}' returned a non-finite '{key}' (NaN/Inf)")
    summary = out.get("summary")
    if summary is not None:
        try:
            json.dumps(summary, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"method '{name}' returned a 'summary' that is not a JSON object of finite values: {err}") from None
        if not isinstance(summary, Mapping):
            raise ValueError(f"method '{name}' returned a 'summary' that is not a dict, got {type(summary).__name__}")
    return dict(out)
