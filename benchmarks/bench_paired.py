"""Paired differences between the rows of a ``bench synthetic`` folder, scene by scene.

    python benchmarks/bench_paired.py DIR                          # every LIME row against both IP2P rows
    python benchmarks/bench_paired.py DIR --pairs lime:ip2p,lime:lime_reference --json out.json

Every method of ``bench synthetic`` sees the same scenes and sampler seeds, so differences are
taken per scene (``DIR/samples.jsonl``) and reported as mean +- standard error over the scenes
both rows have, with the relative background change against the second row's mean. With
``--split-by METHOD`` (default ``lime``) each pair is also reported separately for the scenes
where that method's RoI hits the object (``roi_iou >= --hit``, default 0.1) and where it misses
(lands on another object or the background): a miss and a hit fail for different reasons.
``--by-iou 0.1,0.5,0.7,0.8`` also prints every row's mean background L1, in-mask L1 and edit
success in the buckets of that method's RoI IoU cut at those edges ([0, 0.1), [0.1, 0.5), ...,
[0.8, 1]): where a row gains or loses, by how well the RoI found the object.
``--rows-from DIR2`` (repeatable) adds the rows of the methods ``--borrow`` names (default
``ip2p``) from another ``bench synthetic`` folder of the same model and scene split, where DIR
lacks them: to pair a ``--set`` variant's ``lime`` rows with the IP2P rows an earlier run already
made (``bench synthetic`` binds a folder to one ``--set``). Borrow only rows the differing
settings do not touch: ``ip2p`` runs at guidance 7.5 whatever LIME's settings (not across an
``--set image_guidance_scale``); ``ip2p_low_guidance`` follows ``guidance_scale``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from lime_edit.errors import LimeEditError

METRICS = ("bg_l1", "in_mask_l1", "edit_success", "roi_iou")


def load(folder: Path) -> dict[tuple[str, int], dict]:
    from lime_edit.demo.bench import load_done

    f = folder / "samples.jsonl"
    if not f.is_file():
        raise LimeEditError(f"{f}: not found (a folder written by `lime-edit bench synthetic`)")
    rows = load_done(f)          # the rows as bench synthetic reads them (a damaged line is an error)
    for (m, s), r in rows.items():
        for k in ("bg_l1", "in_mask_l1", "edit_success"):
            if r.get(k) is None:
                raise LimeEditError(f"{f}: the {m} row of scene {s} has no {k}")
    return rows


def signature(folder: Path) -> dict:
    try:
        sig = json.loads((folder / "signature.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LimeEditError(f"{folder / 'signature.json'}: cannot read ({getattr(err, 'strerror', None) or err})"
                            ) from None
    if not isinstance(sig, dict):
        raise LimeEditError(f"{folder / 'signature.json'}: not a bench synthetic signature")
    return sig


def borrow(rows: dict, folder: Path, others: list[Path], methods: set[str]) -> list[str]:
    """Add to ``rows`` the rows of ``others`` for the ``methods`` ``rows`` lacks; each folder must
    hold the same model (weights' hash) and scene split as ``folder``.  Returns the methods added."""
    sig = signature(folder)
    key = lambda s: ((s.get("model") or {}).get("sha256"), s.get("split", "test"), s.get("device"))  # noqa: E731
    added: list[str] = []
    for other in others:
        osig = signature(other)
        if key(osig) != key(sig):
            raise LimeEditError(f"--rows-from {other}: another model, scene split or device than {folder} "
                                f"(model/split/device {key(osig)} vs {key(sig)})")
        have = {m for m, _ in rows}
        extra = {k: r for k, r in load(other).items() if k[0] in methods and k[0] not in have}
        rows.update(extra)
        added += sorted({m for m, _ in extra})
    return added


def paired(rows: dict, a: str, b: str, seeds: list[int]) -> dict:
    out: dict = {"n": len(seeds)}
    if not seeds:
        return out
    for k in ("bg_l1", "in_mask_l1", "edit_success"):
        d = np.array([rows[(a, s)][k] - rows[(b, s)][k] for s in seeds], float)
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        out[k] = {"diff": float(d.mean()), "se": se}
    base = float(np.mean([rows[(b, s)]["bg_l1"] for s in seeds]))
    out["bg_l1"]["relative"] = out["bg_l1"]["diff"] / base if base else float("nan")
    out["means"] = {m: {k: float(np.mean([rows[(m, s)][k] for s in seeds]))
                        for k in METRICS if all(rows[(m, s)].get(k) is not None for s in seeds)} for m in (a, b)}
    return out


def by_iou(rows: dict, split: str, edges: list[float]) -> list[dict]:
    """Every method's means in the buckets of ``split``'s RoI IoU cut at ``edges`` (scenes all
    methods have)."""
    methods = sorted({m for m, _ in rows})
    seeds = sorted(s for (m, s) in rows if m == split and all((o, s) in rows for o in methods))
    cuts = [0.0, *edges, float("inf")]
    out = []
    for lo, hi in zip(cuts, cuts[1:]):
        ss = [s for s in seeds if lo <= (rows[(split, s)].get("roi_iou") or 0.0) < hi]
        out.append({"iou_from": lo, "iou_to": min(hi, 1.0), "n": len(ss),
                    "means": {m: {k: float(np.mean([rows[(m, s)][k] for s in ss]))
                                  for k in ("bg_l1", "in_mask_l1", "edit_success")} for m in methods} if ss else {}})
    return out


def fmt(name: str, r: dict) -> str:
    if r["n"] == 0:
        return f"{name}: no scenes"
    bg = r["bg_l1"]
    return (f"{name} (n={r['n']}): bg_l1 {bg['diff']:+.4f} +- {bg['se']:.4f} ({100 * bg['relative']:+.1f} %), "
            f"in_mask_l1 {r['in_mask_l1']['diff']:+.4f} +- {r['in_mask_l1']['se']:.4f}, "
            f"edit_success {r['edit_success']['diff']:+.3f} +- {r['edit_success']['se']:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--pairs", default=None,
                    help="comma-separated A:B pairs (default: every LIME row against ip2p and ip2p_low_guidance)")
    ap.add_argument("--split-by", default=None,
                    help="method whose RoI splits the scenes into hits and misses (default: lime, if present)")
    ap.add_argument("--hit", type=float, default=0.1, help="RoI IoU from which a scene counts as a hit (default 0.1)")
    ap.add_argument("--by-iou", default=None, metavar="EDGES",
                    help="comma-separated RoI IoU edges (e.g. 0.1,0.5,0.7,0.8): every row's means per bucket")
    ap.add_argument("--rows-from", type=Path, action="append", default=[], metavar="DIR2",
                    help="also the rows of this bench folder (same model and split) for the methods FOLDER "
                         "lacks, of the methods --borrow names (repeatable)")
    ap.add_argument("--borrow", default="ip2p", metavar="METHODS",
                    help="comma-separated methods --rows-from takes (default: ip2p)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not 0.0 <= args.hit <= 1.0:            # also refuses nan
        ap.error(f"--hit {args.hit}: must be an IoU in [0, 1]")
    try:
        edges = sorted(float(x) for x in args.by_iou.split(",")) if args.by_iou else []
    except ValueError:
        edges = [math.nan]
    if not all(0.0 < e < 1.0 for e in edges) or len(set(edges)) != len(edges):     # also refuses nan
        print(f"error: --by-iou {args.by_iou!r}: expected distinct IoU edges between 0 and 1, comma-separated "
              "(e.g. 0.1,0.5,0.7,0.8)", file=sys.stderr)
        return 2
    try:
        return _main(args, edges)
    except LimeEditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(args, edges: list[float]) -> int:
    rows = load(args.folder)
    if args.rows_from:
        added = borrow(rows, args.folder, args.rows_from, {m.strip() for m in args.borrow.split(",") if m.strip()})
        print(f"rows of {', '.join(added) or 'no method'} from {', '.join(map(str, args.rows_from))}")
    try:
        scenes = json.loads((args.folder / "signature.json").read_text(encoding="utf-8")).get("split", "test")
    except (OSError, ValueError, AttributeError):
        scenes = "test"
    if scenes != "test":
        print(f"{scenes} scenes (for choosing models and settings, not benchmark figures)")
    methods = sorted({m for m, _ in rows})
    if args.pairs:
        pairs = []
        for p in args.pairs.split(","):
            a, _, b = p.partition(":")
            if not a or not b:
                print(f"error: --pairs: {p!r} is not A:B", file=sys.stderr)
                return 2
            pairs.append((a.strip(), b.strip()))
    else:
        pairs = [(m, b) for m in methods if m.startswith("lime") for b in ("ip2p", "ip2p_low_guidance")
                 if b in methods]
        if not pairs:
            raise LimeEditError(f"{args.folder}: no lime* and ip2p/ip2p_low_guidance rows to pair "
                                f"(has: {', '.join(methods)}); name the rows with --pairs A:B")
    missing = sorted({m for p in pairs for m in p} - set(methods))
    if missing:
        print(f"error: --pairs: no rows for {', '.join(missing)} in {args.folder} (has: {', '.join(methods)})",
              file=sys.stderr)
        return 2
    if args.split_by is not None and args.split_by not in methods:
        raise LimeEditError(f"--split-by: no rows for {args.split_by} in {args.folder} (has: {', '.join(methods)})")
    if args.split_by is not None and all(r.get("roi_iou") is None for (m, _), r in rows.items() if m == args.split_by):
        raise LimeEditError(f"--split-by {args.split_by}: its rows have no RoI (roi_iou); name a LIME row with "
                            "automatic localization")
    split = args.split_by or ("lime" if "lime" in methods else None)
    report: dict = {"folder": str(args.folder), "rows_from": [str(p) for p in args.rows_from], "scenes": scenes, "hit": args.hit, "split_by": split, "pairs": {}}
    for a, b in pairs:
        seeds = sorted(s for (m, s) in rows if m == a and (b, s) in rows)
        entry = {"all": paired(rows, a, b, seeds)}
        print(fmt(f"{a} - {b}", entry["all"]))
        if split is not None:
            for part, keep in (("hit", True), ("miss", False)):
                ss = [s for s in seeds if (split, s) in rows
                      and ((rows[(split, s)].get("roi_iou") or 0.0) >= args.hit) == keep]
                entry[part] = paired(rows, a, b, ss)
                print("  " + fmt(f"where {split}'s RoI {'hits' if keep else 'misses'}", entry[part]))
        report["pairs"][f"{a}:{b}"] = entry
    if edges and split is not None:
        report["by_iou"] = by_iou(rows, split, edges)
        print(f"by {split}'s RoI IoU (mean bg_l1 / in_mask_l1 / edit_success):")
        for b in report["by_iou"]:
            print(f"  [{b['iou_from']:.2f}, {b['iou_to']:.2f}{']' if b['iou_to'] >= 1 else ')'} n={b['n']}: "
                  + "; ".join(f"{m} {v['bg_l1']:.4f} / {v['in_mask_l1']:.3f} / {v['edit_success']:.2f}"
                              for m, v in b["means"].items()))
    if args.json:
        from lime_edit.io import atomic_write_bytes

        try:
            atomic_write_bytes(args.json, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
        except OSError as err:
            raise LimeEditError(f"--json {args.json}: cannot write ({err.strerror or err})") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
