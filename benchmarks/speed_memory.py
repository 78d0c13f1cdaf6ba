"""Wall time and peak memory of an editor without and with LIME, same model/input/steps/seed, one process.

    python benchmarks/speed_memory.py                      # CPU, SD1.5-shaped scaled-down random model
    python benchmarks/speed_memory.py --device cuda --dtype fp16 --size 512 --full-sd   # GPU, SD1.5 shape
    python benchmarks/speed_memory.py --model timbrooks/instruct-pix2pix --device cuda    # a real model
    python benchmarks/speed_memory.py --backbone sdxl-ip2p --size 1024                    # SDXL-shaped
    python benchmarks/speed_memory.py --backbone instructdiffusion                        # its guidance
    python benchmarks/speed_memory.py --backbone kontext --size 256 --steps 8             # FLUX.1 Kontext-shaped
    python benchmarks/speed_memory.py --backbone qwen-image-edit --size 256 --steps 8     # Qwen-Image-Edit-shaped
    python benchmarks/speed_memory.py --backbone flux2 --size 256 --steps 8               # FLUX.2 [klein]-shaped

``--backbone`` picks the family (its guidance and levels); the random model is SDXL's
architecture for ``sdxl-ip2p`` (attention at latent/2 and /4 with 2 and 10 transformer
blocks, two text encoders, text_time embedding, VAE factor 8; channels scaled down
unless ``--full-sd``), FLUX.1 Kontext's for ``kontext`` (19 double- and 38 single-stream
joint-attention blocks, 512 T5 positions, 16 px per token, VAE factor 8; width, depth
and encoders scaled down unless ``--full-sd``: 4 + 8 blocks of 4 heads x 64),
Qwen-Image-Edit's for ``qwen-image-edit`` (60 double-stream blocks, a Qwen2.5-VL text
encoder whose stream holds the input's vision tokens, true CFG = two forwards per step,
the context image encoded at about 1024x1024 whatever ``--size``, as the pipeline does;
scaled down unless ``--full-sd``: 8 blocks of 4 heads x 64, a 2-layer text encoder) and
SD1.5's for the others.  Every run also times ``lime_mask``: the edit with a given mask, i.e. the
regularized pass alone (no localization), against the plain edit.

The model is SD1.5's architecture (4 U-Net levels, cross-attention at latent/1, /2,
/4 and the /8 mid block, 8 heads, 2 layers per block, VAE factor 8) with fewer
channels unless ``--full-sd``; weights are random, which changes nothing about cost.
Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (model included); on CPU the
bytes malloc has handed out, sampled every 2 ms (model included); "above model" is the
part over the level before the call.
The methods are interleaved (each ``--repeats`` round times every method once) and the best
round of each is reported; ``--json`` also records every round's seconds (``all_seconds``).
Targets (issue 2): LIME <= 1.3x plain time at 30 steps and <= 1.15x plain peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import sys
import tempfile
import threading
import time

import numpy as np
import torch
from PIL import Image


def sd15_like_pipeline(full: bool, tmp: str):
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler,
                           StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from lime_edit.testing import tiny_tokenizer

    tok = tiny_tokenizer(tmp)
    ch = (320, 640, 1280, 1280) if full else (64, 128, 256, 256)
    text_dim = 768 if full else 256
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=8, out_channels=4, block_out_channels=ch, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_dim, attention_head_dim=8, norm_num_groups=32)
    vae_ch = (128, 256, 512, 512) if full else (32, 64, 128, 128)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_ch,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, norm_num_groups=32, sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=text_dim, intermediate_size=text_dim * 4,
                                        num_hidden_layers=12 if full else 4, num_attention_heads=12 if full else 4,
                                        max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    sched = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return StableDiffusionInstructPix2PixPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tok,
                                                  scheduler=sched, safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)


def sdxl_like_pipeline(full: bool, tmp: str):
    """SDXL IP2P's architecture with random weights (channels and text encoders scaled down
    unless ``full``; the 10 transformer blocks at latent/4, which dominate LIME's capture
    cost, are kept)."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLInstructPix2PixPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lime_edit.testing import DEFAULT_WORDS, tiny_tokenizer
    from lime_edit.testing_ldm import _tokenizer_with_pad

    tok = tiny_tokenizer(tmp)
    tok2 = _tokenizer_with_pad(tmp, DEFAULT_WORDS, "!")
    ch = (320, 640, 1280) if full else (64, 128, 320)
    t1, t2, proj = (768, 1280, 1280) if full else (192, 320, 320)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=8, out_channels=4, block_out_channels=ch, layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=tuple(c // 64 for c in ch),
        use_linear_projection=True, cross_attention_dim=t1 + t2, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=6 * 256 + proj, norm_num_groups=32)
    vae_ch = (128, 256, 512, 512) if full else (32, 64, 128, 128)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_ch,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, norm_num_groups=32, sample_size=1024, scaling_factor=0.13025)
    common = dict(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id)
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=t1, intermediate_size=4 * t1, num_hidden_layers=12 if full else 4,
                                       num_attention_heads=12 if full else 4, hidden_act="quick_gelu",
                                       pad_token_id=tok.pad_token_id, **common))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=t2, intermediate_size=4 * t2, num_hidden_layers=32 if full else 4,
        num_attention_heads=20 if full else 4, hidden_act="gelu", projection_dim=proj,
        pad_token_id=tok2.pad_token_id, **common))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLInstructPix2PixPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                                    tokenizer_2=tok2, unet=unet, scheduler=sched,
                                                    add_watermarker=False)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


