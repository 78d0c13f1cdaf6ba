"""Qwen-Image-Edit (``Qwen/Qwen-Image-Edit``, ``QwenImageEditPipeline``) and its "Plus"
releases 2509 / 2511 (``Qwen/Qwen-Image-Edit-2509``, ``-2511``: ``QwenImageEditPlusPipeline``).

A multimodal diffusion transformer with joint attention in every block (60
double-stream blocks, no single-stream ones): one softmax over ``[text ; target image ;
context image]``, text first.  The text stream is Qwen2.5-VL's last hidden layer over a
chat template that holds the input image: after the pipeline drops the template's
fixed prefix (64 tokens) it is ``<|vision_start|>``, the input image's **vision
tokens**, ``<|vision_end|>``, the instruction, ``<|im_end|>`` and the chat scaffolding; a
padded batch's shorter streams are hidden by a key mask.  One token covers 16x16 pixels
(VAE /8, 2x2 patches).  Guidance is true classifier-free guidance: a second, separate
transformer forward on the negative prompt (``" "``, as the model card runs it), with a
norm rescale.

What LIME reads and regularizes here (:mod:`lime_edit.joint`,
:class:`~lime_edit.joint.QwenJointAttnProcessor`):

* **levels are blocks** ``0 .. N-1``;
* **features**: the joint-attention output at the context-image tokens (the clean
  input, present at every step) of blocks at the same relative depth as Kontext's
  default (a quarter to five twelfths of the way down: blocks 15-24 of 60).  **Not yet
  calibrated on real weights**;
* **attention maps**: target-image queries' probabilities of the instruction's words in
  the joint softmax, same blocks;
* **regularization**: target-image queries inside the RoI, every block, conditional
  forward only (the negative prompt's forward runs stock: it holds no instruction).

Token roles come from the token ids, never a fixed offset: the instruction is what lies
between the last ``<|vision_end|>`` and the next ``<|im_end|>``
(:func:`lime_edit.tokens.select_tokens_in_span`).  The vision tokens, the template and the
scaffolding are unrelated, like CLIP's start token and padding: inside the RoI their
share of the text block goes to the instruction's words (``text_mass``), while the input
image still reaches every query through the context-image keys.

Plus (2509/2511) differs in what this module follows from the pipeline: the instruction
is preceded by ``Picture 1: <|vision_start|>...<|vision_end|>`` (unrelated, like the
vision tokens), the text encoder sees the input at about 384x384 pixels, the context
image is encoded at about 1024x1024, and the pipeline refuses batches: lime-edit runs a
batch's items one by one.  lime-edit gives it one input image.

Sizes: lime-edit runs at the input's size rounded to 16 px (very large inputs scaled to
about 1024x1024 pixels); the pipeline itself always encodes the context image at about
1024x1024 pixels (its ``calculate_dimensions``), so the context grid can differ from the
target's; the features are read on the context grid and resized to the localization
grid like every level's.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..config import LimeConfig
from ..errors import LimeEditError
from ..tokens import TokenSelection, select_tokens_in_span
from .base import token_settings
from .transformer import TransformerBackbone

#: the negative prompt Qwen-Image-Edit's model card runs true CFG with
NEGATIVE_PROMPT = " "


class QwenImageEditBackbone(TransformerBackbone):
    name = "qwen-image-edit"
    description = "Qwen-Image-Edit (Qwen/Qwen-Image-Edit; joint-attention transformer, true CFG)"
    pipeline_class = "QwenImageEditPipeline"
    sampler_defaults = {"num_inference_steps": 50, "guidance_scale": 4.0, "localization_guidance_scale": 4.0}
    display_name = "Qwen-Image-Edit"
    #: double-stream blocks only: features at Kontext's relative depth (blocks 15-24 of 60)
    feature_depth = (0.25, 5 / 12)
    text_sees_image = True

    @classmethod
    def single_file_kwargs(cls, path, shapes, config):
        raise LimeEditError(f"{path}: single-file Qwen-Image-Edit checkpoints are not supported; pass the "
                            "diffusers folder or Hub id (Qwen/Qwen-Image-Edit)")

    def __init__(self, pipe, **options: Any):
        super().__init__(pipe, **options)
        self._ids: dict[tuple[str, tuple[int, int]], list[int]] = {}
        self.plus = type(pipe).__name__ == "QwenImageEditPlusPipeline"
        if self.plus:
            self.max_batch = 1

    def _module(self):
        if self.plus:
            from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module
        else:
            from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as module
        return module

    def check_pipeline(self, pipe) -> None:
        tr = getattr(pipe, "transformer", None)
        if (tr is None or type(tr).__name__ != "QwenImageTransformer2DModel"
                or getattr(pipe, "processor", None) is None):
            raise LimeEditError(f"not a Qwen-Image-Edit pipeline: {type(pipe).__name__} has no Qwen-Image "
                                "transformer with a Qwen2.5-VL processor")

    # ---------------------------------------------------------------- text side
    @property
    def max_tokens(self) -> int:
        return int(getattr(self.pipe, "tokenizer_max_length", 1024))

    def _text(self, instruction: str) -> str:
        picture = "Picture 1: <|vision_start|><|image_pad|><|vision_end|>" if self.plus else ""
        return self.pipe.prompt_template_encode.format(picture + self.prompt(instruction))

    def _prompt_image(self, image, size):
        """The image the pipeline shows its text encoder for an input run at ``size``: at
        the context size, as the stock pipeline resizes a single PIL input (Plus: at its
        condition size, about 384x384)."""
        from PIL import Image

        if image.size != tuple(size):               # as the task API resizes its inputs
            image = image.resize(tuple(size), Image.LANCZOS)
        if self.plus:
            module = self._module()
            w, h, *_ = module.calculate_dimensions(module.CONDITION_IMAGE_SIZE, size[0] / size[1])
        else:
            w, h = self.context_size(size)
        return self.pipe.image_processor.resize(image, int(h), int(w))

    def stream_ids(self, instruction: str, size) -> list[int]:
        """The text stream's token ids for one item run at ``size``, as the pipeline encodes
        them (its processor on its template and image, the fixed prefix dropped).  They
        depend on the image only through its size (the number of vision tokens), so they
        are computed on a blank image of that size, once per instruction and size: every
        pass of an edit asks again."""
        key = (self._text(instruction), tuple(size))
        if key not in self._ids:
            from PIL import Image

            blank = self._prompt_image(Image.new("RGB", tuple(size)), size)
            enc = self.pipe.processor(text=[key[0]], images=[blank], padding=True, return_tensors="pt")
            ids = enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist()
            if len(self._ids) >= 64:
                self._ids.pop(next(iter(self._ids)))
            self._ids[key] = ids[int(self.pipe.prompt_template_encode_start_idx):]
        return list(self._ids[key])

    def select_tokens(self, instruction: str, cfg: LimeConfig, *, image, size) -> TokenSelection:
        """Token roles of one item's text stream (its length depends on the image's size:
        the vision tokens), from the token ids the pipeline will encode."""
        ids = self.stream_ids(instruction, size)
        tok = self.pipe.tokenizer
        v_end, im_end = tok.convert_tokens_to_ids("<|vision_end|>"), tok.convert_tokens_to_ids("<|im_end|>")
        try:
            start = len(ids) - ids[::-1].index(v_end)
            end = ids.index(im_end, start)
        except ValueError:
            raise LimeEditError("Qwen-Image-Edit: the text stream has no <|vision_end|> ... <|im_end|> span "
                                "around the instruction (an unknown prompt template)") from None
        return select_tokens_in_span(tok, ids, start, end, **token_settings(cfg))

    # ---------------------------------------------------------------- running
    def context_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(w, h)`` the pipeline encodes the context image at for an input of ``size``
        (about 1024x1024 pixels whatever the input, its ``calculate_dimensions``)."""
        module = self._module()
        area = module.VAE_IMAGE_SIZE if self.plus else 1024 * 1024
        w, h, *_ = module.calculate_dimensions(area, size[0] / size[1])
        return int(w), int(h)

    def context_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        return self.token_grid(self.context_size(size))

    @contextlib.contextmanager
    def latent_blender(self, state, size: tuple[int, int]):
        """``preserve="latent"`` needs the context latents on the target's grid: inputs the
        pipeline encodes at their own size (about 1024x1024 pixels)."""
        if self.context_grid(size) != self.token_grid(size):
            cw, ch = self.context_size(size)
            raise LimeEditError(f"preserve='latent': Qwen-Image-Edit encodes the input at {cw}x{ch} and this "
                                f"edit runs at {size[0]}x{size[1]}, so its latents cannot be kept; give an input "
                                f"of {cw}x{ch} or use preserve='outside'")
        with super().latent_blender(state, size) as blend:
            yield blend

    @contextlib.contextmanager
    def attention(self, state, layers: tuple[str, ...] | None = None):
        from ..joint import QwenJointAttnProcessor, joint_attention

        blocks = {name: b for b, names in self._levels.items() for name in names}
        with joint_attention(self.denoiser, state, blocks, layers, processor=QwenJointAttnProcessor) as st:
            yield st

    def call_kwargs(self, *, prompts, images, size, steps, guidance, image_guidance, generators, output_type):
        w, h = size
        cfg = guidance > 1
        # the images at the context size, as the stock pipeline resizes a single PIL input
        # before showing it to its text encoder (it leaves a list's images at their size)
        if not self.plus:           # Plus resizes each input itself, for both encoders
            images = [self._prompt_image(im, size) for im in images]
        return dict(prompt=[self.prompt(p) for p in prompts], image=images, height=h, width=w,
                    negative_prompt=[NEGATIVE_PROMPT] * len(prompts) if cfg else None,
                    true_cfg_scale=guidance if cfg else 1.0, num_inference_steps=steps,
                    generator=generators, output_type=output_type)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["negative_prompt"] = NEGATIVE_PROMPT
        return out
