"""Bundled demo: synthetic scenes, a tiny trained InstructPix2Pix, ``demo`` / ``bench`` / ``train-demo``.

Nothing heavy is imported here; ``bundled_model_path()`` only checks files.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# The text-to-image stage of the same recipe (a ``StableDiffusionPipeline`` folder): what
# Prompt-to-Prompt (``lime-edit p2p --model demo-t2i``) runs on offline.
T2I_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights_t2i"


def _bundled(folder: Path, what: str) -> Path:
    from ..errors import ModelLoadError

    if not (folder / "model_index.json").is_file() or not any(folder.glob("unet/*.safetensors")):
        raise ModelLoadError(f"bundled demo {what} weights not found in {folder} "
                             "(reinstall lime-edit, or run `lime-edit train-demo --out DIR --install`)")
    return folder


def bundled_model_path() -> Path:
    """Folder of the bundled demo IP2P pipeline (``model_index.json`` + safetensors).

    Raises ``lime_edit.errors.ModelLoadError`` when the weights are not installed.
    """
    return _bundled(WEIGHTS_DIR, "editor")


def bundled_t2i_path() -> Path:
    """Folder of the bundled demo text-to-image pipeline (the editor's pre-training stage)."""
    return _bundled(T2I_WEIGHTS_DIR, "text-to-image")


__all__ = ["bundled_model_path", "bundled_t2i_path", "T2I_WEIGHTS_DIR", "WEIGHTS_DIR"]
