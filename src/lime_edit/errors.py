"""Errors a user can act on: the CLI, web demo and harness print ``str(err)`` as one line."""


class LimeEditError(ValueError):
    """A bad input or setting, with a one-line message naming the file or argument."""


class ModelLoadError(LimeEditError):
    """A model could not be loaded (missing file, unreachable Hub, wrong architecture)."""


class InputImageError(LimeEditError):
    """An input image could not be read or is not usable."""
