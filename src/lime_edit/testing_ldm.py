"""Tiny models of every editor family, and original-LDM single-file checkpoints of them.

For tests and benchmarks; nothing here downloads anything.

- :func:`tiny_sd2_ip2p_components`: an SD2.x-layout InstructPix2Pix (HIVE v2 is an IP2P on
  SD2.1-base): 8-channel U-Net with linear projections and 64-d attention heads, an
  OpenCLIP-H-like text encoder as diffusers converts it (``CLIPTextModel``, GELU, 1024-d),
  a tokenizer that pads with ``"!"`` (id 0, as OpenCLIP does and as diffusers' SD2 tokenizer
  config says).
- :func:`tiny_sdxl_ip2p_components` / :func:`tiny_sdxl_ip2p_pipeline`: components for
  ``StableDiffusionXLInstructPix2PixPipeline`` in SDXL's layout (no attention at the first
  level, several transformer blocks per attention, ``text_time`` added conditioning, two text
  encoders whose hidden sizes concatenate to the cross-attention width, the second padding
  with ``"!"``).
- :func:`write_ldm_checkpoint`: the inverse of diffusers' single-file conversion; writes a
  pipeline's weights under the original LDM / SGM key names (``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.*`` or ``conditioner.embedders.*``), as
  ``.safetensors`` or a Lightning-style ``.ckpt``.
- :func:`write_config_folder`: the weightless diffusers folder that
  ``Pipeline.from_single_file(ckpt, config=folder, local_files_only=True)`` reads.

Together they let a test run the real conversion code of ``from_single_file`` offline.

Facts the tiny models copy from the real releases (read from their public configs):

- HIVE v2 (``configs/generate_v21_base.yaml`` in salesforce/HIVE) sets no
  ``parameterization``, so its ``LatentDiffusion`` runs the class default, epsilon
  prediction, like SD2.1-*base* (only the 768-px SD2.x models are v-prediction). Its U-Net:
  ``openaimodel_v21.UNetModel`` with ``num_head_channels: 64``, ``use_linear_in_transformer:
  True``, ``context_dim: 1024``; text: ``FrozenOpenCLIPEmbedder`` (ViT-H-14) with
  ``layer: "penultimate"``. It samples with k-diffusion's ``sample_euler_ancestral`` on a
  ``CompVisDenoiser`` with ``get_sigmas(steps)`` (timesteps spaced linearly from 999 to 0),
  which diffusers' ``EulerAncestralDiscreteScheduler(timestep_spacing="linspace",
  prediction_type="epsilon")`` on SD's scaled-linear betas mirrors (diffusers interpolates
  sigma linearly between integer timesteps, k-diffusion log-sigma: the two differ slightly at
  non-integer timesteps).
- SDXL-InstructPix2Pix (``diffusers/sdxl-instructpix2pix-768``, fine-tuned from SDXL base):
  the tiny model uses SDXL base's published ``EulerDiscreteScheduler`` config (epsilon,
  ``"leading"`` spacing, ``steps_offset=1``); the 768 model's own scheduler_config.json was
  not available offline to check. SDXL's U-Net has ``transformer_layers_per_block`` ``(1, 2, 10)``
  (the first level has no attention), 64-d heads, ``addition_time_embed_dim=256`` and
  ``projection_class_embeddings_input_dim = 6 * 256 + 1280`` (six time ids, and the pooled
  projection of the second text encoder).

What diffusers' ``infer_diffusers_model_type`` keys on, and so what the tiny files keep:
``"v2"`` needs ``input_blocks.2.1...attn2.to_k.weight`` with 1024 input features (so the SD2
model has 2 layers per block and a 1024-d text encoder), ``"xl_base"`` needs
``conditioner.embedders.1.model.transformer.resblocks.9...`` (so the second SDXL text encoder
has at least 10 layers), ``"instruct-pix2pix"`` an 8-channel ``input_blocks.0.0.weight``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

from .testing import DEFAULT_WORDS, tiny_tokenizer

LAYOUTS = ("sd1", "sd2", "sdxl")

_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIX = "first_stage_model."
_TEXT_PREFIXES = {
    # layout -> [(component name, prefix, "hf" | "openclip")]
    "sd1": [("text_encoder", "cond_stage_model.transformer.", "hf")],
    "sd2": [("text_encoder", "cond_stage_model.model.", "openclip")],
    "sdxl": [("text_encoder", "conditioner.embedders.0.transformer.", "hf"),
             ("text_encoder_2", "conditioner.embedders.1.model.", "openclip")],
}


# --------------------------------------------------------------------------- tiny models

def _tokenizer_with_pad(tokenizer_dir: str | os.PathLike, words: Iterable[str], pad_token: str,
                        model_max_length: int = 77):
    """A tiny CLIP tokenizer (see :func:`lime_edit.testing.tiny_tokenizer`) padding with ``pad_token``."""
    from transformers import CLIPTokenizer

    folder = Path(tokenizer_dir)
    tiny_tokenizer(folder, words, model_max_length)  # writes vocab.json / merges.txt
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=model_max_length, pad_token=pad_token)


def tiny_sd2_ip2p_components(tokenizer_dir: str | os.PathLike, seed: int = 0, *,
                             block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
                             text_hidden_size: int = 1024,
                             text_layers: int = 1,
                             vae_blocks: tuple[int, ...] = (16, 32, 32),
                             words: Iterable[str] = DEFAULT_WORDS) -> dict:
    """Components for ``StableDiffusionInstructPix2PixPipeline(**components)`` in SD2.x's layout.

    Like HIVE v2 (SD2.1-base): three cross-attention down blocks and a plain fourth, 2 layers per
    block, ``use_linear_projection=True``, 64-d attention heads (``channels // 64`` heads per
    level), ``cross_attention_dim = text_hidden_size`` (1024 as in OpenCLIP-H; at 1024 diffusers
    classifies the single file as ``"v2"``), a GELU ``CLIPTextModel`` (OpenCLIP converted; the
    real one has 23 of OpenCLIP's 24 layers, the "penultimate" output), a tokenizer that pads
    with ``"!"``, epsilon prediction with Euler-ancestral sampling on linearly spaced timesteps
    (HIVE's k-diffusion sampler). VAE scale factor ``2 ** (len(vae_blocks) - 1)``, 4 by default:
    a 64x64 image has a 16x16 latent and attention at 16, 8 and 4 (and 2 in the mid block). (At
    factor 2 the 64-wide, 2-layer first level costs ~5x the SD1 tiny model's U-Net.)
    """
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if any(c % 64 for c in block_out_channels):
        raise ValueError(f"block_out_channels {block_out_channels}: SD2 uses 64-d heads, "
                         "so every width must be a multiple of 64")
    tok = _tokenizer_with_pad(tokenizer_dir, words, "!")
    n = len(block_out_channels)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64 // 2 ** (len(vae_blocks) - 1), in_channels=8, out_channels=4,
        block_out_channels=block_out_channels, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=text_hidden_size,
        # diffusers' SD2 configs put the head *count* here (e.g. [5, 10, 20, 20] = 64-d heads).
        attention_head_dim=tuple(c // 64 for c in block_out_channels),
        use_linear_projection=True,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = _tiny_vae(vae_blocks, scaling_factor=0.18215, force_upcast=True)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=text_hidden_size, intermediate_size=256,
        num_hidden_layers=text_layers, num_attention_heads=text_hidden_size // 64,
        max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        projection_dim=512,
    ))
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", timestep_spacing="linspace", steps_offset=1)
    _eval(unet, vae, text_encoder)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tok, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_sdxl_ip2p_components(tokenizer_dir: str | os.PathLike, seed: int = 0, *,
                              block_out_channels: tuple[int, ...] = (16, 32, 64),
                              transformer_layers_per_block: tuple[int, ...] = (1, 2, 3),
                              head_dim: int = 32,
                              text_hidden_sizes: tuple[int, int] = (32, 64),
                              text_layers: tuple[int, int] = (2, 10),
                              projection_dim: int = 48,
                              addition_time_embed_dim: int = 8,
                              vae_blocks: tuple[int, ...] = (16, 32),
                              cosxl: bool = False,
                              words: Iterable[str] = DEFAULT_WORDS) -> dict:
    """Components for ``StableDiffusionXLInstructPix2PixPipeline(**components)`` in SDXL's layout.

    Down blocks ``(DownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D)``, so attention sits
    only at latent/2 and latent/4 (and the mid block), with ``transformer_layers_per_block``
    transformer blocks per attention (SDXL: 0 effective, 2, 10; the mid block takes the last
    value), 2 layers per block, linear projections, ``addition_embed_type="text_time"`` with
    ``projection_class_embeddings_input_dim = 6 * addition_time_embed_dim + projection_dim``,
    8 input channels. Text: a CLIP-L-like ``CLIPTextModel`` (quick-GELU) and an OpenCLIP-bigG-like
    ``CLIPTextModelWithProjection`` (GELU, at least 10 layers, projection to ``projection_dim``),
    hidden sizes summing to ``cross_attention_dim``; ``tokenizer`` pads with its end token,
    ``tokenizer_2`` with ``"!"`` (id 0), as SDXL's do. Scheduler: ``EulerDiscreteScheduler`` as
    configured for SDXL base (see the module docstring). ``add_watermarker=False`` so outputs do not depend on
    whether invisible-watermark is installed. VAE scale factor 2 by default: a 64x64 image has a
    32x32 latent, attention at 16 and 8 (and 8 in the mid block).

    ``cosxl=True``: CosXL Edit's settings instead: ``is_cosxl_edit=True`` (image latents scaled by
    the VAE factor) and ``EDMEulerScheduler(sigma_min=0.002, sigma_max=120, sigma_data=1,
    prediction_type="v_prediction", sigma_schedule="exponential")``, the schedule published
    CosXL-Edit pipelines set by hand (diffusers does not read it from the file).
    """
    import torch
    from diffusers import EDMEulerScheduler, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    h1, h2 = text_hidden_sizes
    if h1 == h2:
        raise ValueError("text_hidden_sizes must differ: diffusers tells SDXL's two text encoders "
                         "apart in a single file by their width")
    if text_layers[1] < 10:
        raise ValueError("text_layers[1] must be >= 10: diffusers recognises an SDXL single file by "
                         "conditioner.embedders.1.model.transformer.resblocks.9")
    tok_dir = Path(tokenizer_dir)
    tok = tiny_tokenizer(tok_dir, words)
    tok_2 = _tokenizer_with_pad(tok_dir, words, "!")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64 // 2 ** (len(vae_blocks) - 1), in_channels=8, out_channels=4,
        block_out_channels=block_out_channels, layers_per_block=2,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(block_out_channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(block_out_channels) - 1) + ("UpBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn",
        transformer_layers_per_block=transformer_layers_per_block,
        attention_head_dim=tuple(max(1, c // head_dim) for c in block_out_channels),
        use_linear_projection=True,
        cross_attention_dim=h1 + h2,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + projection_dim,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = _tiny_vae(vae_blocks, scaling_factor=0.13025, force_upcast=True)
    common = dict(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, layer_norm_eps=1e-5)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=h1, intermediate_size=2 * h1, num_hidden_layers=text_layers[0],
        num_attention_heads=4, hidden_act="quick_gelu", pad_token_id=tok.pad_token_id,
        projection_dim=h1, **common))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=h2, intermediate_size=2 * h2, num_hidden_layers=text_layers[1],
        num_attention_heads=4, hidden_act="gelu", pad_token_id=tok_2.pad_token_id,
        projection_dim=projection_dim, **common))
    if cosxl:
        scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=120.0, sigma_data=1.0,
                                      prediction_type="v_prediction", sigma_schedule="exponential")
    else:
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            prediction_type="epsilon", timestep_spacing="leading", steps_offset=1,
            interpolation_type="linear", use_karras_sigmas=False)
    _eval(unet, vae, text_encoder, text_encoder_2)
    return dict(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok,
                tokenizer_2=tok_2, unet=unet, scheduler=scheduler,
                force_zeros_for_empty_prompt=True, add_watermarker=False, is_cosxl_edit=cosxl)


def tiny_sdxl_ip2p_pipeline(tokenizer_dir: str | os.PathLike, seed: int = 0, **kwargs):
    """A tiny ``StableDiffusionXLInstructPix2PixPipeline`` on the CPU, progress bar off."""
    from diffusers import StableDiffusionXLInstructPix2PixPipeline

    pipe = StableDiffusionXLInstructPix2PixPipeline(**tiny_sdxl_ip2p_components(tokenizer_dir, seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd2_ip2p_pipeline(tokenizer_dir: str | os.PathLike, seed: int = 0, **kwargs):
    """A tiny SD2-layout ``StableDiffusionInstructPix2PixPipeline`` on the CPU, progress bar off."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(**tiny_sd2_ip2p_components(tokenizer_dir, seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _eval(*models) -> None:
    # Loaders return eval-mode models; a pipeline built from train-mode modules gives outputs
    # ~1e-6 away from the same weights loaded (measured on CPU), so match the loaded state.
    for m in models:
        m.eval()


def _tiny_vae(blocks: tuple[int, ...], *, scaling_factor: float, force_upcast: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=blocks,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        layers_per_block=2, norm_num_groups=8, sample_size=64,
        scaling_factor=scaling_factor, force_upcast=force_upcast,
    )


# --------------------------------------------------------------------------- LDM key names
# Each function maps one diffusers state dict to the original LDM names; the rules follow the
# model's config (block count, layers per block, which blocks have attention), and a key no
# rule covers raises, so a layout the writer does not know fails loudly instead of writing a
# file diffusers would half-load.

_RESNET_RENAMES = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                   ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))


