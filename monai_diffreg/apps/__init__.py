"""Applications built on monai_diffreg.

* :mod:`monai_diffreg.apps.monailabel`: a MONAI Label app serving atlas-based labelling by
  registration to viewers (3D Slicer, OHIF). Start it with
  ``monailabel start_server --app "$(monai-diffreg monailabel-app)" --studies <dir>``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["monailabel_app_dir"]


def monailabel_app_dir() -> Path:
    """Folder of the MONAI Label app (the one holding ``main.py``), for ``--app``.

    Importing this module does not import MONAI Label, so the path can be printed on a
    machine where MONAI Label is not installed yet.

    Note:
        ``monailabel start_server`` creates ``model/``, ``logs/`` and ``bin/`` inside the app
        folder, so it must be writable (true for a virtual environment or an editable install).
    """
    return Path(__file__).resolve().parent / "monailabel"