class PeakHeap:
    """Peak bytes in use by malloc (glibc ``mallinfo2``: small blocks + mmapped blocks),
    sampled every 2 ms, for CPU runs; RSS would only show the allocator's high-water mark.
    Falls back to RSS where ``mallinfo2`` is missing."""

    def __init__(self):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = _MallInfo2
            self._mi = libc.mallinfo2
        except (OSError, AttributeError):
            self._mi = None
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _now(self) -> int:
        if self._mi is not None:
            m = self._mi()
            return m.uordblks + m.hblkhd
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self.peak = self._now()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._now())

    @property
    def used(self) -> int:
        return self.peak - self.base


def measure(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return time.perf_counter() - t, peak, peak - base
    import gc
    gc.collect()
    with PeakHeap() as mem:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
    return dt, mem.peak, mem.used


def parse_common(ap: argparse.ArgumentParser, argv, *, steps: int) -> argparse.Namespace:
    """The options every speed/memory script shares; sets the thread count."""
    ap.add_argument("--full-sd", action="store_true", help="random model with the real channel counts")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="fp32 / fp16 / bf16 (default fp16 on cuda, fp32 on cpu)")
    ap.add_argument("--size", type=int, default=256, help="square input size in pixels")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--schedules", default="two_pass,fast,single_pass")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def report(rows, args, device, dtype, what: str, base: str, extra: dict | None = None) -> None:
    """Print the table (ratios to the first row, named ``base``) and write ``--json``."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    machine = gpu or f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# {machine}; torch {torch.__version__}; {dtype}; {args.size}x{args.size}; {args.steps} steps; {what}")
    w = max(18, max(len(r[0]) for r in rows) + 2)
    x = f"x {base}"
    print(f"{'method':<{w}}{'seconds':>9}{x:>9}{'peak MiB':>10}{x:>9}{'above model MiB':>17}")
    _, plain_t, plain_m, _ = rows[0]
    out = []
    for name, t, m, a in rows:
        print(f"{name:<{w}}{t:>9.2f}{t / plain_t:>9.2f}{m / 2**20:>10.1f}{m / plain_m:>9.2f}{a / 2**20:>17.1f}")
        out.append({"method": name, "seconds": t, "time_ratio": t / plain_t, "peak_bytes": m,
                    "memory_ratio": m / plain_m, "above_model_bytes": a})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "torch": torch.__version__, "dtype": str(dtype), "size": args.size,
                       **(extra or {}), "steps": args.steps, "argv": sys.argv[1:], "rows": out}, f, indent=2)


def kontext_like_pipeline(full: bool, tmp: str):
    """FLUX.1 Kontext's architecture with random weights (scaled down unless ``full``)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lime_edit.testing import tiny_tokenizer
    from lime_edit.testing_dit import tiny_t5_tokenizer

    clip_tok = tiny_tokenizer(tmp)
    t5_tok = tiny_t5_tokenizer(model_max_length=512)
    torch.manual_seed(0)
    heads, head_dim, d, s = (24, 128, 19, 38) if full else (4, 64, 4, 8)
    rope = (16, 56, 56) if full else (8, 28, 28)
    text_dim = 4096 if full else 256
    transformer = FluxTransformer2DModel(in_channels=64, num_layers=d, num_single_layers=s,
                                         attention_head_dim=head_dim, num_attention_heads=heads,
                                         joint_attention_dim=text_dim, pooled_projection_dim=768 if full else 128,
                                         guidance_embeds=True, axes_dims_rope=rope)
    vae_ch = (128, 256, 512, 512) if full else (32, 64, 128, 128)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=vae_ch,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, norm_num_groups=32, sample_size=1024, shift_factor=0.1159,
                        scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=768 if full else 128,
                                        intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                        max_position_embeddings=77, bos_token_id=clip_tok.bos_token_id,
                                        eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id))
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=text_dim, d_kv=64, d_ff=text_dim * 2,
                                 num_layers=24 if full else 2, num_heads=64 if full else 4,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    for m in (transformer, vae, clip, t5):
        m.eval()
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    return FluxKontextPipeline(scheduler=sched, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                               tokenizer_2=t5_tok, transformer=transformer)


def qwen_like_pipeline(full: bool, tmp: str):
    """Qwen-Image-Edit's architecture with random weights (scaled down unless ``full``;
    the text encoder stays scaled down: 7B parameters have no place in a speed check of
    the transformer)."""
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline,
                           QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from lime_edit.testing_dit import QWEN_SPECIAL, _qwen_template, tiny_qwen_processor, tiny_qwen_tokenizer

    tok = tiny_qwen_tokenizer(templates=[_qwen_template(QwenImageEditPipeline)])
    processor = tiny_qwen_processor(tok, min_pixels=56 * 56, max_pixels=1024 * 1024)
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIAL}
    torch.manual_seed(0)
    heads, head_dim, blocks = (24, 128, 60) if full else (4, 64, 8)
    text_dim = 3584 if full else 256
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=blocks,
                                              attention_head_dim=head_dim, num_attention_heads=heads,
                                              joint_attention_dim=text_dim, guidance_embeds=False,
                                              axes_dims_rope=(16, 56, 56) if full else (8, 28, 28))
    vae = AutoencoderKLQwenImage(base_dim=96 if full else 32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2 if full else 1,
                                 temperal_downsample=[False, True, True], latents_mean=[0.0] * 16,
                                 latents_std=[1.0] * 16)
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": text_dim, "intermediate_size": 2 * text_dim, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": len(tok),
                     "rope_scaling": {"mrope_section": [8, 12, 12] if not full else [16, 24, 24],
                                      "rope_type": "default", "type": "default"}},
        vision_config={"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                       "out_hidden_size": text_dim, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2},
        hidden_size=text_dim, vocab_size=len(tok), image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], vision_token_id=ids["<|vision_pad|>"])
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    for m in (transformer, vae, text_encoder):
        m.eval()
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                            base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                                            time_shift_type="exponential")
    return QwenImageEditPipeline(scheduler=sched, vae=vae, text_encoder=text_encoder, tokenizer=tok,
                                 processor=processor, transformer=transformer)


