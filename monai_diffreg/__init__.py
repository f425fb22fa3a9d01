"""monai_diffreg: learned diffeomorphic image registration for MONAI.

One call registers a pair and returns the warped image and the displacement field::

    import monai_diffreg
    result = monai_diffreg.register("fixed.nii.gz", "moving.nii.gz", bundle="vxm_prob")
    result.save("out/")  # warped.nii.gz, ddf.nii.gz (ITK), summary.json, qc.png

Conventions shared by every module are stated in :mod:`monai_diffreg.functional`. The names
below are imported on first use, so ``import monai_diffreg.functional`` (or ``.networks``,
``.losses``) does not load the API, I/O and sample modules.
"""

from __future__ import annotations

import importlib

__version__ = "0.4.13"

#: public name -> module that defines it
_EXPORTS = {
    "register": "api",
    "RegistrationResult": "api",
    "MisalignmentWarning": "api",
    "DissimilarityWarning": "api",
    "SpacingWarning": "input_checks",
    "InsufficientMemoryError": "input_checks",
    "load_method": "methods",
    "available_methods": "methods",
    "register_method": "methods",
    "load_sample": "sample",
    "sample_paths": "sample",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
