"""Tiny multimodal-diffusion-transformer editors built in code, for tests and benchmarks.

Nothing is downloaded: the T5 tokenizer is a SentencePiece-style Unigram model written
from a word list (each word one ``▁word`` piece, anything else letter by letter), the
CLIP tokenizer is :mod:`lime_edit.testing`'s, and every model is randomly initialised
from a small config of the class the released checkpoints use.  Modules are put in
``eval()`` mode (T5's dropout would make two identical calls differ).
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Iterable

from .testing import DEFAULT_WORDS, tiny_tokenizer

_LETTERS = string.ascii_lowercase + string.digits + string.punctuation


def tiny_t5_tokenizer(words: Iterable[str] = DEFAULT_WORDS, model_max_length: int = 32):
    """A ``T5TokenizerFast`` whose vocabulary holds each of ``words`` as one piece
    (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, as in T5), letters and punctuation as
    fallbacks, lower-casing normaliser, ``</s>`` appended."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0) for w in dict.fromkeys(w.lower() for w in words if w)]
    vocab += [("\u2581", -5.0)] + [(c, -10.0) for c in _LETTERS]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           model_max_length=model_max_length, extra_ids=0)


def tiny_kontext_components(tokenizer_dir: str | os.PathLike, seed: int = 0, *, num_layers: int = 2,
                            num_single_layers: int = 2, heads: int = 2, head_dim: int = 16,  # RoPE 4+6+6
                            t5_length: int = 32, words: Iterable[str] = DEFAULT_WORDS) -> dict:
    """Components of ``FluxKontextPipeline(**components)``: FLUX.1's layout (double-stream
    then single-stream blocks, 3-axis RoPE, guidance embedding, 16-channel VAE with
    shift/scale, CLIP pooled + T5 sequence), scaled down.  VAE scale factor 2, so one
    transformer token covers 4x4 pixels and a 64x64 image has a 16x16 token grid."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok = tiny_tokenizer(Path(tokenizer_dir) / "clip", words)
    t5_tok = tiny_t5_tokenizer(words, t5_length)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32,
        pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=64, shift_factor=0.0609, scaling_factor=1.5035,
                        use_quant_conv=False, use_post_quant_conv=False)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=clip_tok.bos_token_id,
        eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id, projection_dim=32))
    torch.manual_seed(seed + 3)
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=64,
                                             num_layers=2, num_heads=4, decoder_start_token_id=0,
                                             pad_token_id=0, eos_token_id=1))
    for m in (transformer, vae, text_encoder, text_encoder_2):
        m.eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tok,
                text_encoder_2=text_encoder_2, tokenizer_2=t5_tok, transformer=transformer)


def tiny_kontext_pipeline(tokenizer_dir: str | os.PathLike, seed: int = 0, **kwargs):
    """A tiny ``FluxKontextPipeline`` on the CPU, progress bar off."""
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline(**tiny_kontext_components(tokenizer_dir, seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------ Qwen-Image-Edit
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def tiny_qwen_tokenizer(words: Iterable[str] = DEFAULT_WORDS, templates: Iterable[str] = (),
                        extra_special: Iterable[str] = (), chat_template: str | None = None):
    """A byte-level BPE ``Qwen2TokenizerFast`` (Qwen2.5-VL's layout: GPT-2 byte alphabet,
    ``Ġ`` marks a leading space, the chat/vision special tokens) whose vocabulary holds
    each of ``words`` (with and without a leading space) and every pre-tokenized piece
    of ``templates`` as one token, anything else as smaller pieces down to single bytes.
    With the Qwen-Image-Edit template, the fixed prefix is 64 tokens, as on the real
    tokenizer (the pipeline drops exactly 64)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    split = "|".join(re.escape(s) for s in list(QWEN_SPECIAL) + list(extra_special))
    texts = [part for text in templates for part in re.split(split, text) if part]
    texts += [t for w in words for t in (w, " " + w)]
    # a byte-level BPE trained on these texts until every piece is one token: real merges,
    # so the tokenizer saves and loads back as the same tokenizer
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts * 2, trainer=trainer)
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    specials = list(QWEN_SPECIAL) + list(extra_special)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    out = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                             unk_token=None, bos_token=None)
    if chat_template is not None:
        out.chat_template = chat_template
    return out


def tiny_qwen_processor(tokenizer, min_pixels: int = 56 * 56, max_pixels: int = 112 * 112):
    """Qwen2.5-VL's processor (``Qwen2VLProcessor``: image patches 14 px, 2x2 merge) with
    the PIL image processor and no video processor (transformers 5 builds the video
    processor only with torchvision, which has no CPU build here); images only.  Being
    a subclass, it does not load back from a saved folder: pass it as ``processor=`` to
    ``from_pretrained`` (a real checkpoint's ``Qwen2VLProcessor`` loads where torchvision is)."""
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2VLProcessor(Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels),
                                     tokenizer)


