"""One short run of LIME on a joint-attention editor (FLUX.1 Kontext, Qwen-Image-Edit, FLUX.2 [klein]): timings, peak memory, RoIs and heatmaps.

    python benchmarks/dit_check.py --model black-forest-labs/FLUX.1-Kontext-dev --out runs/dit-check
    python benchmarks/dit_check.py --model Qwen/Qwen-Image-Edit-2509 --offload --out runs/dit-qwen
    python benchmarks/dit_check.py --model black-forest-labs/FLUX.2-klein-4B --out runs/dit-klein
    python benchmarks/dit_check.py --model FOLDER --image photo.jpg --size 1024 --offload
    python benchmarks/dit_check.py --model FOLDER --feature-levels 10,14,18,22 --out runs/dit-b   # other blocks

For each built-in prompt (or ``--prompt``, repeatable) on ``--image`` (default: a synthetic
scene of the bundled demo set, upscaled), it times the plain editor, LIME (two-pass) and
LIME with ``preserve="outside"``, records the peak memory of each (CUDA:
``max_memory_allocated``; CPU: not measured), and writes per prompt: the three results, the
RoI overlay, the clusters, and one heatmap per related word, plus ``report.json`` with the
settings (blocks read and regularized, joint rule) and every figure.  The block defaults
of the ``kontext``, ``qwen-image-edit`` and ``flux2`` families are not calibrated on real weights; this script is the one run
that does it: compare the RoIs of a few ``--feature-levels`` choices.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PROMPTS = ("make the car red", "turn the sky into a sunset", "make her outfit black", "add a hat to the dog")


def _timed(fn, device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return out, time.perf_counter() - t, torch.cuda.max_memory_allocated()
    return out, time.perf_counter() - t, None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hub id or diffusers folder of a FLUX.1 Kontext, Qwen-Image-Edit or FLUX.2 [klein] pipeline")
    ap.add_argument("--backbone", default=None, help="family (default: recognised from the folder)")
    ap.add_argument("--image", default=None, help="input photo (default: a synthetic demo scene, upscaled)")
    ap.add_argument("--prompt", action="append", default=None, help=f"instruction (default: {len(PROMPTS)} built in)")
    ap.add_argument("--size", type=int, default=1024, help="side of the square processing size (default 1024)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the family's)")
    ap.add_argument("--feature-levels", default=None, help="blocks whose features/attention are read, e.g. 14,18,22")
    ap.add_argument("--joint-rule", default=None, choices=("text_mass", "literal"))
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--offload", action="store_true", help="enable_model_cpu_offload")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/dit-check")
    args = ap.parse_args(argv)

    from PIL import Image

    from lime_edit import LimeEditError, LimePipeline
    from lime_edit import io as lio
    from lime_edit import viz

    try:
        lp = LimePipeline.from_pretrained(args.model, backbone=args.backbone, device=args.device,
                                          torch_dtype=args.dtype, offload=args.offload)
    except LimeEditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lp.pipe.set_progress_bar_config(disable=True)
    if args.image:
        image = lio.load_image(args.image).convert("RGB")
    else:
        from lime_edit.demo.scenes import make_edit

        image = make_edit(0).image.resize((args.size, args.size), Image.LANCZOS)
    image = image.resize((args.size, args.size), Image.LANCZOS)
    overrides = {}
    if args.steps:
        overrides["num_inference_steps"] = args.steps
    if args.feature_levels:
        overrides["feature_levels"] = tuple(int(v) for v in args.feature_levels.split(","))
    if args.joint_rule:
        overrides["joint_rule"] = args.joint_rule
    try:
        cfg = lp.check_settings(**overrides)
    except LimeEditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = lp.device
    report = {"model": args.model, "backbone": lp.backbone.describe(), "size": args.size,
              "settings": cfg.to_dict(), "device": str(device), "rows": []}
    lp.edit(image, PROMPTS[0], mask=None, seed=args.seed, **{**overrides, "num_inference_steps": 1})   # warm-up
    for k, prompt in enumerate(args.prompt or PROMPTS):
        plain, t_plain, m_plain = _timed(lambda: lp.edit(image, prompt, mask=None, seed=args.seed, **overrides), device)
        lime, t_lime, m_lime = _timed(lambda: lp.edit(image, prompt, seed=args.seed, **overrides), device)
        keep, t_keep, m_keep = _timed(lambda: lp.edit(image, prompt, seed=args.seed, preserve="outside",
                                                      **overrides), device)
        stem = f"{k:02d}"
        files = {f"{stem}-plain.png": plain.image, f"{stem}-lime.png": lime.image,
                 f"{stem}-lime-preserve.png": keep.image}
        loc = lime.localization
        if loc is not None:
            files[f"{stem}-roi.png"] = viz.overlay(image, loc.mask)
            files[f"{stem}-clusters.png"] = viz.segment_map(loc.segments, image=image)
            for idx, word, img in viz.token_heatmaps(loc, image=image):
                files[f"{stem}-heat-{idx:03d}-{''.join(c for c in word if c.isalnum()) or 'tok'}.png"] = img
        for name, img in files.items():
            lio.atomic_save_image(out / name, img)
        report["rows"].append({
            "prompt": prompt, "seconds": {"plain": t_plain, "lime": t_lime, "lime_preserve": t_keep},
            "peak_bytes": {"plain": m_plain, "lime": m_lime, "lime_preserve": m_keep},
            "roi_fraction": float(loc.mask.float().mean()) if loc is not None else None,
            "tokens": loc.tokens if loc is not None else [], "warnings": lime.warnings})
        print(f"{prompt!r}: plain {t_plain:.1f} s, LIME {t_lime:.1f} s ({t_lime / t_plain:.2f}x), preserve "
              f"{t_keep:.1f} s; RoI {report['rows'][-1]['roi_fraction']}; words {report['rows'][-1]['tokens']}")
    lio.atomic_write_json(out / "report.json", report)
    print(f"wrote {out}/report.json and {len(report['rows'])} prompts' images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