def _resnet_rest(rest: str) -> str:
    head, _, tail = rest.partition(".")
    for new, old in _RESNET_RENAMES:
        if head == new:
            return f"{old}.{tail}"
    raise ValueError(f"unknown U-Net resnet parameter {rest!r}")


def unet_state_dict_to_ldm(unet) -> dict:
    """``UNet2DConditionModel`` weights under LDM's ``openaimodel.UNetModel`` names (no prefix).

    ``input_blocks.0`` is ``conv_in``; down block ``b``'s layer ``l`` is input block
    ``1 + b * (layers_per_block + 1) + l`` (``.0`` resnet, ``.1`` attention) and its
    downsampler the block after its last layer (``.0.op``); the mid block is
    ``middle_block.0/1/2`` (resnet, attention, resnet); up block ``b``'s layer ``l`` is output
    block ``b * (layers_per_block + 1) + l`` with the upsampler at ``.1.conv`` (no attention)
    or ``.2.conv``; ``time_embed.0/2``, ``label_emb.0.0/0.2`` (SDXL's ``add_embedding``),
    ``out.0/2``.
    """
    cfg = unet.config
    lpb = cfg.layers_per_block
    if not isinstance(lpb, int):
        raise ValueError(f"layers_per_block={lpb!r}: LDM checkpoints (and diffusers' converter) "
                         "use one count for every block")
    if cfg.class_embed_type is not None or cfg.encoder_hid_dim_type is not None:
        raise ValueError("class embeddings / encoder_hid_proj have no LDM names in this writer")
    up_has_attn = ["CrossAttn" in t for t in cfg.up_block_types]
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, value in unet.state_dict().items():
        module, _, param = key.rpartition(".")
        if module in fixed:
            out[f"{fixed[module]}.{param}"] = value
            continue
        m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key)
        if m:
            b, kind, l, rest = int(m[1]), m[2], int(m[3]), m[4]
            if kind == "downsamplers":
                if not rest.startswith("conv."):
                    raise ValueError(f"unknown U-Net downsampler parameter {key!r}")
                new = f"input_blocks.{1 + b * (lpb + 1) + lpb}.0.op.{rest[len('conv.'):]}"
            else:
                idx = 1 + b * (lpb + 1) + l
                new = (f"input_blocks.{idx}.0.{_resnet_rest(rest)}" if kind == "resnets"
                       else f"input_blocks.{idx}.1.{rest}")
            out[new] = value
            continue
        m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
        if m:
            kind, i, rest = m[1], int(m[2]), m[3]
            if kind == "attentions" and i > 0:
                raise ValueError("a mid block with several attentions has no LDM layout")
            out[f"middle_block.{2 * i}.{_resnet_rest(rest)}" if kind == "resnets"
                else f"middle_block.1.{rest}"] = value
            continue
        m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key)
        if m:
            b, kind, l, rest = int(m[1]), m[2], int(m[3]), m[4]
            if kind == "upsamplers":
                slot = 2 if up_has_attn[b] else 1
                new = f"output_blocks.{b * (lpb + 1) + lpb}.{slot}.{rest}"
            else:
                idx = b * (lpb + 1) + l
                new = (f"output_blocks.{idx}.0.{_resnet_rest(rest)}" if kind == "resnets"
                       else f"output_blocks.{idx}.1.{rest}")
            out[new] = value
            continue
        raise ValueError(f"U-Net parameter {key!r} has no LDM name")
    return out


