"""Tiny InstructPix2Pix components built in code, for tests and benchmarks.

Nothing here downloads anything: the CLIP tokenizer is written from a word list
(byte-level BPE vocabulary + merges that spell each word as one token), and the
models are randomly initialised from small configs with the same classes the
real checkpoints use.  The U-Net mirrors SD1.5's layout (three cross-attention
down blocks, a plain fourth block, a cross-attention mid block), so attention
layers exist at latent levels 1, 2, 4 and 8, but with other head counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

DEFAULT_WORDS = (
    "a an the of to in on and with is it its this that make turn change paint colour color "
    "add remove replace put let give her his their dog cat car tree house sky outfit black "
    "white red green blue yellow orange purple pink brown grey circle square triangle star "
    "small big large left right top bottom background into from as be please"
).split()


def _byte_alphabet() -> list[str]:
    # GPT-2 / CLIP byte-to-unicode table (printable stand-ins for all 256 bytes).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer_files(folder: str | os.PathLike, words: Iterable[str]) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for a CLIP BPE tokenizer in which each
    given (lower-case) word is a single token; anything else falls back to bytes.

    Every word is checked against the merges made so far, so
    ``tokenizer("make the red circle green")`` yields exactly one id per word.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    merges: list[str] = []
    ranks: dict[tuple[str, str], int] = {}
    for w in sorted({w.lower() for w in words if w}, key=lambda s: (len(s), s)):
        if len(w) < 2:
            continue
        # Tokenize the word with the merges so far, then join the resulting pieces
        # left to right with new (lowest-priority) merges; earlier words keep their
        # single-token spelling because their own merges always outrank new ones.
        pieces = _bpe(list(w[:-1]) + [w[-1] + "</w>"], ranks)
        cur = pieces[0]
        for nxt in pieces[1:]:
            ranks[(cur, nxt)] = len(merges)
            merges.append(f"{cur} {nxt}")
            cur = cur + nxt
            vocab.setdefault(cur, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def clip_tokenizer_from_bpe(folder: str | os.PathLike, bpe_gz: str | os.PathLike, model_max_length: int = 77):
    """CLIP's real tokenizer, built from OpenAI's merges file ``bpe_simple_vocab_16e6.txt.gz``
    the way CLIP's ``SimpleTokenizer`` builds it: the 256 byte stand-ins, the same with
    ``</w>``, the first 48,894 merges in order, then ``<|startoftext|>`` and
    ``<|endoftext|>`` (49,408 ids, the ids of ``openai/clip-vit-large-patch14``)."""
    import gzip

    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=model_max_length)


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]
    return pieces


def tiny_tokenizer(folder: str | os.PathLike, words: Iterable[str] = DEFAULT_WORDS,
                   model_max_length: int = 77):
    from transformers import CLIPTokenizer

    folder = write_clip_tokenizer_files(folder, words)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=model_max_length)


def tiny_components(tokenizer_dir: str | os.PathLike, seed: int = 0, *,
                    block_out_channels: tuple[int, ...] = (16, 32, 32, 32),
                    heads: tuple[int, ...] = (2, 4, 4, 4),
                    cross_attention_dim: int = 32,
                    vae_blocks: tuple[int, ...] = (16, 32),
                    model_max_length: int = 77,
                    words: Iterable[str] = DEFAULT_WORDS,
                    mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
                    in_channels: int = 8) -> dict:
    """Components for ``StableDiffusionInstructPix2PixPipeline(**components)``.

    VAE scale factor is ``2 ** (len(vae_blocks) - 1)`` (2 by default, so a 64x64
    image has a 32x32 latent and attention grids of 32, 16, 8 and 4).
    ``mid_block_type=None`` removes the mid block's attention (levels 1, 2, 4 only).
    ``in_channels=4`` gives a text-to-image U-Net (see :func:`tiny_t2i_pipeline`).
    """
    import torch
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = tiny_tokenizer(tokenizer_dir, words, model_max_length)
    torch.manual_seed(seed)
    n = len(block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        mid_block_type=mid_block_type,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=heads,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=vae_blocks,
        down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
        up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
        norm_num_groups=8, sample_size=64,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=cross_attention_dim, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=model_max_length,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        projection_dim=cross_attention_dim,
    ))
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tok, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_pipeline(tokenizer_dir: str | os.PathLike, seed: int = 0, **kwargs):
    """A tiny ``StableDiffusionInstructPix2PixPipeline`` on the CPU, progress bar off."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(**tiny_components(tokenizer_dir, seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_t2i_pipeline(tokenizer_dir: str | os.PathLike, seed: int = 0, **kwargs):
    """A tiny text-to-image ``StableDiffusionPipeline`` (4-channel U-Net, same layout,
    tokenizer and VAE as :func:`tiny_pipeline`; DDIM scheduler) on the CPU."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    comps = tiny_components(tokenizer_dir, seed, in_channels=4, **kwargs)
    comps["scheduler"] = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe
