"""``lime-edit eval`` and ``lime-edit score`` (registered by :mod:`lime_edit.cli`).

Imports nothing heavy at module import: torch, transformers and the harness
modules are imported inside the command functions.

    lime-edit eval {magicbrush,piebench,editval} --data DIR --out RUN_DIR [--model ID|PATH]
        [--no-lime] [--protocol single|multi] [--limit N] [--seed S] [LIME settings ...]
    lime-edit score {magicbrush,piebench,editval} --data DIR --outputs RUN_DIR
        [--protocol single|multi (magicbrush) | fixed|official (editval)] [--metrics LIST]
        [--report FILE] [--structure-antialias] [--clip-model ...]

``--protocol`` means one thing per benchmark (:data:`PROTOCOLS`): MagicBrush's turn
protocol (eval and score), EditVal's scoring rules (score only: generation is the same
under both); any other pairing is a usage error naming the flag.

Both run unchanged under ``accelerate launch [--num_processes N] -m lime_edit.cli ...``
(or ``accelerate launch $(which lime-edit) ...``): samples are sharded, the main
process writes the merged manifest/report.
"""

from __future__ import annotations

import argparse

BENCHMARKS = ("magicbrush", "piebench", "editval")
#: ``--protocol`` values per benchmark (``lime-edit score``; ``eval`` takes MagicBrush's only)
PROTOCOLS = {"magicbrush": ("single", "multi"), "piebench": (), "editval": ("fixed", "official")}
DEFAULT_MODEL = "timbrooks/instruct-pix2pix"
#: the default --model of ``eval --backbone p2p`` (PnPInversion's; ``backbones.p2p.PIEBENCH_MODEL``, tested)
P2P_MODEL = "CompVis/stable-diffusion-v1-4"
#: eval's help of the sampler flags whose defaults are the benchmark protocol's
#: (``generate.PROTOCOL_SETTINGS``, not imported here: it is not light), not LimeConfig's
_PROTOCOL_HELP = {
    "num_inference_steps": "denoising steps of the edit (default: the benchmark protocol's, MagicBrush 100, "
                           "PIE-Bench and EditVal 50)",
    "guidance_scale": "text guidance scale (default: the protocol's 7.5; a --backbone other than ip2p: "
                      "that family's default)",
    "image_guidance_scale": "image guidance scale (default: the protocol's 1.5; a --backbone other than "
                            "ip2p: that family's default)",
}


def _common(p: argparse.ArgumentParser) -> None:
    from ..cli import device_arg

    p.add_argument("benchmark", choices=BENCHMARKS, help="which benchmark")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="the benchmark's data: MagicBrush folder containing test/ (unpacked zip); PIE-Bench "
                        "folder with mapping_file.json and annotation_images/; EditVal folder with object.json "
                        "(+ COCO images, see --coco-dir)")
    p.add_argument("--protocol", choices=("single", "multi", "fixed", "official"), default=None,
                   help="per benchmark. magicbrush: single (every turn edits the ground-truth input; default) or "
                        "multi (each turn edits the model's previous output; final turn scored). editval, "
                        "`score` only: fixed (auto_eval.py's bugs fixed; default) or official (auto_eval.py's "
                        "decisions bug for bug, as the published numbers; scores go to scores/editval-official). "
                        "piebench: none")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N samples (MagicBrush: sessions) in sorted order")
    p.add_argument("--coco-dir", default=None, metavar="DIR",
                   help="EditVal: folder with COCO train2017 images (000000XXXXXX.jpg), if not under --data")
    p.add_argument("--edit-types", default=None, metavar="LIST",
                   help="EditVal: comma-separated edit types (default: the six scored automatically; "
                        "'all' for every type when generating)")
    p.add_argument("--categories", default=None, metavar="LIST",
                   help="PIE-Bench: comma-separated editing_type_id values (default all, 0-9)")
    p.add_argument("--device", default=None, type=device_arg,
                   help="cpu, cuda, cuda:1 ... (default: this process's device under accelerate, else best)")
    p.add_argument("--local-files-only", action="store_true",
                   help="never contact the Hub: models must be local folders or already cached")
    p.add_argument("-q", "--quiet", action="store_true", help="no table/progress output")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the messages and model-loading bars of diffusers/transformers")


def _check_selection(args: argparse.Namespace, edit_types: dict[str, str], edit_type_noun: str) -> None:
    """Usage errors, before anything is written, for a --limit below 1 and for --categories or
    --edit-types values the benchmark does not have (they would select nothing, silently);
    ``edit_types``: the accepted EditVal types -> what each is ("" if its name says it).
    Normalizes the two lists (spaces around the commas dropped) as the dataset readers compare them."""
    from ..cli import UsageError
    from ..demo.bench import check_counts
    from .datasets import PIE_CATEGORIES

    check_counts(args, {"limit": 1})
    for flag, name, valid, noun in (("--categories", "categories", PIE_CATEGORIES, "a PIE-Bench category"),
                                    ("--edit-types", "edit_types", edit_types, edit_type_noun)):
        text = getattr(args, name, None)
        if text is None:
            continue
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in valid]
        if bad or not values:
            known = ", ".join(f"{k} ({what})" if what else k for k, what in valid.items())
            got = f"{bad[0]!r} is not {noun}" if bad else "names none"
            raise UsageError(f"{flag} {text!r}: {got}; give a comma-separated list of: {known}")
        setattr(args, name, ",".join(values))


def protocol_error(bench: str, protocol: str, command: str) -> str:
    """One line for a --protocol that the benchmark (or the command) does not have."""
    if bench == "editval" and command == "eval":
        return (f"--protocol {protocol}: not an option of `lime-edit eval editval`: EditVal's protocols (fixed, "
                "official) are scoring rules and generation is the same for both; give it to `lime-edit score "
                "editval`")
    what = {"magicbrush": "MagicBrush's are single and multi",
            "editval": "EditVal's are fixed (the default) and official",
            "piebench": "PIE-Bench has one protocol: leave --protocol out"}[bench]
    return f"--protocol {protocol}: not a protocol of {bench}; {what}"


def _check_protocol(args: argparse.Namespace, command: str) -> None:
    """A usage error for a --protocol value of another benchmark (e.g. `official` on magicbrush,
    `multi` on editval) or, for EditVal, given to `eval` (its protocols are scoring rules)."""
    from ..cli import UsageError

    protocol = getattr(args, "protocol", None)
    if protocol is None:
        return
    allowed = PROTOCOLS[args.benchmark] if not (command == "eval" and args.benchmark == "editval") else ()
    if protocol not in allowed:
        raise UsageError(protocol_error(args.benchmark, protocol, command))


def _check_dirs(args: argparse.Namespace) -> None:
    """A usage error, before anything is read or written, for a --coco-dir (when given) that is
    not a folder (it would only turn every EditVal sample into "COCO image not found")."""
    from pathlib import Path

    from ..cli import UsageError

    coco = getattr(args, "coco_dir", None)
    if coco is not None and not Path(coco).is_dir():
        why = "not a folder" if Path(coco).exists() else "no such folder"
        raise UsageError(f"{coco}: {why} (--coco-dir: the folder with the COCO train2017 images)")


def cmd_eval(args: argparse.Namespace) -> int:
    from ..cli import quiet_libraries
    from .generate import EDITVAL_PROMPTS, run_eval

    # every EditVal type can be generated (the six scored automatically and the others)
    _check_selection(args, {**dict.fromkeys(EDITVAL_PROMPTS, ""), "all": "every type"}, "an EditVal edit type")
    _check_protocol(args, "eval")
    _check_dirs(args)
    _check_preset(args)
    with quiet_libraries(getattr(args, "verbose", False), load=True):  # no model-loading bars
        return run_eval(args)


def _check_preset(args: argparse.Namespace) -> None:
    """One usage line for a --preset that is no preset, or given where no caption editor runs."""
    from ..backbones.p2p import PRESETS
    from ..cli import UsageError

    preset = getattr(args, "preset", None)
    if preset is None:
        return
    if preset not in PRESETS:
        raise UsageError(f"--preset {preset!r}: no such preset; choose one of: {', '.join(PRESETS)} (see --help)")
    if args.benchmark != "piebench":
        raise UsageError(f"--preset {preset}: Prompt-to-Prompt settings for `eval piebench --backbone p2p`; "
                         f"{args.benchmark} runs instruction editors only")
    backbone = getattr(args, "backbone", None)
    if backbone is not None and str(backbone).lower() != "p2p":
        raise UsageError(f"--preset {preset}: Prompt-to-Prompt settings, for --backbone p2p; --backbone {backbone} "
                         "has none")


def cmd_score(args: argparse.Namespace) -> int:
    from ..cli import quiet_libraries
    from .datasets import EDITVAL_SCORED
    from .score import run_score

    _check_selection(args, {**dict.fromkeys(EDITVAL_SCORED, ""), "all": "these six"},
                     "an EditVal edit type scored automatically")
    _check_protocol(args, "score")
    _check_dirs(args)
    if args.edit_types and "all" in args.edit_types.split(","):
        args.edit_types = None     # the default: every type scored automatically
    with quiet_libraries(getattr(args, "verbose", False), load=True):
        return run_score(args)


def register(subparsers) -> None:
    """Add ``eval`` and ``score`` to the ``lime-edit`` argparse tree."""
    from ..cli import _add_setting_args, add_family_args, seed_arg  # light: argparse + LimeConfig only

    p = subparsers.add_parser(
        "eval", help="run LIME (or plain IP2P) on MagicBrush, PIE-Bench or EditVal",
        description="Generate edited images for a benchmark in the layout its scorer reads, plus a manifest. "
                    "Resumable (rerun the same command); shards under `accelerate launch`. Sampler defaults "
                    "follow the benchmark's IP2P protocol (MagicBrush 100 steps, PIE-Bench/EditVal 50; text "
                    "guidance 7.5, image guidance 1.5); the flags below override them.")
    _common(p)
    p.add_argument("-o", "--out", required=True, metavar="RUN_DIR", help="where the edited images go")
    p.add_argument("--model", default=None,
                   help=f"Hub id, local diffusers folder or single file (default {DEFAULT_MODEL}; with --backbone "
                        f"p2p: {P2P_MODEL}, the model of PnPInversion's P2P rows)")
    p.add_argument("--no-lime", action="store_true", help="plain IP2P (mask=None): the baseline rows")
    p.add_argument("--seed", type=seed_arg, default=None,
                   help="seed of every sample (default: 1234 for PIE-Bench as its protocol, else 0)")
    p.add_argument("--dtype", default=None, choices=("auto", "float32", "float16", "bfloat16"),
                   help="weights dtype (default float16 on CUDA, float32 otherwise)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickled .ckpt/.bin weights")
    add_family_args(p)
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="PIE-Bench with a caption editor (--backbone p2p): its Prompt-to-Prompt settings. piebench "
                        "(default): PnPInversion's DirectInversion + P2P row (refinement, self-attention at <= 32x32 "
                        "query tokens, local blend on the record's blended_word, the target word x2, DDIM timesteps "
                        "980..0; float32 unless --dtype); default: lime-edit's own P2P defaults")
    p.add_argument("--lossless", action="store_true",
                   help="PIE-Bench: write <name>.png instead of the .jpg name their scripts use (PIL's default "
                        "JPEG quality); the scorer reads either")
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate every output, even if present or made with other settings")
    _add_setting_args(p, _PROTOCOL_HELP)      # the shared help gives LimeConfig's defaults; eval's are the protocol's
    p.set_defaults(func=cmd_eval)

    s = subparsers.add_parser(
        "score", help="score a method's outputs with the benchmark's own protocol",
        description="Score edited images in the benchmark's layout (ours or another tool's): per-sample rows "
                    "(CSV), a JSON report and the paper's table with its reference rows marked as quoted. "
                    "Resumable; shards under `accelerate launch`. Backbones load by Hub id by default, or "
                    "from local folders saved with save_pretrained.")
    _common(s)
    s.add_argument("--outputs", required=True, metavar="RUN_DIR", help="the edited images to score")
    s.add_argument("--metrics", default=None, metavar="LIST",
                   help="comma-separated subset. magicbrush: l1,l2,clip_i,dino,clip_t; piebench: "
                        "structure_distance,psnr,lpips,mse,ssim,clip_whole,clip_edited; editval: owlvit "
                        "(pixel metrics need no model)")
    s.add_argument("--report", default=None, metavar="FILE", help="JSON report path (default SCORES/report.json)")
    s.add_argument("--scores-dir", default=None, metavar="DIR",
                   help="per-sample rows and rows.csv (default RUN_DIR/scores/<benchmark>[-<protocol>])")
    s.add_argument("--structure-antialias", action="store_true",
                   help="PIE-Bench: resize for the structure distance with antialias, as torchvision >= 0.17 does "
                        "(default: without, as torchvision 0.13.1, which PnP-Inversion pins and its published "
                        "numbers used); the report records which")
    g = s.add_argument_group("metric backbones (Hub id or local folder)")
    g.add_argument("--clip-model", default=None, help="CLIP ViT-B/32 for MagicBrush (openai/clip-vit-base-patch32)")
    g.add_argument("--clip-large-model", default=None,
                   help="CLIP ViT-L/14 for PIE-Bench (openai/clip-vit-large-patch14)")
    g.add_argument("--dino-model", default=None, help="DINO ViT-S/16 for MagicBrush (facebook/dino-vits16)")
    g.add_argument("--dino-structure-model", default=None,
                   help="DINO ViT-B/8 for PIE-Bench structure distance (facebook/dino-vitb8)")
    g.add_argument("--owlvit-model", default=None, help="OWL-ViT for EditVal (google/owlvit-base-patch32)")
    g.add_argument("--lpips-model", default=None,
                   help="LPIPS-SqueezeNet folder/file/Hub id with model.safetensors (layout: lime_edit.eval.lpips; "
                        "default: torchvision's SqueezeNet download, or with --local-files-only its copy in the "
                        "torch hub cache, + torchmetrics' lin weights)")
    s.set_defaults(func=cmd_score)