_VAE_FIXED = {"conv_norm_out": "norm_out"}
_VAE_ATTN_RENAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_state_dict_to_ldm(vae) -> dict:
    """``AutoencoderKL`` weights under LDM's ``AutoencoderKL`` names (no prefix).

    Encoder ``down_blocks.i`` -> ``down.i`` (``resnets`` -> ``block``, ``downsamplers.0`` ->
    ``downsample``); decoder ``up_blocks.i`` -> ``up.{n-1-i}`` (LDM counts decoder levels from
    the highest resolution); mid resnets -> ``mid.block_1/2``, mid attention -> ``mid.attn_1``
    with ``q/k/v/proj_out`` as 1x1 convolutions; ``conv_shortcut`` -> ``nin_shortcut``,
    ``conv_norm_out`` -> ``norm_out``.
    """
    n_up = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        part, _, rest = key.partition(".")
        if part in ("quant_conv", "post_quant_conv"):
            out[key] = value
            continue
        if part not in ("encoder", "decoder"):
            raise ValueError(f"VAE parameter {key!r} has no LDM name")
        m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", rest)
        if m:
            side, i, kind, j, tail = m[1], int(m[2]), m[3], int(m[4]), m[5]
            level = i if side == "down" else n_up - 1 - i
            if kind == "resnets":
                tail = tail.replace("conv_shortcut", "nin_shortcut")
                new = f"{side}.{level}.block.{j}.{tail}"
            else:
                new = f"{side}.{level}.{'downsample' if side == 'down' else 'upsample'}.{tail}"
            out[f"{part}.{new}"] = value
            continue
        m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest)
        if m:
            out[f"{part}.mid.block_{int(m[1]) + 1}.{m[2].replace('conv_shortcut', 'nin_shortcut')}"] = value
            continue
        m = re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", rest)
        if m:
            if m[2] == "weight" and m[1] != "group_norm" and value.ndim == 2:
                value = value[:, :, None, None]  # LDM's attention projections are 1x1 convs
            out[f"{part}.mid.attn_1.{_VAE_ATTN_RENAMES[m[1]]}.{m[2]}"] = value
            continue
        module, _, param = rest.rpartition(".")
        if module in ("conv_in", "conv_out", "conv_norm_out"):
            out[f"{part}.{_VAE_FIXED.get(module, module)}.{param}"] = value
            continue
        raise ValueError(f"VAE parameter {key!r} has no LDM name")
    return out