def tiny_qwen_edit_components(seed: int = 0, *, num_layers: int = 2, heads: int = 2, head_dim: int = 16,
                              words: Iterable[str] = DEFAULT_WORDS, plus: bool = False) -> dict:
    """Components of ``QwenImageEditPipeline(**components)`` (``plus``: the templates of
    ``QwenImageEditPlusPipeline`` too): Qwen-Image's layout (double-stream blocks only,
    3-axis complex RoPE, Qwen2.5-VL text encoder whose last hidden layer is the text
    stream, 3-D causal VAE), scaled down.  VAE scale factor 4, so one transformer token
    covers 8x8 pixels and a 64x64 image has an 8x8 token grid."""
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import QwenImageEditPipeline
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    templates = [_qwen_template(QwenImageEditPipeline)]
    if plus:
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import QwenImageEditPlusPipeline

        templates += [_qwen_template(QwenImageEditPlusPipeline), "Picture 1: Picture 2: Picture 3:"]
    tok = tiny_qwen_tokenizer(words, templates)
    processor = tiny_qwen_processor(tok)
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIAL}
    torch.manual_seed(seed)
    z_dim = 4
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * z_dim, out_channels=z_dim, num_layers=num_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32,
        guidance_embeds=False, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=z_dim, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * z_dim,
                                 latents_std=[1.0] * z_dim)
    torch.manual_seed(seed + 2)
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": len(tok),
                     "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
                     "rope_theta": 1000000.0},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
                       "out_hidden_size": 32, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2},
        hidden_size=32, vocab_size=len(tok), bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], vision_token_id=ids["<|vision_pad|>"])
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    for m in (transformer, vae, text_encoder):
        m.eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192,
                                                shift_terminal=0.02, time_shift_type="exponential")
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tok, processor=processor,
                transformer=transformer)


def _qwen_template(pipeline_class) -> str:
    """The prompt template a Qwen-Image-Edit pipeline class sets up (from an instance
    built without components)."""
    return pipeline_class(**{k: None for k in ("scheduler", "vae", "text_encoder", "tokenizer", "processor",
                                              "transformer")}).prompt_template_encode


def tiny_qwen_edit_pipeline(seed: int = 0, *, plus: bool = False, **kwargs):
    """A tiny ``QwenImageEditPipeline`` (``plus``: ``QwenImageEditPlusPipeline``) on the CPU,
    progress bar off.  Stock Qwen-Image-Edit encodes the context image at about 1024x1024
    whatever the input's size; :func:`small_qwen_context` scales that down for tests."""
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    pipe = cls(**tiny_qwen_edit_components(seed, plus=plus, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def small_qwen_context(area: int = 64 * 64):
    """Context manager: Qwen-Image-Edit pipelines encode the context image at about
    ``area`` pixels instead of 1024x1024 (their module's ``calculate_dimensions``, which
    the pipelines and lime-edit's backbone both read), so tiny-model tests run at tiny
    sizes; restored on exit."""
    from contextlib import contextmanager

    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus

    @contextmanager
    def patched():
        saved = [(m, m.calculate_dimensions) for m in (pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus)]
        for m, fn in saved:
            m.calculate_dimensions = (lambda fn: lambda target_area, ratio: fn(
                min(target_area, area), ratio))(fn)
        try:
            yield
        finally:
            for m, fn in saved:
                m.calculate_dimensions = fn
    return patched()


# ------------------------------------------------------------------ FLUX.2 [klein]
#: Qwen3's chat template as FLUX.2 [klein] applies it (one user turn, generation prompt,
#: thinking off: an empty think block), written for the tiny tokenizer
QWEN3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
    "enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def tiny_flux2_klein_components(seed: int = 0, *, num_layers: int = 2, num_single_layers: int = 2,
                                heads: int = 2, head_dim: int = 16, text_layers: int = 27,
                                words: Iterable[str] = DEFAULT_WORDS) -> dict:
    """Components of ``Flux2KleinPipeline(**components)``: FLUX.2's layout (double- then
    single-stream blocks with fused parallel projections, 4-axis RoPE, no guidance
    embedding, Qwen3 text encoder whose layers 9, 18 and 27 are stacked into the text
    stream, VAE with batch-normalised patchified latents), scaled down.  VAE scale factor
    2, so one transformer token covers 4x4 pixels and a 64x64 image has a 16x16 grid."""
    import torch
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = tiny_qwen_tokenizer(words, ["<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"],
                              extra_special=("<think>", "</think>"), chat_template=QWEN3_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    hidden = 16
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=3 * hidden,
        timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLFlux2(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                             norm_num_groups=8, sample_size=64)
    torch.manual_seed(seed + 2)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=32, num_hidden_layers=text_layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>")))
    for m in (transformer, vae, text_encoder):
        m.eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tok, transformer=transformer)


def tiny_flux2_klein_pipeline(seed: int = 0, *, is_distilled: bool = True, **kwargs):
    """A tiny ``Flux2KleinPipeline`` on the CPU (distilled like FLUX.2 [klein] 4B/9B, or
    not like the klein base models), progress bar off."""
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline(**tiny_flux2_klein_components(seed, **kwargs), is_distilled=is_distilled)
    pipe.set_progress_bar_config(disable=True)
    return pipe
