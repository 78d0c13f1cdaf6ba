"""Wall time and peak memory of Prompt-to-Prompt (DDIM + Direct Inversion) without and with
LIME, same model/input/captions/steps, one process.

    python benchmarks/p2p_speed_memory.py                          # CPU, SD1.5-shaped scaled-down random model
    python benchmarks/p2p_speed_memory.py --device cuda --size 512 --full-sd   # GPU, SD1.5 shape
    python benchmarks/p2p_speed_memory.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 --device cuda

The random model is speed_memory.py's SD1.5-shaped U-Net with 4 input channels (a
text-to-image U-Net); weights are random, which changes nothing about cost.  Every
measured call starts without a cached inversion, so each row pays for its inversion
once (LIME's localization pass and edit pass share it).  Peak memory as in
speed_memory.py.  Target (issue 11): LIME <= 1.3x P2P's time and <= 1.1x its peak memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed_memory import measure, parse_common, report, sd15_like_pipeline  # noqa: E402


def t2i_pipeline(full: bool, tmp: str):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    ip2p = sd15_like_pipeline(full, tmp)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**ip2p.unet.config, "in_channels": 4})
    return StableDiffusionPipeline(vae=ip2p.vae, text_encoder=ip2p.text_encoder, tokenizer=ip2p.tokenizer,
                                   unet=unet, scheduler=ip2p.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="Hub id / folder of a real text-to-image SD model (default: random)")
    args = parse_common(ap, argv, steps=50)

    from lime_edit import LimeConfig, LimePipeline
    from lime_edit.loading import parse_dtype

    device = torch.device(args.device)
    dtype = parse_dtype(args.dtype) or (torch.float16 if device.type == "cuda" else torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            lp = LimePipeline.from_pretrained(args.model, torch_dtype=dtype, device=device, backbone="p2p")
        else:
            lp = LimePipeline(t2i_pipeline(args.full_sd, tmp).to(device, dtype), backbone="p2p")
    lp.pipe.set_progress_bar_config(disable=True)
    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(args.size, args.size, 3) * 255).astype(np.uint8))
    source, target = "a red circle and a blue square", "a green circle and a blue square"
    common = dict(num_inference_steps=args.steps, seed=0)
    base = lp.config
    fast = LimeConfig.fast()
    configs = {"two_pass": base, "fast": base.replace(localization_steps=fast.localization_steps,
                                                      capture_at=fast.capture_at),
               "single_pass": base.replace(schedule="single_pass")}

    def run(**kw):
        lp.backbone._inversion = None                    # every row pays for its own inversion
        return lp.edit_captions(image, source, target, **common, **kw)

    lp.edit_captions(image, source, target, mask=None, num_inference_steps=2)        # warm-up
    lp.edit_captions(image, source, target, num_inference_steps=3, capture_at=0.34)
    rows = []
    plain_t, plain_m, plain_a = min((measure(lambda: run(mask=None), device) for _ in range(args.repeats)),
                                    key=lambda r: r[0])
    rows.append(("p2p", plain_t, plain_m, plain_a))
    for name in args.schedules.split(","):
        lp.config = configs[name]
        t, m, a = min((measure(lambda: run(), device) for _ in range(args.repeats)), key=lambda r: r[0])
        rows.append((f"p2p+lime_{name}", t, m, a))
    lp.config = base

    model = args.model or ("random SD1.5 t2i (full)" if args.full_sd else "random SD1.5-shaped t2i, scaled down")
    report(rows, args, device, dtype, f"model: {model}", "p2p")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
