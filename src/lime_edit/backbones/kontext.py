"""FLUX.1 Kontext (``black-forest-labs/FLUX.1-Kontext-dev``, ``FluxKontextPipeline``).

A multimodal diffusion transformer with joint attention: every layer attends over
``[T5 text (512 positions) ; target image tokens ; context image tokens]``, text first,
with no attention mask (image queries see the ~500 ``<pad>`` keys too).  CLIP gives only
a pooled vector (time/guidance embedding), never keys.  One token covers 16x16 pixels
(VAE /8, 2x2 patches).  The guidance is distilled: one transformer forward per step (the
pipeline's optional true CFG with a negative prompt is not used by lime-edit).

What LIME reads and regularizes here (:mod:`lime_edit.joint`):

* **levels are blocks**: ``feature_levels`` / ``regularization_levels`` name block
  indices, double-stream blocks ``0 .. D-1`` then single-stream blocks ``D .. D+S-1``
  (FLUX.1: D = 19, S = 38);
* **features**: the joint-attention output at the context-image tokens (the clean input
  image, present at every step) of the late double-stream and early single-stream
  blocks: by default the last quarter of the double-stream blocks and the first eighth
  of the single-stream ones (FLUX.1: blocks 14-18 and 19-23), the blocks where studies of
  FLUX's attention outputs (FluxSpace, ConceptAttention) find them most semantic.
  **Not yet calibrated on real weights** (``benchmarks/dit_check.py`` is the one-run
  check);
* **attention maps**: target-image queries' probabilities of the instruction's words in
  the joint softmax, same blocks;
* **regularization**: target-image queries inside the RoI, every block, with
  ``joint_rule`` (``text_mass`` by default: see :mod:`lime_edit.joint`).

Token roles: T5 has no start token: positions ``0..n-1`` are the instruction's pieces,
``n`` is ``</s>``, then ``<pad>``; words from SentencePiece's word-start marks
(:func:`lime_edit.tokens.select_tokens_by_words`).  Padding and stop words are
unrelated, as on CLIP.

Sizes: lime-edit runs Kontext at the input's size rounded to 16 px (very large inputs
scaled to about the native 1024x1024 pixel count, as for every family), with the
context image at the same size: ``max_area = width x height`` and no snap to Kontext's
preferred resolutions, so target and context grids coincide and the result keeps the
input's framing.  Stock Kontext instead rescales every input to about 1024x1024 and
snaps the context to a preferred resolution; ``lp.edit(..., mask=None)`` equals the stock
pipeline called with lime-edit's sizes.  Sampler defaults: the pipeline's (28 steps,
guidance 2.5) for both passes.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any

from ..config import LimeConfig
from ..errors import LimeEditError
from ..tokens import TokenSelection, select_tokens_by_words
from .base import Backbone, token_settings

_DOUBLE = re.compile(r"^transformer_blocks\.(\d+)\.")
_SINGLE = re.compile(r"^single_transformer_blocks\.(\d+)\.")


def flux_blocks(transformer) -> dict[int, list[str]]:
    """``{block: [processor names]}``: double-stream blocks ``0..D-1``, then single-stream
    blocks ``D..D+S-1`` (read from the layer names; no forward pass)."""
    n_double = len(transformer.transformer_blocks)
    out: dict[int, list[str]] = {}
    for name in transformer.attn_processors:
        m = _DOUBLE.match(name)
        if m:
            out.setdefault(int(m.group(1)), []).append(name)
            continue
        m = _SINGLE.match(name)
        if m:
            out.setdefault(n_double + int(m.group(1)), []).append(name)
    return dict(sorted(out.items()))


class KontextBackbone(Backbone):
    name = "kontext"
    description = "FLUX.1 Kontext (black-forest-labs/FLUX.1-Kontext-dev; joint-attention transformer)"
    pipeline_class = "FluxKontextPipeline"
    branches = 1
    text_branch = 0
    image_branch = 0
    regularized_branches = (0,)
    sampler_defaults = {"num_inference_steps": 28, "guidance_scale": 2.5, "localization_guidance_scale": 2.5}
    default_out_scale = 2
    level_word = "block"
    denoiser_word = "transformer"
    has_image_guidance = False
    display_name = "FLUX.1 Kontext"
    own_steps_in_benchmarks = True
    latent_blend = True

    @classmethod
    def cuda_dtype(cls):
        """bfloat16, as FLUX is released and run (float16 overflows in its activations)."""
        import torch

        return torch.bfloat16

    #: where a transformer-only single file takes the other components and the configs from
    SINGLE_FILE_CONFIG = "black-forest-labs/FLUX.1-Kontext-dev"

    @classmethod
    def load_single_file(cls, path, kwargs, config, local_files_only):
        """Black Forest Labs release the Kontext transformer alone (``flux1-kontext-dev.safetensors``,
        their key layout; diffusers' layout works too): it is loaded with diffusers' FLUX
        converter and the transformer config of ``config`` (``--model-config``: a diffusers
        folder or Hub id of a Kontext pipeline; default the official one), whose VAE, text
        encoders, tokenizers and scheduler complete the pipeline."""
        from diffusers import FluxKontextPipeline, FluxTransformer2DModel

        repo = config or cls.SINGLE_FILE_CONFIG
        extra = {} if local_files_only is None else {"local_files_only": local_files_only}
        kwargs = {k: v for k, v in kwargs.items() if k in ("torch_dtype", "dtype")}
        transformer = FluxTransformer2DModel.from_single_file(str(path), config=repo, subfolder="transformer",
                                                              **kwargs, **extra)
        return FluxKontextPipeline.from_pretrained(repo, transformer=transformer, **kwargs, **extra)

    def check_pipeline(self, pipe) -> None:
        tr = getattr(pipe, "transformer", None)
        if tr is None or not hasattr(tr, "single_transformer_blocks") or getattr(pipe, "tokenizer_2", None) is None:
            raise LimeEditError(f"not a FLUX.1 Kontext pipeline: {type(pipe).__name__} has no FLUX transformer "
                                "with a T5 tokenizer")

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
        out["double_stream_blocks"] = self.n_double
        return out

    # ---------------------------------------------------------------- text side
    @property
    def tokenizer(self):
        return self.pipe.tokenizer_2

    @property
    def max_tokens(self) -> int:
        """T5 positions the pipeline encodes (its ``max_sequence_length``, at most 512)."""
        return min(512, int(self.pipe.tokenizer_2.model_max_length))

    def select_tokens(self, instruction: str, cfg: LimeConfig) -> TokenSelection:
        return select_tokens_by_words(self.tokenizer, self.prompt(instruction), self.max_tokens,
                                      **token_settings(cfg))

    # ---------------------------------------------------------------- running
    def processing_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor) * 2

    def native_size(self) -> tuple[int, int] | None:
        side = int(self.pipe.default_sample_size) * int(self.pipe.vae_scale_factor)
        return side, side

    def token_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        f = self.processing_multiple()
        return size[1] // f, size[0] // f

    @contextlib.contextmanager
    def attention(self, state, layers: tuple[str, ...] | None = None):
        from ..joint import joint_attention

        state.text_len = self.max_tokens
        blocks = {name: b for b, names in self._levels.items() for name in names}
        with joint_attention(self.denoiser, state, blocks, layers) as st:
            yield st

    def call_kwargs(self, *, prompts, images, size, steps, guidance, image_guidance, generators, output_type):
        w, h = size
        return dict(prompt=[self.prompt(p) for p in prompts], image=images, height=h, width=w,
                    max_area=w * h, _auto_resize=False, num_inference_steps=steps, guidance_scale=guidance,
                    generator=generators, output_type=output_type, max_sequence_length=self.max_tokens)