def _hf_clip_state_dict(text_encoder) -> dict:
    """The text model's weights as ``text_model.*`` (+ ``text_projection.weight``), whichever way
    the installed transformers nests ``CLIPTextModel`` (flattened in transformers >= 5.6)."""
    out = {}
    for key, value in text_encoder.state_dict().items():
        if key.startswith(("text_model.", "text_projection.")):
            out[key] = value
        else:
            out["text_model." + key] = value
    return out


def clip_state_dict_to_ldm(text_encoder) -> dict:
    """A CLIP-L-style text encoder as LDM's ``FrozenCLIPEmbedder.transformer`` holds it: the
    transformers names under ``text_model.`` (no prefix)."""
    return {k: v for k, v in _hf_clip_state_dict(text_encoder).items() if not k.startswith("text_projection.")}


_OPENCLIP_LAYER_RENAMES = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                           ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj"))


def openclip_state_dict_to_ldm(text_encoder) -> dict:
    """A text encoder in OpenCLIP's layout (no prefix), as SD2's ``FrozenOpenCLIPEmbedder.model``
    and SDXL's second embedder hold it: ``token_embedding``, ``positional_embedding``,
    ``transformer.resblocks.i.{ln_1, attn.in_proj_weight/bias (q, k, v stacked), attn.out_proj,
    ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_final`` and, when the model has one,
    ``text_projection`` stored as ``(width, embed_dim)``, the transpose of the linear weight.
    """
    import torch

    sd = _hf_clip_state_dict(text_encoder)
    out = {}
    qkv: dict[tuple[int, str], dict[str, object]] = {}
    for key, value in sd.items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        if key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
            continue
        if key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
            continue
        if key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = value
            continue
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key)
        if not m:
            raise ValueError(f"text encoder parameter {key!r} has no OpenCLIP name")
        i, rest = int(m[1]), m[2]
        q = re.fullmatch(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest)
        if q:
            qkv.setdefault((i, q[2]), {})[q[1]] = value
            continue
        for new, old in _OPENCLIP_LAYER_RENAMES:
            if rest.startswith(new + "."):
                out[f"transformer.resblocks.{i}.{old}{rest[len(new):]}"] = value
                break
        else:
            raise ValueError(f"text encoder parameter {key!r} has no OpenCLIP name")
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"text encoder layer {i}: incomplete q/k/v {kind}")
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def ldm_state_dict(components: dict, layout: str, *, ema_unet=None, training_extras: bool = False) -> dict:
    """The whole pipeline's weights under the original single-file names for ``layout``.

    ``ema_unet``: an optional second U-Net (same config) whose weights are added the way a
    training checkpoint with ``use_ema: true`` stores its ``LitEma``: ``model_ema.`` + the
    ``diffusion_model.*`` name with the dots removed, plus ``model_ema.decay`` and
    ``model_ema.num_updates`` (diffusers loads these with ``extract_ema=True``).

    ``training_extras``: also write what an LDM ``LatentDiffusion.state_dict()`` holds besides the
    weights diffusers converts (see :func:`_training_extras`), as IP2P/MagicBrush/HIVE training
    checkpoints do; InstructDiffusion's release has none of it.
    """
    import torch

    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    sd: dict = {}
    for k, v in unet_state_dict_to_ldm(components["unet"]).items():
        sd[_UNET_PREFIX + k] = v
    for k, v in vae_state_dict_to_ldm(components["vae"]).items():
        sd[_VAE_PREFIX + k] = v
    for name, prefix, kind in _TEXT_PREFIXES[layout]:
        enc = components.get(name)
        if enc is None:
            raise ValueError(f"layout {layout!r} needs a {name}")
        conv = clip_state_dict_to_ldm if kind == "hf" else openclip_state_dict_to_ldm
        for k, v in conv(enc).items():
            sd[prefix + k] = v
    if ema_unet is not None:
        if dict(ema_unet.config) != dict(components["unet"].config):
            raise ValueError("ema_unet must have the U-Net's config")
        for k, v in unet_state_dict_to_ldm(ema_unet).items():
            sd["model_ema." + ("diffusion_model." + k).replace(".", "")] = v
        sd["model_ema.decay"] = torch.tensor(0.9999)
        sd["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
    if training_extras:
        sd.update(_training_extras(components, layout))
    sched = components.get("scheduler")
    if (layout == "sdxl" and sched is not None and type(sched).__name__.startswith("EDM")
            and sched.config.prediction_type == "v_prediction"):
        # CosXL's files mark EDM v-prediction with these two top-level scalars.
        sd["edm_vpred.sigma_max"] = torch.tensor(float(sched.config.sigma_max))
        sd["edm_vpred.sigma_min"] = torch.tensor(float(sched.config.sigma_min))
    # Own, contiguous storage per tensor (safetensors refuses shared memory).
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def _training_extras(components: dict, layout: str) -> dict:
    """The non-weight entries of an LDM training state dict, which loaders skip.

    - ``DDPM.register_schedule``'s buffers for the scheduler's scaled-linear betas:
      ``betas``, ``alphas_cumprod``, ``alphas_cumprod_prev``, ``sqrt_alphas_cumprod``,
      ``sqrt_one_minus_alphas_cumprod``, ``log_one_minus_alphas_cumprod``,
      ``sqrt_recip_alphas_cumprod``, ``sqrt_recipm1_alphas_cumprod``, ``posterior_variance``,
      ``posterior_log_variance_clipped``, ``posterior_mean_coef1/2`` (float32, computed in float64);
    - ``...transformer.text_model.embeddings.position_ids`` of each transformers CLIP embedder;
    - OpenCLIP's ``logit_scale`` and, for SD2 (whose pipelines do not use it), a square
      ``text_projection`` (values from a fixed seed).
    """
    import torch

    if layout not in ("sd1", "sd2"):
        raise ValueError(f"training_extras: only the LDM layouts (sd1, sd2) are modelled, not {layout!r} "
                         "(SGM's DiffusionEngine holds other buffers)")
    cfg = components["scheduler"].config
    if cfg.beta_schedule != "scaled_linear":
        raise ValueError(f"training_extras: beta_schedule {cfg.beta_schedule!r} is not LDM's 'linear'")
    n = cfg.num_train_timesteps
    betas = torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, n, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    acp = torch.cumprod(alphas, 0)
    acp_prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
    post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
    buffers = {
        "betas": betas, "alphas_cumprod": acp, "alphas_cumprod_prev": acp_prev,
        "sqrt_alphas_cumprod": acp.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - acp).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - acp).log(), "sqrt_recip_alphas_cumprod": (1.0 / acp).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / acp - 1.0).sqrt(), "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * acp_prev.sqrt() / (1.0 - acp),
        "posterior_mean_coef2": (1.0 - acp_prev) * alphas.sqrt() / (1.0 - acp),
    }
    out = {k: v.float() for k, v in buffers.items()}
    gen = torch.Generator().manual_seed(0)
    for name, prefix, kind in _TEXT_PREFIXES[layout]:
        cfg_t = components[name].config
        if kind == "hf":
            out[prefix + "text_model.embeddings.position_ids"] = torch.arange(cfg_t.max_position_embeddings)[None]
        else:
            out[prefix + "logit_scale"] = torch.tensor(4.6052)  # ln(100), a trained CLIP's value
            out[prefix + "text_projection"] = torch.randn(cfg_t.hidden_size, cfg_t.hidden_size, generator=gen)
    return out


