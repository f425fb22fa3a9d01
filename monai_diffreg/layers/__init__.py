"""Thin ``nn.Module`` wrappers over :mod:`monai_diffreg.functional`: they hold settings only."""

from .integration import VelocityIntegration
from .resize import FieldResize
from .smoothing import GaussianSmoothing
from .warp import Warp

__all__ = ["VelocityIntegration", "FieldResize", "GaussianSmoothing", "Warp"]
