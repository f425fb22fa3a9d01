"""monai_diffreg: learned diffeomorphic image registration for MONAI.

One call registers a pair and returns the warped image and the displacement field::

    import monai_diffreg
    result = monai_diffreg.register("fixed.nii.gz", "moving.nii.gz", bundle="vxm_prob")
    result.save("out/")  # warped.nii.gz, ddf.nii.gz (ITK), summary.json, qc.png

Conventions shared by every module are stated in :mod:`monai_diffreg.functional`.
"""

__version__ = "0.2.0"

from .api import DissimilarityWarning, MisalignmentWarning, RegistrationResult, register
from .methods import available_methods, load_method
from .sample import load_sample, sample_paths

__all__ = [
    "__version__",
    "register",
    "RegistrationResult",
    "MisalignmentWarning",
    "DissimilarityWarning",
    "load_method",
    "available_methods",
    "load_sample",
    "sample_paths",
]
