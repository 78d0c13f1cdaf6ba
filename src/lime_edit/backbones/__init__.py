"""Backbones: one module per editor family (see :mod:`lime_edit.backbones.base`).

``FAMILIES`` maps ``--backbone NAME`` to its class.  :func:`detect` recognises the
family of a diffusers folder, Hub id or single-file checkpoint (an explicit name
always wins); :func:`lime_edit.loading.load_backbone` loads it.
"""

from __future__ import annotations

from .base import Backbone, StopPass, attention_levels, reference_levels
from .flux2 import Flux2KleinBackbone
from .hive import HIVE_CONDITION, HiveBackbone
from .instructdiffusion import InstructDiffusionBackbone, instructdiffusion_combine
from .ip2p import IP2PBackbone
from .kontext import KontextBackbone
from .p2p import P2PBackbone
from .qwen_image_edit import QwenImageEditBackbone
from .sdxl import SDXLIP2PBackbone

FAMILIES: dict[str, type[Backbone]] = {cls.name: cls for cls in (
    IP2PBackbone, HiveBackbone, InstructDiffusionBackbone, SDXLIP2PBackbone, P2PBackbone, KontextBackbone,
    QwenImageEditBackbone, Flux2KleinBackbone)}


#: diffusers pipeline class -> family, for pipelines whose class alone tells the family
PIPELINE_FAMILIES: dict[str, str] = {
    "StableDiffusionInstructPix2PixPipeline": "ip2p",
    "StableDiffusionXLInstructPix2PixPipeline": "sdxl-ip2p",
    "StableDiffusionPipeline": "p2p",              # text-to-image: caption editing (Prompt-to-Prompt)
    "FluxKontextPipeline": "kontext",
    "QwenImageEditPipeline": "qwen-image-edit",
    "QwenImageEditPlusPipeline": "qwen-image-edit",
    "Flux2KleinPipeline": "flux2",
}


def family_list() -> str:
    return ", ".join(FAMILIES)


def get_family(name: str) -> type[Backbone]:
    from ..errors import LimeEditError

    try:
        return FAMILIES[str(name).lower()]
    except KeyError:
        raise LimeEditError(f"--backbone: unknown family {name!r} (known: {family_list()})") from None


def for_pipeline(pipe, name: str | None = None, **options) -> Backbone:
    """The backbone for an already constructed diffusers pipeline (by class, unless named)."""
    if name is None:
        cls = type(pipe).__name__
        name = PIPELINE_FAMILIES.get(cls) or ("sdxl-ip2p" if cls.startswith("StableDiffusionXL") else "ip2p")
    return get_family(name)(pipe, **options)


__all__ = ["Backbone", "StopPass", "FAMILIES", "get_family", "for_pipeline", "family_list",
           "attention_levels", "reference_levels", "HIVE_CONDITION", "IP2PBackbone", "HiveBackbone",
           "InstructDiffusionBackbone", "SDXLIP2PBackbone", "P2PBackbone", "KontextBackbone", "QwenImageEditBackbone", "Flux2KleinBackbone", "PIPELINE_FAMILIES", "instructdiffusion_combine"]
