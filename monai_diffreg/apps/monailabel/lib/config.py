"""The app's settings, read from ``monailabel start_server ... --conf KEY VALUE``.

Keys (every value arrives as a string):

=====================  =====================================================================
``atlas_image``        atlas intensity image (default: the built-in MNI152-derived sample)
``atlas_labels``       atlas label map on the atlas grid (required with ``atlas_image``)
``atlas_label_names``  JSON object or ``.json`` file naming the atlas labels (see :mod:`.atlas`)
``affine``             run the affine stage before the deformable one (default ``true``; the
                       users' scans are not aligned to the atlas)
``affine_metric``      similarity of the affine stage: ``ncc`` (default, same contrast as the
                       atlas), ``mi`` (another contrast) or ``mse``
``affine_options``     JSON object of affine-stage arguments (``affine_options`` of
                       :func:`monai_diffreg.api.register`), merged over
                       :data:`DEFAULT_AFFINE_OPTIONS`, e.g. ``'{"iterations": [100, 50]}'``
``device``             ``auto`` (default: CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
``register_method``    method of the ``register`` task (default ``svf_optim``)
``cache_size``         registrations kept in memory, so ``register`` and ``atlas_propagation_*``
                       on the same image reuse one result (default 2; 0 disables; a 256^3 image
                       takes about 0.5 GB)
``<method>``           JSON object of keyword arguments for :func:`monai_diffreg.api.register`
                       when running that method, merged over :data:`DEFAULT_METHOD_OPTIONS`,
                       e.g. ``--conf svf_optim '{"iterations": [100, 50]}'``; plus the app's own
                       ``"working_spacing_mm"``: register on a grid of voxels at most that
                       large (see :mod:`.working_grid`; ``0`` or ``null``: the image's own grid)
=====================  =====================================================================

Keys MONAI Label itself reads (e.g. ``server_mode``) are left alone; other unknown keys are
reported in the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from monai_diffreg.api import AFFINE_METRICS

__all__ = ["AppConfig", "parse_conf", "json_object", "DEFAULT_METHOD_OPTIONS", "DEFAULT_AFFINE_OPTIONS",
           "WORKING_SPACING_KEY", "CONF_KEYS"]

logger = logging.getLogger(__name__)

_CALLER = "parse_conf"

#: Method option read by the app itself (not passed to ``register()``): the working grid's
#: largest voxel size in mm (:mod:`.working_grid`).
WORKING_SPACING_KEY = "working_spacing_mm"

#: Default keyword arguments per method. ``svf_optim`` optimises per request, so the app keeps
#: it cheap: a 2 mm working grid and few iterations (the library defaults are levels (4, 2)
#: with (150, 50) iterations); raise them with ``--conf svf_optim '{...}'`` for finer labels.
#: ``flash`` likewise: a 2 mm working grid and at most (30, 10) gradient steps (library default (100, 15));
#: ``vsvf``: a 2 mm working grid, levels (2, 1) of it with (50, 20) steps (library default (4, 2), (60, 30));
#: ``lddmm`` and ``rdmm`` the same as ``vsvf`` (their library defaults are vsvf's until chosen for them).
#: Learned bundles run on the image's own grid (they are trained at a given resolution).
DEFAULT_METHOD_OPTIONS: dict[str, dict[str, object]] = {
    "svf_optim": {"levels": [4, 2], "iterations": [50, 20], WORKING_SPACING_KEY: 2.0},
    "flash": {"iterations": [30, 10], WORKING_SPACING_KEY: 2.0},
    "vsvf": {"levels": [2, 1], "iterations": [50, 20], WORKING_SPACING_KEY: 2.0},
    "lddmm": {"levels": [2, 1], "iterations": [50, 20], WORKING_SPACING_KEY: 2.0},
    "rdmm": {"levels": [2, 1], "iterations": [50, 20], WORKING_SPACING_KEY: 2.0},
}

#: Default affine-stage arguments: two coarse levels (the 12 parameters are global, so the
#: finest level adds little; the library default also runs (4, 2, 1) with (100, 50, 25)).
DEFAULT_AFFINE_OPTIONS: dict[str, object] = {"levels": [4, 2], "iterations": [40, 20]}

#: Keys this app reads (besides one per registration method).
CONF_KEYS = ("atlas_image", "atlas_labels", "atlas_label_names", "affine", "affine_metric", "affine_options", "device",
             "register_method", "cache_size")
#: Keys MONAI Label's own classes read from the same ``--conf`` dictionary.
_MONAILABEL_KEYS = ("server_mode", "preload", "skip_trainers", "skip_strategies", "skip_scoring", "models")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class AppConfig:
    """Parsed ``--conf`` settings (see the module docstring).

    Attributes:
        atlas_image: custom atlas image, or None for the built-in sample.
        atlas_labels: custom atlas label map, or None for the built-in sample.
        atlas_label_names: raw ``atlas_label_names`` (JSON text or path), or None.
        affine: run the affine stage first.
        affine_metric: similarity of the affine stage.
        affine_options: further arguments of the affine stage.
        device: ``"auto"`` or a torch device string.
        register_method: method of the ``register`` task.
        cache_size: number of registrations kept in memory.
        method_options: keyword arguments for ``register()`` per method (with the app's
            ``working_spacing_mm``).
    """

    atlas_image: Path | None = None
    atlas_labels: Path | None = None
    atlas_label_names: str | None = None
    affine: bool = True
    affine_metric: str = "ncc"
    affine_options: dict[str, object] = field(default_factory=lambda: dict(DEFAULT_AFFINE_OPTIONS))
    device: str = "auto"
    register_method: str = "svf_optim"
    cache_size: int = 2
    method_options: dict[str, dict[str, object]] = field(default_factory=dict)

    def options_for(self, method: str) -> dict[str, object]:
        """Keyword arguments for ``register()`` when running ``method``."""
        return dict(self.method_options.get(method, {}))

    def resolve_device(self, requested: object = None) -> str:
        """The torch device to run on: ``requested`` (a request parameter) or the configured one.

        ``auto`` (and MONAI Label's device names, e.g. a GPU's marketing name) map to
        ``cuda`` when CUDA is available and ``cpu`` otherwise.

        Raises:
            ValueError: a CUDA device is asked for on a machine without CUDA, or the string
                is not a device.
        """
        name = requested if requested not in (None, "", []) else self.device
        if isinstance(name, (list, tuple)):
            name = name[0]
        name = str(name)
        if name == "auto" or (torch.cuda.is_available() and name in _cuda_names()):
            return "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(f"device: {name!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} was requested but CUDA is not available on the server; use 'cpu'")
        return str(device)


def _cuda_names() -> list[str]:
    """MONAI Label's names for the GPUs (``device_list()``: the device name, with ``:i`` when several)."""
    count = torch.cuda.device_count()
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    return names + [f"{n}:{i}" for i, n in enumerate(names)]


