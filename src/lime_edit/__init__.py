"""lime-edit: LIME localized instruction-based image editing for diffusers IP2P-family models."""

from .config import LimeConfig
from .errors import InputImageError, LimeEditError, ModelLoadError
from .pipeline import LimePipeline
from .results import EditResult, Localization

__version__ = "0.1.0"

__all__ = ["LimeConfig", "LimePipeline", "Localization", "EditResult", "LimeEditError",
           "ModelLoadError", "InputImageError", "__version__"]
