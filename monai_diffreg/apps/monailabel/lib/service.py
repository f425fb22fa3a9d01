"""Registration of the atlas to a requested image, shared by every infer task of the app.

:class:`AtlasRegistrationService` owns the configuration, the validated atlas and a small
cache of registration results. It never raises at construction: a bad configuration is kept
as :attr:`AtlasRegistrationService.error` and every request is answered with it (HTTP 503),
so the server starts, ``/info/`` works and the client reads why labelling is unavailable.

For a request it reads the image with its header (MONAI ``LoadImage``: RAS affine, any
orientation), checks it (readable, same dimensionality as the atlas, finite, not constant),
and calls :func:`monai_diffreg.api.register` with the image as *fixed* and the atlas as
*moving* (with its label map), affine stage first. Results are on the requested image's own
grid: exactly the label map a viewer overlays on it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, replace

import numpy as np
import torch
from monai.data import MetaTensor

from monai_diffreg.io import resample_to_fixed, spatial_affine
from monai_diffreg.transforms.spatial import check_image, load_channel_first

from . import errors
from .atlas import Atlas, load_atlas
from .config import WORKING_SPACING_KEY, AppConfig, parse_conf
from .working_grid import field_to_image_grid, to_working_grid

__all__ = ["AtlasRegistrationService", "Registration", "load_sample_atlas"]

logger = logging.getLogger(__name__)

_CALLER = "atlas_registration"


def load_sample_atlas(label_names: str | None = None) -> Atlas:
    """The default atlas: the built-in sample's fixed image (MNI152 2009a, skull-stripped, 1 mm
    RAS) and its grey/white-matter label map, named as in the sample's ``sample.json``.

    Args:
        label_names: optional override of the names (see :func:`.atlas.parse_label_names`).
    """
    from monai_diffreg.sample import SAMPLE_DIR, sample_paths

    paths = sample_paths()
    if label_names is None:
        names = json.loads((SAMPLE_DIR / "sample.json").read_text(encoding="utf-8"))["labels"]
        label_names = {value: name for value, name in names.items() if int(value) != 0}
    return load_atlas(paths["fixed"], paths["fixed_labels"], label_names)


@dataclass(frozen=True)
class Registration:
    """One registration of the atlas to a requested image, on the image's own grid.

    Attributes:
        affine: ``(D + 1, D + 1)`` voxel-to-RAS affine of the requested image.
        ddf: ``(1, D, *S)`` displacement in image voxels, image -> atlas (affine stage included).
        warped: ``(1, 1, *S)`` the atlas image warped onto the image grid (linear).
        warped_labels: ``(1, 1, *S)`` int64, the atlas labels warped onto the image grid (nearest).
        method: registration method.
        working_shape: the grid the registration ran on (``S`` unless coarsened, see
            :mod:`.working_grid`).
        metrics: :attr:`monai_diffreg.api.RegistrationResult.metrics` (on the working grid).
        seconds: wall time of the registration.
    """

    affine: np.ndarray
    ddf: torch.Tensor
    warped: torch.Tensor
    warped_labels: torch.Tensor
    method: str
    working_shape: tuple[int, ...]
    metrics: dict
    seconds: float


class AtlasRegistrationService:
    """Registers the configured atlas to requested images (thread-safe, cached).

    Args:
        conf: MONAI Label's ``--conf`` dictionary (see :mod:`.config`).
    """

    def __init__(self, conf: dict[str, str] | None = None):
        from monai_diffreg.methods import available_methods

        #: name -> :class:`monai_diffreg.methods.MethodInfo` of every available method
        self.method_infos = {info.name: info for info in available_methods()}
        self.methods: tuple[str, ...] = tuple(self.method_infos)
        self.config: AppConfig = AppConfig()
        self.atlas: Atlas | None = None
        self.error: str | None = None
        self._cache: OrderedDict[Hashable, Registration] = OrderedDict()
        self._lock = threading.Lock()
        try:
            self.config = parse_conf(conf, self.methods)
            self._check_builtin_options()
            self.atlas = self._load_atlas(self.config)
        except (OSError, ValueError) as error:
            self.error = f"the server's --conf settings are unusable: {error}"
            logger.error("monai_diffreg app: %s", self.error)

    def _check_builtin_options(self) -> None:
        """Instantiate each built-in method with its configured options, so a misspelt option is
        reported when the server starts (bundles are only loaded per request)."""
        from monai_diffreg.methods import load_method

        for name, info in self.method_infos.items():
            if info.kind == "builtin":
                options = self.config.options_for(name)
                options.pop(WORKING_SPACING_KEY, None)
                load_method(name, **options)

    @staticmethod
    def _load_atlas(config: AppConfig) -> Atlas:
        if config.atlas_image is None:
            return load_sample_atlas(config.atlas_label_names)
        return load_atlas(config.atlas_image, config.atlas_labels, config.atlas_label_names)

    @property
    def label_names(self) -> dict[str, int]:
        """``{name: value}`` of the atlas labels (empty when the atlas is unusable)."""
        return dict(self.atlas.label_names) if self.atlas is not None else {}

    @property
    def spatial_dims(self) -> int:
        """Dimensionality of the atlas (3 when the atlas is unusable)."""
        return self.atlas.spatial_dims if self.atlas is not None else 3

    def describe(self) -> dict[str, object]:
        """JSON-ready summary for the app's ``/info/`` and results."""
        if self.atlas is None:
            return {"error": self.error}
        return {**self.atlas.describe(), "affine_stage": self.config.affine, "methods": list(self.methods)}

    def check_ready(self) -> Atlas:
        """The atlas, or a 503 :class:`~.errors.RequestError` saying why there is none."""
        if self.atlas is None:
            raise errors.atlas_unavailable(str(self.error))
        return self.atlas

    def check_method(self, method: object) -> str:
        """``method`` if it is an available registration method, else a 400 error."""
        if method not in self.methods:
            raise errors.bad_request(f"'method' must be one of {list(self.methods)}, got {method!r}")
        return str(method)

    def load_image(self, path: str) -> MetaTensor:
        """Read and check a requested image (404 missing, 422 unreadable/wrong dimensionality/blank)."""
        atlas = self.check_ready()
        try:
            image = load_channel_first(path, "image", _CALLER)
        except FileNotFoundError as error:
            raise errors.not_found(str(error)) from None
        except ValueError as error:
            raise errors.unprocessable(str(error)) from None
        if image.ndim - 1 != atlas.spatial_dims:
            raise errors.unprocessable(
                f"{_CALLER}(): 'image' must be {atlas.spatial_dims}D like the atlas ({atlas.image_path.name}, shape "
                f"{tuple(atlas.image.shape[1:])}), got a {image.ndim - 1}D image of shape {tuple(image.shape[1:])}"
            )
        image = image.float()
        try:
            check_image(image, "image", _CALLER)
        except ValueError as error:
            raise errors.unprocessable(str(error)) from None
        return image

    def register(self, path: str, method: str, device: object = None) -> tuple[Registration, bool]:
        """Register the atlas to the image at ``path`` with ``method``.

        Args:
            path: the requested image file.
            method: registration method (checked).
            device: requested device (MONAI Label's ``device`` parameter) or None for the
                configured one.

        Returns:
            the :class:`Registration` and whether it came from the cache.

        Raises:
            RequestError: 400 (bad method/device), 404 (no file), 422 (image unusable),
                503 (settings unusable, e.g. the atlas).
        """
        atlas = self.check_ready()
        method = self.check_method(method)
        try:
            device = self.config.resolve_device(device)
        except ValueError as error:
            raise errors.bad_request(str(error)) from None
        if os.path.isdir(path):
            raise errors.unprocessable(f"{_CALLER}(): 'image' is a folder ({path}), e.g. a DICOM series; the app reads "
                                       f"single image files (NIfTI, NRRD, MHA, ...): convert the series first")
        if not os.path.isfile(path):
            raise errors.not_found(f"{_CALLER}(): 'image' file not found: {path}")
        stat = os.stat(path)
        key = (method, os.path.realpath(path), stat.st_mtime_ns, stat.st_size, device)
        with self._lock:  # one registration at a time: each already uses every core
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached, True
            image = self.load_image(path)
            start = time.perf_counter()
            registration = self._register(image, atlas, method, device)
            registration = replace(registration, seconds=time.perf_counter() - start)
            if self.config.cache_size > 0:
                self._cache[key] = registration
                while len(self._cache) > self.config.cache_size:
                    self._cache.popitem(last=False)
            return registration, False

    def _register(self, image: MetaTensor, atlas: Atlas, method: str, device: str) -> Registration:
        """Run :func:`monai_diffreg.api.register` (atlas = moving), on the working grid when one is set."""
        from monai_diffreg.api import register

        options = self.config.options_for(method)
        spacing = options.pop(WORKING_SPACING_KEY, None)
        work = to_working_grid(image, float(spacing)) if spacing else image
        result = register(work, atlas.image, bundle=method, moving_labels=atlas.labels, affine=self.config.affine,
                          affine_metric=self.config.affine_metric, affine_options=self.config.affine_options,
                          device=device, **options)
        shape = tuple(int(s) for s in image.shape[1:])
        working = tuple(int(s) for s in work.shape[1:])
        if work is image:
            ddf, warped, labels = result.ddf, result.warped, result.warped_labels
        else:
            ddf = field_to_image_grid(result.ddf, shape)
            warped = resample_to_fixed(atlas.image.float().unsqueeze(0), atlas.image.affine, image.affine, shape, ddf)
            labels = resample_to_fixed(atlas.labels.float().unsqueeze(0), atlas.labels.affine, image.affine, shape, ddf,
                                       mode="nearest").round().to(torch.int64)
        affine = spatial_affine(image.affine, image.ndim - 1, _CALLER)
        return Registration(affine=affine, ddf=torch.as_tensor(ddf), warped=torch.as_tensor(warped),
                            warped_labels=torch.as_tensor(labels), method=method, working_shape=working,
                            metrics=dict(result.metrics), seconds=0.0)
