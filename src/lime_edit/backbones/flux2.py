"""FLUX.2 [klein] (``black-forest-labs/FLUX.2-klein-4B`` / ``-9B`` and their ``-base`` models:
``Flux2KleinPipeline``).

A multimodal diffusion transformer like FLUX.1 (double-stream blocks, then single-stream
blocks; one softmax over ``[text ; target image ; reference image]``, text first, no
attention mask, so image queries see the padding keys), with FLUX.2's own layers: the
single-stream blocks fuse Q/K/V and the MLP input in one projection and take attention and
MLP through one output projection (``Flux2ParallelSelfAttnProcessor``).  The text stream
is 512 positions of Qwen3's hidden layers 9, 18 and 27 (stacked) over its chat template:
``<|im_start|>user\\n``, the instruction, ``<|im_end|>``, the assistant turn's opening with an
empty think block, then padding.  One token covers 16x16 pixels.

What LIME reads and regularizes (:mod:`lime_edit.joint`: ``Flux2JointAttnProcessor`` and
``Flux2SingleJointAttnProcessor``, each with its stock processor's exact signature):
levels are blocks (double ``0..D-1``, then single ``D..D+S-1``); features and maps by
default from the last quarter of the double-stream and the first eighth of the
single-stream blocks, the same relative choice as Kontext's, **not yet calibrated on real
weights**; every block regularized.  In single-stream blocks the features read at the
context tokens are the block's whole parallel output (attention and MLP).

Token roles come from the ids: the instruction is what follows ``<|im_start|>`` and the
tokens of ``user\\n``, up to the next ``<|im_end|>``; everything else is unrelated.

Guidance: the distilled klein models run 4 steps without guidance (one forward per
step); the base models 50 steps with classifier-free guidance 4.0 on an empty negative
prompt, a second forward that LIME leaves stock.  The pipeline treats a list of images as
several references for every prompt, so lime-edit runs a batch's items one by one.
Sizes: the input rounded to 16 px; the reference image is encoded at that size (at about
1024x1024 pixels above it, as the pipeline does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

from ..config import LimeConfig
from ..errors import LimeEditError
from ..tokens import TokenSelection, select_tokens_in_span
from .base import Backbone, token_settings
from .kontext import flux_blocks

#: sampler defaults of the released klein models (distilled) and their base models
DISTILLED = {"num_inference_steps": 4, "guidance_scale": 1.0, "localization_guidance_scale": 1.0}
BASE = {"num_inference_steps": 50, "guidance_scale": 4.0, "localization_guidance_scale": 4.0}


class Flux2KleinBackbone(Backbone):
    name = "flux2"
    description = "FLUX.2 [klein] (black-forest-labs/FLUX.2-klein-4B, -9B, -base; joint-attention transformer)"
    pipeline_class = "Flux2KleinPipeline"
    branches = 1
    text_branch = 0
    image_branch = 0
    regularized_branches = (0,)
    sampler_defaults = DISTILLED
    default_out_scale = 2
    level_word = "block"
    denoiser_word = "transformer"
    has_image_guidance = False
    display_name = "FLUX.2 [klein]"
    own_steps_in_benchmarks = True
    latent_blend = True
    max_batch = 1

    def __init__(self, pipe, **options: Any):
        super().__init__(pipe, **options)
        self.distilled = bool(getattr(pipe.config, "is_distilled", True))
        self.sampler_defaults = DISTILLED if self.distilled else BASE

    @classmethod
    def cuda_dtype(cls):
        """bfloat16, as FLUX.2 is released and run."""
        import torch

        return torch.bfloat16

    @classmethod
    def single_file_kwargs(cls, path, shapes, config):
        raise LimeEditError(f"{path}: single-file FLUX.2 checkpoints are not supported; pass the diffusers "
                            "folder or Hub id (black-forest-labs/FLUX.2-klein-4B)")

    def check_pipeline(self, pipe) -> None:
        tr = getattr(pipe, "transformer", None)
        if tr is None or type(tr).__name__ != "Flux2Transformer2DModel" or getattr(pipe, "tokenizer", None) is None:
            raise LimeEditError(f"not a FLUX.2 [klein] pipeline: {type(pipe).__name__} has no FLUX.2 transformer "
                                "with a Qwen3 tokenizer")

    def find_levels(self, pipe) -> dict[int, list[str]]:
        return flux_blocks(pipe.transformer)

    @property
    def denoiser(self):
        return self.pipe.transformer

    @property
    def n_double(self) -> int:
        return len(self.pipe.transformer.transformer_blocks)

    def default_levels(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        blocks = self.levels
        d = self.n_double
        s = len(blocks) - d
        feats = tuple(range(d - math.ceil(d / 4), d)) + tuple(range(d, d + math.ceil(s / 8)))
        feats = tuple(b for b in feats if b in self._levels) or tuple(blocks)
        return feats, tuple(blocks)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(double_stream_blocks=self.n_double, distilled=self.distilled)
        return out

    # ---------------------------------------------------------------- text side
    @property
    def max_tokens(self) -> int:
        return int(getattr(self.pipe, "tokenizer_max_length", 512))

    def stream_ids(self, instruction: str) -> list[int]:
        """The text stream's token ids, as the pipeline tokenizes them."""
        tok = self.pipe.tokenizer
        text = tok.apply_chat_template([{"role": "user", "content": self.prompt(instruction)}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=False)
        return list(tok(text, padding="max_length", truncation=True, max_length=self.max_tokens).input_ids)

    def select_tokens(self, instruction: str, cfg: LimeConfig) -> TokenSelection:
        tok = self.pipe.tokenizer
        ids = self.stream_ids(instruction)
        user = tok("user\n", add_special_tokens=False).input_ids
        im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
        try:
            first = ids.index(im_start)
        except ValueError:
            first = -1
        start = first + 1 + len(user)
        if first < 0 or ids[first + 1:start] != user:
            raise LimeEditError("FLUX.2 [klein]: the text stream does not open with <|im_start|>user (an unknown "
                                "chat template)")
        truncated = im_end not in ids[start:]
        end = ids.index(im_end, start) if not truncated else len(ids) - 1
        sel = select_tokens_in_span(tok, ids, start, end, **token_settings(cfg))
        return dataclasses.replace(sel, truncated=True) if truncated else sel

    # ---------------------------------------------------------------- running
    def processing_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor) * 2

    def native_size(self) -> tuple[int, int] | None:
        side = int(self.pipe.default_sample_size) * int(self.pipe.vae_scale_factor)
        return side, side

    def token_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        f = self.processing_multiple()
        return size[1] // f, size[0] // f

    def context_grid(self, size: tuple[int, int]) -> tuple[int, int] | None:
        """The pipeline encodes a reference above about 1024x1024 pixels at that area."""
        if size[0] * size[1] <= 1024 * 1024:
            return None
        from PIL import Image

        w, h = self.pipe.image_processor._resize_to_target_area(Image.new("RGB", tuple(size)), 1024 * 1024).size
        f = self.processing_multiple()
        return (h // f * f) // f, (w // f * f) // f

    @contextlib.contextmanager
    def attention(self, state, layers: tuple[str, ...] | None = None):
        from ..joint import Flux2JointAttnProcessor, Flux2SingleJointAttnProcessor, joint_attention

        state.text_len = self.max_tokens
        blocks = {name: b for b, names in self._levels.items() for name in names}

        def processor(name: str):
            return Flux2SingleJointAttnProcessor if name.startswith("single_") else Flux2JointAttnProcessor
        with joint_attention(self.denoiser, state, blocks, layers, processor=processor) as st:
            yield st

    def call_kwargs(self, *, prompts, images, size, steps, guidance, image_guidance, generators, output_type):
        w, h = size
        return dict(prompt=[self.prompt(p) for p in prompts], image=list(images), height=h, width=w,
                    num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                    output_type=output_type, max_sequence_length=self.max_tokens)
