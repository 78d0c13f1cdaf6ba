"""``lime-edit demo``: plain IP2P (at 7.5 and at LIME's guidance) vs IP2P+LIME on one
synthetic scene, as a panel PNG.

Which scene: held-out (test-split) scene ``--scene N``, by default the first one
(``N = 0``); the sampler seed is the scene's number unless ``--seed`` is given. So
the panel shows exactly what ``lime-edit bench synthetic`` computes for that scene
(same scene, instruction and seed), never a scene chosen because it looks good.
"""

from __future__ import annotations

import time
from pathlib import Path

#: Test-split scene shown by default: the first held-out scene, by rule (see the module docstring).
DEFAULT_SCENE = 0
TILE = 192


def make_panel(image, roi_tile, seg_tile, ip2p, ip2p_low, lime, instruction: str, notes: str = "",
               guidance: float = 2.0):
    """input | RoI mask | segments | IP2P at 7.5 | IP2P at LIME's guidance | IP2P+LIME, titled,
    with the instruction below."""
    from PIL import Image, ImageDraw

    titles = ["input", "LIME RoI", "segments", "IP2P (guidance 7.5)", f"IP2P (guidance {guidance:g})",
              f"IP2P + LIME (guidance {guidance:g})"]
    tiles = [image, roi_tile, seg_tile, ip2p, ip2p_low, lime]
    head, foot, pad = 18, 34, 4
    W = len(tiles) * (TILE + pad) + pad
    H = head + TILE + foot
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for j, (t, name) in enumerate(zip(tiles, titles)):
        x = pad + j * (TILE + pad)
        d.text((x + 2, 3), name, fill=(0, 0, 0))
        canvas.paste(t.convert("RGB").resize((TILE, TILE), Image.NEAREST), (x, head))
    d.text((pad + 2, head + TILE + 4), f'instruction: "{instruction}"', fill=(0, 0, 0))
    if notes:
        d.text((pad + 2, head + TILE + 18), notes, fill=(90, 90, 90))
    return canvas


def run_demo(args) -> int:
    from PIL import Image

    from .. import LimePipeline
    from ..viz import overlay, segment_map
    from . import bundled_model_path
    from .bench import _quiet_loading, check_counts, save_png
    from .scenes import make_edit

    check_counts(args, {"steps": 1, "threads": 0, "scene": 0})
    from ..config import SEED_MAX

    if args.scene is not None and int(args.scene) > SEED_MAX:   # the scene number is also the sampler seed
        from ..cli import UsageError

        raise UsageError(f"--scene {args.scene}: must be at most {SEED_MAX} (it is also the sampler seed)")
    if args.instruction is not None:
        from ..cli import check_text_flag

        check_text_flag(args.instruction, "--instruction", "leave it out for the scene's own instruction")
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(int(args.threads))
    t0 = time.perf_counter()
    out = Path(args.out)
    from ..io import check_out_dir

    check_out_dir(out)                     # a file, or a folder that cannot be made, is one line
    scene_seed = DEFAULT_SCENE if args.scene is None else int(args.scene)
    seed = scene_seed if args.seed is None else args.seed    # as bench synthetic: sampler seed = scene
    e = make_edit(scene_seed, "test")
    instruction = args.instruction or e.instruction
    model = args.model or str(bundled_model_path())
    _quiet_loading(getattr(args, "verbose", False))
    lp = LimePipeline.from_pretrained(model, device="cpu")
    from ..cli import refuse_caption_model

    refuse_caption_model(lp, args.model or model)
    try:  # step bars ("localize", then "edit") on a terminal only, cleared when done
        import sys

        lp.pipe.set_progress_bar_config(disable=not sys.stderr.isatty(), leave=False)
    except Exception:  # noqa: BLE001
        pass
    extra = {"num_inference_steps": args.steps} if args.steps is not None else {}
    plain = lp.edit(e.image, instruction, mask=None, seed=seed, guidance_scale=7.5, **extra)
    # plain IP2P with LIME's own settings: what the regularization alone changes
    low = lp.edit(e.image, instruction, mask=None, seed=seed, **extra)
    lime = lp.edit(e.image, instruction, mask="auto", seed=seed, **extra)
    guidance = lp.settings(**extra).guidance_scale
    big = e.image.resize((TILE, TILE), Image.NEAREST)
    if lime.localization is not None:
        roi_tile = overlay(big, lime.localization.mask)
        seg_tile = segment_map(lime.localization.segments, (TILE, TILE), mask=lime.localization.mask)
        tokens = ", ".join(lime.localization.tokens)
    else:
        roi_tile = Image.new("RGB", (TILE, TILE), (200, 200, 200))
        seg_tile = roi_tile
        tokens = "-"
    notes = f"related tokens: {tokens}"
    if lime.warnings:
        notes += " | " + "; ".join(lime.warnings)
    panel = make_panel(e.image, roi_tile, seg_tile, plain.image, low.image, lime.image, instruction, notes,
                       guidance)
    written = {"panel.png": panel, "input.png": e.image, "ip2p.png": plain.image,
               "ip2p_low_guidance.png": low.image, "ip2p_lime.png": lime.image}
    for name, picture in written.items():
        save_png(picture, out / name)
    info = {"scene": scene_seed, "instruction": instruction, "seed": seed, "model": model,
            "lime_applied": lime.lime_applied, "warnings": lime.warnings,
            "tokens": lime.localization.tokens if lime.localization is not None else [],
            "guidance_scale": {"ip2p": 7.5, "ip2p_low_guidance": guidance, "lime": guidance},
            "timings_s": {"ip2p": plain.timings, "ip2p_low_guidance": low.timings, "lime": lime.timings,
                          "total": time.perf_counter() - t0}}
    from ..io import atomic_write_json

    atomic_write_json(out / "demo.json", info)
    from ..cli import _err

    for w in dict.fromkeys(plain.warnings + low.warnings + lime.warnings):   # e.g. a word the model does not know
        _err(f"warning: {w}")
    for name in (*written, "demo.json"):      # every file written, the panel first
        print(out / name)
    return 0
