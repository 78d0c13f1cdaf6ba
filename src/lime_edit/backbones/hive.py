"""HIVE (Zhang et al., CVPR 2024): InstructPix2Pix fine-tuned with human feedback.

Releases are original-LDM single files: ``hive_rw.ckpt`` / ``hive_rw_condition.ckpt``
(SD1.5 layout) and ``hive_v2_rw*.ckpt`` (SD2.1-base layout: OpenCLIP-H text encoder,
1024-d context, 64-d heads, linear projections, epsilon prediction like SD2.1-base).
The guidance formula and row layout are InstructPix2Pix's.

The ``*condition*`` checkpoints were trained with a reward prompt appended to the
instruction; this backbone appends it, as HIVE's ``edit_cli_rw_label.py`` /
``edit_cli_batch_rw_label.py`` do (``edit + ", image quality is five out of five"``) for
whatever file they load.  It is on by default when the model's name says "condition"
(the released ``hive_rw_condition.ckpt`` / ``hive_v2_rw_condition.ckpt``, which HIVE's
README runs with those scripts) or "rw_label" / "rw-label" (``hive_rw_label.ckpt``, those
scripts' own default ``--ckpt``); the plain ``hive_rw.ckpt`` / ``hive_v2_rw.ckpt`` go with
``edit_cli.py``, which appends nothing.  ``prompt_suffix=""`` turns it off, any other text
replaces it.  Its tokens are never *related* tokens, and inside the RoI they are
penalized like every other token that is not the instruction's.

Sampler defaults are HIVE's own (its edit script): 100 steps, text guidance 7.5,
image guidance 1.5, Euler ancestral on k-diffusion's schedule
(:mod:`lime_edit.backbones.kdiffusion`, however the model is loaded); the localization
pass uses the same text guidance.
"""

from __future__ import annotations

from .base import Backbone

#: the text HIVE's reward-conditioned checkpoints append to every instruction
HIVE_CONDITION = ", image quality is five out of five"


class HiveBackbone(Backbone):
    name = "hive"
    description = "HIVE (hive_rw*.ckpt on SD1.5, hive_v2_rw*.ckpt on SD2.1-base)"
    pipeline_class = "StableDiffusionInstructPix2PixPipeline"
    sampler_defaults = {"num_inference_steps": 100, "guidance_scale": 7.5, "image_guidance_scale": 1.5,
                        "localization_guidance_scale": 7.5}
    scheduler = "euler_ancestral"

    @classmethod
    def default_options(cls, source: str) -> dict:
        """The reward suffix is on for the reward-conditioned checkpoints (see the module docstring)."""
        name = source.lower().replace("-", "_")
        return {"prompt_suffix": HIVE_CONDITION if "condition" in name or "rw_label" in name else ""}
