"""monai_diffreg: learned diffeomorphic image registration for MONAI.

Conventions shared by every module are stated in :mod:`monai_diffreg.functional`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
