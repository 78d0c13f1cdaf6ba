"""Prompt-to-Prompt on a text-to-image Stable Diffusion model, for real images
(LIME paper, supplementary A.1; the method of PIE-Bench's "DirectInversion + P2P" row, whose
settings are the ``piebench`` preset, not the defaults).

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

Defaults (lime-edit's own; not PIE-Bench's row): 50 DDIM steps, guidance 7.5,
cross-attention replaced for the first 40 % of steps, self-attention for the first 60 %
at the coarse layers (latent level >= 4: P2P's 16x16 of a 64 latent, and the same layers
at every image size), word swap when the captions have the same token count, no local
blend, no reweighting.  The ``piebench`` preset (:data:`PRESETS`, ``preset="piebench"``)
is PnPInversion's "DirectInversion + P2P" row instead: refinement always, self-attention
at the layers with at most 32x32 query tokens (an absolute count: 32x32, 16x16 and 8x8
at 512 px, other layers at other sizes), local blend on the record's blended words and
the target word reweighted x2 (see :func:`preset_options`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from ..config import LimeConfig, is_real
from ..errors import LimeEditError
from ..p2p_control import (P2PController, align_tokens, ddim_invert, p2p_attention, split_word_positions,
                           unwrapped_attention)
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
    self_replace_max_tokens: when set, self-attention is replaced at the layers with at
        most this many query tokens instead (an absolute count, whatever the image size:
        PnPInversion's 32 * 32, which at 512 px means 32x32, 16x16 and 8x8; at 256 px it
        means every layer); ``None``: the relative rule above.
    mode: "auto" (word swap when the captions have the same token count, else
        refinement), "swap" or "refine".
    aligner: the refinement's token alignment: "difflib" or "p2p" (the official code's
        global alignment; :func:`~lime_edit.p2p_control.align_tokens`).
    reweight: ``{word: scale}``: the target caption's word's attention is multiplied
        by ``scale`` during the replacement steps.
    local_blend: P2P's local blend: after ``blend_start`` of the steps, the target latent
        is the source latent outside a mask made from the changed words' cross-attention
        (both captions' words, accumulated over the steps so far, at latent level
        ``blend_level``, 3x3 max-pooled, normalized, > ``blend_threshold``).
    blend_words: ``(source_words, target_words)``: the words whose cross-attention makes
        the blend mask (P2P's ``LocalBlend`` words, e.g. PIE-Bench's ``blended_word``
        "cat dog" is ``(("cat",), ("dog",))``); ``None``: the words the alignment marks as
        changed.  Needs ``local_blend``.
    word_match: how ``reweight`` and ``blend_words`` find a word in a caption: "tokens"
        (the word's token ids as a run anywhere in the caption; a word that is not there
        is an error) or "split" (the official code's rule, :func:`~lime_edit.p2p_control.
        split_word_positions`: exact space-separated pieces; a word that is not there
        selects nothing, with a warning).
    blend_maps: which target cross-attention local blend accumulates: "own" (the target
        branch's own maps) or "edited" (after the cross-attention replacement and
        reweighting: what the official code stores, as it edits the stored maps in place).
    ddim: the DDIM scheduler of inversion and sampling: "model" (built from the model's
        scheduler config: for SD v1.x ``steps_offset`` 1, timesteps 981 .. 1 at 50 steps, and
        ``clip_sample`` as the config says, diffusers' DDIM default True where it names
        none) or "pnpinversion" (PnPInversion's ``DDIMSchedulerDev``: the
        model's betas with ``steps_offset`` 0, timesteps 980 .. 0, no x0 clipping,
        ``set_alpha_to_one`` off, "leading" spacing as diffusers 0.10); see :data:`DDIM_CONFIGS`.
    quantize: how the decoded image becomes 8-bit: "round" (diffusers' image processor) or
        "floor" (PnPInversion's ``latent2image``: ``(x * 255).astype(uint8)``, on average
        half a level darker).
    preset: the name of the preset these settings started from (``_settings``; a record
        of it, see :data:`PRESETS`).
    """

    cross_replace: float = 0.4
    self_replace: float = 0.6
    self_replace_min_level: int = 4
    mode: str = "auto"
    aligner: str = "difflib"
    reweight: tuple[tuple[str, float], ...] = ()
    local_blend: bool = False
    blend_threshold: float = 0.3
    blend_start: float = 0.2
    blend_level: int = 4
    self_replace_max_tokens: int | None = None
    blend_words: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    word_match: str = "tokens"
    blend_maps: str = "own"
    ddim: str = "model"
    quantize: str = "round"
    preset: str = "default"

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
        v = self.self_replace_max_tokens
        if v is not None and (not is_real(v) or not math.isfinite(v) or v != int(v) or v < 1):
            raise LimeEditError(f"self_replace_max_tokens: must be a whole number >= 1 or None, got {v!r}")
        for name, allowed in (("word_match", ("tokens", "split")), ("blend_maps", ("own", "edited")),
                              ("aligner", ("difflib", "p2p")), ("ddim", tuple(DDIM_CONFIGS)),
                              ("quantize", ("round", "floor"))):
            if getattr(self, name) not in allowed:
                raise LimeEditError(f"{name}: expected {' or '.join(map(repr, allowed))}, got {getattr(self, name)!r}")
        if self.preset not in PRESETS:
            raise LimeEditError(f"preset: unknown preset {self.preset!r} (known: {', '.join(PRESETS)})")
        if self.blend_words is not None:
            object.__setattr__(self, "blend_words", _blend_words(self.blend_words))
            if not self.local_blend:
                raise LimeEditError("blend_words: they choose local blend's words; turn local_blend on too")
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


