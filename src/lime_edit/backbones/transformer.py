"""What the joint-attention transformer families share (FLUX.1 Kontext, Qwen-Image-Edit,
FLUX.2 [klein]): one guidance row per forward (guidance-distilled, or true CFG as a
separate forward that LIME leaves stock), blocks as levels, one token per 16x16 pixels
(VAE /8, 2x2 patches), a native size of ``default_sample_size`` x the VAE factor,
bfloat16 on CUDA, their own sampler steps in benchmarks, and the flow-matching latent
blend (``preserve="latent"``).  Each family's module adds its layout: which blocks,
which tokenizer, which processor, how the pipeline is called."""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from .base import Backbone

_DOUBLE = re.compile(r"^transformer_blocks\.(\d+)\.")
_SINGLE = re.compile(r"^single_transformer_blocks\.(\d+)\.")


def flux_blocks(transformer) -> dict[int, list[str]]:
    """``{block: [processor names]}``: double-stream blocks ``0..D-1``, then single-stream
    blocks ``D..D+S-1`` (read from the layer names; no forward pass).  FLUX.1, FLUX.2 and
    Qwen-Image (double-stream only) name their blocks this way."""
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


class TransformerBackbone(Backbone):
    """Base of the joint-attention families (see module docstring)."""

    branches = 1
    text_branch = 0
    image_branch = 0
    regularized_branches = (0,)
    default_out_scale = 2
    level_word = "block"
    denoiser_word = "transformer"
    has_image_guidance = False
    own_steps_in_benchmarks = True
    latent_blend = True
    #: where the default feature blocks sit, as fractions of the depth: FLUX-style models
    #: read the last quarter of the double-stream blocks and the first eighth of the
    #: single-stream ones (``None``); double-stream-only models the same relative depth
    feature_depth: ClassVar[tuple[float, float] | None] = None

    @classmethod
    def cuda_dtype(cls):
        """bfloat16, as these transformers are released and run (float16 overflows in their activations)."""
        import torch

        return torch.bfloat16

    def find_levels(self, pipe) -> dict[int, list[str]]:
        return flux_blocks(pipe.transformer)

    @property
    def denoiser(self):
        return self.pipe.transformer

    @property
    def n_double(self) -> int:
        return len(self.pipe.transformer.transformer_blocks)

    def default_levels(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Features from the late double-stream and early single-stream blocks (where studies
        of FLUX's attention outputs find them most semantic; not calibrated on real weights),
        every block regularized."""
        blocks = self.levels
        if self.feature_depth is not None:
            lo, hi = self.feature_depth
            n = len(blocks)
            feats = tuple(range(int(n * lo), max(int(n * lo) + 1, math.ceil(n * hi))))
        else:
            d = self.n_double
            s = len(blocks) - d
            feats = tuple(range(d - math.ceil(d / 4), d)) + tuple(range(d, d + math.ceil(s / 8)))
        feats = tuple(b for b in feats if b in self._levels) or tuple(blocks)
        return feats, tuple(blocks)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["double_stream_blocks"] = self.n_double
        return out

    def processing_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor) * 2

    def native_size(self) -> tuple[int, int] | None:
        side = int(self.pipe.default_sample_size) * int(self.pipe.vae_scale_factor)
        return side, side

    def token_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        f = self.processing_multiple()
        return size[1] // f, size[0] // f
