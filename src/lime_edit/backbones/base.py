"""What the task API needs to know about one family of instruction editors.

A :class:`Backbone` answers every family-specific question LIME has, so that
``pipeline.py``, ``processors.py``, ``cluster.py`` and ``roi.py`` never test a
family's name:

* **loading and recognition**: which diffusers pipeline class, how a Hub id /
  folder / single file becomes one, and how a checkpoint is recognised;
* **guidance branches**: the U-Net batch is ``branches`` blocks of ``B`` rows
  (``chunk(branches)``); cross-attention is read in ``text_branch`` (the
  instruction + image row), features are clustered from ``image_branch`` (the
  image-only row), and ``regularized_branches`` get the RoI penalty;
* **text side**: which tokenizer positions are start / instruction / suffix /
  end / padding (:meth:`Backbone.select_tokens`), and any text the family adds
  to the instruction (never a *related* token);
* **levels**: the latent levels at which the U-Net actually has attention
  (:func:`attention_levels`) and the default feature / regularization levels
  *relative to those*, so a default never names a level the model lacks;
* **sampler defaults**: steps and guidance the family is run with.

The base class implements the SD U-Net / InstructPix2Pix conventions
(``[instruction+image, image only, unconditional]`` rows, one CLIP tokenizer,
``callback_on_step_end``); families override only what differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import Any, Callable, ClassVar, Iterator

from ..config import LimeConfig
from ..errors import LimeEditError
from ..tokens import TokenSelection, select_tokens


class StopPass(Exception):
    """Raised from a step callback to end a pass early (localization stops at the capture step)."""


#: original-LDM keys: the U-Net's first convolution (its input channels) and a cross-attention key
SD_UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SD_UNET_CTX = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^mid_block\.")


def attention_levels(unet) -> dict[int, list[str]]:
    """Latent levels at which ``unet`` (a ``UNet2DConditionModel``) has attention
    layers: ``{level: [processor names]}``, level ``L`` = a ``latent / L`` grid.

    Read from the layer names and the block count (down block ``i`` runs at level
    ``2**i``, up block ``j`` at ``2**(n-1-j)``, the mid block at ``2**(n-1)``), so no
    forward pass is needed.
    """
    n = len(unet.config.block_out_channels)
    out: dict[int, list[str]] = {}
    for name in unet.attn_processors:
        m = _BLOCK.match(name)
        if m is None:
            continue
        if m.group(1) == "down_blocks":
            lvl = 2 ** int(m.group(2))
        elif m.group(1) == "up_blocks":
            lvl = 2 ** (n - 1 - int(m.group(2)))
        else:
            lvl = 2 ** (n - 1)
        out.setdefault(lvl, []).append(name)
    return dict(sorted(out.items()))


def reference_levels(present: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The reference code's level choice, expressed relative to the levels present.

    On SD1.5 (attention at levels 1, 2, 4, 8) the reference clusters the features of
    every level but the finest (2, 4, 8) and regularizes the two finest (1, 2).  The
    same rule on any U-Net: features = all present levels but the finest (all of them
    when only two or fewer exist, so that a fine grid is still read), regularization =
    the two finest present levels.
    """
    levels = sorted(present)
    if not levels:
        raise LimeEditError("this U-Net has no attention layer; LIME needs cross-attention")
    features = tuple(levels[1:]) if len(levels) > 2 else tuple(levels)
    return features, tuple(levels[:2])


