"""InstructPix2Pix on SD1.x/SD2.x U-Nets (``timbrooks/instruct-pix2pix``, MagicBrush fine-tunes).

Guidance (diffusers' stock formula, rows ``[instruction+image, image only, unconditional]``)::

    eps = e_u + s_T * (e_ti - e_i) + s_I * (e_i - e_u)

LIME reads cross-attention in row 0 and clusters features of row 1 (the image-only
branch, as the reference code does); the RoI penalty is applied in all three rows with
the same token positions (reference).  Sampler defaults are LIME's reference values:
30 steps, edit guidance 2.0, localization guidance 5.5, image guidance 1.5,
Euler ancestral (the scheduler IP2P ships with).
"""

from __future__ import annotations

from .base import Backbone


class IP2PBackbone(Backbone):
    name = "ip2p"
    description = "InstructPix2Pix on SD1.x/SD2.x (timbrooks/instruct-pix2pix, MagicBrush fine-tunes)"
    pipeline_class = "StableDiffusionInstructPix2PixPipeline"
    sampler_defaults = {}     # LimeConfig's own defaults are the reference values for IP2P
