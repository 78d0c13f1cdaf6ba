"""``lime-edit demo``, ``lime-edit bench synthetic`` and ``lime-edit train-demo``.

Registered into the main CLI by ``register(subparsers)``; nothing heavy is
imported until a command runs.
"""

from __future__ import annotations

import argparse
import math
import re

from ..cli import THREADS_HELP, device_arg, seed_arg  # light: argparse + LimeConfig only


def _demo(args) -> int:
    from .showcase import run_demo

    return run_demo(args)


def _bench(args) -> int:
    if getattr(args, "suite", None) != "synthetic":
        args._parser.print_help()
        return 2
    from .bench import run_bench

    return run_bench(args)


def _train(args) -> int:
    from .bench import check_counts
    from .train import main

    check_counts(args, {"n_train": 1, "vae_steps": 1, "t2i_steps": 1, "edit_steps": 1, "batch": 1,
                        "ckpt_every": 1, "input_pass_from": 0, "recommend_n": 0, "threads": 0, "ema_from": 0,
                        "weak_from": 0})
    from .scenes import VALIDATION_SEED0

    if getattr(args, "n_train", None) is not None and args.n_train > VALIDATION_SEED0:
        from ..cli import UsageError

        raise UsageError(f"--n-train {args.n_train}: must be at most {VALIDATION_SEED0} (the train-split seeds "
                         "from there on are the validation scenes the recommended settings are chosen on)")
    decay = getattr(args, "ema_decay", 0.0)
    if decay is not None and not 0.0 <= decay < 1.0:        # also refuses nan
        from ..cli import UsageError

        raise UsageError(f"--ema-decay {decay}: must be at least 0 and below 1 (0 = no moving average)")
    for flag, name in (("--weak-edits", "weak_edits"), ("--weak-strength", "weak_strength")):
        value = getattr(args, name, None)
        if value is not None and not 0.0 <= value <= 1.0:   # also refuses nan
            from ..cli import UsageError

            raise UsageError(f"{flag} {value}: must be between 0 and 1")
    attn = getattr(args, "attn_loss", None)
    if attn is not None and not 0.0 <= attn < math.inf:     # also refuses nan
        from ..cli import UsageError

        raise UsageError(f"--attn-loss {attn}: must be a finite number, at least 0 (0 = no alignment loss)")
    budget = getattr(args, "budget_min", None) or ()
    if not all(0.0 <= b < math.inf for b in budget):
        from ..cli import UsageError

        raise UsageError(f"--budget-min {' '.join(map(str, budget))}: each must be a finite number of minutes, "
                         "at least 0 (0 = no cap)")
    _check_resumed_settings(args)
    from ..cli import EXIT_INTERRUPTED, _err, quiet_libraries

    try:
        with quiet_libraries(getattr(args, "verbose", False), load=True):   # no loading bars in train.log's way
            return main(args)
    except KeyboardInterrupt:        # Ctrl-C or SIGTERM: say what resuming train-demo does
        _err("interrupted (rerun the same command to resume: finished stages are reused, the text-to-image "
             "stage and the editor continue from their last checkpoint, saved every --ckpt-every steps)")
        return EXIT_INTERRUPTED


#: train.log's name of a setting that a resumed folder must keep -> its flag and argument. The others
#: (--edit-steps, --input-pass-from, --ema-decay, --ema-from, --weak-edits, --weak-strength, --weak-from)
#: may change on a resume, as the shipped run's parts did; --threads, --ckpt-every and --budget-min do not change what is trained.
_KEPT_ON_RESUME = {"n_train": ("--n-train", "n_train"), "vae": ("--vae-steps", "vae_steps"),
                   "t2i": ("--t2i-steps", "t2i_steps"), "batch": ("--batch", "batch"),
                   "attn_loss": ("--attn-loss", "attn_loss"), "seed": ("--seed", "seed")}


def _check_resumed_settings(args) -> None:
    """A folder whose trained stages a rerun would reuse (its VAE is saved) is resumed only
    with the settings train.log recorded for it: a usage error names the first that differs."""
    from pathlib import Path

    out = Path(args.out)
    log = out / "train.log"
    if not (out / "stage_a_vae" / "config.json").is_file() or not log.is_file():
        return
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "] train-demo: out=" in ln]
    except OSError:
        return
    if not lines:
        return
    _, sep, rest = lines[-1].rpartition(" n_train=")       # after out=, which may hold any character
    recorded = dict(re.findall(r"(\w+)=(\S+)", "n_train=" + rest)) if sep else {}
    for key, (flag, name) in _KEPT_ON_RESUME.items():
        value = getattr(args, name, None)
        if key not in recorded or value is None:
            continue
        try:
            same = type(value)(recorded[key]) == value
        except ValueError:
            same = False
        if not same:
            from ..cli import UsageError

            raise UsageError(f"{flag} {value}: {out} was trained with {flag} {recorded[key]} (its train.log); "
                             f"rerun with {flag} {recorded[key]} to resume it, or use a new --out")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, help="output folder (train.log, checkpoints, pipeline/)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the messages and model-loading bars of diffusers/transformers")
    p.add_argument("--n-train", type=int, default=6000,
                   help="training scenes generated once (train split, seeds 0..N-1; default 6000, at most the "
                        "first validation seed)")
    p.add_argument("--vae-steps", type=int, default=1500,
                   help="steps of stage (a), the VAE fit on 24x24 crops (default 1500)")
    p.add_argument("--t2i-steps", type=int, default=2500,
                   help="steps of stage (b), text-to-image pre-training on scene captions, saved as demo-t2i "
                        "(default 2500)")
    p.add_argument("--edit-steps", type=int, default=5600,
                   help="steps of stage (c), the InstructPix2Pix fine-tuning of the editor, counted from its "
                        "start (default 5600; a rerun with more continues from the last checkpoint)")
    p.add_argument("--recommend-n", type=int, default=60,
                   help="validation scenes on which the finished editor's recommended feature levels and K-means K are chosen "
                        "and written to its lime_edit.json (default 60; 0 = skip)")
    p.add_argument("--input-pass-from", type=int, default=3000,
                   help="editor step from which the attention-alignment loss also runs on a noisy latent made "
                        "from the input image (default 3000; see lime_edit.demo.train)")
    p.add_argument("--ema-decay", type=float, default=0.995,
                   help="decay of the moving average of the editor's weights that the saved pipeline holds "
                        "(default 0.995; 0 = no average, the trained weights are saved)")
    p.add_argument("--ema-from", type=int, default=5000,
                   help="editor step from which the moving average runs (default 5000)")
    p.add_argument("--weak-edits", type=float, default=0.5,
                   help="share of the training pairs whose target is a weak edit (blended with the input), "
                        "from editor step --weak-from (default 0.5; 0 = none; see lime_edit.demo.train.weak_targets)")
    p.add_argument("--weak-strength", type=float, default=1.0,
                   help="a weak edit's strength is uniform in [0, this] (default 1)")
    p.add_argument("--weak-from", type=int, default=5000,
                   help="editor step from which the weak edits are in the training pairs (default 5000)")
    p.add_argument("--batch", type=int, default=16, help="training pairs per step, every stage (default 16)")
    p.add_argument("--budget-min", type=float, nargs=3, default=(0.0, 0.0, 0.0), metavar=("VAE", "T2I", "EDIT"),
                   help="optional wall-clock cap per stage in minutes (0 = none; the steps reached are logged)")
    p.add_argument("--attn-loss", type=float, default=0.5,
                   help="weight of the attention-alignment loss (0 = plain lineage, no alignment)")
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="seed of the weight initialisation and sampling of every stage (default 0; the scenes "
                        "themselves are fixed by their own seeds)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (default 2, both cores of the 2-core machine the shipped run used; "
                        "when other jobs share the cores set OMP_WAIT_POLICY=PASSIVE or use 1)")
    p.add_argument("--ckpt-every", type=int, default=250,
                   help="checkpoint the text-to-image stage and the editor every N steps (default 250); "
                        "rerunning the same command resumes from the last one")
    p.add_argument("--install", action="store_true",
                   help="also copy the final pipeline into the package's demo/weights folder")



def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run IP2P and IP2P+LIME on a synthetic scene with the bundled model (offline)",
        description="Edit a held-out synthetic scene with plain InstructPix2Pix and with LIME using the "
                    "bundled demo model, and write a comparison panel (input | RoI mask | segments | IP2P at "
                    "guidance 7.5 | IP2P at LIME's guidance | IP2P+LIME) as panel.png, each picture on its own "
                    "(input.png, ip2p.png, ip2p_low_guidance.png, ip2p_lime.png) and demo.json; prints each "
                    "file's path. The scene is chosen by rule, never by hand: held-out scene --scene N, by "
                    "default the first one (0), with its own instruction and the scene number as sampler "
                    "seed, exactly as 'lime-edit bench synthetic' runs it.")
    p.add_argument("-o", "--out", default="lime-demo", help="output folder (default: ./lime-demo)")
    p.add_argument("--scene", type=int, default=None,
                   help="held-out (test-split) scene number (default 0: the first held-out scene)")
    p.add_argument("--instruction", default=None, help="override the scene's instruction")
    p.add_argument("--seed", type=seed_arg, default=None,
                   help="sampler seed (0..2**64-1; default: the scene number, as bench synthetic)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: LimeConfig's)")
    p.add_argument("--model", default=None, help="model folder (default: the bundled demo model)")
    p.add_argument("--threads", type=int, default=0, metavar="N", help=THREADS_HELP)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the messages and model-loading bars of diffusers/transformers")
    p.set_defaults(func=_demo)

    b = subparsers.add_parser("bench", help="benchmarks (synthetic: ground-truth localized edits)")
    bs = b.add_subparsers(dest="suite")
    b.set_defaults(func=_bench, _parser=b)
    s = bs.add_parser(
        "synthetic", help="IP2P vs IP2P+LIME variants on synthetic scenes with exact ground truth",
        description="Compare plain IP2P and LIME variants (and Prompt-to-Prompt with and without LIME on the "
                    "text-to-image model: methods p2p, p2p_local_blend, p2p_lime) on N synthetic "
                    "scenes, the held-out test scenes unless --split validation (identical inputs and seeds); writes results.json, results.md and examples.png. "
                    "Every method edits every scene: it first says how many edits that is (all methods by default; "
                    "--methods ip2p,lime is a quick comparison). "
                    "Resumable: rerun the same command (more --methods or a larger --n add rows; other settings are refused).")
    s.add_argument("--n", type=int, default=200, help="number of scenes of --split (default 200)")
    s.add_argument("--split", choices=("test", "validation"), default="test",
                   help="test: the held-out scenes (default; the benchmark's figures); validation: the scenes "
                        "train-demo chooses recommended settings on, for comparing models or settings without "
                        "looking at the test scenes")
    s.add_argument("-o", "--out", default="bench-synthetic", help="output folder (default: ./bench-synthetic)")
    s.add_argument("--methods", default=None,
                   help="comma-separated subset of methods (default: all; see results.md for names)")
    s.add_argument("--steps", type=int, default=None, help="denoising steps (default: LimeConfig's, 30)")
    s.add_argument("--batch", type=int, default=8, help="scenes per pipeline call (default 8)")
    s.add_argument("--model", default=None, help="model folder (default: the bundled demo model)")
    s.add_argument("--t2i-model", default=None,
                   help="text-to-image model of the p2p* methods (Hub id, folder or file; default: the bundled "
                        "demo-t2i), loaded only when a p2p method is asked for")
    s.add_argument("--p2p-steps", type=int, default=None,
                   help="DDIM steps of the p2p* methods (default: P2P's 50; --steps is the IP2P methods')")
    s.add_argument("--examples", type=int, default=6, help="scenes shown in examples.png (default 6)")
    s.add_argument("--device", default="cpu", type=device_arg, help="torch device (default cpu; e.g. cuda)")
    s.add_argument("--overwrite", action="store_true",
                   help="start afresh: drop the results already in --out (without it, a rerun resumes, and "
                        "is refused if the model, text-to-image model, steps, device, batch, split or a method's "
                        "settings differ)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--threads", type=int, default=0, metavar="N", help=THREADS_HELP)
    s.add_argument("-v", "--verbose", action="store_true",
                   help="show the messages and model-loading bars of diffusers/transformers")
    s.add_argument("--set", dest="cfg_set", action="append", default=[], metavar="NAME=VALUE",
                   help="a LimeConfig field for every method, e.g. --set align_corners=false "
                        "(repeatable; results.json records them; use a new --out per setting)")
    s.set_defaults(func=_bench, suite="synthetic")

    t = subparsers.add_parser(
        "train-demo", help="train the demo model from scratch (CPU, about an hour)",
        description="Reproduce the bundled demo model: VAE fit, text-to-image pre-training on captioned "
                    "scenes, InstructPix2Pix fine-tuning. See lime_edit.demo.train for the recipe.")
    add_train_arguments(t)
    t.set_defaults(func=_train)


def main(argv=None) -> int:
    """Stand-alone entry point (``python -m lime_edit.demo.cli``) for use before the main CLI wires us."""
    ap = argparse.ArgumentParser(prog="lime-edit")
    sub = ap.add_subparsers(dest="command", required=True)
    register(sub)
    args = ap.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
