"""lime-edit: LIME localized instruction-based image editing for diffusers IP2P-family models.

``LimePipeline``, ``Localization`` and ``EditResult`` are imported lazily, so
``import lime_edit`` (and the CLI's ``--help``) does not pull in torch/diffusers.
"""

from .config import LimeConfig
from .errors import InputImageError, LimeEditError, ModelLoadError

__version__ = "0.1.0"

_LAZY = {"LimePipeline": ".pipeline", "Localization": ".results", "EditResult": ".results"}

__all__ = ["LimeConfig", "LimePipeline", "Localization", "EditResult", "LimeEditError",
           "ModelLoadError", "InputImageError", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lime_edit' has no attribute {name!r}")
