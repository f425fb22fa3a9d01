"""MONAI Label app: atlas-based labelling by diffeomorphic registration.

Serve it with::

    monailabel start_server --app "$(monai-diffreg monailabel-app)" --studies /path/to/images \\
        [--conf atlas_image A.nii.gz --conf atlas_labels A_labels.nii.gz --conf atlas_label_names names.json]

A viewer (3D Slicer, OHIF) opens an image from the studies folder and runs
``atlas_propagation_<method>``: the atlas (by default the built-in MNI152-derived sample with
grey/white-matter labels) is registered to the image, respecting both headers' orientations,
affine stage first, then the deformable method, and its label map comes back on the image's
own grid with the atlas label names. ``register`` returns the warped atlas image or the
displacement field. One ``atlas_propagation_<method>`` task exists per method in
:func:`monai_diffreg.methods.available_methods`, so a newly installed bundle appears by itself.
Settings: :mod:`monai_diffreg.apps.monailabel.lib.config`.

Errors reach the client as HTTP errors whose ``detail`` says what went wrong: 404 unknown
model or image, 400 bad parameters, 422 an image that cannot be registered to the atlas
(unreadable, wrong dimensionality, blank), 503 unusable server settings (a misconfigured
atlas, a bad ``--conf`` value: the server still starts and ``/info/`` shows the reason under
``atlas.error``); anything unexpected is a 500 with the exception's message. The server keeps
serving either way.

No trainers: the registration bundles are trained offline (see ``bundles/<name>/``), and
``svf_optim`` needs no training.
"""

from __future__ import annotations

import logging
import os

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask

from monai_diffreg import __version__
from monai_diffreg.apps.monailabel.lib.errors import RequestError
from monai_diffreg.apps.monailabel.lib.infers import AtlasPropagationTask, AtlasRegisterTask
from monai_diffreg.apps.monailabel.lib.service import AtlasRegistrationService

logger = logging.getLogger(__name__)
# MONAI warns on every image read that an optional GPU DICOM decoder is missing: noise in a server log
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

#: Prefix of the per-method label propagation tasks.
PROPAGATION_PREFIX = "atlas_propagation_"


class MONAIDiffRegApp(MONAILabelApp):
    """The monai_diffreg MONAI Label app (see the module docstring).

    Args:
        app_dir: this folder (given by MONAI Label).
        studies: the studies folder or DICOMweb address.
        conf: ``--conf`` settings (:mod:`monai_diffreg.apps.monailabel.lib.config`).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.service = AtlasRegistrationService(conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_diffreg",
            description="Atlas-based labelling by diffeomorphic registration (monai_diffreg)",
            version=__version__,
            labels=self.service.label_names or None,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {
            f"{PROPAGATION_PREFIX}{method}": AtlasPropagationTask(self.service, method)
            for method in self.service.methods
        }
        infers["register"] = AtlasRegisterTask(self.service)
        return infers

    def info(self):
        meta = super().info()
        meta["atlas"] = self.service.describe()
        return meta

    def _check_request(self, request: dict, datastore) -> None:
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(404, f"unknown model {model!r}; available models: {sorted(self._infers)}")
        image = request.get("image")
        if isinstance(image, str) and image and not os.path.exists(image):
            store = datastore if datastore else self.datastore()
            if not store.get_image_uri(image):
                raise HTTPException(404, f"unknown image {image!r}: not in the studies datastore")

    def infer(self, request, datastore=None):
        """MONAI Label's ``infer``, with requests checked first and errors turned into HTTP errors."""
        self._check_request(request, datastore)
        try:
            return super().infer(request, datastore)
        except RequestError as error:
            logger.warning("infer %s on %s: HTTP %d: %s", request.get("model"), request.get("image"), error.status,
                           error.message)
            raise HTTPException(error.status, error.message) from error
        except MONAILabelException as error:
            raise HTTPException(400, f"{error.error.value}: {error.msg}") from error
        except HTTPException:
            raise
        except Exception as error:  # noqa: BLE001 - the client gets the message, the log the traceback
            logger.exception("infer %s on %s failed", request.get("model"), request.get("image"))
            raise HTTPException(500, f"{request.get('model')} failed: {type(error).__name__}: {error}") from error