def flux2_like_pipeline(full: bool, tmp: str):
    """FLUX.2 [klein]'s pipeline with random weights: the transformer scaled down (4 double-
    and 8 single-stream blocks of 4 heads x 64) unless ``full`` (then the class defaults,
    FLUX.2's full transformer), a 27-layer Qwen3 text encoder of width 64 (its layers 9, 18
    and 27 are read), 512 text positions, distilled (one forward per step)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from lime_edit.testing_dit import QWEN3_CHAT_TEMPLATE, tiny_qwen_tokenizer

    tok = tiny_qwen_tokenizer(templates=["<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"],
                              extra_special=("<think>", "</think>"), chat_template=QWEN3_CHAT_TEMPLATE)
    torch.manual_seed(0)
    hidden = 64
    kw = {} if full else dict(num_layers=4, num_single_layers=8, attention_head_dim=64, num_attention_heads=4,
                              axes_dims_rope=(16, 16, 16, 16))
    transformer = Flux2Transformer2DModel(in_channels=128, joint_attention_dim=3 * hidden, guidance_embeds=False, **kw)
    vae = AutoencoderKLFlux2(block_out_channels=(128, 256, 512, 512) if full else (32, 64, 128, 128),
                             layers_per_block=2, latent_channels=32, norm_num_groups=32)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=27,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>")))
    for m in (transformer, vae, text_encoder):
        m.eval()
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
                              vae=vae, text_encoder=text_encoder, tokenizer=tok, transformer=transformer,
                              is_distilled=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="Hub id / folder / file of a real IP2P model (default: random SD1.5-shaped)")
    ap.add_argument("--qwen-context", choices=("input", "native"), default="input",
                    help="qwen-image-edit on the random model: encode the context image at the input's size "
                         "(default: the scaled-down VAE at 1024x1024 would dominate the CPU time) or, as the "
                         "pipeline does, at about 1024x1024 (native)")
    ap.add_argument("--backbone", default=None, help="family: ip2p (default), hive, instructdiffusion, sdxl-ip2p, kontext, "
                    "qwen-image-edit, flux2")
    args = parse_common(ap, argv, steps=30)

    from lime_edit import LimeConfig, LimePipeline
    from lime_edit.loading import parse_dtype

    device = torch.device(args.device)
    dtype = parse_dtype(args.dtype) or (torch.float16 if device.type == "cuda" else torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            lp = LimePipeline.from_pretrained(args.model, torch_dtype=dtype, device=device, backbone=args.backbone)
        else:
            build = {"sdxl-ip2p": sdxl_like_pipeline, "kontext": kontext_like_pipeline,
                     "qwen-image-edit": qwen_like_pipeline, "flux2": flux2_like_pipeline}.get(
                args.backbone, sd15_like_pipeline)
            lp = LimePipeline(build(args.full_sd, tmp).to(device, dtype), backbone=args.backbone)
    lp.pipe.set_progress_bar_config(disable=True)
    context = contextlib.nullcontext()
    if lp.backbone.name == "qwen-image-edit" and not args.model and args.qwen_context == "input":
        from lime_edit.testing_dit import small_qwen_context

        context = small_qwen_context(args.size * args.size)
    with context:
        return _run(lp, args, device, dtype)


def _run(lp, args, device, dtype) -> int:
    from lime_edit import LimeConfig

    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(args.size, args.size, 3) * 255).astype(np.uint8))
    prompt = "make the red circle blue"
    common = dict(num_inference_steps=args.steps, seed=0)
    base = lp.config                                          # the family's defaults
    fast = LimeConfig.fast()
    configs = {"two_pass": base, "fast": base.replace(localization_steps=fast.localization_steps,
                                                      capture_at=fast.capture_at),
               "single_pass": base.replace(schedule="single_pass")}

    lp.edit(image, prompt, mask=None, num_inference_steps=2)       # warm-up
    lp.edit(image, prompt, num_inference_steps=3, capture_at=0.34)
    mask = np.zeros((args.size, args.size), bool)
    mask[args.size // 4: 3 * args.size // 4, args.size // 4: 3 * args.size // 4] = True     # a quarter of the image

    def run(config, m):
        def go():
            lp.config = config
            lp.edit(image, prompt, mask=m, **common)
        return go
    methods = [("plain", run(base, None)), ("lime_mask", run(base, mask))]
    methods += [(f"lime_{name}", run(configs[name], "auto")) for name in args.schedules.split(",")]
    # interleaved: every repeat measures each method once, so a slow spell of a shared
    # machine falls on all of them alike; the best repeat of each is reported
    seen: dict[str, list] = {name: [] for name, _ in methods}
    for _ in range(args.repeats):
        for name, fn in methods:
            seen[name].append(measure(fn, device))
    lp.config = base
    rows = [(name, *min(seen[name], key=lambda r: r[0])) for name, _ in methods]
    spread = {name: [round(r[0], 3) for r in runs] for name, runs in seen.items()}

    arch = {"sdxl-ip2p": "SDXL", "kontext": "FLUX.1 Kontext", "qwen-image-edit": "Qwen-Image-Edit",
            "flux2": "FLUX.2 [klein]"}.get(
        args.backbone, "SD1.5")
    model = args.model or (f"random {arch} (full)" if args.full_sd else f"random {arch}-shaped, scaled down")
    report(rows, args, device, dtype, f"backbone {lp.backbone.name}; model: {model}", "plain",
           {"backbone": lp.backbone.name, "interleaved": True, "all_seconds": spread})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
