"""LimePipeline: the task API (localize, edit, one call) on a diffusers IP2P pipeline.

::

    lp = LimePipeline.from_pretrained("timbrooks/instruct-pix2pix")   # or a folder / file / "demo"
    loc = lp.localize(image, "make her outfit black")                  # -> Localization
    res = lp.edit(image, "make her outfit black", mask=loc)            # -> EditResult
    res = lp(image, "make her outfit black")                           # both, same seed

    # caption editing on a text-to-image model (Prompt-to-Prompt, backbone "p2p")
    lp = LimePipeline.from_pretrained("runwayml/stable-diffusion-v1-5", backbone="p2p")
    res = lp.edit_captions(image, "a photo of fingernails", "a photo of glitter fingernails")

Lists of images/instructions/masks/seeds give lists of results; a batch of N
equals N single calls with the same seeds (every item has its own generator).
The wrapped diffusers pipeline is used through its public ``__call__`` only:
the localization pass stops itself after the capture step from
``callback_on_step_end`` (no later step, no decoding), and LIME's attention
processors are installed for one pass at a time and always restored.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from . import roi as roi_ops
from .backbones import Backbone, StopPass, for_pipeline
from .config import LimeConfig, check_seed
from .errors import LimeEditError
from .imageops import downscaled_size, mask_to_tensor, processing_size, resize_mask, stretch_notes, to_rgb
from .processors import PassState, check_levels, select_layers
from .results import EditResult, Localization
from .tokens import TokenSelection, text_problem, unknown_words


@dataclass
class _Item:
    index: int
    image: Image.Image            # RGB, original size
    instruction: str
    mask: Any                     # "auto" | None | Localization | user mask
    seed: int
    size: tuple[int, int] = (0, 0)  # processing size (w, h)
    tokens: TokenSelection | None = None
    source: str | None = None       # source caption (caption editing); ``instruction`` is the target
    notice: str | None = None     # processed far below the input's size (see _processing_size)


#: LimeConfig fields that act only after the localization pass's capture step: settings
#: differing only in these can share one pass (:meth:`LimePipeline.localize_variants`).
POST_CAPTURE_SETTINGS = frozenset({"feature_levels", "clustering", "num_clusters", "kmeans_iters",
                                   "distance_threshold", "agglomerative_max_points", "top_k",
                                   "align_corners", "localize_end_token"})


class LimePipeline:
    """LIME around an instruction editor's diffusers pipeline.

    ``pipe``: a ``StableDiffusionInstructPix2PixPipeline`` or
    ``StableDiffusionXLInstructPix2PixPipeline`` (any U-Net with 8 input channels).
    ``backbone``: the family (a name from :data:`lime_edit.backbones.FAMILIES`, or a
    :class:`~lime_edit.backbones.Backbone`); by default recognised from the pipeline's
    class (SD1.x/SD2.x IP2P or SDXL IP2P; HIVE and InstructDiffusion need their name
    or :meth:`from_pretrained`).  ``config`` holds the defaults of every call (default:
    the family's, :meth:`Backbone.default_config`); any :class:`LimeConfig` field can be
    overridden per call as a keyword argument.  A ``config`` you pass is used as it is:
    ``LimeConfig()``'s sampler values are the IP2P reference's, so for another family start
    from ``lp.config.replace(...)`` to keep that family's steps and guidance.
    """

    def __init__(self, pipe, config: LimeConfig | None = None, backbone: Backbone | str | None = None,
                 **backbone_options):
        if not (hasattr(pipe, "unet") or hasattr(pipe, "transformer")):
            raise LimeEditError(f"not a diffusers editing pipeline: {type(pipe).__name__} has no U-Net or transformer")
        self.backbone = backbone if isinstance(backbone, Backbone) else \
            for_pipeline(pipe, backbone, **backbone_options)
        self.pipe = pipe
        self.config = config or self.backbone.default_config()

    @classmethod
    def from_pretrained(cls, model: str, config: LimeConfig | None = None, backbone: str | None = None,
                        **load_kwargs) -> "LimePipeline":
        """Load by Hub id, local folder, single-file checkpoint or ``"demo"``; the family
        is recognised unless ``backbone`` names it. See
        :func:`lime_edit.loading.load_backbone` for ``torch_dtype``, ``device``,
        ``allow_pickle``, ``local_files_only``, ``config`` (single files) and the
        backbone options.  A model folder's ``lime_edit.json`` may recommend LIME
        settings; they become this pipeline's defaults unless ``config`` is given."""
        from .loading import load_backbone

        bb, recommended = load_backbone(model, backbone=backbone, **load_kwargs)
        return cls(bb.pipe, config or bb.default_config(recommended), backbone=bb)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    @property
    def size_multiple(self) -> int:
        """Processing sizes are multiples of this, so every U-Net level has an exact grid."""
        return self.backbone.processing_multiple()

    @property
    def native_size(self) -> tuple[int, int] | None:
        """``(width, height)`` the model was trained at (U-Net ``sample_size`` x VAE scale factor)."""
        return self.backbone.native_size()

    # ------------------------------------------------------------------ public API
    def settings(self, **overrides) -> LimeConfig:
        """The settings a call with these overrides runs with: the pipeline's (defaults, the
        model's recommended settings), the overrides, then the backbone's levels and grid."""
        return self._config(overrides)

    def localize(self, image, instruction, seed: int | Sequence[int] = 0, **overrides):
        """Stage 1 only: returns a :class:`Localization` (a list for list input).
        An instruction with no related token gives an empty mask and no tokens."""
        cfg = self._config(overrides)
        items, single = self._items(image, instruction, "auto", seed, cfg)
        out: list[Localization | None] = [None] * len(items)
        for group in self._groups(items):
            for it, loc in zip(group, self._localize(group, cfg)):
                out[it.index] = loc
        return out[0] if single else out

    def localize_variants(self, image, instruction, variants: Sequence[dict[str, Any]],
                          seed: int | Sequence[int] = 0, **overrides):
        """Stage 1 under several RoI settings from ONE localization pass.

        ``variants``: dicts of settings that act only after the capture step
        (:data:`POST_CAPTURE_SETTINGS`: feature levels, clustering, K, top-k ...), each
        applied on top of ``overrides``. The pass captures the union of the variants'
        feature levels; each variant then reads only its own levels. Returns one entry per
        variant, each exactly what :meth:`localize` returns with those settings (a
        :class:`Localization`, or a list for list input); used to compare settings (the
        recommended settings of ``train-demo``, ablations) at the cost of one pass."""
        if not isinstance(variants, (list, tuple)) or not variants or not all(isinstance(v, dict) for v in variants):
            raise LimeEditError("variants: expected a non-empty list of settings dicts")
        known = {f.name for f in dataclasses.fields(LimeConfig)}
        cfgs = []
        for i, v in enumerate(variants):
            unknown = sorted(set(v) - known)
            if unknown:
                raise LimeEditError(f"variants[{i}]: unknown setting(s) {', '.join(map(str, unknown))}")
            early = sorted(set(v) - POST_CAPTURE_SETTINGS)
            if early:
                raise LimeEditError(f"variants[{i}]: {', '.join(early)} act(s) before the capture step, so one "
                                    "localization pass cannot serve it; call localize once per setting")
            cfgs.append(self._config({**overrides, **v}))
        base = self._config(overrides)
        union = base.replace(feature_levels=tuple(sorted(set().union(*(c.feature_levels for c in cfgs)))))
        items, single = self._items(image, instruction, "auto", seed, union)
        out: list[list[Localization | None]] = [[None] * len(items) for _ in cfgs]
        for group in self._groups(items):
            st = self._capture(group, union)
            for j, c in enumerate(cfgs):
                keep = set(c.feature_levels)
                sub = PassState(latent_hw=st.latent_hw, batch=st.batch,
                                features=[f for f in st.features if f[1] in keep],
                                cross_probs=[p for p in st.cross_probs if p[1] in keep])
                for it, loc in zip(group, self._localizations(group, sub, c)):
                    out[j][it.index] = loc
        return [o[0] if single else o for o in out]

    def edit(self, image, instruction, mask: Any = "auto", seed: int | Sequence[int] = 0, **overrides):
        """Edit with LIME. ``mask``: ``"auto"`` (localize first, same seed), ``None``
        (plain IP2P), a :class:`Localization`, or a user mask (PIL image, array or
        tensor of any size, nonzero = region), or a list of these."""
        cfg = self._config(overrides)
        items, single = self._items(image, instruction, mask, seed, cfg)
        if getattr(self.backbone, "caption_editing", False):
            raise LimeEditError(f"the {self.backbone.name} backbone edits with a source and a target caption: "
                                "use edit_captions(image, source, target)")
        return self._edit_items(items, single, cfg)

    __call__ = edit

    def edit_captions(self, image, source, target, mask: Any = "auto", seed: int | Sequence[int] = 0,
                      p2p: dict[str, Any] | None = None, **overrides):
        """Caption editing (backbones with ``caption_editing``, e.g. ``"p2p"``): the input
        is described by ``source`` and the result by ``target`` (a string, or one per
        image).  The related tokens are the target's content words that were added or
        replaced; ``mask`` and the results are as for :meth:`edit`.  Identical captions
        give the reconstruction of the input and a warning.  ``p2p``: the backbone's
        Prompt-to-Prompt settings for this call only, e.g. ``{"cross_replace": 0.6,
        "local_blend": True}`` (fields of :class:`~lime_edit.backbones.p2p.P2PSettings`;
        default: the backbone's own, set when it was loaded)."""
        if not getattr(self.backbone, "caption_editing", False):
            raise LimeEditError(f"edit_captions needs a caption-editing backbone (p2p) on a text-to-image "
                                f"model; this pipeline is {self.backbone.name}: use edit(image, instruction)")
        if p2p is not None and not isinstance(p2p, dict):
            raise LimeEditError(f"p2p: expected a dict of Prompt-to-Prompt settings, got {type(p2p).__name__}")
        if p2p:
            if not hasattr(self.backbone, "using"):
                raise LimeEditError(f"p2p: the {self.backbone.name} backbone has no Prompt-to-Prompt settings")
            with self.backbone.using(**p2p):
                return self.edit_captions(image, source, target, mask=mask, seed=seed, **overrides)
        cfg = self._config(overrides)
        items, single = self._items(image, target, mask, seed, cfg, text_name="target")
        sources = _broadcast(source, len(items), "source", str)
        for it, src in zip(items, sources):
            where = "" if single else f"[{it.index}]"
            why = text_problem(src)
            if why:
                raise LimeEditError(f"source{where}: {'empty caption' if why == 'empty' else why}")
            it.source = src.strip()
        if hasattr(self.backbone, "notes"):
            self.backbone.notes = []        # the passes of this call add theirs
        results = self._edit_items(items, single, cfg)
        for it, res in zip(items, [results] if single else results):
            extra = []
            if it.source == it.instruction:
                extra.append("source and target captions are identical: nothing to edit, "
                             "the reconstruction of the input is returned")
            if self.backbone.select_tokens(it.source, cfg).truncated:
                extra.append(f"source caption is longer than the text encoder's {self.backbone.max_tokens} "
                             "tokens and was truncated")
            extra += list(dict.fromkeys(msg for text, msg in getattr(self.backbone, "notes", None) or []
                                        if text in (it.source, it.instruction)))   # its notes on these captions
            res.warnings[:0] = extra
            res.settings["source"], res.settings["target"] = it.source, it.instruction
            if "p2p" in self.backbone.describe():
                res.settings["p2p"] = self.backbone.describe()["p2p"]
        return results

    def _edit_items(self, items: list[_Item], single: bool, cfg: LimeConfig):
        out: list[EditResult | None] = [None] * len(items)
        for group in self._groups(items):
            for it, res in zip(group, self._edit(group, cfg)):
                out[it.index] = res
        return out[0] if single else out

    # ------------------------------------------------------------------ input checks
    def check_settings(self, **overrides: Any) -> LimeConfig:
        """The settings a call with these overrides would use, resolved for this model; a bad
        override, or a level this U-Net lacks, is a ``LimeEditError`` naming the field (so a
        caller with many inputs can refuse once, before any work)."""
        return self._config(overrides)

    def _config(self, overrides: dict[str, Any]) -> LimeConfig:
        """The call's settings: defaults, overrides, then the backbone's levels and grid;
        a bad override (or a level the U-Net lacks) is a ``LimeEditError`` naming the field."""
        try:
            cfg = self.backbone.resolve(self.config.replace(**overrides))
        except LimeEditError:
            raise
        except (ValueError, TypeError) as err:
            raise LimeEditError(str(err)) from None
        self.backbone.check_levels(cfg)
        self.backbone.check_preserve(cfg.preserve)
        select_layers(list(self.backbone.denoiser.attn_processors), cfg.layers)   # a pattern matching no layer
        return cfg

    def _items(self, image, instruction, mask, seed, cfg: LimeConfig,
               text_name: str = "instruction") -> tuple[list[_Item], bool]:
        single = not isinstance(image, (list, tuple))
        images = [image] if single else list(image)
        n = len(images)
        if n == 0:
            raise LimeEditError("image: empty list")
        instructions = _broadcast(instruction, n, text_name, str)
        masks = _broadcast(mask, n, "mask", None)
        seeds = _broadcast(seed, n, "seed", int)
        items = []
        for i, (img, ins, m, s) in enumerate(zip(images, instructions, masks, seeds)):
            where = "" if single else f"[{i}]"
            why = text_problem(ins)
            if why:
                empty = "empty instruction" if text_name == "instruction" else "empty caption"
                raise LimeEditError(f"{text_name}{where}: {empty if why == 'empty' else why}")
            if not isinstance(img, Image.Image):
                raise LimeEditError(f"image{where}: expected a PIL image, got {type(img).__name__}")
            if img.width < 1 or img.height < 1:
                raise LimeEditError(f"image{where}: {img.width}x{img.height} has no pixels")
            s = check_seed(s, f"seed{where}")
            if isinstance(m, str) and m != "auto":
                raise LimeEditError(f"mask{where}: expected 'auto', None, a Localization or a mask, got {m!r}")
            if m is not None and not isinstance(m, (str, Localization)):
                m = mask_to_tensor(m, name=f"mask{where}")  # a bad user mask fails before any model work
            try:
                rgb = to_rgb(img)
            except (ValueError, OSError) as err:          # a closed or truncated image
                raise LimeEditError(f"image{where}: cannot read the image ({err})") from None
            it = _Item(i, rgb, ins.strip(), m, s)
            it.size, it.notice = self._processing_size(rgb.size, cfg)
            items.append(it)
        return items, single

    def _processing_size(self, size: tuple[int, int], cfg: LimeConfig) -> tuple[tuple[int, int], str | None]:
        """The size an input of ``size`` runs at, and a one-line notice when that is far below it.

        Normally the input's size rounded to :attr:`size_multiple`.  An input with more than
        ``cfg.downscale_above`` x the model's native pixel count (:attr:`native_size`) runs at
        about the native pixel count instead, aspect ratio kept; results come back at the
        input's size."""
        native = self.native_size
        if native is not None:
            small = downscaled_size(size, native[0] * native[1], self.size_multiple, cfg.downscale_above)
            if small is not None:
                return small, (f"input {size[0]}x{size[1]} is more than {cfg.downscale_above:g}x this model's "
                               f"native {native[0]}x{native[1]} pixels: processed at {small[0]}x{small[1]} and "
                               f"resized back (downscale_above=0 processes at full size)")
        return processing_size(size, self.size_multiple), None

    def _groups(self, items: list[_Item]) -> list[list[_Item]]:
        """Items of one processing size run as one batch (of at most the backbone's
        ``max_batch`` items: a pipeline that refuses batches runs them one by one)."""
        groups: dict[tuple[int, int], list[_Item]] = {}
        for it in items:
            groups.setdefault(it.size, []).append(it)
        n = self.backbone.max_batch
        if not n:
            return list(groups.values())
        return [g[i:i + n] for g in groups.values() for i in range(0, len(g), n)]

    def _retokenize(self, items: list[_Item], cfg: LimeConfig) -> None:
        bb = self.backbone
        for it in items:
            if it.source is not None:
                it.tokens = bb.select_tokens(it.instruction, cfg, source=it.source)
            elif bb.text_sees_image:          # the stream holds the image's vision tokens
                it.tokens = bb.select_tokens(it.instruction, cfg, image=it.image, size=it.size)
            else:
                it.tokens = bb.select_tokens(it.instruction, cfg)

    def _image_guidance_note(self, cfg: LimeConfig) -> str:
        """", image guidance G" for the NaN/inf messages; a caption editor (p2p) has no image
        guidance, and naming its unused value would point at the wrong setting."""
        if getattr(self.backbone, "caption_editing", False) or not self.backbone.has_image_guidance:
            return ""
        return f", image guidance {cfg.image_guidance_scale:g}"

    # ------------------------------------------------------------------ passes
    def _latent_hw(self, size: tuple[int, int]) -> tuple[int, int]:
        return self.backbone.token_grid(size)

    def _run(self, items: list[_Item], cfg: LimeConfig, *, steps: int, guidance: float,
             state: PassState | None, stop_after: int | None, on_step=None, output_type: str = "np"):
        """One call of the wrapped pipeline; returns its images (None if stopped early)."""
        size = items[0].size
        images = [it.image.resize(size, Image.LANCZOS) if it.image.size != size else it.image
                  for it in items]
        gens = [torch.Generator(device="cpu").manual_seed(it.seed) for it in items]
        finish_bar = lambda: None  # noqa: E731 - replaced below

        def step_end(i: int) -> None:
            if i == 0:
                check_levels(state, state.capture_levels, "feature_levels")
                check_levels(state, state.reg_levels, "regularization_levels")
            if on_step is not None:
                on_step(i)
            state.step = i + 1
            if stop_after is not None and i >= stop_after:
                finish_bar()
                raise StopPass

        kwargs = dict(prompts=[it.instruction for it in items], images=images, size=size, steps=steps,
                      guidance=guidance, image_guidance=cfg.image_guidance_scale, generators=gens,
                      output_type=output_type)
        if items[0].source is not None:
            kwargs["sources"] = [it.source for it in items]
        label, total = ("edit", steps) if stop_after is None else ("localize", min(stop_after + 1, steps))
        with _step_bar(self.pipe, label, total) as finish_bar:
            if state is None:
                return self.backbone.run(**kwargs)
            bb = self.backbone
            state.feature_branch, state.attention_branch = bb.image_branch, bb.text_branch
            state.reg_branches = tuple(bb.regularized_branches)
            state.rule = cfg.joint_rule
            state.context_hw = bb.context_grid(size)
            if stop_after is None and cfg.preserve == "latent":
                kwargs["blend_state"] = state
            try:
                with bb.attention(state, cfg.layers):
                    return self.backbone.run(on_step_end=step_end, **kwargs)
            except StopPass:
                return None
            finally:
                self.pipe.maybe_free_model_hooks()

    def _capture_state(self, items: list[_Item], cfg: LimeConfig) -> PassState:
        st = PassState(latent_hw=self._latent_hw(items[0].size), batch=len(items))
        st.capture_step = cfg.capture_step
        st.capture_levels = frozenset(cfg.feature_levels)
        return st

    def _localizations(self, items: list[_Item], st: PassState, cfg: LimeConfig) -> list[Localization]:
        h, w = st.latent_hw
        grid = (h * cfg.out_scale, w * cfg.out_scale)
        cross = [p for _, _, p in st.cross_probs]
        if not st.features or not cross:
            raise LimeEditError("feature_levels: no attention layer was captured at the capture step")
        # NaN/inf captures (a guidance far out of range) would crash the clustering: one check
        # per batch, one device sync
        finite = torch.stack([torch.isfinite(t).flatten(1).all(1)
                              for t in [f for _, _, f in st.features] + cross]).all(0).cpu()
        if not finite.all():
            it = items[int((~finite).nonzero()[0])]
            single = cfg.schedule == "single_pass"       # captured on the edit trajectory
            g = cfg.guidance_scale if single else cfg.localization_guidance_scale
            raise _not_finite("" if len(items) == 1 else f"[{it.index}]", "features or attention at the "
                              f"capture step ({'' if single else 'localization '}guidance {g:g}"
                              f"{self._image_guidance_note(cfg)})")
        out = []
        for b, it in enumerate(items):
            feats = roi_ops.fuse_features([f[b] for _, _, f in st.features], grid,
                                          align_corners=cfg.align_corners)                # (Hg*Wg, C)
            maps = roi_ops.mean_attention([p[b] for p in cross], grid,
                                          align_corners=cfg.align_corners)                # (T, Hg, Wg)
            segments = roi_ops.segment(feats, grid, method=cfg.clustering, num_clusters=cfg.num_clusters,
                                       iters=cfg.kmeans_iters, seed=it.seed,
                                       distance_threshold=cfg.distance_threshold,
                                       max_points=cfg.agglomerative_max_points)
            related = list(it.tokens.related)
            if related and cfg.localize_end_token:
                related.append(it.tokens.end)
            token_maps = maps[related] if related else maps[:0]
            k = cfg.top_k_for(grid) if related else 0
            if related:
                attention = token_maps.mean(0)
                mask, points, chosen = roi_ops.roi_from_attention(attention, segments, k)
                attention = roi_ops.normalise01(attention)
            else:
                attention = torch.zeros(grid)
                mask, points, chosen = torch.zeros(grid, dtype=torch.bool), torch.zeros(0, 2, dtype=torch.long), []
            out.append(Localization(mask=mask.cpu(), segments=segments.cpu(), attention=attention.cpu(),
                                    token_maps=token_maps.cpu(), token_indices=related,
                                    tokens=[it.tokens.tokens[i].replace("</w>", "") for i in related],
                                    points=points, selected_segments=chosen, image_size=it.size, top_k=k,
                                    warnings=self._input_warnings(it)))
        return out

    def _input_warnings(self, it: _Item) -> list[str]:
        """Notes about one input that every result of it carries (processing size, truncation,
        words outside the model's vocabulary, and then what the model can edit, when its folder
        says so: :attr:`Backbone.can_edit`)."""
        out = [it.notice] if it.notice else []
        text = "instruction" if it.source is None else "target caption"
        if it.tokens.truncated:
            out.append(f"{text} is longer than the text encoder's {self.backbone.max_tokens} tokens and was truncated")
        unknown = unknown_words(it.tokens, getattr(self.backbone.tokenizer, "unk_token_id", None))
        for word, pieces in unknown:
            how = f"splits it into {' + '.join(pieces)}" if len(pieces) > 1 else "reads it as the unknown token"
            out.append(f"{text} word {word!r} is not in this model's vocabulary (its tokenizer {how}): the model "
                       "may not know it, and then LIME's region may miss what it names")
        can_edit = getattr(self.backbone, "can_edit", None)
        if can_edit and (unknown or it.notice):      # an input outside what the model was made for
            out.append(f"this model can edit only this: {can_edit}")
        return out

    def _capture(self, items: list[_Item], cfg: LimeConfig) -> PassState:
        """The localization pass up to its capture step: features and cross-attention."""
        self._retokenize(items, cfg)
        st = self._capture_state(items, cfg)
        self._run(items, cfg, steps=cfg.loc_steps, guidance=cfg.localization_guidance_scale,
                  state=st, stop_after=cfg.capture_step, output_type="latent")
        return st

    def _localize(self, items: list[_Item], cfg: LimeConfig) -> list[Localization]:
        return self._localizations(items, self._capture(items, cfg), cfg)

    def _edit(self, items: list[_Item], cfg: LimeConfig) -> list[EditResult]:
        t0 = time.perf_counter()
        self._retokenize(items, cfg)
        grid = tuple(v * cfg.out_scale for v in self._latent_hw(items[0].size))
        warnings: list[list[str]] = [[] for _ in items]
        masks: list[torch.Tensor | None] = [None] * len(items)
        locs: list[Localization | None] = [None] * len(items)
        auto: list[int] = []
        # what the warnings call the input text and the result without LIME
        plain = "plain P2P" if getattr(self.backbone, "caption_editing", False) else "plain IP2P"
        for j, it in enumerate(items):
            warnings[j] += self._input_warnings(it)
            m = it.mask
            if m is None:
                continue
            if not it.tokens.has_related:
                why = ("no related token left in the instruction (only stop words, verbs or punctuation)"
                       if it.source is None else "no content word of the target caption was added or replaced")
                warnings[j].append(f"{why}: LIME skipped, {plain} result")
                continue
            if isinstance(m, str):
                if m != "auto":
                    raise LimeEditError(f"mask: expected 'auto', None, a Localization or a mask, got {m!r}")
                auto.append(j)
                continue
            given = m.mask if isinstance(m, Localization) else mask_to_tensor(m)
            grid_mask = resize_mask(given, grid)
            if isinstance(m, Localization):
                locs[j] = m
            if not grid_mask.any():
                warnings[j].append(f"mask is empty: LIME skipped, {plain} result")
                continue
            if grid_mask.all():
                warnings[j].append("mask covers the whole image: every pixel is regularized")
            elif isinstance(m, Localization):           # its maps refer to its own processed image
                warnings[j] += stretch_notes(tuple(m.image_size), it.size, "the Localization's image")
            else:
                warnings[j] += stretch_notes((int(given.shape[1]), int(given.shape[0])), it.image.size)
            masks[j] = grid_mask

        t_loc = 0.0
        single_pass = cfg.schedule == "single_pass"
        if auto and not single_pass:
            t1 = time.perf_counter()
            sub = [items[j] for j in auto]
            for j, loc in zip(auto, self._localize(sub, cfg)):
                locs[j], masks[j] = loc, loc.mask
                if not loc.mask.any():
                    warnings[j].append(f"localization found no region: {plain} result")
                    masks[j] = None
            t_loc = time.perf_counter() - t1

        st = None
        regularized = [m is not None for m in masks]
        if any(regularized) or (auto and single_pass):
            st = PassState(latent_hw=self._latent_hw(items[0].size), batch=len(items))
            st.reg_steps = cfg.regularized_steps()
            st.reg_levels = frozenset(cfg.regularization_levels)
            st.mode = cfg.mode
            st.tokens = _stack_roles([it.tokens.keep if cfg.mode == "penalize" else _content(it.tokens)
                                      for it in items])                               # (B, T)
            st.roi = torch.stack([m if m is not None else torch.zeros(grid, dtype=torch.bool)
                                  for m in masks])                                        # (B, Hg, Wg)
        on_step = None
        if auto and single_pass:
            st.capture_step = cfg.capture_step
            st.capture_levels = frozenset(cfg.feature_levels)

            def on_step(i: int) -> None:
                if i != cfg.capture_step:
                    return
                t1 = time.perf_counter()
                for j, loc in zip(auto, self._localizations([items[j] for j in auto], _subset(st, auto), cfg)):
                    locs[j] = loc
                    if loc.mask.any():
                        masks[j] = loc.mask
                        regularized[j] = True
                        st.roi[j] = loc.mask
                    else:
                        warnings[j].append(f"localization found no region: {plain} result")
                st._rows.clear()
                st._bias.clear()
                st.features.clear()
                st.cross_probs.clear()
                nonlocal t_loc
                t_loc += time.perf_counter() - t1

        t2 = time.perf_counter()
        images = self._run(items, cfg, steps=cfg.num_inference_steps, guidance=cfg.guidance_scale,
                           state=st, stop_after=None, on_step=on_step)
        t_edit = time.perf_counter() - t2
        total = time.perf_counter() - t0
        for j, it in enumerate(items):
            if not np.isfinite(images[j]).all():      # would be saved as a black image
                raise _not_finite("" if len(items) == 1 else f"[{it.index}]", f"image (guidance "
                                  f"{cfg.guidance_scale:g}{self._image_guidance_note(cfg)})")
        results = []
        for j, it in enumerate(items):
            # rounded as diffusers rounds its PIL output (half to even), so mask=None is bit-identical to it
            img = Image.fromarray(np.clip(np.round(images[j] * 255.0), 0, 255).astype(np.uint8))
            if img.size != it.image.size:
                img = img.resize(it.image.size, Image.LANCZOS)
            if cfg.preserve == "outside" and regularized[j]:
                img = _keep_outside(img, it.image, masks[j])
            elif cfg.preserve != "none" and not regularized[j]:
                warnings[j].append(f"preserve='{cfg.preserve}': no region was regularized, so nothing is kept")
            results.append(EditResult(
                image=img, mask=masks[j] if regularized[j] else None, localization=locs[j],
                lime_applied=bool(regularized[j]), seed=it.seed, warnings=warnings[j],
                timings={"localize": t_loc, "edit": t_edit, "total": total, "batch_size": len(items)},
                settings={**cfg.to_dict(), "backbone": self.backbone.name,
                          "top_k_points": cfg.top_k_for(grid), "processed_size": list(it.size)}))
        return results


@contextmanager
def _step_bar(pipe, desc: str, total: int):
    """The wrapped pipeline's step progress bar for one pass, labelled ``desc``
    ("localize" or "edit") and counting the steps this pass really runs: the
    localization pass stops after the capture step, so its bar ends at
    ``capture_step + 1``, not at the schedule's length. Honours the pipeline's
    ``set_progress_bar_config`` (``disable``, ``leave`` ...). Yields a function
    that completes the bar (called just before the pass stops itself)."""
    original = getattr(pipe, "progress_bar", None)
    if not callable(original):
        yield lambda: None
        return
    bars: list[Any] = []

    def progress_bar(iterable=None, total=None):
        saved = getattr(pipe, "_progress_bar_config", None)
        pipe._progress_bar_config = {"desc": desc, **(saved or {})}
        try:
            bar = original(iterable, total=total_steps if iterable is None else None)
        finally:
            pipe._progress_bar_config = saved if saved is not None else {}
        bars.append(bar)
        return bar

    def finish() -> None:
        for bar in bars:
            if getattr(bar, "n", total_steps) < total_steps:
                bar.update(total_steps - bar.n)

    total_steps = total
    had_own = "progress_bar" in vars(pipe)
    pipe.progress_bar = progress_bar
    try:
        yield finish
    finally:
        if had_own:
            pipe.progress_bar = original
        else:
            del pipe.progress_bar


def _keep_outside(edited: Image.Image, original: Image.Image, mask: torch.Tensor) -> Image.Image:
    """``original`` outside ``mask`` (any grid, stretched to the image), ``edited`` inside."""
    m = Image.fromarray(mask.cpu().numpy().astype(np.uint8) * 255).resize(original.size, Image.NEAREST)
    return Image.composite(edited, original, m)


def _stack_roles(roles: list[torch.Tensor]) -> torch.Tensor:
    """``(B, T)`` token roles; a batch whose text streams differ in length (a joint-attention
    text stream holding each image's vision tokens) is padded with False, as the
    pipeline pads the streams after their end."""
    t = max(r.shape[0] for r in roles)
    return torch.stack([torch.cat([r, r.new_zeros(t - r.shape[0])]) for r in roles])


def _content(sel: TokenSelection) -> torch.Tensor:
    """Tokens rewarded in "reward" mode: the instruction's content words (verbs included)."""
    m = torch.zeros_like(sel.keep)
    m[sel.content] = True
    return m


def _subset(st: PassState, idx: list[int]) -> PassState:
    """A view of the captured tensors for some batch items (single-pass localization)."""
    sub = PassState(latent_hw=st.latent_hw, batch=len(idx), feature_branch=st.feature_branch,
                    attention_branch=st.attention_branch)
    sub.features = [(n, lvl, f[idx]) for n, lvl, f in st.features]
    sub.cross_probs = [(n, lvl, p[idx]) for n, lvl, p in st.cross_probs]
    return sub


def _not_finite(where: str, what: str) -> LimeEditError:
    return LimeEditError(f"image{where}: the model produced NaN/inf values in its {what}: a setting far "
                         "outside the model's range, or half precision overflowing (try float32)")


def _broadcast(value, n: int, name: str, kind) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise LimeEditError(f"{name}: {len(value)} values for {n} images")
        return list(value)
    if kind is int and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
        raise LimeEditError(f"{name}: expected an int or a list of ints, got {type(value).__name__}")
    return [value] * n