class Backbone:
    """Family description for the SD U-Net InstructPix2Pix layout (see module docstring).

    Subclasses set the class attributes and override the hooks that differ.
    """

    #: registry name (``--backbone NAME``)
    name: ClassVar[str] = "ip2p"
    #: one-line description for help texts and errors
    description: ClassVar[str] = "InstructPix2Pix (SD1.x/SD2.x, incl. MagicBrush fine-tunes)"
    #: the diffusers pipeline class it runs on
    pipeline_class: ClassVar[str] = "StableDiffusionInstructPix2PixPipeline"
    # guidance layout of the U-Net batch (rows = ``branches`` blocks of B items)
    branches: ClassVar[int] = 3
    text_branch: ClassVar[int] = 0
    image_branch: ClassVar[int] = 1
    regularized_branches: ClassVar[tuple[int, ...]] = (0, 1, 2)
    #: the family's own sampler values, used when the model has no recommended LIME config
    sampler_defaults: ClassVar[dict[str, Any]] = {}
    #: default ``out_scale`` (localization grid = ``out_scale`` x latent grid)
    default_out_scale: ClassVar[int] = 2
    #: text appended to every instruction before encoding (never a related token)
    prompt_suffix: ClassVar[str] = ""

    #: scheduler this family is run with when loaded by lime-edit (None: the model's own);
    #: "euler_ancestral": k-diffusion's Euler ancestral (see :meth:`family_scheduler`)
    scheduler: ClassVar[str | None] = None
    #: what a "level" is on this denoiser, and what the denoiser is called, in messages
    level_word: ClassVar[str] = "latent level"
    denoiser_word: ClassVar[str] = "U-Net"
    #: the plain editor's name where a page or report compares LIME with it
    display_name: ClassVar[str] = "InstructPix2Pix"
    #: the family has an image guidance scale (``image_guidance_scale``)
    has_image_guidance: ClassVar[bool] = True
    #: the text encoder sees the input image (token roles depend on it: ``select_tokens``
    #: then takes ``image=`` and ``size=``, the processing size)
    text_sees_image: ClassVar[bool] = False
    #: most items one call of the pipeline takes (None: any number)
    max_batch: int | None = None
    #: ``preserve="latent"`` is available (a flow-matching sampler with the input's latents as
    #: context tokens: :mod:`lime_edit.backbones.flowblend`)
    latent_blend: ClassVar[bool] = False
    #: benchmarks (``eval``) run this family with its own steps, not the protocol's IP2P steps
    own_steps_in_benchmarks: ClassVar[bool] = False
    #: what this model can edit, in one sentence, when its folder's ``lime_edit.json`` says so
    #: (``"can_edit"``; set by :func:`lime_edit.loading.load_backbone`): added to the warnings of an
    #: input outside it (a word not in its vocabulary, a picture far above its native size)
    can_edit: str | None = None

    # ---------------------------------------------------------------- loading hooks
    @classmethod
    def cuda_dtype(cls):
        """Weights dtype on CUDA when none is asked for (U-Nets: float16, as their users run them)."""
        import torch

        return torch.float16

    @classmethod
    def default_options(cls, source: str) -> dict[str, Any]:
        """Constructor options implied by the model's name or path (e.g. HIVE's suffix)."""
        return {}

    @classmethod
    def single_file_kwargs(cls, path, shapes: dict[str, tuple[int, ...]], config: str | None) -> dict[str, Any]:
        """Extra ``from_single_file`` arguments for an original-LDM file:
        ``{"pipeline": {kwarg: value}, "components": {name: loader(kwargs) -> module}}``.

        SD2.x-layout files (1024-d cross-attention context) have no IP2P config that
        diffusers can infer (it would pick the 4-channel SD2.1 one), so without
        ``config`` the SD2.1-base configs are used with an 8-channel U-Net."""
        ctx = shapes.get(SD_UNET_CTX)
        if config is None and ctx is not None and ctx[-1] == 1024:
            base = "stabilityai/stable-diffusion-2-1-base"

            def unet(kw):
                from diffusers import UNet2DConditionModel

                keep = {k: v for k, v in kw.items() if k in ("torch_dtype", "dtype", "local_files_only")}
                return UNet2DConditionModel.from_single_file(str(path), config=base, subfolder="unet",
                                                             num_in_channels=8, **keep)
            return {"pipeline": {"config": base}, "components": {"unet": unet}}
        return {}

    @classmethod
    def load_single_file(cls, path, kwargs: dict[str, Any], config: str | None, local_files_only: bool | None):
        """The pipeline from a single file when the family loads it its own way (a
        transformer-only release file); None: diffusers' ``from_single_file`` of the whole
        pipeline (original-LDM checkpoints)."""
        return None

    @classmethod
    def extract_ema(cls, shapes: dict[str, tuple[int, ...]]) -> bool:
        """Training checkpoints that carry EMA weights (``model_ema.*``: IP2P, MagicBrush, HIVE)
        are sampled with them by their authors' scripts, so the EMA U-Net is loaded."""
        return any(k.startswith("model_ema.") for k in shapes)

    @classmethod
    def family_scheduler(cls, current):
        """The scheduler this family samples with however it is loaded (single file, folder or
        Hub id), built from ``current``'s config; None: keep ``current``."""
        if cls.scheduler == "euler_ancestral":
            # k-diffusion's Euler ancestral on its get_sigmas schedule (log-linear sigmas over
            # timesteps spaced evenly from 999 to 0), as the HIVE and InstructDiffusion edit
            # scripts sample: see backbones/kdiffusion.py
            from .kdiffusion import KDiffusionEulerAncestralScheduler

            return KDiffusionEulerAncestralScheduler.from_config(current.config, timestep_spacing="linspace")
        return None

    @classmethod
    def single_file_scheduler(cls, current, path, shapes):
        """The scheduler to run a single-file checkpoint with (None: keep the config's)."""
        return cls.family_scheduler(current)

    def __init__(self, pipe, *, prompt_suffix: str | None = None, **options: Any):
        self.pipe = pipe
        if prompt_suffix is not None:
            self.prompt_suffix = prompt_suffix
        self.options = options
        self.check_pipeline(pipe)
        self._levels = self.find_levels(pipe)

    def find_levels(self, pipe) -> dict[int, list[str]]:
        """``{level: [processor names]}`` of the denoiser's attention layers."""
        return attention_levels(pipe.unet)

    # ---------------------------------------------------------------- checks / info
    def check_pipeline(self, pipe) -> None:
        """Raise :class:`LimeEditError` if ``pipe`` cannot run this family."""
        unet = getattr(pipe, "unet", None)
        in_ch = getattr(getattr(unet, "config", None), "in_channels", None)
        if in_ch != 8:
            raise LimeEditError(f"not an instruction editor of the {self.name} family: its U-Net takes {in_ch} "
                                "input channels, LIME needs 8 (noisy latent + image latent)")

    @property
    def denoiser(self):
        """The module whose attention processors LIME wraps (U-Net or transformer)."""
        return self.pipe.unet

    def token_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of the attention grid at level 1 for a processing size ``(w, h)`` in
        pixels (the U-Net's latent grid)."""
        f = int(self.pipe.vae_scale_factor)
        return size[1] // f, size[0] // f

    def context_grid(self, size: tuple[int, int]) -> tuple[int, int] | None:
        """``(h, w)`` token grid of the context image (joint attention) when it differs
        from :meth:`token_grid`'s; None: the same grid (or no context image)."""
        return None

    @contextlib.contextmanager
    def attention(self, state, layers: tuple[str, ...] | None = None):
        """Install LIME's processors on the denoiser for one pass (restored afterwards)."""
        from ..processors import lime_attention

        with lime_attention(self.denoiser, state, layers) as st:
            yield st

    @property
    def levels(self) -> list[int]:
        """Latent levels with attention layers, finest first."""
        return list(self._levels)

    def layer_names(self, level: int) -> list[str]:
        return list(self._levels.get(level, []))

    def describe(self) -> dict[str, Any]:
        """What was chosen for this model (recorded in results and manifests)."""
        feats, reg = self.default_levels()
        return {"backbone": self.name, "levels_present": self.levels, "default_feature_levels": list(feats),
                "default_regularization_levels": list(reg), "prompt_suffix": self.prompt_suffix}

    # ---------------------------------------------------------------- settings
    def default_levels(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return reference_levels(self.levels)

    def default_config(self, recommended: dict[str, Any] | None = None) -> LimeConfig:
        """``LimeConfig`` with this family's sampler values, then a model's own
        recommended settings (``lime_edit.json``) on top."""
        values = dict(self.sampler_defaults)
        values.update(recommended or {})
        try:
            return LimeConfig(**values)
        except (TypeError, ValueError) as err:
            raise LimeEditError(f"recommended LIME settings: {err}") from None

    def resolve(self, cfg: LimeConfig) -> LimeConfig:
        """Fill the settings left to the backbone (``None``): levels and grid scale."""
        feats, reg = self.default_levels()
        changes: dict[str, Any] = {}
        if cfg.feature_levels is None:
            changes["feature_levels"] = feats
        if cfg.regularization_levels is None:
            changes["regularization_levels"] = reg
        if cfg.out_scale is None:
            changes["out_scale"] = self.default_out_scale
        return cfg.replace(**changes) if changes else cfg

    def check_levels(self, cfg: LimeConfig) -> None:
        """An explicitly set level that the U-Net lacks is a one-line error (before any work)."""
        have = ", ".join(map(str, self.levels)) or "none"
        for setting in ("feature_levels", "regularization_levels"):
            missing = sorted(set(getattr(cfg, setting)) - set(self._levels))
            if missing:
                raise LimeEditError(f"{setting}: this {self.denoiser_word} has no attention layer at "
                                    f"{self.level_word}(s) {', '.join(map(str, missing))} "
                                    f"(levels present: {have})")

    # ---------------------------------------------------------------- text side
    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    def prompt(self, instruction: str) -> str:
        """The text the pipeline encodes for ``instruction``."""
        return instruction + self.prompt_suffix if self.prompt_suffix else instruction

    def select_tokens(self, instruction: str, cfg: LimeConfig) -> TokenSelection:
        """Token roles of the encoded prompt; positions of the family's own suffix are
        neither related (localization) nor kept (they are penalized inside the RoI)."""
        sel = select_tokens(self.tokenizer, self.prompt(instruction), **token_settings(cfg))
        if not self.prompt_suffix:
            return sel
        n_instr = len(self.tokenizer(instruction, add_special_tokens=False).input_ids)
        first = 1 + n_instr                                  # first suffix position
        if first >= sel.end:
            return sel
        keep = sel.keep.clone()
        keep[first:sel.end] = False
        return dataclasses.replace(sel, related=[p for p in sel.related if p < first], keep=keep,
                                   words=[w for w in sel.words if w[1][0] < first])

    # ---------------------------------------------------------------- running
    def processing_multiple(self) -> int:
        """Processing sizes are multiples of this, so every U-Net level has an exact grid."""
        n_down = len(self.pipe.unet.config.block_out_channels) - 1
        return int(self.pipe.vae_scale_factor) * 2 ** n_down

    def native_size(self) -> tuple[int, int] | None:
        """``(width, height)`` in pixels the model was trained at: the U-Net's
        ``sample_size`` (latent) x the VAE's scale factor (SD1.5: 512x512, SDXL:
        1024x1024); None when the config does not say."""
        sample = getattr(self.pipe.unet.config, "sample_size", None)
        f = getattr(self.pipe, "vae_scale_factor", None)
        if sample is None or not f:
            return None
        h, w = (sample, sample) if isinstance(sample, int) else tuple(sample)[:2]
        return int(w) * int(f), int(h) * int(f)

    def call_kwargs(self, *, prompts: list[str], images: list, size: tuple[int, int], steps: int,
                    guidance: float, image_guidance: float, generators: list, output_type: str) -> dict:
        """Keyword arguments of the wrapped pipeline's ``__call__`` for one pass."""
        return dict(prompt=[self.prompt(p) for p in prompts], image=images, num_inference_steps=steps,
                    guidance_scale=guidance, image_guidance_scale=image_guidance, generator=generators,
                    output_type=output_type)

    def step_callback_kwargs(self, on_step_end: Callable[[int], None],
                             latents_fn: Callable[[int, Any], Any] | None = None) -> dict:
        """How to be called after every denoising step ``i`` (0-based); ``latents_fn(i,
        latents)`` replaces the latents after the step (``preserve="latent"``)."""
        if latents_fn is None:
            def callback(pipe, i, t, kwargs):
                on_step_end(i)
                return {}
            return {"callback_on_step_end": callback}

        def blending(pipe, i, t, kwargs):
            on_step_end(i)
            return {"latents": latents_fn(i, kwargs["latents"])}
        return {"callback_on_step_end": blending, "callback_on_step_end_tensor_inputs": ["latents"]}

    def check_preserve(self, preserve: str) -> None:
        """A ``preserve`` setting this family cannot honour is a one-line error."""
        if preserve == "latent" and not self.latent_blend:
            raise LimeEditError(f"preserve='latent': not available on {self.name} (only the flow-matching "
                                "transformers: kontext, qwen-image-edit, flux2); preserve='outside' keeps the "
                                "outside on any family")

    @contextlib.contextmanager
    def latent_blender(self, state, size: tuple[int, int]):
        """Context yielding ``blend(i, latents)`` for ``preserve="latent"`` (see
        :attr:`latent_blend`)."""
        self.check_preserve("latent")
        from .flowblend import flow_match_blend

        with flow_match_blend(self.pipe, state) as blend:
            yield blend

    @contextlib.contextmanager
    def guidance(self, guidance: float, image_guidance: float, batch: int) -> Iterator[dict]:
        """Context around one pass that makes the stock pipeline compute this family's
        guidance; yields overrides of the scales passed to the stock pipeline.  The
        stock InstructPix2Pix formula needs nothing."""
        yield {}

    def run(self, *, prompts: list[str], images: list, size: tuple[int, int], steps: int, guidance: float,
            image_guidance: float, generators: list, output_type: str,
            on_step_end: Callable[[int], None] | None = None, blend_state=None):
        """One call of the wrapped pipeline; returns its ``.images``.  ``blend_state``: the
        pass's state when ``preserve="latent"`` keeps the outside of its RoI."""
        with contextlib.ExitStack() as stack:
            scales = stack.enter_context(self.guidance(guidance, image_guidance, len(prompts)))
            blend = stack.enter_context(self.latent_blender(blend_state, size)) if blend_state is not None else None
            kwargs = self.call_kwargs(prompts=prompts, images=images, size=size, steps=steps,
                                      guidance=scales.get("guidance", guidance),
                                      image_guidance=scales.get("image_guidance", image_guidance),
                                      generators=generators, output_type=output_type)
            if blend is not None:
                kwargs.update(self.step_callback_kwargs(on_step_end or (lambda i: None), blend))
            elif on_step_end is not None:
                kwargs.update(self.step_callback_kwargs(on_step_end))
            return self.pipe(**kwargs).images


def token_settings(cfg: LimeConfig) -> dict[str, Any]:
    """The :class:`LimeConfig` fields that :func:`lime_edit.tokens.select_tokens` takes."""
    import inspect

    names = set(inspect.signature(select_tokens).parameters) - {"tokenizer", "prompt"}
    return {n: getattr(cfg, n) for n in names if hasattr(cfg, n)}
