"""Bundled demo: synthetic scenes, a tiny trained InstructPix2Pix, ``demo`` / ``bench`` / ``train-demo``.

Nothing heavy is imported here; ``bundled_model_path()`` only checks files.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# The text-to-image stage of the same recipe (a ``StableDiffusionPipeline`` folder): what
# Prompt-to-Prompt (``lime-edit p2p --model demo-t2i``) runs on offline.
T2I_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights_t2i"


def bundled_model_path() -> Path:
    """Folder of the bundled demo IP2P pipeline (``model_index.json`` + safetensors).

    Raises ``lime_edit.errors.ModelLoadError`` when the weights are not installed.
    """
    from ..errors import ModelLoadError

    if not (WEIGHTS_DIR / "model_index.json").is_file() or not any(WEIGHTS_DIR.glob("unet/*.safetensors")):
        raise ModelLoadError(f"bundled demo weights not found in {WEIGHTS_DIR} "
                             "(reinstall lime-edit, or run `lime-edit train-demo --out DIR`)")
    return WEIGHTS_DIR


def bundled_t2i_path() -> Path:
    """Folder of the bundled demo text-to-image pipeline (the editor's pre-training stage)."""
    from ..errors import ModelLoadError

    if not (T2I_WEIGHTS_DIR / "model_index.json").is_file() or not any(T2I_WEIGHTS_DIR.glob("unet/*.safetensors")):
        raise ModelLoadError(f"bundled demo text-to-image weights not found in {T2I_WEIGHTS_DIR} "
                             "(reinstall lime-edit, or run `lime-edit train-demo --out DIR --install`)")
    return T2I_WEIGHTS_DIR


__all__ = ["bundled_model_path", "bundled_t2i_path", "T2I_WEIGHTS_DIR", "WEIGHTS_DIR"]
