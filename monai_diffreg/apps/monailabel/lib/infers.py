"""The app's MONAI Label infer tasks.

* :class:`AtlasPropagationTask` (``atlas_propagation_<method>``, one per registration
  method): the atlas label map warped onto the requested image (nearest interpolation),
  written on the image's own grid (its shape and affine), with the atlas label names.
* :class:`AtlasRegisterTask` (``register``): the atlas image warped onto the requested image
  for visual checking, or, with the request parameter ``"result": "ddf"``, the displacement
  field as an ITK displacement field on the image's grid (physical units, LPS; see
  :func:`monai_diffreg.io.save_displacement_field`).

Both subclass MONAI Label's :class:`~monailabel.interfaces.tasks.infer_v2.InferTask` rather
than ``BasicInferTask``: registration is not "pre-transforms, one network on one image,
post-transforms" but an optimisation (or a network plus refinement) on an image *pair*; the
work is done by :class:`~.service.AtlasRegistrationService`. Like ``BasicInferTask`` they
advertise the ``device`` choice in their config and return ``label_names`` and
``latencies`` in the result JSON. The returned file is a fresh temporary file, which MONAI
Label deletes once it is sent (or copies into the datastore when ``save_label`` is set).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.utils.others.generic import device_list

from monai_diffreg.io import save_displacement_field, save_image

from . import errors
from .service import AtlasRegistrationService, Registration

__all__ = ["AtlasPropagationTask", "AtlasRegisterTask", "REGISTER_RESULTS"]

#: Files the ``register`` task can return (request parameter ``result``).
REGISTER_RESULTS = ("warped", "ddf")


def _write_temporary_nifti(write: Callable[[str], object]) -> str:
    """Call ``write(path)`` on a fresh temporary ``.nii.gz`` path and return it (removed if writing fails)."""
    with tempfile.NamedTemporaryFile(suffix=".nii.gz", prefix="monai_diffreg_", delete=False) as handle:
        path = handle.name
    try:
        write(path)
    except BaseException:
        os.unlink(path)
        raise
    return path


def _result_json(registration: Registration, cached: bool, start: float, **extra: Any) -> dict[str, Any]:
    return {
        "method": registration.method,
        "cached": cached,
        "working_shape": list(registration.working_shape),
        "folding_percent": registration.metrics.get("folding_percent"),
        "latencies": {"registration": round(registration.seconds, 3), "total": round(time.perf_counter() - start, 3)},
        **extra,
    }


class _AtlasTask(InferTask):
    """Shared request handling: the image path MONAI Label resolved, and the service."""

    def __init__(self, service: AtlasRegistrationService, type: str, labels: dict[str, int], description: str):
        super().__init__(type=type, labels=labels, dimension=service.spatial_dims, description=description,
                         config={"device": device_list()})
        self.service = service

    def is_valid(self) -> bool:
        return True

    @staticmethod
    def _image_path(request: dict[str, Any]) -> str:
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise errors.bad_request("the request names no image: pass ?image=<id> or upload a file")
        return image


class AtlasPropagationTask(_AtlasTask):
    """Atlas labels propagated to the requested image by registration with one method.

    Args:
        service: the app's registration service.
        method: registration method (``monai_diffreg.methods.available_methods()``).
    """

    def __init__(self, service: AtlasRegistrationService, method: str):
        super().__init__(
            service,
            InferType.SEGMENTATION,
            service.label_names,
            f"Atlas-based labelling: the atlas is registered to the image "
            f"({'affine, then ' if service.config.affine else ''}{method}: "
            f"{service.method_infos[method].description}) and its label map is warped onto the image's grid",
        )
        self.method = method

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        start = time.perf_counter()
        registration, cached = self.service.register(self._image_path(request), self.method, request.get("device"))
        path = _write_temporary_nifti(lambda p: save_image(registration.warped_labels, registration.affine, p,
                                                           label=True, spatial_dims=self.service.spatial_dims))
        return path, _result_json(registration, cached, start, label_names=self.service.label_names,
                                  atlas=self.service.describe())


class AtlasRegisterTask(_AtlasTask):
    """The atlas registered to the requested image: warped atlas image or displacement field.

    Request parameters: ``result`` (``"warped"``, default, or ``"ddf"``) and ``method``
    (default: the ``register_method`` setting).

    Args:
        service: the app's registration service.
    """

    def __init__(self, service: AtlasRegistrationService):
        super().__init__(
            service,
            InferType.OTHERS,
            {},
            "Registers the atlas to the image; returns the warped atlas image (params result='warped') or the "
            "displacement field as an ITK displacement field on the image's grid (result='ddf')",
        )
        default = service.config.register_method  # first, as clients may send a choice list's first entry
        self._config.update({"result": list(REGISTER_RESULTS),
                             "method": [default, *(m for m in service.methods if m != default)]})

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        start = time.perf_counter()
        what = request.get("result", "warped")
        if isinstance(what, list):  # the task's config advertises the choices as a list
            what = what[0]
        if what not in REGISTER_RESULTS:
            raise errors.bad_request(f"register: 'result' must be one of {list(REGISTER_RESULTS)}, got {what!r}")
        method = request.get("method", self.service.config.register_method)
        if isinstance(method, list):
            method = method[0]
        registration, cached = self.service.register(self._image_path(request), method, request.get("device"))
        if what == "ddf":
            path = _write_temporary_nifti(lambda p: save_displacement_field(registration.ddf, registration.affine, p))
        else:
            path = _write_temporary_nifti(lambda p: save_image(registration.warped, registration.affine, p,
                                                               spatial_dims=self.service.spatial_dims))
        return path, _result_json(registration, cached, start, result=what, atlas=self.service.describe())
