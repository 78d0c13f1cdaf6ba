"""Errors a user can act on: the CLI, web demo and harness print ``str(err)`` as one line.

Imports nothing heavy (no torch): the CLI reports an interrupt that hit while torch
was being imported with :func:`printable`, and must not import torch again to do so.
"""

from typing import Any


class LimeEditError(ValueError):
    """A bad input or setting, with a one-line message naming the file or argument."""


class ModelLoadError(LimeEditError):
    """A model could not be loaded (missing file, unreachable Hub, wrong architecture)."""


class InputImageError(LimeEditError):
    """An input image could not be read or is not usable."""


def printable(text: Any) -> str:
    """``text`` made safe to print as (part of) one terminal line: characters
    that are not printable (newline, tab, the ESC of ANSI colour sequences, other
    control characters, Unicode line separators and bidirectional overrides,
    undecodable bytes of a file name) are replaced by their Python escapes
    (``\\n``, ``\\x1b``, ``\\u202e``, ``\\udcff``), so a file name cannot
    start a new ``error:`` line or colour the terminal. Printable text is
    returned unchanged, so applying it twice changes nothing."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