def _bool(conf: Mapping[str, str], key: str, default: bool) -> bool:
    value = str(conf.get(key, default)).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{_CALLER}(): '{key}' must be true or false, got {conf[key]!r}")


def json_object(text: str, name: str, caller: str) -> dict:
    """Parse ``text`` as a JSON object (``--conf`` values are strings).

    Raises:
        ValueError: not JSON, or JSON but not an object; the message names ``caller`` and ``name``.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{caller}(): '{name}' must be a JSON object, got {text!r}: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{caller}(): '{name}' must be a JSON object, got {text!r}")
    return value


def _options(key: str, text: str) -> dict[str, object]:
    return json_object(text, key, _CALLER)


def parse_conf(conf: Mapping[str, str] | None, methods: Sequence[str]) -> AppConfig:
    """Read the app's settings from MONAI Label's ``conf`` dictionary.

    Args:
        conf: ``{key: value}`` from ``--conf`` (values are strings).
        methods: the registration methods available (``monai_diffreg.methods.available_methods()``).

    Returns:
        the :class:`AppConfig`.

    Raises:
        ValueError: a value is malformed (message names the key, what was expected and what
            was given), only one of ``atlas_image``/``atlas_labels`` is set, or a method
            named in ``register_method`` is not available.
    """
    conf = dict(conf or {})
    image, labels = conf.get("atlas_image"), conf.get("atlas_labels")
    if bool(image) != bool(labels):
        given, missing = ("atlas_image", "atlas_labels") if image else ("atlas_labels", "atlas_image")
        raise ValueError(f"{_CALLER}(): '{given}' is set but '{missing}' is not; a custom atlas needs both")
    try:
        cache_size = int(conf.get("cache_size", 2))
    except ValueError:
        raise ValueError(f"{_CALLER}(): 'cache_size' must be an integer >= 0, got {conf['cache_size']!r}") from None
    if cache_size < 0:
        raise ValueError(f"{_CALLER}(): 'cache_size' must be an integer >= 0, got {cache_size}")
    register_method = conf.get("register_method", "svf_optim")
    if register_method not in methods:
        raise ValueError(f"{_CALLER}(): 'register_method' must be one of {list(methods)}, got {register_method!r}")
    affine_metric = conf.get("affine_metric", "ncc")
    if affine_metric not in AFFINE_METRICS:
        raise ValueError(f"{_CALLER}(): 'affine_metric' must be one of {list(AFFINE_METRICS)}, got {affine_metric!r}")
    options = {m: dict(o) for m, o in DEFAULT_METHOD_OPTIONS.items()}
    for method in methods:
        if method in conf:
            options.setdefault(method, {}).update(_options(method, conf[method]))
    for method, values in options.items():
        spacing = values.get(WORKING_SPACING_KEY)
        if spacing in (None, 0):
            values.pop(WORKING_SPACING_KEY, None)
        elif isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not spacing > 0:
            raise ValueError(f"{_CALLER}(): '{method}' option '{WORKING_SPACING_KEY}' must be a number of mm > 0 "
                             f"(or 0/null for the image's own grid), got {spacing!r}")
    unknown = sorted(set(conf) - set(CONF_KEYS) - set(methods) - set(_MONAILABEL_KEYS))
    if unknown:
        logger.warning("monai_diffreg app: ignoring unknown --conf key(s) %s (known: %s and the method names %s)",
                       unknown, list(CONF_KEYS), list(methods))
    config = AppConfig(
        atlas_image=Path(image).expanduser() if image else None,
        atlas_labels=Path(labels).expanduser() if labels else None,
        atlas_label_names=conf.get("atlas_label_names"),
        affine=_bool(conf, "affine", True),
        affine_metric=affine_metric,
        affine_options={**DEFAULT_AFFINE_OPTIONS,
                        **(_options("affine_options", conf["affine_options"]) if "affine_options" in conf else {})},
        device=str(conf.get("device", "auto")),
        register_method=register_method,
        cache_size=cache_size,
        method_options=options,
    )
    config.resolve_device()  # fail now on an unusable device
    return config
