"""Prompt-to-Prompt on a text-to-image Stable Diffusion model, for real images
(LIME paper, supplementary A.1; "DirectInversion + P2P" of PIE-Bench).

One edit of ``B`` images with source captions ``S`` and target captions ``T``:

1. the images are encoded by the VAE (the latent distribution's mean) and inverted
   with DDIM under ``S`` (conditional prediction only, guidance 1), giving the
   trajectory ``z_0 .. z_N`` (cached for the last images/captions/steps, so LIME's
   localization pass and the edit pass share one inversion);
2. diffusers' ``StableDiffusionPipeline`` runs from ``z_N`` with prompts
   ``[S_1..S_B, T_1..T_B]`` and classifier-free guidance (U-Net rows
   ``[uncond S, uncond T, cond S, cond T]``), with P2P's attention control
   (:mod:`lime_edit.p2p_control`) installed;
3. **Direct Inversion**: after every step the source latents are put back on the
   inversion trajectory (``z += z_inv - z``, from ``callback_on_step_end``), so the
   source branch ends at ``z_0`` and decodes to the input up to the VAE round trip.

The edited images are the target rows.  Identical captions return the source
branch (the reconstruction).  The scheduler is replaced by a ``DDIMScheduler`` built
from the model's scheduler config (inversion needs a deterministic sampler).

LIME roles: cross-attention is read in row block 3 (cond target: the target caption's
maps of the words that changed), features are clustered from block 2 (cond source: the
branch that sees the input image's trajectory), and the RoI penalty applies to the
target blocks 1 and 3 only (same token positions in both, so the guidance difference
compares predictions made under the same constraint, as for IP2P); the source blocks
are never touched.  Related tokens are the target caption's content words that were
added or replaced (:func:`lime_edit.p2p_control.align_tokens`).

Defaults (PIE-Bench's P2P row): 50 DDIM steps, guidance 7.5, cross-attention replaced
for the first 40 % of steps, self-attention for the first 60 % at the coarse layers
(latent level >= 4, P2P's 16x16 of a 64 latent).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from ..config import LimeConfig, is_real
from ..errors import LimeEditError
from ..p2p_control import P2PController, align_tokens, ddim_invert, p2p_attention, unwrapped_attention
from ..tokens import TokenSelection, select_tokens
from .base import Backbone, token_settings


#: the largest |scale| ``reweight`` takes: a sanity bound (P2P's examples use about -2 to 5; a scale
#: near float's range overflows the attention to NaN and the image to black)
REWEIGHT_MAX = 100.0


@dataclass(frozen=True)
class P2PSettings:
    """Prompt-to-Prompt settings of a :class:`P2PBackbone` (constructor options).

    cross_replace: fraction of the steps during which aligned tokens' cross-attention is
        the source's. self_replace: the same for self-attention (coarse layers).
    self_replace_min_level: self-attention is replaced at latent levels >= this.
    mode: "auto" (word swap when the captions have the same token count, else
        refinement), "swap" or "refine".
    reweight: ``{word: scale}``: the target caption's word's attention is multiplied
        by ``scale`` during the replacement steps.
    local_blend: P2P's local blend: after ``blend_start`` of the steps, the target latent
        is the source latent outside a mask made from the changed words' cross-attention
        (both captions' words, accumulated over the steps so far, at latent level
        ``blend_level``, 3x3 max-pooled, normalized, > ``blend_threshold``).
    """

    cross_replace: float = 0.4
    self_replace: float = 0.6
    self_replace_min_level: int = 4
    mode: str = "auto"
    reweight: tuple[tuple[str, float], ...] = ()
    local_blend: bool = False
    blend_threshold: float = 0.3
    blend_start: float = 0.2
    blend_level: int = 4

    def __post_init__(self):
        for name in ("cross_replace", "self_replace", "blend_threshold", "blend_start"):
            v = getattr(self, name)
            if not is_real(v) or not 0.0 <= v <= 1.0:     # also refuses nan
                raise LimeEditError(f"{name}: must be in [0, 1], got {v!r}")
        for name in ("self_replace_min_level", "blend_level"):
            v = getattr(self, name)
            if not is_real(v) or not math.isfinite(v) or v != int(v) or v < 1:
                raise LimeEditError(f"{name}: must be a latent level (1, 2, 4, ...), got {v!r}")
        if not isinstance(self.local_blend, bool):
            raise LimeEditError(f"local_blend: must be True or False, got {self.local_blend!r}")
        if self.mode not in ("auto", "swap", "refine"):
            raise LimeEditError(f"p2p mode: expected 'auto', 'swap' or 'refine', got {self.mode!r}")
        reweight = self.reweight.items() if isinstance(self.reweight, dict) else self.reweight
        if isinstance(reweight, str) or not all(
                isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in _iterable(reweight)):
            raise LimeEditError(f"reweight: expected {{word: scale}} or (word, scale) pairs, got {self.reweight!r}")
        object.__setattr__(self, "reweight", tuple((w, s) for w, s in reweight))
        for word, scale in self.reweight:
            if not isinstance(word, str) or not word.strip():
                raise LimeEditError(f"reweight: a word must be a non-empty string, got {word!r}")
            # attention probabilities are multiplied by it: nan/inf or a huge scale gives a NaN image
            if not is_real(scale) or not -REWEIGHT_MAX <= scale <= REWEIGHT_MAX:       # also refuses nan
                raise LimeEditError(f"reweight: {word}={scale}: the scale must be a number in "
                                    f"[-{REWEIGHT_MAX:g}, {REWEIGHT_MAX:g}] (P2P uses about -2 to 5)")


def step_counts(settings: "P2PSettings", steps: int) -> tuple[int, int, int]:
    """``(cross_steps, self_steps, blend_from)`` of a pass of ``steps`` denoising steps, the
    way the official P2P code (google/prompt-to-prompt, PnPInversion) counts them: truncated,
    not rounded.  Cross-attention is replaced in the first ``int(cross_replace * (steps + 1))``
    steps (``get_time_words_attention_alpha`` builds ``steps + 1`` rows), self-attention in the
    first ``int(self_replace * steps)``, and local blend starts at step ``int(blend_start * steps)``."""
    return (int(settings.cross_replace * (steps + 1)), int(settings.self_replace * steps),
            int(settings.blend_start * steps))


def _iterable(v: Any) -> list:
    try:
        return list(v)
    except TypeError:
        return [None]           # not iterable: reported as a bad value


def _settings(base: P2PSettings, options: dict[str, Any]) -> P2PSettings:
    """``base`` with ``options`` replaced; unknown names are one ``LimeEditError``."""
    keys = set(P2PSettings.__dataclass_fields__)
    unknown = sorted(set(options) - keys)
    if unknown:
        raise LimeEditError(f"p2p backbone: unknown option(s) {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(keys))})")
    return dataclasses.replace(base, **options)


class P2PBackbone(Backbone):
    name = "p2p"
    description = "Prompt-to-Prompt with Direct Inversion on a text-to-image Stable Diffusion model (SD1.x/2.x)"
    pipeline_class = "StableDiffusionPipeline"
    branches = 4
    text_branch = 3
    image_branch = 2
    regularized_branches = (1, 3)
    #: the related tokens are exactly the changed words: the end token (which the IP2P reference
    #: averages in, see ``LimeConfig.localize_end_token``) carries the whole target caption here
    sampler_defaults = {"num_inference_steps": 50, "guidance_scale": 7.5, "localization_guidance_scale": 7.5,
                        "localize_end_token": False}
    #: edits take a source and a target caption (:meth:`LimePipeline.edit_captions`)
    caption_editing: ClassVar[bool] = True

    @classmethod
    def single_file_kwargs(cls, path, shapes, config):
        return {}

    def __init__(self, pipe, *, prompt_suffix: str | None = None, **options: Any):
        self.settings = _settings(P2PSettings(), options)
        super().__init__(pipe, prompt_suffix=prompt_suffix)
        from diffusers import DDIMScheduler

        if not isinstance(pipe.scheduler, DDIMScheduler):
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self._inversion: tuple[tuple, list[torch.Tensor]] | None = None
        #: the local-blend mask of the last pass, (B, 1, h, w) on the latent grid (None without blend)
        self.last_blend_mask: torch.Tensor | None = None

    @contextmanager
    def using(self, **options: Any) -> Iterator[P2PSettings]:
        """These settings (fields of :class:`P2PSettings`) instead of the backbone's for the
        calls inside the block; the backbone's own come back afterwards, also on error.
        An unknown name or a bad value is a ``LimeEditError`` before anything changes."""
        saved = self.settings
        self.settings = _settings(saved, options)
        try:
            yield self.settings
        finally:
            self.settings = saved

    def check_pipeline(self, pipe) -> None:
        unet = getattr(pipe, "unet", None)
        in_ch = getattr(getattr(unet, "config", None), "in_channels", None)
        need = ("the p2p backbone needs a text-to-image Stable Diffusion model (StableDiffusionPipeline: "
                "a 4-channel U-Net, one CLIP text encoder, a VAE)")
        if in_ch != 4:
            raise LimeEditError(f"{need}; this U-Net takes {in_ch} input channels"
                                + (" (an instruction editor: use `lime-edit edit`)" if in_ch == 8 else ""))
        if getattr(pipe, "tokenizer_2", None) is not None or not all(
                getattr(pipe, c, None) is not None for c in ("tokenizer", "text_encoder", "vae")):
            raise LimeEditError(f"{need}; got a {type(pipe).__name__}")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        s = self.settings
        d["p2p"] = {"cross_replace": s.cross_replace, "self_replace": s.self_replace,
                    "self_replace_min_level": s.self_replace_min_level, "mode": s.mode,
                    "reweight": dict(s.reweight), "inversion": "DDIM + Direct Inversion",
                    "local_blend": s.local_blend, "blend_threshold": s.blend_threshold,
                    "blend_start": s.blend_start}
        return d

    # ---------------------------------------------------------------- text side
    def select_tokens(self, instruction: str, cfg: LimeConfig, source: str | None = None) -> TokenSelection:
        """Roles of the TARGET caption's tokens; related = content words added or
        replaced with respect to ``source`` (all content words when no source)."""
        sel = select_tokens(self.tokenizer, instruction, **token_settings(cfg))
        if source is None:
            return sel
        changed = set(align_tokens(self.tokenizer, source, instruction, self.settings.mode).changed)
        return TokenSelection(ids=sel.ids, tokens=sel.tokens, end=sel.end,
                              related=[p for p in sel.related if p in changed], keep=sel.keep,
                              truncated=sel.truncated, words=sel.words)

    def _equalizer(self, targets: list[str]) -> torch.Tensor | None:
        if not self.settings.reweight:
            return None
        tok = self.tokenizer
        eq = torch.ones(len(targets), self.max_tokens)
        for b, text in enumerate(targets):
            full = list(tok(text, add_special_tokens=False).input_ids)
            ids = full[: self.max_tokens - 2]
            for word, scale in self.settings.reweight:
                wid = list(tok(word, add_special_tokens=False).input_ids)
                hits = [1 + i + k for i in range(len(ids) - len(wid) + 1) if ids[i:i + len(wid)] == wid
                        for k in range(len(wid))]
                if not hits and wid and any(full[i:i + len(wid)] == wid for i in range(len(full) - len(wid) + 1)):
                    raise LimeEditError(f"reweight: {word!r} comes after the text encoder's {self.max_tokens}-token "
                                        f"limit in the target caption, which was truncated there: shorten it")
                if not hits:
                    raise LimeEditError(f"reweight: {word!r} is not a word of the target caption {text!r}")
                eq[b, hits] = float(scale)
        return eq

    # ---------------------------------------------------------------- running
    def _invert(self, images: list, sources: list[str], size: tuple[int, int], steps: int) -> list[torch.Tensor]:
        pipe = self.pipe
        device = pipe._execution_device
        key = (tuple(sources), steps, size, str(device), str(pipe.unet.dtype),
               tuple(hashlib.sha1(im.tobytes()).hexdigest() for im in images))
        if self._inversion is not None and self._inversion[0] == key:
            return self._inversion[1]
        vae = pipe.vae
        with torch.no_grad(), unwrapped_attention(pipe.unet):
            x = pipe.image_processor.preprocess(images, height=size[1], width=size[0]).to(device, vae.dtype)
            z = vae.encode(x).latent_dist.mean
            shift = getattr(vae.config, "shift_factor", None)
            if shift:
                z = z - shift
            z = (z * vae.config.scaling_factor).to(pipe.unet.dtype)
            emb = pipe.encode_prompt(sources, device, 1, do_classifier_free_guidance=False)[0]
            traj = ddim_invert(pipe.unet, pipe.scheduler, z, emb, steps)
        self._inversion = (key, traj)
        return traj

    def run(self, *, prompts: list[str], images: list, size: tuple[int, int], steps: int, guidance: float,
            image_guidance: float, generators: list, output_type: str,
            on_step_end: Callable[[int], None] | None = None, sources: list[str] | None = None):
        """One P2P pass (see module docstring); returns the target rows' images."""
        if sources is None:
            raise LimeEditError("the p2p backbone edits with a source and a target caption: "
                                "use LimePipeline.edit_captions(image, source, target)")
        if guidance <= 1.0:
            raise LimeEditError(f"guidance_scale: P2P runs with classifier-free guidance, need > 1 (got {guidance})")
        pipe = self.pipe
        B = len(prompts)
        traj = self._invert(images, sources, size, steps)
        s = self.settings
        latent_h = size[1] // int(pipe.vae_scale_factor)
        latent_w = size[0] // int(pipe.vae_scale_factor)
        lvl = max(1, s.self_replace_min_level)
        cross_steps, self_steps, blend_start = step_counts(s, steps)
        aligns = [align_tokens(self.tokenizer, a, b, s.mode) for a, b in zip(sources, prompts)]
        ctrl = P2PController(
            batch=B, mapper=torch.stack([a.mapper for a in aligns]), alphas=torch.stack([a.alphas for a in aligns]),
            cross_steps=cross_steps, self_steps=self_steps,
            self_max_tokens=(latent_h // lvl) * (latent_w // lvl), equalizer=self._equalizer(prompts))
        blend_from = steps + 1
        self.last_blend_mask = None
        if s.local_blend:
            bl = max(1, s.blend_level)
            if bl not in self.levels:
                raise LimeEditError(f"blend_level: this U-Net has no attention at latent level {bl} "
                                    f"(levels present: {', '.join(map(str, self.levels))})")
            words_s = torch.zeros(B, self.max_tokens, dtype=torch.bool)
            words_t = torch.zeros(B, self.max_tokens, dtype=torch.bool)
            for j, a in enumerate(aligns):
                words_s[j, a.changed_source] = True
                words_t[j, a.changed] = True
            ctrl.blend_src, ctrl.blend_tgt = words_s, words_t
            ctrl.blend_tokens = (latent_h // bl) * (latent_w // bl)
            blend_from = blend_start

        def callback(p, i, t, kwargs):
            lat = kwargs["latents"].clone()
            lat[:B] = traj[steps - 1 - i].to(lat.dtype)            # Direct Inversion on the source rows
            if i >= blend_from:                                      # local blend: source outside the mask
                mask = ctrl.blend_mask((latent_h, latent_w), s.blend_threshold)
                if mask is not None:
                    lat[B:] = torch.where(mask.to(lat.device), lat[B:], lat[:B])
                    self.last_blend_mask = mask.cpu()
            ctrl.step = i + 1
            if on_step_end is not None:
                on_step_end(i)
            return {"latents": lat}

        start = torch.cat([traj[-1], traj[-1]])
        with p2p_attention(pipe.unet, ctrl):
            out = pipe(prompt=list(sources) + list(prompts), latents=start, num_inference_steps=steps,
                       guidance_scale=guidance, height=size[1], width=size[0], output_type=output_type,
                       callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"]).images
        # identical captions: nothing to edit, the source branch (the reconstruction) is the result
        return [out[j] if sources[j] == prompts[j] else out[B + j] for j in range(B)]
