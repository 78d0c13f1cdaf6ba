"""``lime-edit`` command line: ``edit``, ``localize`` and ``p2p`` (caption editing of a
real image with Prompt-to-Prompt on a text-to-image model), plus the subcommands
that feature packages register (``lime_edit.demo``, ``lime_edit.eval``,
``lime_edit.web``).

This module only parses arguments, reads and writes files, and calls the public
API (:class:`lime_edit.pipeline.LimePipeline`); importing it imports nothing
heavy, so ``lime-edit --help`` is instant.

Exit codes: 0 every input succeeded (or was done already); 1 some inputs failed
(each reported as one line ``error: <file>: <message>``, the others still
processed); 2 usage error, unusable model or output folder; 130 interrupted (no
half-written file is left: every output is written atomically).

Outputs per input are all-or-nothing: all files go to temporary names first, and
the JSON record is renamed into place last, so an input's set is complete iff its
JSON exists (and then names its files). Rerunning the same command after an
interruption skips complete inputs (with a notice), redoes incomplete ones
(replacing their partial files) and exits 0 once everything is done; outputs made
by another command (other input file, instruction, model, seed, settings) are
refused unless ``--overwrite``, which redoes every input.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import LimeConfig, check_seed
from .errors import LimeEditError

#: Feature packages whose ``cli.register(subparsers)`` adds subcommands (if installed).
FEATURE_CLIS = ("lime_edit.demo.cli", "lime_edit.eval.cli", "lime_edit.web.cli")

DEFAULT_MODEL = "timbrooks/instruct-pix2pix"
#: text-to-image model of ``lime-edit p2p`` (the SD1.5 weights' current Hub home)
DEFAULT_T2I_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_OUT = "lime-edit-out"

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: ``--threads`` of every command that runs a model (edit, localize, p2p, demo, bench synthetic):
#: one rule, torch's own default unless set
THREADS_HELP = ("torch CPU threads (default 0: torch's own choice, one per core, as in every lime-edit command). "
                "On a CPU that other jobs share, the small demo models run much faster with 1")


class UsageError(LimeEditError):
    """A bad command line (exit code 2)."""


# --------------------------------------------------------------------------- settings
# flag -> (LimeConfig field, argparse type, help). Every flag defaults to None:
# only the settings the user actually set are forwarded, as overrides.
def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 2,4,8, got {text!r}")


def _schedule(text: str) -> str:
    return text.replace("-", "_")


def finite_float(text: str) -> float:
    """argparse type: a finite number ("inf" and "nan" are usage errors)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def seed_arg(text: str) -> int:
    """argparse type: a seed, a whole number in 0..2**64-1 (see ``LimeConfig.check_seed``)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number in 0..2**64-1, got {text!r}") from None
    try:
        return check_seed(value)
    except LimeEditError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("seed: ")) from None


def device_arg(text: str) -> str:
    """argparse type: a torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...),
    checked by torch's own parser so a typo is a usage error, not a failure after loading."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, mps ...)") from None
    return text


def _layers(text: str) -> tuple[str, ...]:
    patterns = tuple(v.strip() for v in text.split(",") if v.strip())
    if not patterns:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer-name patterns such as "
                                         f"'up_blocks.*attn2*', got {text!r}")
    return patterns


def _flag_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false (yes/no, on/off, 1/0), got {text!r}")


class _HelpAll(argparse.Action):
    """``--help-all``: the help with the advanced options too (those :func:`_advanced` hid), then exit."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        for action in parser._actions:
            if hasattr(action, "full_help"):
                action.help = action.full_help
        parser.print_help()
        parser.exit()


def _advanced(group, *flags: str, **kwargs: Any) -> argparse.Action:
    """An option listed only by ``--help-all`` (it works the same either way)."""
    action = group.add_argument(*flags, **kwargs)
    action.full_help = action.help
    action.help = argparse.SUPPRESS
    return action


#: The settings flags ``--help`` shows; the others (the paper's hyperparameters, the reference code's
#: conventions) only ``--help-all``.
COMMON_SETTINGS = frozenset({"num_inference_steps", "guidance_scale", "image_guidance_scale", "num_clusters",
                             "preserve"})

_SETTING_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--steps", "num_inference_steps", int, "denoising steps of the edit (default 30)"),
    ("--guidance", "guidance_scale", finite_float, "text guidance scale (LIME default 2.0; plain IP2P usually 7.5)"),
    ("--image-guidance", "image_guidance_scale", finite_float, "image guidance scale (default 1.5)"),
    ("--localization-guidance", "localization_guidance_scale", finite_float,
     "text guidance of the localization pass (default 5.5)"),
    ("--localization-steps", "localization_steps", int,
     "length of the localization schedule (default: --steps)"),
    ("--capture-at", "capture_at", finite_float,
     "fraction of the localization schedule at which attention is captured (default 1/3)"),
    ("--feature-levels", "feature_levels", _levels,
     "latent-grid levels whose features are clustered, e.g. 2,4,8 (default)"),
    ("--out-scale", "out_scale", int, "localization grid = OUT_SCALE x latent grid (default 2)"),
    ("--clusters", "num_clusters", int, "K of K-means (default 8)"),
    ("--distance-threshold", "distance_threshold", finite_float,
     "cosine distance threshold of agglomerative clustering (default 0.5)"),
    ("--top-k", "top_k", int, "highest-attention pixels that select segments, counted on a 128x128 grid and "
     "scaled by area to the model's localization grid (default 100: exactly 100 for SD1.5 at 512 px)"),
    ("--regularization-levels", "regularization_levels", _levels,
     "latent-grid levels whose cross-attention is regularized, e.g. 1,2 (default); block indices on "
     "joint-attention transformers (kontext)"),
    ("--regularize-from", "regularize_from", finite_float, "regularize from this fraction of the steps (default 0)"),
    ("--regularize-until", "regularize_until", finite_float, "... until this fraction (default 0.9)"),
    ("--downscale-above", "downscale_above", finite_float,
     "inputs with more than this many times the model's native pixel count run at the native size, "
     "results resized back (default 4; 0 = always at the input's size)"),
)
_CHOICE_FLAGS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("--mode", "mode", ("penalize", "reward"),
     "penalize unrelated tokens inside the RoI (default) or reward related ones"),
    ("--clustering", "clustering", ("kmeans", "agglomerative"), "segmentation method (default kmeans)"),
    ("--schedule", "schedule", ("two_pass", "single_pass"),
     "two_pass: localize, then edit from the same seed (default); single_pass: one trajectory"),
    ("--preserve", "preserve", ("none", "outside", "latent"),
     "outside: the result is the input pixel for pixel outside the regularized region (RoI or --mask), "
     "the edit inside; latent (kontext, qwen-image-edit, flux2): the latents outside it follow the input's "
     "own trajectory, so the edit blends in without a seam (default none: the editor's output)"),
    ("--joint-rule", "joint_rule", ("text_mass", "literal"),
     "joint-attention transformers (kontext): text_mass keeps the text block's share and gives the "
     "unrelated words' part to the kept ones (default); literal: the paper's -inf on the joint softmax"),
)
_BOOL_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--drop-verbs", "drop_verbs", "drop instruction verbs from the RoI tokens (default on)"),
    ("--penalize-padding", "penalize_padding", "count padding tokens as unrelated (default on)"),
    ("--penalize-end-token", "penalize_end_token", "count the end token as unrelated (default off)"),
    ("--penalize-punctuation", "penalize_punctuation",
     "count punctuation tokens as unrelated (default off, as the reference code)"),
    ("--localize-end-token", "localize_end_token",
     "average the end token's attention into the localization map (default on, as the reference)"),
    ("--align-corners", "align_corners",
     "bilinear upsampling to the localization grid with align_corners=True (default on, as the reference)"),
)


#: p2p's sampler defaults are the p2p backbone's (``P2PBackbone.sampler_defaults``, tested), not
#: LimeConfig's; it has no image guidance
P2P_SETTING_HELP = {
    "num_inference_steps": "DDIM steps of the inversion and the edit (default 50, P2P's)",
    "guidance_scale": "text guidance scale of the edit (default 7.5, P2P's)",
    "localization_guidance_scale": "text guidance scale of LIME's localization pass (default 7.5)",
}


def _add_setting_args(p: argparse.ArgumentParser, helps: dict[str, str] | None = None,
                      omit: tuple[str, ...] = (), advanced=None) -> None:
    """The LIME settings flags; ``helps``: another help text for some fields (a command whose
    defaults are not LimeConfig's), ``omit``: fields the command has no use for. ``advanced``: the
    argument group of the flags outside :data:`COMMON_SETTINGS`, listed only by ``--help-all``
    (default: every flag in the settings group, listed by ``--help``)."""
    g = p.add_argument_group(
        "LIME settings (unset ones keep the model's defaults; see LimeConfig)",
        None if advanced is None else "The common ones; --help-all lists the paper-level ones too (feature and "
        "regularization levels, top-k, capture step, schedule, clustering, token roles ...).")
    p.set_defaults(unused_settings=omit)      # refused in --set too (collect_overrides)

    def add(name: str, *flags: str, **kwargs: Any) -> None:
        if advanced is not None and name not in COMMON_SETTINGS:
            _advanced(advanced, *flags, **kwargs)
        else:
            g.add_argument(*flags, **kwargs)
    for flag, name, typ, help_ in _SETTING_FLAGS:
        if name in omit:
            continue
        add(name, flag, dest=f"cfg_{name}", type=typ, default=None, metavar=name.split("_")[-1].upper(),
            help=(helps or {}).get(name, help_))
    for flag, name, choices, help_ in _CHOICE_FLAGS:
        add(name, flag, dest=f"cfg_{name}", type=_schedule if name == "schedule" else str,
            choices=choices, default=None, help=help_)
    for flag, name, help_ in _BOOL_FLAGS:
        add(name, flag, dest=f"cfg_{name}", action=argparse.BooleanOptionalAction, default=None, help=help_)
    g.add_argument("--fast", action="store_true",
                   help="cheaper localization: a 10-step schedule captured at 0.3 (LimeConfig.fast)")
    g.add_argument("--set", dest="cfg_set", action="append", default=[], metavar="NAME=VALUE",
                   help="any LimeConfig field, parsed as its own flag, e.g. --set kmeans_iters=50, "
                        "--set layers='up_blocks.*attn2*,mid_block.*', --set localization_steps=none "
                        "(repeatable)")


def _set_parsers() -> dict[str, Callable[[str], Any]]:
    """LimeConfig field -> the parser of its value in ``--set NAME=VALUE``: the
    type of the field's own flag where it has one."""
    parsers: dict[str, Callable[[str], Any]] = {name: typ for _, name, typ, _ in _SETTING_FLAGS}
    for _, name, choices, _ in _CHOICE_FLAGS:
        def choice(text: str, choices=choices, name=name) -> str:
            value = _schedule(text) if name == "schedule" else text
            if value not in choices:
                raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
            return value
        parsers[name] = choice
    for _, name, _ in _BOOL_FLAGS:
        parsers[name] = _flag_bool
    parsers.update(kmeans_iters=int, agglomerative_max_points=int, layers=_layers)
    return parsers


def _parser_for_default(name: str) -> Callable[[str], Any]:
    """A field without an entry in :func:`_set_parsers`: parse by its default's type."""
    default = {f.name: f.default for f in dataclasses.fields(LimeConfig)}[name]
    if isinstance(default, bool):
        return _flag_bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return finite_float
    if isinstance(default, tuple):
        return _levels
    return str


#: Fields that may be set to None (``--set NAME=none``): those whose default is None ("the model's").
_NONE_OK = tuple(f.name for f in dataclasses.fields(LimeConfig) if f.default is None)


def _parse_set(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise UsageError(f"--set {item!r}: expected NAME=VALUE")
    name, _, text = item.partition("=")
    name, text = name.strip().replace("-", "_"), text.strip()
    fields = {f.name for f in dataclasses.fields(LimeConfig)}
    if name not in fields:
        raise UsageError(f"--set {name}: unknown setting; known: {', '.join(sorted(fields))}")
    if text.lower() in ("none", "null") and name in _NONE_OK:
        return name, None
    parser = _set_parsers().get(name) or _parser_for_default(name)
    try:
        return name, parser(text)
    except (ValueError, argparse.ArgumentTypeError) as err:
        why = str(err) if isinstance(err, argparse.ArgumentTypeError) else f"expected a whole number, got {text!r}"
        raise UsageError(f"--set {name}={text}: {why}") from None


def parse_set_items(items, unused=(), command: str = "") -> dict[str, Any]:
    """``--set NAME=VALUE`` items as a dict; a field given twice with different values, or one
    the command has no use for (``unused``), is a usage error."""
    given: dict[str, Any] = {}
    for item in items or []:
        name, value = _parse_set(item)
        if name in (unused or ()):
            raise UsageError(f"--set {name}: not a setting of `lime-edit {command}`; it would be ignored")
        if name in given and given[name] != value:
            raise UsageError(f"--set {name} is given twice, as {given[name]!r} and {value!r}: keep one")
        given[name] = value
    return given


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The LimeConfig overrides the user actually set (``--fast`` first, explicit
    flags win), validated against LimeConfig."""
    overrides: dict[str, Any] = {}
    if getattr(args, "fast", False):
        fast = LimeConfig.fast()
        overrides.update(localization_steps=fast.localization_steps, capture_at=fast.capture_at)
    given = parse_set_items(getattr(args, "cfg_set", None), getattr(args, "unused_settings", None),
                            getattr(args, "command", ""))
    flags = {n: f for f, n, *_ in (*_SETTING_FLAGS, *_CHOICE_FLAGS, *_BOOL_FLAGS)}
    for key, value in vars(args).items():
        if key.startswith("cfg_") and key != "cfg_set" and value is not None:
            name = key[4:]
            if name in given and given[name] != value:
                raise UsageError(f"{flags.get(name, name)} and --set {name} set the same setting differently: "
                                 "keep one")
            given[name] = value
    overrides.update(given)
    try:
        LimeConfig().replace(**overrides)
    except (ValueError, TypeError) as err:
        raise UsageError(_name_the_flag(str(err), args)) from None
    return overrides


def check_model_settings(lp, overrides: dict[str, Any], args: argparse.Namespace) -> None:
    """Once the model has loaded, before the first input: a setting this model cannot take (a
    level its U-Net lacks) is one ``LimeEditError`` naming the flag, not one failure per input."""
    check = getattr(lp, "check_settings", None)
    if check is None:
        return
    try:
        check(**overrides)
    except LimeEditError as err:
        raise LimeEditError(_name_the_flag(str(err), args)) from None


def check_text_flag(text: str, flag: str, hint: str) -> None:
    """A prompt given on the command line: empty, or not valid text (an undecodable byte), is a
    usage error naming ``flag``; ``hint`` says what to give instead of an empty one."""
    from .tokens import text_problem

    why = text_problem(text)
    if why == "empty":
        raise UsageError(f"{flag} is empty; {hint}")
    if why:
        raise UsageError(f"{flag} {ascii(text)}: {why}")


def refuse_caption_model(lp, model: str) -> None:
    """The instruction commands (edit, localize, demo, bench) on a text-to-image model, which
    the p2p backbone runs with captions: one usage error pointing at ``lime-edit p2p``."""
    backbone = getattr(lp, "backbone", None)
    if getattr(backbone, "caption_editing", False):
        raise UsageError(f"--model {model}: a text-to-image model ({backbone.name} backbone) edits with "
                         f"captions, not instructions: use `lime-edit p2p IMAGE --model {model} "
                         "--source CAPTION --target CAPTION`")


def _name_the_flag(message: str, args: argparse.Namespace) -> str:
    """A LimeConfig error ("LimeConfig.num_inference_steps must be ...") in the words of the
    command line: the flag that set the field ("--steps 0: must be ..."), if a flag did."""
    m = re.match(r"LimeConfig\.(\w+) (.*)", message, re.S) or re.match(r"(\w+): (.*)", message, re.S)
    if m is None:
        return message
    name, why = m.groups()
    flags = {n: f for f, n, *_ in (*_SETTING_FLAGS, *_CHOICE_FLAGS, *_BOOL_FLAGS)}
    value = getattr(args, f"cfg_{name}", None)
    if name in flags and value is not None:
        shown = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else value
        return f"{flags[name]} {shown if shown != '' else '(no value)'}: {why}"
    if any(item.partition("=")[0].strip().replace("-", "_") == name for item in getattr(args, "cfg_set", []) or []):
        return f"--set {name}: {why}"
    return message     # a rule between settings, reported on a field the user did not set


# --------------------------------------------------------------------------- parser
def _add_common_args(p: argparse.ArgumentParser, task: str) -> None:
    p.add_argument("--help-all", action=_HelpAll,
                   help="show every option, the paper-level settings and rarer loading options included, and exit")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (their image files, sorted by name) or glob patterns "
                        "(quote them; ** recurses)")
    if task == "p2p":
        p.add_argument("--source", action="append", required=True, metavar="TEXT",
                       help="caption of the input image, e.g. 'a photo of fingernails' (once for all "
                            "inputs or once per input)")
        p.add_argument("--target", dest="instruction", action="append", required=True, metavar="TEXT",
                       help="caption of the result, e.g. 'a photo of glitter fingernails' (once for all "
                            "inputs or once per input)")
    else:
        p.add_argument("-i", "--instruction", action="append", required=True, metavar="TEXT",
                       help="the edit instruction, e.g. 'make the car red'. Give it once for all inputs, "
                            "or once per input (repeat -i; paired with the inputs in expanded order)")
    m = p.add_argument_group("model")
    default_model = DEFAULT_T2I_MODEL if task == "p2p" else DEFAULT_MODEL
    demo = "" if task == "p2p" else ", or 'demo'"
    m.add_argument("--model", default=default_model,
                   help=f"Hub id, local diffusers folder, single .safetensors/.ckpt file{demo} "
                        f"(default {default_model})")
    m.add_argument("--device", default=None, type=device_arg,
                   help="cpu, cuda, cuda:1, mps ... (default: best available)")
    m.add_argument("--dtype", default=None,
                   choices=("auto", "float32", "float16", "bfloat16", "fp32", "fp16", "bf16"),
                   help="weights dtype (default on CUDA: float16, bfloat16 for FLUX Kontext; float32 otherwise)")
    m.add_argument("--offload", action="store_true",
                   help="keep the model in CPU memory and move each component to the GPU only while it runs "
                        "(diffusers' enable_model_cpu_offload: for models larger than the GPU's memory)")
    m.add_argument("--allow-pickle", action="store_true",
                   help="allow loading pickled checkpoints (.ckpt/.bin). Only for files you trust: "
                        "unpickling can run arbitrary code")
    m.add_argument("--local-files-only", action="store_true", help="never contact the Hub")
    m.add_argument("--threads", type=int, default=0, metavar="N", help=THREADS_HELP)
    if task == "p2p":
        add_p2p_args(p)
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="random seed, the same for every input: a whole number in 0..2**64-1 (default 0)")
    o = p.add_argument_group("input/output")
    o.add_argument("-o", "--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"output folder (default ./{DEFAULT_OUT})")
    o.add_argument("--overwrite", action="store_true",
                   help="redo every input, replacing its outputs. Without it, a rerun skips inputs whose "
                        "outputs are complete and were made by the same command, redoes incomplete ones "
                        "(an interrupted run) and refuses outputs made by another command, all before "
                        "any model work")
    o.add_argument("--explain", action="store_true", help="also write one attention heatmap per related token")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bars or warnings")
    o.add_argument("-v", "--verbose", action="store_true",
                   help="show the messages and model-loading bars of diffusers/transformers")
    adv = p.add_argument_group("advanced (listed by --help-all only)")
    if task == "p2p":
        add_model_config_arg(adv, hidden=True)
        _add_setting_args(p, P2P_SETTING_HELP, omit=("image_guidance_scale",), advanced=adv)
    else:
        add_family_args(m, advanced=adv)
        _add_setting_args(p, advanced=adv)
    _advanced(adv, "--max-pixels", type=int, default=None, metavar="N",
              help="refuse inputs above N pixels (default 4096*4096). 0 = no limit of ours, but images "
                   "above PIL's decompression-bomb limit (2 x PIL.Image.MAX_IMAGE_PIXELS, about 179 "
                   "million pixels) are always refused")
    p._action_groups.remove(adv)            # last in the help, after the settings
    p._action_groups.append(adv)


def _add_mask_args(p: argparse.ArgumentParser, no_lime_help: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mask", action="append", default=None, metavar="FILE",
                   help="use this mask (white/opaque = edit; any size) instead of localizing. Once for "
                        "all inputs or once per input")
    g.add_argument("--no-lime", action="store_true", help=no_lime_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lime-edit",
        description="LIME: localized instruction-based image editing on InstructPix2Pix-family models.",
        epilog="Exit codes: 0 all inputs done, 1 some inputs failed, 2 usage or model error, 130 interrupted "
               "(rerun the same command to resume).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    edit = sub.add_parser(
        "edit", help="edit images with an instruction (LIME localization + attention regularization)",
        description="Edit each input with its instruction. Writes, per input STEM: STEM_edited.png "
                    "(input size), STEM_mask.png, STEM_overlay.png, STEM_segments.png, "
                    "STEM_attn_NN_TOKEN.png (--explain) and, last, STEM.json (settings, seed, model, "
                    "timings, warnings); rerunning the same command resumes an interrupted batch.")
    _add_common_args(edit, "edit")
    _add_mask_args(edit, "plain InstructPix2Pix, no localization")
    edit.set_defaults(func=cmd_edit)

    loc = sub.add_parser(
        "localize", help="only find the region an instruction refers to (mask, overlay, segments)",
        description="Run LIME's localization only. Writes, per input STEM: STEM_mask.png, "
                    "STEM_overlay.png, STEM_segments.png, STEM_attn_NN_TOKEN.png (--explain), STEM.json.")
    _add_common_args(loc, "localize")
    loc.set_defaults(func=cmd_localize)

    p2p = sub.add_parser(
        "p2p", help="edit images by captions: Prompt-to-Prompt on a text-to-image model, localized by LIME",
        description="Invert each input with its source caption (DDIM + Direct Inversion) and regenerate it "
                    "with the target caption under Prompt-to-Prompt attention control; LIME confines the "
                    "change to the region of the words the target adds or replaces. Writes the same files "
                    "as edit: STEM_edited.png, STEM_mask.png, STEM_overlay.png, STEM_segments.png, STEM.json.")
    _add_common_args(p2p, "p2p")
    _add_mask_args(p2p, "plain Prompt-to-Prompt, no localization")
    p2p.set_defaults(func=cmd_p2p)

    for name in FEATURE_CLIS:
        module = _import_feature(name)
        if module is not None:
            module.register(sub)
    return parser


def _import_feature(name: str):
    """Import a feature package's CLI module; ``None`` only when that module (or
    its feature package) is not there. Errors inside it propagate."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        parts = name.split(".")
        missing = {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        if err.name in missing:
            return None
        raise


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version   # outside the try: an interrupt
                                                                   # here must stay an interrupt
    try:
        return version("lime-edit")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (see module docstring)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:       # Ctrl-C / SIGTERM at any moment: while imports run included
        _err("interrupted (no half-written file was left; rerun the same command to finish: "
             "finished inputs are skipped)")
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or usage error (2)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if getattr(args, "out", None) == "":    # Path("") would silently mean the current folder
        _err("error: -o/--out is empty; name a folder ('.' for the current one)")
        return EXIT_USAGE
    for attr, flag in (("model", "--model"), ("t2i_model", "--t2i-model"), ("model_config", "--model-config")):
        value = getattr(args, attr, None)        # an empty one would silently mean the default model (every command)
        if isinstance(value, str) and not value.strip():
            _err(f"error: {flag} is empty; leave it out for the default, or name one")
            return EXIT_USAGE
    try:
        with _sigterm_as_interrupt(), quiet_libraries(bool(getattr(args, "verbose", False))):
            return int(func(args))
    except KeyboardInterrupt:
        _err("interrupted (no half-written file was left; rerun the same command to finish: "
             "finished inputs are skipped)")
        return EXIT_INTERRUPTED
    except (LimeEditError, OSError) as err:
        _err(f"error: {_one_line(err)}")
        return EXIT_USAGE


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Turn SIGTERM (kill, job schedulers) into KeyboardInterrupt while a command
    runs, so temporary files are removed exactly as on Ctrl-C."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _err(line: str) -> None:
    """One line on stderr; control characters (from file names, messages) are
    shown escaped, so nothing can start a forged line or colour the terminal."""
    from .errors import printable   # not .io: that imports torch, maybe the import an interrupt broke

    line = printable(line)
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)   # bars exist only once tqdm is imported
    try:
        tqdm.write(line, file=sys.stderr)
    except Exception:  # tqdm not imported (None), or half-imported when interrupted
        print(line, file=sys.stderr, flush=True)


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.filename}: {err.strerror}"
    text = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, (LimeEditError, OSError)):
        text = f"{type(err).__name__}: {text}"
    return text


def _named(label: str, name: Any, err: BaseException) -> str:
    """``error: LABEL: message``, without repeating ``name`` when the message
    already starts with it (io and loading errors name their file)."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        raw = f"{err.filename}: {err.strerror}"
    else:
        raw = str(err)
    name = str(name)
    if raw.startswith(name + ":"):  # compared before whitespace is collapsed: names may hold any character
        rest = raw[len(name) + 1:]
        if not isinstance(err, (LimeEditError, OSError)):
            rest = f"{type(err).__name__}: {' '.join(rest.split())}"
        return f"error: {label}: {' '.join(rest.split()) or type(err).__name__}"
    return f"error: {label}: {_one_line(err)}"


def _item_error(src: Any, err: BaseException) -> str:
    return _named(str(src), src, err)


def cmd_edit(args: argparse.Namespace) -> int:
    return _run(args, task="edit")


def cmd_localize(args: argparse.Namespace) -> int:
    return _run(args, task="localize")


def cmd_p2p(args: argparse.Namespace) -> int:
    return _run(args, task="p2p")


def add_p2p_args(parser) -> None:
    """Prompt-to-Prompt settings (options of the ``p2p`` backbone)."""
    g = parser.add_argument_group(
        "Prompt-to-Prompt (defaults: lime-edit's own; --preset piebench: PnPInversion's PIE-Bench row; "
        "a flag given with --preset overrides that setting of the preset)")
    g.add_argument("--preset", default=None, metavar="NAME",
                   help="named settings: default (lime-edit's) or piebench (PnPInversion's DirectInversion + P2P "
                        "row: refinement, self-attention at <= 32x32 query tokens whatever the size, local blend "
                        "on --blend-words, the target word reweighted x2, PnPInversion's DDIM: timesteps 980..0, "
                        "no x0 clipping)")
    g.add_argument("--blend-words", default=None, metavar="'SOURCE TARGET'",
                   help="local blend on these words (turns --local-blend on): the source caption's word and the "
                        "target's, as PIE-Bench's blended_word, e.g. 'cat dog'; with --preset piebench the target "
                        "word is also reweighted x2")
    g.add_argument("--cross-replace", type=float, default=None, metavar="F",
                   help="fraction of steps with the source's cross-attention at aligned tokens (default 0.4)")
    g.add_argument("--self-replace", type=float, default=None, metavar="F",
                   help="fraction of steps with the source's self-attention, coarse layers (default 0.6)")
    g.add_argument("--p2p-mode", default=None, choices=("auto", "swap", "refine"),
                   help="word swap (same token count), refinement (token alignment), or auto (default)")
    g.add_argument("--reweight", action="append", default=None, metavar="WORD=SCALE",
                   help="scale a target word's attention during the replacement steps (repeatable)")
    g.add_argument("--local-blend", action="store_true",
                   help="P2P's local blend: keep the source latent outside the changed words' attention mask")
    g.add_argument("--blend-threshold", type=float, default=None, metavar="F",
                   help="local blend mask threshold on the normalized attention (default 0.3)")


def p2p_load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Backbone options from :func:`add_p2p_args` flags."""
    kw: dict[str, Any] = {"backbone": "p2p"}
    if getattr(args, "model_config", None):
        kw["model_config"] = args.model_config
    for flag, opt in (("cross_replace", "cross_replace"), ("self_replace", "self_replace"), ("p2p_mode", "mode"),
                      ("blend_threshold", "blend_threshold")):
        if getattr(args, flag, None) is not None:
            kw[opt] = getattr(args, flag)
    weights = {}
    for item in getattr(args, "reweight", None) or []:
        word, sep, value = item.partition("=")
        try:
            scale = float(value)
        except ValueError:
            raise UsageError(f"--reweight {item!r}: expected WORD=SCALE, e.g. glitter=2") from None
        if not sep or not word.strip():
            raise UsageError(f"--reweight {item!r}: expected WORD=SCALE, e.g. glitter=2")
        if word.strip() in weights and weights[word.strip()] != scale:
            raise UsageError(f"--reweight {word.strip()} is given twice, as {weights[word.strip()]:g} and "
                             f"{scale:g}: keep one")
        weights[word.strip()] = scale
    if weights:
        kw["reweight"] = tuple(weights.items())
    if getattr(args, "local_blend", False):
        kw["local_blend"] = True
    from .backbones.p2p import PRESETS, P2PSettings, _settings, parse_blend_words

    preset = getattr(args, "preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise UsageError(f"--preset {preset!r}: no such preset; choose one of: {', '.join(PRESETS)} "
                             "(see --help)")
        kw["preset"] = preset
    text = getattr(args, "blend_words", None)
    if text is not None:
        try:
            words = parse_blend_words(text.strip())
        except LimeEditError:
            words = None
        if words is None or len(text.split()) != 2:
            raise UsageError(f"--blend-words {text!r}: expected two words, the source caption's and the "
                             "target's, e.g. --blend-words 'cat dog'")
        kw["blend_words"] = words
        if preset is None:
            kw["local_blend"] = True

    try:                                    # bad values are usage errors before the model loads
        _settings(P2PSettings(), {k: v for k, v in kw.items() if k not in ("backbone", "model_config")})
    except LimeEditError as err:
        name, _, why = str(err).partition(": ")
        flag = {"cross_replace": "--cross-replace", "self_replace": "--self-replace",
                "blend_threshold": "--blend-threshold", "reweight": "--reweight",
                "blend_words": "--blend-words", "preset": "--preset"}.get(name)
        raise UsageError(f"{flag}: {why}" if flag else str(err)) from None
    return kw


def _drop_failed_pairs(specs: Sequence[str], files: Sequence[Path], *per_input: list[Any] | None):
    """With one value per command-line input (``-i`` a b c for three files), the values of
    inputs that yielded no file (missing, unreadable) are dropped, so the others keep their
    pairing and run; only when every input is one file at most and none is repeated (else
    the pairing is the expanded files', see :func:`_pair`)."""
    from . import io as lio

    if not any(v is not None and len(v) == len(specs) > 1 for v in per_input):
        return per_input
    per_spec = [lio.expand_inputs([s])[0] for s in specs]
    if any(len(f) > 1 for f in per_spec) or [f[0] for f in per_spec if f] != list(files):
        return per_input
    keep = [i for i, f in enumerate(per_spec) if f]
    return tuple([v[i] for i in keep] if v is not None and len(v) == len(specs) else v for v in per_input)


def _pair(values: list[Any] | None, n: int, what: str, hint: str = "") -> list[Any]:
    if not values:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) == n:
        return list(values)
    raise UsageError(f"got {len(values)} {what}s for {n} input image(s){hint}: give one {what} for all "
                     f"inputs or exactly one per input")


#: Environment variables that set diffusers', transformers' and huggingface_hub's log level when
#: they are imported.
_VERBOSITY_ENV = ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY")  # the Hub's "Retrying in 8s"
_LIBRARY_LOGGING = ("diffusers.utils.logging", "transformers.utils.logging")


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False, load: bool = False):
    """While a command runs, diffusers and transformers print errors only and no
    model-loading bars (such as "requires torchvision ... falling back" and
    "Loading pipeline components"); ``verbose`` (``-v``) leaves them as they are.

    Importing diffusers takes seconds, so by default this only sets the
    libraries' verbosity environment variables (read when they are imported) and
    configures the ones already imported; ``load=True`` imports their logging
    modules first, which also covers diffusers' loading bars (use it where a
    model is about to load). Everything is restored afterwards: ``main()`` may
    run inside another program or a test session.
    """
    if verbose:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in _VERBOSITY_ENV}
    for key in _VERBOSITY_ENV:
        os.environ.setdefault(key, "error")  # a value the user set wins
    saved: list[tuple[Any, int, bool]] = []
    for name in _LIBRARY_LOGGING:
        module = sys.modules.get(name)
        if module is None and load:
            with contextlib.suppress(ImportError):
                module = importlib.import_module(name)
        if module is not None:
            saved.append((module, module.get_verbosity(), module.is_progress_bar_enabled()))
    try:
        for module, _, _ in saved:
            module.set_verbosity(logging.ERROR)
            module.disable_progress_bar()
        with warnings.catch_warnings():
            # the libraries' deprecation notices (diffusers' scheduler-config FutureWarning,
            # huggingface_hub's argument warnings) are for developers, not for a command's user
            for category in (FutureWarning, DeprecationWarning):
                warnings.simplefilter("ignore", category)
            warnings.filterwarnings("ignore", module=r"(diffusers|transformers|huggingface_hub)(\.|$)")
            yield
    finally:
        for module, level, bars in saved:
            module.set_verbosity(level)
            (module.enable_progress_bar if bars else module.disable_progress_bar)()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def add_family_args(group, advanced=None) -> None:
    """``--backbone``, ``--model-config``, ``--no-prompt-suffix`` (shared by edit, localize, eval, serve);
    with ``advanced``, the last two go to that group, listed by ``--help-all`` only."""
    from .config import BACKBONE_NAMES

    group.add_argument("--backbone", default=None, choices=BACKBONE_NAMES,
                       help="editor family (default: recognised from the model; see README, 'Editors')")
    rare = group if advanced is None else advanced
    add_model_config_arg(rare, hidden=advanced is not None)
    (_advanced if advanced is not None else type(rare).add_argument)(
        rare, "--no-prompt-suffix", action="store_true",
        help="do not append the family's own prompt text (HIVE's reward suffix)")


def add_model_config_arg(group, hidden: bool = False) -> None:
    (_advanced if hidden else type(group).add_argument)(
        group, "--model-config", default=None, metavar="ID|FOLDER",
        help="for a single-file checkpoint: a diffusers folder or Hub id with the same "
             "architecture to take configs from (default: chosen per family)")


def family_load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``from_pretrained`` keywords that :func:`add_family_args` flags set."""
    kw: dict[str, Any] = {}
    if getattr(args, "backbone", None):
        kw["backbone"] = args.backbone
    if getattr(args, "model_config", None):
        kw["model_config"] = args.model_config
    if getattr(args, "no_prompt_suffix", False):
        kw["prompt_suffix"] = ""
    return kw


def _load_pipeline(args: argparse.Namespace):
    """Load the model once (tests replace this to inject a pipeline)."""
    from .pipeline import LimePipeline

    return LimePipeline.from_pretrained(args.model, torch_dtype=args.dtype, device=args.device,
                                        allow_pickle=args.allow_pickle,
                                        local_files_only=True if args.local_files_only else None,
                                        **({"offload": True} if getattr(args, "offload", False) else {}),
                                        **(p2p_load_kwargs(args) if getattr(args, "command", None) == "p2p"
                                           else family_load_kwargs(args)))


def _run(args: argparse.Namespace, task: str) -> int:
    from . import io as lio
    from .imageops import DEFAULT_MAX_PIXELS

    t_start = time.perf_counter()
    if args.threads < 0:
        raise UsageError(f"--threads {args.threads}: must be at least 0 (0 = torch's default)")
    overrides = collect_overrides(args)
    instructions = list(args.instruction)
    for text in instructions:
        if task == "p2p":
            check_text_flag(text, "--target", "describe the result, e.g. --target 'a photo of a pink sky'")
        else:
            check_text_flag(text, "-i/--instruction", "say what to change, e.g. -i 'make the sky pink'")
    if task == "p2p":
        for text in args.source:
            check_text_flag(text, "--source", "describe the input, e.g. --source 'a photo of a sky'")
        p2p_load_kwargs(args)           # a bad --reweight is a usage error before any work
    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else (args.max_pixels or None)
    if max_pixels is not None and max_pixels < 64:
        raise UsageError(f"--max-pixels {max_pixels} is too small (0 = no limit)")
    editing = task in ("edit", "p2p")
    no_lime = editing and args.no_lime
    mask_files = getattr(args, "mask", None) if editing else None
    if args.explain and (no_lime or mask_files):
        raise UsageError("--explain needs automatic localization; drop --mask/--no-lime")

    files, problems = lio.expand_inputs(args.inputs)
    failed = 0
    several = len(files) + len(problems) > 1       # a summary line ends a run of several inputs
    for p in problems:
        _err(f"error: {p.spec}: {p.message}")
        failed += 1
    named = [lio.path_key(s) for s in args.inputs if os.path.isfile(s)]
    sources = args.source if task == "p2p" else None
    instructions, sources, mask_files = _drop_failed_pairs(args.inputs, files, instructions, sources, mask_files)
    # a folder (or glob) that is also the output folder: this tool's own outputs in it, which
    # its records list, are not inputs (a rerun would edit its edits); files named one by one are
    out_key = lio.path_key(args.out) if args.out else None
    in_out = any(lio.path_key(f.parent) == out_key for f in files)     # reading the records only then
    own = lio.recorded_outputs(args.out) - set(named) if in_out else set()
    if own:
        kept = [f for f in files if lio.path_key(f) not in own]
        if len(kept) < len(files) and not args.quiet:
            _err(f"note: {len(files) - len(kept)} file(s) of the input folders are outputs of earlier runs in "
                 f"{args.out} (their records list them): not taken as inputs")
        files = kept
    if not files:
        _err("error: no input images")
        return EXIT_USAGE
    hint = " (a file given twice is edited once)" if len(named) != len(set(named)) else ""
    instr_for = _pair(instructions, len(files), "target caption" if task == "p2p" else "instruction", hint)
    source_for = _pair(sources, len(files), "source caption", hint) if task == "p2p" else [None] * len(files)
    mask_for = _pair(mask_files, len(files), "mask", hint)

    out_dir = lio.check_out_dir(args.out)
    if task == "localize":
        kinds = ["mask", "overlay", "segments", "record"]
    elif no_lime:
        kinds = ["edited", "record"]
    elif mask_files:
        kinds = ["edited", "mask", "overlay", "record"]
    else:
        kinds = ["edited", "mask", "overlay", "segments", "record"]
    plans = lio.plan_outputs(files, out_dir, kinds, explain=args.explain)

    # Before any expensive work, per input: a complete output set made by this same
    # request is skipped (a rerun after an interruption), an incomplete one redone,
    # one made by another request refused unless --overwrite.
    todo, skipped = [], 0
    requests = [_request(args, task, plan, instr_for[i], mask_for[i], overrides, no_lime, source_for[i])
                for i, plan in enumerate(plans)]
    # an output named like one of this run's inputs or masks (photo.png next to its own
    # photo_mask.png, or photo_edited.png given as an input) would destroy it: refused, even
    # with --overwrite, before any work
    protected = lio.run_files([*files, *(m for m in (mask_files or []) if m)])
    with lio.output_lock(out_dir):      # a run publishing in this folder now finishes its set first
        for plan in plans:
            plan.existing = plan.find_existing()
            plan.record_stamp = lio.file_stamp(plan.paths["record"])
        states = [plan.state(requests[i]) if not args.overwrite else ("", "") for i, plan in enumerate(plans)]
    for i, plan in enumerate(plans):
        plan.protected = protected
        clash = plan.replaces()
        if clash is not None:
            _err(f"error: {plan.source}: its output {clash.name} would replace an input or mask of this run "
                 f"({clash}); use another --out")
            failed += 1
            continue
        folder = next((p for p in plan.paths.values() if p.is_dir()), None)
        if folder is not None:          # no rename can replace a folder, --overwrite or not
            _err(f"error: {plan.source}: its output {folder} is a folder; remove it or use another --out")
            failed += 1
            continue
        if args.overwrite:
            todo.append(i)
            continue
        state, detail = states[i]
        if state == "done":
            skipped += 1
            if not args.quiet:
                _err(f"skipped: {plan.source}: done already ({detail}); --overwrite redoes it")
            record = lio.read_record(plan.paths["record"]) or {}
            main_out = next((plan.out_dir / record["outputs"][k] for k in ("edited", "mask", "record")
                             if k in record.get("outputs", {})), plan.paths["record"])
            print(main_out, flush=True)  # stdout lists every input's main output, done now or before
        elif state == "conflict":
            _err(f"error: {plan.source}: output exists ({detail}); use --overwrite to replace it")
            failed += 1
        else:
            if state == "redo" and not args.quiet:
                _err(f"note: {plan.source}: {detail}; redoing it")
            todo.append(i)
    if not todo:
        if not args.quiet and skipped and several:
            _err(f"{task}: 0 done, {skipped} done already, {failed} failed; outputs in {out_dir}")
        return EXIT_OK if failed == 0 else EXIT_SOME_FAILED

    # One mask for every input: read it once, before loading the model.
    shared_mask = None
    if mask_files and len(set(mask_files)) == 1:
        shared_mask = lio.load_mask(mask_files[0], max_pixels)

    show_bars = not args.quiet and sys.stderr.isatty()
    with quiet_libraries(args.verbose, load=True):
        return _run_items(args, task, plans, todo, instr_for, mask_for, shared_mask, overrides,
                          max_pixels, show_bars, failed, out_dir, t_start, requests, skipped,
                          source_for=source_for, several=several)


def _file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """A file as a rerun sees it: absolute path, size and modification time."""
    out: dict[str, Any] = {"path": os.path.abspath(path)}
    try:
        st = os.stat(path)
        out.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    except OSError:
        pass
    return out


def _request(args, task: str, plan, instruction: str, mask_file, overrides: dict[str, Any],
             no_lime: bool, source: str | None = None) -> dict[str, Any]:
    """What identifies one input's job; stored in its JSON record, and a rerun skips
    the input only if its record holds the same request (see OutputPlan.state)."""
    model = os.path.abspath(args.model) if os.path.exists(args.model) else args.model
    return {"command": task, "input": _file_identity(plan.source), "instruction": instruction,
            "mask": _file_identity(mask_file) if mask_file else None, "no_lime": bool(no_lime),
            "model": model, "device": args.device, "dtype": args.dtype, "seed": args.seed,
            "explain": bool(args.explain), "source_caption": source, **family_load_kwargs(args),
            "overrides": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(overrides.items())}}


def _run_items(args, task, plans, todo, instr_for, mask_for, shared_mask, overrides, max_pixels,
               show_bars, failed, out_dir, t_start, requests=None, skipped=0, source_for=None,
               several: bool = False) -> int:
    from tqdm import tqdm

    t0 = time.perf_counter()
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)
    try:
        lp = _load_pipeline(args)
    except Exception as err:  # bad device/dtype surface as RuntimeError/AssertionError from torch
        if os.environ.get("LIME_EDIT_DEBUG"):
            raise
        _err(_named(f"model {args.model}", args.model, err))
        return EXIT_USAGE
    load_s = time.perf_counter() - t0
    try:
        if task != "p2p":
            refuse_caption_model(lp, args.model)
        check_model_settings(lp, overrides, args)
    except LimeEditError as err:
        _err(f"error: {err}")
        return EXIT_USAGE
    pipe = getattr(lp, "pipe", None)
    if pipe is not None and hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=not show_bars, leave=False)

    done = 0
    bar = tqdm(todo, desc=f"lime-edit {task}", unit="image", disable=not show_bars or len(todo) < 2,
               file=sys.stderr)
    for i in bar:
        plan, instruction = plans[i], instr_for[i]
        try:
            written, warnings = _process_one(lp, args, task, plan, instruction, mask_for[i], shared_mask,
                                             overrides, max_pixels, load_s,
                                             requests[i] if requests is not None else None,
                                             [p.stem for p in plans],
                                             source=source_for[i] if source_for else None)
        except KeyboardInterrupt:
            raise
        except (LimeEditError, OSError) as err:
            _err(_item_error(plan.source, err))
            failed += 1
            continue
        except Exception as err:  # one bad input must not end the batch
            if os.environ.get("LIME_EDIT_DEBUG"):
                raise
            _err(_item_error(plan.source, err) + " (set LIME_EDIT_DEBUG=1 for a traceback)")
            failed += 1
            continue
        done += 1
        if not args.quiet:
            for w in warnings:
                _err(f"warning: {plan.source}: {w}")
        main_out = written.get("edited") or written.get("mask") or written.get("record")
        bar.clear()
        print(main_out, flush=True)  # stdout: one output path per input, for scripts
        bar.refresh()
    bar.close()
    if not args.quiet and several:       # the inputs given, failed ones before planning included
        again = f", {skipped} done already" if skipped else ""
        _err(f"{task}: {done} done{again}, {failed} failed, {time.perf_counter() - t_start:.1f}s; "
             f"outputs in {out_dir}")
    return EXIT_OK if failed == 0 else EXIT_SOME_FAILED


def _process_one(lp, args, task: str, plan, instruction: str, mask_file: str | None, shared_mask,
                 overrides: dict[str, Any], max_pixels: int | None, load_s: float,
                 request: dict[str, Any] | None = None, batch_stems: Sequence[str] = (),
                 source: str | None = None):
    """Run one input and publish its outputs (all-or-nothing, JSON record last);
    returns ``(written kind -> path, warnings)``."""
    from . import io as lio
    from . import viz
    from .imageops import stretch_notes

    t0 = time.perf_counter()
    image = lio.load_image(plan.source, max_pixels)
    warnings: list[str] = []
    mask_source: dict[str, Any] = {"kind": "auto"}
    mask = "auto"
    if task in ("edit", "p2p") and args.no_lime:
        mask, mask_source = None, {"kind": "none"}
    elif mask_file is not None:
        mask = shared_mask if shared_mask is not None else lio.load_mask(mask_file, max_pixels)
        # said here too, for any editor (LimePipeline says the same; the record keeps it once)
        warnings += stretch_notes((int(mask.shape[1]), int(mask.shape[0])), image.size)
        mask_source = {"kind": "file", "file": str(mask_file), "size": [int(mask.shape[1]), int(mask.shape[0])],
                       "fraction": round(lio.mask_coverage(mask), 6)}
    read_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    if task in ("edit", "p2p"):
        if task == "p2p":
            res = lp.edit_captions(image, source, instruction, mask=mask, seed=args.seed, **overrides)
        else:
            res = lp.edit(image, instruction, mask=mask, seed=args.seed, **overrides)
        loc = res.localization
        region = res.mask if res.mask is not None else (loc.mask if loc is not None else None)
        if region is None and mask_source["kind"] == "file":
            region = mask  # an empty user mask is still shown as given
        settings = dict(res.settings) if res.settings else lp.config.replace(**overrides).to_dict()
        warnings = list(res.warnings) + [w for w in warnings if w not in res.warnings]
        seed, lime_applied, core_timings = res.seed, res.lime_applied, dict(res.timings)
    else:
        loc = lp.localize(image, instruction, seed=args.seed, **overrides)
        region, res = loc.mask, None
        settings = lp.config.replace(**overrides).to_dict()
        seed, lime_applied, core_timings = args.seed, None, {}
        warnings = list(loc.warnings) + warnings
        if not loc.token_indices:
            warnings.append("no related token left in the instruction (only stop words, verbs or "
                            "punctuation): the mask is empty")
        elif not bool(loc.mask.any()):
            warnings.append("localization found no region: the mask is empty")
    run_s = time.perf_counter() - t1

    t2 = time.perf_counter()
    size = image.size
    files: dict[Path, bytes] = {}
    written: dict[str, Path] = {}

    def put(kind: str, path: Path, picture) -> None:
        files[path] = lio.encode_image(picture, path)
        written[kind] = path

    if res is not None:
        edited = res.image if res.image.size == size else res.image.resize(size, _lanczos())
        put("edited", plan.paths["edited"], edited.convert("RGB"))
    if region is not None and "mask" in plan.paths:
        put("mask", plan.paths["mask"], viz.mask_image(region, size))
        put("overlay", plan.paths["overlay"], viz.overlay(image, region))
    if loc is not None and "segments" in plan.paths:
        put("segments", plan.paths["segments"], viz.segment_map(loc.segments, size, mask=loc.mask))
    heatmaps: list[dict[str, Any]] = []
    if args.explain and loc is not None:
        for n, (tok_idx, word, pic) in enumerate(viz.token_heatmaps(loc, image)):
            path = plan.heatmap_path(n, word)
            files[path] = lio.encode_image(pic, path)
            heatmaps.append({"token_index": tok_idx, "token": word, "file": path.name})
    if args.explain and loc is None:
        warnings.append("--explain: no heatmaps, the edit ran without localization")

    record = {
        "lime_edit_version": _version(),
        "command": task,
        "input": str(plan.source),
        "input_size": list(size),
        "instruction": instruction,
        **({"source_caption": source, "target_caption": instruction} if source is not None else {}),
        "model": args.model,
        "device": str(getattr(getattr(lp, "pipe", None), "device", args.device)),
        "dtype": str(getattr(getattr(lp, "pipe", None), "dtype", args.dtype)).replace("torch.", ""),
        "seed": seed,
        "mask_source": mask_source,
        "lime_applied": lime_applied,
        "warnings": warnings,
        "settings": settings,
        "overrides": {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()},
        "localization": _loc_summary(loc, region),
        "outputs": {k: p.name for k, p in written.items()},
        "heatmaps": heatmaps,
        "timings": {"load_model": round(load_s, 4), "read": round(read_s, 4),
                    **({k: round(float(v), 4) for k, v in core_timings.items() if k != "batch_size"}
                       if core_timings else {task: round(run_s, 4)}),
                    "write": None},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _lib_versions(),
        "request": request if request is not None else _request(args, task, plan, instruction, mask_file,
                                                                  overrides, bool(getattr(args, "no_lime", False)),
                                                                  source),
    }
    record["timings"]["write"] = round(time.perf_counter() - t2, 4)
    record_path = plan.paths["record"]
    written["record"] = record_path

    with lio.output_lock(plan.out_dir):     # check and publish as one step against other runs
        _publish(args, plan, files, record_path, record, batch_stems)
    return written, warnings


def _publish(args, plan, files: dict[Path, bytes], record_path: Path, record: dict[str, Any],
             batch_stems: Sequence[str]) -> None:
    from . import io as lio

    if not args.overwrite:  # another process may have written there since planning
        before = set(plan.existing)
        clash = [p for p in [*files, record_path] if (p.exists() or p.is_symlink()) and p not in before]
        if not clash and lio.file_stamp(record_path) != plan.record_stamp:
            clash = [record_path]       # replaced since planning (another run published this input)
        if clash:
            raise LimeEditError(f"output appeared while running ({clash[0]}); use --overwrite to replace it")
    clash = plan.replaces(files)       # a heatmap named like an input
    if clash is not None:
        raise LimeEditError(f"output {clash.name} would replace an input or mask of this run ({clash}); "
                            "use another --out")
    old = lio.read_record(record_path)
    # files of the replaced set that the new one lacks: those its record (final or pending,
    # with what a pending one was replacing) named, or, with --overwrite, heatmaps of this
    # input found without any record; never one of the run's inputs or masks
    stale = [plan.out_dir / n for n in plan.recorded_files(old) or []] if old is not None else \
        (plan.leftover_heatmaps(batch_stems) if args.overwrite else [])
    stale = [p for p in stale if p not in files and p != record_path and plan.replaces([p]) is None]
    lio.publish_outputs(files, record_path, record,      # record last; all-or-nothing
                        replaces=[p.name for p in stale])
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
    # what a killed run (or a failed cleanup) left of this input's temporary files
    lio.remove_stale_temps(plan.out_dir, [*(p.name for p in files), record_path.name, *(p.name for p in stale)])


def _lanczos():
    from PIL import Image

    return Image.Resampling.LANCZOS


def _loc_summary(loc, region) -> dict[str, Any] | None:
    if loc is None and region is None:
        return None
    from . import io as lio

    out: dict[str, Any] = {}
    if region is not None:
        out["mask_fraction"] = round(lio.mask_coverage(region), 6)
        out["grid_size"] = [int(v) for v in region.shape]
    if loc is not None:
        out.update(tokens=list(loc.tokens), token_indices=[int(v) for v in loc.token_indices],
                   selected_segments=[int(v) for v in loc.selected_segments],
                   num_segments=int(loc.num_segments), num_points=int(len(loc.points)), top_k_points=int(loc.top_k),
                   processed_size=list(loc.image_size))
    return out


def _lib_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for mod in ("torch", "diffusers", "transformers"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
