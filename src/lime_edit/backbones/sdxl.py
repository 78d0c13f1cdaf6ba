"""SDXL InstructPix2Pix (``diffusers/sdxl-instructpix2pix-768``) and CosXL Edit (``cosxl_edit.safetensors``).

``StableDiffusionXLInstructPix2PixPipeline``: same row layout and formula as IP2P;
two text encoders whose 77-position outputs are concatenated along features (the
second tokenizer pads with "!", the first with the end token, but every instruction
token sits at the same position in both, so one token-role table serves the
concatenated context); pooled embeddings and time ids enter only the time embedding,
never cross-attention.  With an empty negative prompt SDXL uses zero text embeddings
for the image-only and unconditional rows.

Levels: SDXL has attention only at latent/2 and latent/4 (2 and 10 transformer
blocks).  At SDXL's native 1024 px (latent 128) those grids are 64 and 32: the grids
SD1.5's levels 1 and 2 have at 512 px.  LIME therefore clusters and regularizes both
levels (features (2, 4), regularization (2, 4)), and the localization grid is
``out_scale = 1`` x the latent grid (128 at 1024 px, 96 at 768 px: SD1.5's 128 at
512 px), so ``top_k`` points cover the same share of the image as on SD1.5.

CosXL Edit is an SDXL IP2P trained with an EDM v-prediction schedule; it is run with
``is_cosxl_edit=True`` (image latents scaled) and an EDM Euler scheduler
(sigma 0.002..120, sigma_data 1, v-prediction, exponential sigmas).

The SDXL pipeline has only the legacy per-step ``callback``; it is used for LIME's
step bookkeeping.  Sampler defaults: 30 steps, text 5.0 (the pipeline's default) for
both passes, image 1.5.
"""

from __future__ import annotations

from typing import Callable

from ..config import LimeConfig
from ..errors import LimeEditError
from ..tokens import TokenSelection
from .base import Backbone


#: where SDXL IP2P configs come from for single files (diffusers' documented choice for CosXL too)
SDXL_IP2P_CONFIG = "diffusers/sdxl-instructpix2pix-768"
#: keys of CosXL's EDM v-prediction parameters in its single file
COSXL_KEYS = ("edm_vpred.sigma_max", "edm_vpred.sigma_min")


class SDXLIP2PBackbone(Backbone):
    name = "sdxl-ip2p"
    description = "SDXL InstructPix2Pix and CosXL Edit (diffusers/sdxl-instructpix2pix-768, cosxl_edit.safetensors)"
    pipeline_class = "StableDiffusionXLInstructPix2PixPipeline"
    sampler_defaults = {"num_inference_steps": 30, "guidance_scale": 5.0, "image_guidance_scale": 1.5,
                        "localization_guidance_scale": 5.0}
    default_out_scale = 1

    @classmethod
    def is_cosxl(cls, path, shapes) -> bool:
        return any(k in shapes for k in COSXL_KEYS) or "cosxl" in str(path).lower()

    @classmethod
    def single_file_kwargs(cls, path, shapes, config):
        pipe = {} if config else {"config": SDXL_IP2P_CONFIG}
        if cls.is_cosxl(path, shapes):
            pipe["is_cosxl_edit"] = True
        return {"pipeline": pipe}

    @classmethod
    def single_file_scheduler(cls, current, path, shapes):
        if not cls.is_cosxl(path, shapes):
            return None
        from diffusers import EDMEulerScheduler

        return EDMEulerScheduler(sigma_min=0.002, sigma_max=120.0, sigma_data=1.0,
                                 prediction_type="v_prediction", sigma_schedule="exponential")

    def check_pipeline(self, pipe) -> None:
        super().check_pipeline(pipe)
        # diffusers' SDXL IP2P pipeline always encodes with the second text encoder
        if getattr(pipe, "tokenizer_2", None) is None or getattr(pipe, "text_encoder_2", None) is None:
            raise LimeEditError("not an SDXL instruction editor: the sdxl-ip2p backbone needs the second text "
                                "encoder and tokenizer (text_encoder_2, tokenizer_2) that SDXL models have, and "
                                "this model has none (an SD1.x-style editor: use the ip2p backbone)")

    def default_levels(self):
        levels = sorted(self.levels)
        # every level SDXL has: the finest two are read and regularized (see module docstring)
        return tuple(levels[:2]) if len(levels) <= 2 else tuple(levels[1:]), tuple(levels[:2])

    def select_tokens(self, instruction: str, cfg: LimeConfig) -> TokenSelection:
        sel = super().select_tokens(instruction, cfg)
        tok2 = getattr(self.pipe, "tokenizer_2", None)
        if tok2 is not None:
            ids2 = tok2(self.prompt(instruction), padding="max_length", max_length=tok2.model_max_length,
                        truncation=True).input_ids
            if tok2.model_max_length != self.max_tokens or ids2[:sel.end + 1] != sel.ids[:sel.end + 1]:
                raise LimeEditError("sdxl-ip2p: the two tokenizers place the instruction's tokens differently; "
                                    "LIME needs one position per token in the concatenated text context")
        return sel

    def call_kwargs(self, *, prompts, images, size, steps, guidance, image_guidance, generators, output_type):
        kw = super().call_kwargs(prompts=prompts, images=images, size=size, steps=steps, guidance=guidance,
                                 image_guidance=image_guidance, generators=generators, output_type=output_type)
        kw.update(width=size[0], height=size[1])
        return kw

    def step_callback_kwargs(self, on_step_end: Callable[[int], None]) -> dict:
        order = getattr(self.pipe.scheduler, "order", 1)
        if order != 1:
            raise LimeEditError(f"sdxl-ip2p: scheduler {type(self.pipe.scheduler).__name__} takes {order} "
                                "model calls per step; LIME's step bookkeeping needs a first-order scheduler")

        def callback(step, t, latents):
            on_step_end(step)
        return {"callback": callback, "callback_steps": 1}
