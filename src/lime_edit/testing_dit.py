"""Tiny multimodal-diffusion-transformer editors built in code, for tests and benchmarks.

Nothing is downloaded: the T5 tokenizer is a SentencePiece-style Unigram model written
from a word list (each word one ``▁word`` piece, anything else letter by letter), the
CLIP tokenizer is :mod:`lime_edit.testing`'s, and every model is randomly initialised
from a small config of the class the released checkpoints use.  Modules are put in
``eval()`` mode (T5's dropout would make two identical calls differ).
"""

from __future__ import annotations

import os
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