def _blend_words(value: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(source_words, target_words)``, each a word or a sequence of words, as two tuples."""
    bad = LimeEditError(f"blend_words: expected (source words, target words), e.g. ('cat', 'dog') or "
                        f"(('cat',), ('dog',)), got {value!r}")
    if isinstance(value, str) or len(_iterable(value)) != 2:
        raise bad
    out = []
    for side in value:
        words = (side,) if isinstance(side, str) else tuple(_iterable(side))
        if not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise bad
        out.append(words)
    return out[0], out[1]


def parse_blend_words(text: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """PIE-Bench's ``blended_word`` ("cat dog": the source caption's word, then the target's)
    as ``blend_words``, read as PnPInversion's ``run_editing_p2p.py`` reads it: split at
    single spaces, the first two pieces; ``""`` (no words) is ``None``."""
    if not isinstance(text, str):
        raise LimeEditError(f"blended words: expected text like 'cat dog', got {text!r}")
    if text == "":
        return None
    words = text.split(" ")
    if len(words) < 2 or not words[0] or not words[1]:
        raise LimeEditError(f"blended words {text!r}: expected 'SOURCE_WORD TARGET_WORD', e.g. 'cat dog'")
    return (words[0],), (words[1],)


#: the ``piebench`` preset: PnPInversion's "DirectInversion + P2P" row (``run_editing_p2p.py``,
#: ``models/p2p_editor.py``, ``models/p2p/attention_control.py``); its words are the record's,
#: see :func:`preset_options`.  Sampler: 50 DDIM steps, guidance 7.5 (``PIEBENCH_SAMPLER``).
PIEBENCH_SETTINGS: dict[str, Any] = {
    "mode": "refine", "aligner": "p2p", "cross_replace": 0.4, "self_replace": 0.6,
    "self_replace_max_tokens": 32 * 32,
    "blend_threshold": 0.3, "blend_start": 0.2, "blend_level": 4, "word_match": "split",
    "blend_maps": "edited", "ddim": "pnpinversion", "quantize": "floor"}
#: ``P2PSettings.ddim`` -> the DDIM scheduler config entries it sets over the model's
DDIM_CONFIGS: dict[str, dict[str, Any]] = {
    "model": {},
    "pnpinversion": {"steps_offset": 0, "clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "leading"},
}
#: the target blend word's reweighting scale of the ``piebench`` preset
PIEBENCH_REWEIGHT = 2.0
#: the sampler of PnPInversion's row: LimeConfig fields (P2PBackbone.sampler_defaults agree)
PIEBENCH_SAMPLER: dict[str, Any] = {"num_inference_steps": 50, "guidance_scale": 7.5}
#: the model of PnPInversion's row (``P2PEditor``)
PIEBENCH_MODEL = "CompVis/stable-diffusion-v1-4"
#: preset name -> what it is (``preset=`` / ``--preset``)
PRESETS: dict[str, str] = {
    "default": "lime-edit's defaults (word swap for captions of equal token count, self-attention at "
               "latent level >= 4, no blend, no reweighting)",
    "piebench": "PnPInversion's DirectInversion + P2P row (refinement, self-attention at <= 32x32 query tokens, "
                "local blend on the blended words, target word x2)",
}


def preset_options(name: str, blend_words: Any = None) -> dict[str, Any]:
    """The :class:`P2PSettings` fields of preset ``name`` for an edit whose blend words are
    ``blend_words`` (``(source_words, target_words)``, or ``None``).

    ``default``: lime-edit's defaults; words given turn local blend on with them.
    ``piebench``: :data:`PIEBENCH_SETTINGS`; with words, local blend on them and the target
    words reweighted by :data:`PIEBENCH_REWEIGHT`; without (a PIE-Bench record whose
    ``blended_word`` is empty), neither, as PnPInversion runs such a record."""
    if name not in PRESETS:
        raise LimeEditError(f"preset: unknown preset {name!r} (known: {', '.join(PRESETS)})")
    words = None if blend_words is None else _blend_words(blend_words)
    out: dict[str, Any] = {"preset": name}
    if name == "piebench":
        out.update(PIEBENCH_SETTINGS)
        out["reweight"] = tuple((w, PIEBENCH_REWEIGHT) for w in words[1]) if words else ()
    if words:
        out.update(local_blend=True, blend_words=words)
    return out


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
    """``base`` with ``options`` replaced; unknown names are one ``LimeEditError``.  With
    ``preset`` among them, the base is that preset (:func:`preset_options`, given the
    options' ``blend_words``) and the other options override it."""
    keys = set(P2PSettings.__dataclass_fields__)
    unknown = sorted(set(options) - keys)
    if unknown:
        raise LimeEditError(f"p2p backbone: unknown option(s) {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(keys))})")
    options = dict(options)
    if "preset" in options:
        base = P2PSettings(**preset_options(options.pop("preset"), options.pop("blend_words", None)))
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
        #: ``(caption, message)`` notes for the results' warnings (words the "split" rule did not
        #: find); edit_captions empties it before its passes and reads it after
        self.notes: list[tuple[str, str]] = []

    @contextmanager
    def using(self, **options: Any) -> Iterator[P2PSettings]:
        """These settings (fields of :class:`P2PSettings`) instead of the backbone's for the
        calls inside the block; the backbone's own come back afterwards, also on error.
        ``preset=NAME`` starts from that preset (:func:`preset_options`) instead of the
        backbone's settings; the other options override it.
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
        d["p2p"] = {"preset": s.preset, "cross_replace": s.cross_replace, "self_replace": s.self_replace,
                    "self_replace_min_level": s.self_replace_min_level,
                    "self_replace_max_tokens": s.self_replace_max_tokens, "mode": s.mode, "aligner": s.aligner,
                    "reweight": dict(s.reweight), "inversion": "DDIM + Direct Inversion",
                    "local_blend": s.local_blend, "blend_threshold": s.blend_threshold,
                    "blend_start": s.blend_start, "blend_level": s.blend_level,
                    "blend_words": None if s.blend_words is None else [list(w) for w in s.blend_words],
                    "word_match": s.word_match, "blend_maps": s.blend_maps,
                    "ddim": s.ddim, "ddim_config": self._ddim_config(), "quantize": s.quantize}
        return d

    # ---------------------------------------------------------------- text side
    def select_tokens(self, instruction: str, cfg: LimeConfig, source: str | None = None) -> TokenSelection:
        """Roles of the TARGET caption's tokens; related = content words added or
        replaced with respect to ``source`` (all content words when no source)."""
        sel = select_tokens(self.tokenizer, instruction, **token_settings(cfg))
        if source is None:
            return sel
        s = self.settings
        changed = set(align_tokens(self.tokenizer, source, instruction, s.mode, s.aligner).changed)
        return TokenSelection(ids=sel.ids, tokens=sel.tokens, end=sel.end,
                              related=[p for p in sel.related if p in changed], keep=sel.keep,
                              truncated=sel.truncated, words=sel.words)

    def _word_positions(self, text: str, word: str, what: str, caption: str) -> list[int]:
        """Token positions of ``word`` in ``text`` by the settings' ``word_match``; ``what``
        (the option) and ``caption`` ("target", "source") name them in errors and notes."""
        tok = self.tokenizer
        if self.settings.word_match == "split":
            hits = split_word_positions(tok, text, word)
            if not hits:
                done = "reweighted" if what == "reweight" else "blended"
                self.notes.append((text, f"{what}: {word!r} is not a space-separated word of the {caption} "
                                         f"caption {text!r}: nothing {done} for it (as the official P2P code)"))
            return hits
        full = list(tok(text, add_special_tokens=False).input_ids)
        ids = full[: self.max_tokens - 2]
        wid = list(tok(word, add_special_tokens=False).input_ids)
        hits = [1 + i + k for i in range(len(ids) - len(wid) + 1) if ids[i:i + len(wid)] == wid
                for k in range(len(wid))]
        if not hits and wid and any(full[i:i + len(wid)] == wid for i in range(len(full) - len(wid) + 1)):
            raise LimeEditError(f"{what}: {word!r} comes after the text encoder's {self.max_tokens}-token "
                                f"limit in the {caption} caption, which was truncated there: shorten it")
        if not hits:
            raise LimeEditError(f"{what}: {word!r} is not a word of the {caption} caption {text!r}")
        return hits

    def _equalizer(self, targets: list[str]) -> torch.Tensor | None:
        if not self.settings.reweight:
            return None
        eq = torch.ones(len(targets), self.max_tokens)
        for b, text in enumerate(targets):
            for word, scale in self.settings.reweight:
                eq[b, self._word_positions(text, word, "reweight", "target")] = float(scale)
        return eq

    def _ddim_config(self) -> dict[str, Any]:
        """The scheduler config entries that decide the DDIM timesteps and step under these
        settings (a record for ``describe``)."""
        cfg = {**self.pipe.scheduler.config, **DDIM_CONFIGS[self.settings.ddim]}
        return {k: cfg.get(k) for k in ("steps_offset", "clip_sample", "set_alpha_to_one", "timestep_spacing")}

    @contextmanager
    def _schedule(self) -> Iterator[None]:
        """The pipeline's DDIM scheduler with the settings' ``ddim`` config entries (when they
        differ from the scheduler's own) for the calls inside the block."""
        pipe = self.pipe
        want = DDIM_CONFIGS[self.settings.ddim]
        if all(pipe.scheduler.config.get(k) == v for k, v in want.items()):
            yield
            return
        from diffusers import DDIMScheduler

        saved = pipe.scheduler
        pipe.scheduler = DDIMScheduler.from_config(saved.config, **want)
        try:
            yield
        finally:
            pipe.scheduler = saved

    # ---------------------------------------------------------------- running
    def _invert(self, images: list, sources: list[str], size: tuple[int, int], steps: int) -> list[torch.Tensor]:
        pipe = self.pipe
        device = pipe._execution_device
        key = (tuple(sources), steps, size, str(device), str(pipe.unet.dtype),
               tuple(sorted((k, str(v)) for k, v in pipe.scheduler.config.items())),
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
        with self._schedule():
            return self._run(prompts=prompts, images=images, size=size, steps=steps, guidance=guidance,
                             output_type=output_type, on_step_end=on_step_end, sources=sources)

    def _run(self, *, prompts, images, size, steps, guidance, output_type, on_step_end, sources):
        pipe = self.pipe
        B = len(prompts)
        traj = self._invert(images, sources, size, steps)
        s = self.settings
        latent_h = size[1] // int(pipe.vae_scale_factor)
        latent_w = size[0] // int(pipe.vae_scale_factor)
        lvl = max(1, s.self_replace_min_level)
        cross_steps, self_steps, blend_start = step_counts(s, steps)
        aligns = [align_tokens(self.tokenizer, a, b, s.mode, s.aligner) for a, b in zip(sources, prompts)]
        ctrl = P2PController(
            batch=B, mapper=torch.stack([a.mapper for a in aligns]), alphas=torch.stack([a.alphas for a in aligns]),
            cross_steps=cross_steps, self_steps=self_steps,
            self_max_tokens=(s.self_replace_max_tokens if s.self_replace_max_tokens is not None
                             else (latent_h // lvl) * (latent_w // lvl)),
            equalizer=self._equalizer(prompts), blend_edited=s.blend_maps == "edited")
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
                if s.blend_words is None:               # the words the alignment marks as changed
                    words_s[j, a.changed_source] = True
                    words_t[j, a.changed] = True
                    continue
                for side, texts, caption, words in ((words_s, sources, "source", s.blend_words[0]),
                                                    (words_t, prompts, "target", s.blend_words[1])):
                    for w in words:
                        side[j, self._word_positions(texts[j], w, "blend_words", caption)] = True
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
        floor = output_type == "pil" and s.quantize == "floor"
        with p2p_attention(pipe.unet, ctrl):
            out = pipe(prompt=list(sources) + list(prompts), latents=start, num_inference_steps=steps,
                       guidance_scale=guidance, height=size[1], width=size[0],
                       output_type="np" if floor else output_type,
                       callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"]).images
        if floor:            # PnPInversion's latent2image: (x * 255).astype(uint8), truncated
            from PIL import Image

            out = [Image.fromarray((np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)) for x in out]
        # identical captions: nothing to edit, the source branch (the reconstruction) is the result
        return [out[j] if sources[j] == prompts[j] else out[B + j] for j in range(B)]
