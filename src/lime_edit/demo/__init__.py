"""Bundled demo: synthetic scenes, a tiny trained InstructPix2Pix, ``demo`` / ``bench`` / ``train-demo``.

Nothing heavy is imported here; ``bundled_model_path()`` only checks files.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def bundled_model_path() -> Path:
    """Folder of the bundled demo IP2P pipeline (``model_index.json`` + safetensors).

    Raises ``lime_edit.errors.ModelLoadError`` when the weights are not installed.
    """
    from ..errors import ModelLoadError

    if not (WEIGHTS_DIR / "model_index.json").is_file() or not any(WEIGHTS_DIR.glob("unet/*.safetensors")):
        raise ModelLoadError(f"bundled demo weights not found in {WEIGHTS_DIR} "
                             "(reinstall lime-edit, or run `lime-edit train-demo --out DIR`)")
    return WEIGHTS_DIR


__all__ = ["bundled_model_path", "WEIGHTS_DIR"]
