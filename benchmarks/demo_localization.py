"""Where LIME's automatic localization wins or loses on a demo-style model, stage by stage.

    python benchmarks/demo_localization.py                          # the bundled demo model, 40 scenes
    python benchmarks/demo_localization.py --model DIR --n 200 --json out.json
    python benchmarks/demo_localization.py --split validation --n 60 --set capture_at=0.5

On held-out synthetic scenes (exact ground truth; ``--split validation``: the validation scenes
``train-demo`` chooses a model's recommended settings on, train-split seeds from
``lime_edit.demo.scenes.VALIDATION_SEED0`` with clean targets, where studying a setting does not
tune it on the test scenes) it runs ``LimePipeline.localize`` with the
defaults (plus any ``--set NAME=VALUE``) and reports, averaged over scenes:

- ``roi_iou``: IoU of the RoI with the edited object's mask (what ``bench synthetic`` reports);
- ``attn_share``: share of the related tokens' attention map (the one LIME reads, on the
  localization grid) falling inside the object's mask (a map blind to the object gives about
  ``mask_area``);
- ``points_in_mask``: share of the top-k attention points that land on the object;
- ``purity``: cluster purity of the segments against the scene's label map (each pixel's
  label = the visible object or the background): the share of pixels whose segment's
  majority label is their own (1 = every segment lies within one object or the background);
- ``oracle_iou``: the best IoU any union of segments can reach against the object's mask
  (segments taken when most of their pixels are on the object): the ceiling the
  segments put on localization, whatever the attention does.
- per latent level, the share of the object words' cross-attention inside the mask at the
  capture noise level (``lime_edit.demo.train.measure_attention``) with ``--per-level``,
  with the noisy latent made from the input image and from the edited target; and how much of
  each object pixel's cross-attention sits on the positions LIME's regularization zeroes there
  (what it moves to the instruction's words).

Together they say whether a poor RoI comes from the attention (low attn_share /
points_in_mask) or from the segments (low purity / oracle_iou).

It also counts the *misses*, scenes whose top-k points all lie off the object (how many
of them still overlap it with IoU >= 0.1, and how they split by the kind of reference the
instruction uses: shape only, colour and shape, size and shape, position), and gives the RoI
IoU over the other scenes (``roi_iou_where_points_hit``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def label_map(e, grid: tuple[int, int]) -> np.ndarray:
    """Per-pixel owner (object index, background = n_objects) resampled to the grid (nearest)."""
    from lime_edit.demo.scenes import coverage

    cov = coverage(e.scene)                       # (n_obj, H, W), drawing order already applied
    n = cov.shape[0]
    full = np.where(cov.max(0) > 0.5, cov.argmax(0), n).astype(np.uint8)
    h, w = grid
    return np.asarray(Image.fromarray(full).resize((w, h), Image.NEAREST)), n


def resize_mask(m: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    h, w = grid
    return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0


def reference_kind(e) -> str:
    """How the instruction names the object: "shape" ("the circle"), "position" ("the circle
    on the left"), "size" ("the big (red) circle") or "colour" ("the red circle")."""
    from lime_edit.demo.scenes import SIZES

    words = e.reference.split()
    if len(words) == 1:
        return "shape"
    if "on" in words:
        return "position"
    return "size" if words[0] in SIZES else "colour"


def misses(rows: list[dict], kinds: list[str]) -> dict:
    """Scenes whose points all miss the object, overall and by reference kind."""
    miss = [r["points_in_mask"] == 0 for r in rows]
    hit_ious = [r["roi_iou"] for r, m in zip(rows, miss) if not m]
    return {"all_points_miss": int(sum(miss)),
            "all_points_miss_but_overlap": int(sum(m and r["roi_iou"] >= 0.1 for r, m in zip(rows, miss))),
            "roi_iou_where_points_hit": float(np.mean(hit_ious)) if hit_ious else None,
            "by_reference": {k: {"scenes": kinds.count(k), "all_points_miss": int(sum(m for m, q in zip(miss, kinds)
                                                                                       if q == k))}
                             for k in sorted(set(kinds))}}


def analyse(loc, e) -> dict:
    from lime_edit.demo.metrics import iou, roi_iou

    seg = loc.segments.cpu().numpy()
    grid = seg.shape
    gt = resize_mask(e.mask, grid)
    lab, _ = label_map(e, grid)
    att = loc.attention.cpu().numpy().astype(np.float64)
    pts = loc.points.cpu().numpy()
    pure = 0
    oracle = np.zeros(grid, bool)
    for s in np.unique(seg):
        sel = seg == s
        counts = np.bincount(lab[sel])
        pure += counts.max()
        if gt[sel].mean() > 0.5:
            oracle |= sel
    return {"roi_iou": roi_iou(loc.mask, e.mask),
            "attn_share": float((att * gt).sum() / max(att.sum(), 1e-12)),
            "points_in_mask": float(gt[pts[:, 0], pts[:, 1]].mean()) if len(pts) else 0.0,
            "purity": float(pure / seg.size),
            "oracle_iou": iou(oracle, gt),
            "mask_area": float(gt.mean()),
            "num_segments": int(len(np.unique(seg))), "grid": list(grid), "top_k": int(loc.top_k)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo", help="model folder (default: the bundled demo model)")
    ap.add_argument("--n", type=int, default=40, help="scenes (default 40)")
    from lime_edit.demo.scenes import BENCH_SPLITS

    ap.add_argument("--split", choices=BENCH_SPLITS, default="test",
                    help="test: the held-out scenes bench synthetic uses (default); validation: the scenes "
                         "train-demo's recommended settings are chosen on (study settings here)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", dest="cfg_set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--per-level", action="store_true",
                    help="also the per-level attention share of the object words (train.measure_attention)")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be at least 1, got {args.n}")
    if args.threads < 0:
        ap.error(f"--threads must be at least 0 (0 = torch's default), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.json and (Path(args.json).is_dir() or not Path(args.json).resolve().parent.is_dir()):
        ap.error(f"--json {args.json}: not a file in an existing folder")

    from lime_edit import LimePipeline
    from lime_edit.demo.bench import _settings
    from lime_edit.demo.scenes import split_edits
    from lime_edit.errors import LimeEditError
    from lime_edit.loading import resolve_model

    try:                                   # bad settings are usage errors, before the model loads
        overrides = _settings(args)
    except LimeEditError as err:
        ap.error(str(err) if str(err).startswith("--set") else f"--set {err}")
    from lime_edit.cli import quiet_libraries

    try:
        model = resolve_model(args.model)
        with quiet_libraries(load=True):                  # no loading bars
            lp = LimePipeline.from_pretrained(model)
    except LimeEditError as err:
        print(f"error: --model {args.model}: {err}", file=sys.stderr)
        return 2
    try:                                   # a level or layer this model lacks: once, before any scene
        lp.check_settings(**overrides)
    except LimeEditError as err:
        print(f"error: --set {err}", file=sys.stderr)
        return 2
    lp.pipe.set_progress_bar_config(disable=True)
    rows, kinds = [], []
    t0 = time.perf_counter()
    for e in split_edits(args.split, args.n):
        loc = lp.localize(e.image, e.instruction, seed=e.seed, **overrides)
        rows.append(analyse(loc, e))
        kinds.append(reference_kind(e))
    keys = ["roi_iou", "attn_share", "points_in_mask", "purity", "oracle_iou", "mask_area", "num_segments"]
    summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out = {"model": model, "split": args.split, "n": args.n, "settings": overrides, "grid": rows[0]["grid"], "top_k": rows[0]["top_k"],
           "mean": summary, "misses": misses(rows, kinds), "sec": time.perf_counter() - t0,
           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "per_scene": rows}
    if args.per_level:
        from lime_edit.demo.train import measure_attention

        out["per_level"] = measure_attention(model, n=min(args.n, 32), split=args.split)
    print(f"model {model}: {args.split} scenes, n={args.n}, localization grid {rows[0]['grid']}, top_k {rows[0]['top_k']}")
    for k in keys:
        print(f"  {k:15s} {summary[k]:.3f}")
    ms = out["misses"]
    hit = ms["roi_iou_where_points_hit"]
    print(f"  every point off the object in {ms['all_points_miss']} of {args.n} scenes "
          f"({ms['all_points_miss_but_overlap']} of them still overlap it, IoU >= 0.1); RoI IoU elsewhere "
          + (f"{hit:.3f}" if hit is not None else "-"))
    print("  misses by reference: " + ", ".join(f"{k} {v['all_points_miss']}/{v['scenes']}"
                                               for k, v in ms["by_reference"].items()))
    if "per_level" in out:
        print("  object-word attention inside the mask by grid, latent noised from the input image:",
              out["per_level"]["share_in_mask_by_grid"])
        print("  the same, latent noised from the edited target (the object shows its new colour):",
              out["per_level"]["share_in_mask_by_grid_target_noised"])
        print("  each object pixel's attention on the positions LIME zeroes there (start, stop words, padding):",
              out["per_level"]["penalized_share_by_grid"])
    if args.json:
        from lime_edit.io import atomic_write_bytes

        try:
            atomic_write_bytes(args.json, (json.dumps(out, indent=2) + "\n").encode("utf-8"))
        except OSError as err:
            print(f"error: --json {args.json}: cannot write ({err.strerror or err}); the figures are above",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