def write_ldm_checkpoint(components: dict, path: str | os.PathLike, layout: str, *,
                         ema_unet=None, training_extras: bool = False,
                         global_step: int | None = 0) -> Path:
    """Write ``components`` as one original-LDM checkpoint; returns the path.

    ``layout``: ``"sd1"`` (CLIP text encoder at ``cond_stage_model.transformer.``), ``"sd2"``
    (OpenCLIP at ``cond_stage_model.model.``) or ``"sdxl"`` (``conditioner.embedders.0.transformer.``
    and ``conditioner.embedders.1.model.``). U-Net at ``model.diffusion_model.``, VAE at
    ``first_stage_model.``. The suffix picks the format: ``.safetensors`` is the flat dict,
    ``.ckpt`` a pickle of ``{"state_dict": ..., "global_step": global_step}`` as PyTorch Lightning
    saves it (``global_step=None``: only ``"state_dict"``, as InstructDiffusion's converted
    release). ``ema_unet`` / ``training_extras``: see :func:`ldm_state_dict`. Written to a
    temporary name and renamed, so a failed write leaves no file.
    """
    import torch

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".ckpt"):
        raise ValueError(f"{path}: the suffix must be .safetensors or .ckpt")
    sd = ldm_state_dict(components, layout, ema_unet=ema_unet, training_extras=training_extras)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(tmp), metadata={"format": "pt"})
        else:
            obj = {"state_dict": sd}
            if global_step is not None:
                obj["global_step"] = global_step
            torch.save(obj, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --------------------------------------------------------------------------- release look-alikes

# The single files of the editors in the LIME paper (and CosXL Edit), by their released file
# names, with the file format each one's own code writes. Read from the public code, not from
# the files (none was downloaded): IP2P, MagicBrush and HIVE train a Lightning
# ``LatentDiffusion`` with ``use_ema: true`` (configs/train.yaml, finetune.yaml), so their
# checkpoints hold ``model_ema.*`` and the module's buffers and the authors sample inside
# ``ema_scope()`` (IP2P/HIVE ``edit_cli.py``); InstructDiffusion's ``scripts/convert_ckpt.py``
# saves ``{"state_dict": ...}`` with the EMA U-Net already in place and only parameters.
RELEASES = {
    "instruct-pix2pix-00-22000.ckpt": dict(layout="sd1", training=True, global_step=22000),
    "MagicBrush-epoch-52-step-4999.ckpt": dict(layout="sd1", training=True, global_step=4999),
    "hive_rw.ckpt": dict(layout="sd1", training=True, global_step=0),
    "hive_rw_condition.ckpt": dict(layout="sd1", training=True, global_step=0),
    "hive_v2_rw.ckpt": dict(layout="sd2", training=True, global_step=0),
    "hive_v2_rw_condition.ckpt": dict(layout="sd2", training=True, global_step=0),
    "v1-5-pruned-emaonly-adaption-task.ckpt": dict(layout="sd1", training=False, global_step=None),
    "v1-5-pruned-emaonly-adaption-task-humanalign.ckpt": dict(layout="sd1", training=False, global_step=None),
    "cosxl_edit.safetensors": dict(layout="sdxl", training=False, global_step=None),
}


def write_release_lookalike(file_name: str, components: dict, folder: str | os.PathLike, *,
                            ema_unet=None) -> Path:
    """Write ``components`` as ``folder/file_name``, in that release's layout and file format.

    ``file_name`` is a key of :data:`RELEASES`; ``components`` must be of its layout (SD1 tiny
    model for the IP2P/MagicBrush/HIVE-v1/InstructDiffusion names, :func:`tiny_sd2_ip2p_components`
    for ``hive_v2_*``, ``tiny_sdxl_ip2p_components(cosxl=True)`` for ``cosxl_edit``). Training
    checkpoints get ``model_ema.*`` (``ema_unet``, default: a copy of the U-Net, so either choice of
    ``extract_ema`` gives the same pipeline) and the training extras. Nothing in these files but
    the name tells IP2P, MagicBrush and HIVE v1 (with or without "condition") apart; that is
    true of the real releases too.
    """
    import copy

    if file_name not in RELEASES:
        raise ValueError(f"unknown release {file_name!r}; known: {', '.join(RELEASES)}")
    spec = RELEASES[file_name]
    if file_name.startswith("cosxl") and not components.get("is_cosxl_edit"):
        raise ValueError(f"{file_name}: needs CosXL components (tiny_sdxl_ip2p_components(cosxl=True))")
    if spec["training"] and ema_unet is None:
        ema_unet = copy.deepcopy(components["unet"])
    return write_ldm_checkpoint(components, Path(folder) / file_name, spec["layout"],
                                ema_unet=ema_unet if spec["training"] else None,
                                training_extras=spec["training"], global_step=spec["global_step"])


# --------------------------------------------------------------------------- config folder

def write_config_folder(components: dict, folder: str | os.PathLike, pipeline_class_name: str) -> Path:
    """Write the weightless diffusers folder that ``from_single_file(..., config=folder)`` reads.

    ``model_index.json`` (the pipeline class, ``[library, class]`` per component, ``[null, null]``
    for absent ones, and the pipeline's scalar settings such as ``requires_safety_checker`` or
    ``force_zeros_for_empty_prompt``), each model's and the scheduler's config, and the tokenizer
    files. No weights: loading then takes every weight from the single file.
    """
    import diffusers
    from diffusers import ModelMixin, SchedulerMixin
    from transformers import PreTrainedModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, object] = {"_class_name": pipeline_class_name, "_diffusers_version": diffusers.__version__}
    for name, value in components.items():
        if value is None:
            index[name] = [None, None]
        elif isinstance(value, (bool, int, float, str)):
            index[name] = value
        elif isinstance(value, (ModelMixin, SchedulerMixin)):
            index[name] = ["diffusers", type(value).__name__]
            value.save_config(folder / name)
        elif isinstance(value, PreTrainedModel):
            index[name] = ["transformers", type(value).__name__]
            value.config.save_pretrained(folder / name)
        elif hasattr(value, "save_pretrained") and hasattr(value, "convert_tokens_to_ids"):
            index[name] = ["transformers", type(value).__name__]
            value.save_pretrained(folder / name)
        else:
            raise ValueError(f"component {name!r} ({type(value).__name__}) cannot be described in model_index.json")
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder
