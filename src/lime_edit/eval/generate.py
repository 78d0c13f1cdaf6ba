"""``lime-edit eval``: run LIME (or plain IP2P with ``--no-lime``) on a benchmark.

Only the public API is used: ``LimePipeline.from_pretrained(...)`` and
``lp.edit(image, instruction, mask="auto" | None, seed=..., **settings)``.

Outputs (the layout each benchmark's scorer reads, see :mod:`lime_edit.eval.score`):

- MagicBrush: ``RUN_DIR/<img_id>/<img_id>_1.png`` (turn 1, shared by both protocols),
  ``<img_id>_inde_<k>.png`` (``--protocol single``: turn k edits the ground-truth
  input of turn k) and ``<img_id>_iter_<k>.png`` (``--protocol multi``: turn k edits
  the model's own output of turn k-1). Inputs are resized as MagicBrush's
  ``edit_cli`` does (long side 512, short side rounded up to a multiple of 64,
  ``ImageOps.fit`` LANCZOS); outputs stay at that size (the scorer resizes them).
- PIE-Bench: ``RUN_DIR/annotation_images/<image_path>``, saved like their scripts
  (``Image.save`` with the original file name, so PIL's default quality for
  ``.jpg``; ``--lossless`` writes a ``.png`` of the same stem instead);
  ``editing_instruction`` is the instruction; a caption editor (``--backbone p2p``)
  edits from ``original_prompt`` to ``editing_prompt`` (``[ ]`` markers removed) instead,
  with the ``piebench`` preset by default (``--preset``; :func:`piebench_p2p_options`:
  blend and reweighting words from the record's ``blended_word``), PnPInversion's model
  (``--model`` left out) and float32 (``--dtype`` left out), which gives PIE-Bench's
  "DirectInversion + P2P" row with ``--no-lime`` and, without it, its "+ LIME"
  counterpart; the manifest's ``sampler.p2p_preset`` and each record's ``p2p`` say which
  settings ran. The other benchmarks have no captions and refuse a caption editor.
- EditVal: ``RUN_DIR/<edit_type>/<image_id>/<to>.png`` at the COCO image's size (a ``to``
  over 200 bytes cut and given a hash, see :func:`lime_edit.eval.datasets.safe_component`).

Sampler defaults follow each benchmark's IP2P protocol (MagicBrush: 100 steps;
PIE-Bench and EditVal: 50 steps; text guidance 7.5, image guidance 1.5; PIE-Bench
seed 1234 before each image) for LIME and plain runs alike; any LIME setting flag
overrides them. Every sample gets the same ``--seed``.

Resumable: every image is written atomically as soon as it is done, then its
record (instruction, seed, timings, warnings) lands in ``RUN_DIR/.records/``; a
rerun of the same command skips the outputs whose image *and* record are there (a
multi-turn session continues from its last recorded turn) and regenerates an image
left without its record (a kill between the two), so every manifest entry is a
full record. ``RUN_DIR/manifest[-<protocol>].json`` holds the settings, model,
library versions and the merged per-sample records; a rerun with different settings
is refused unless ``--overwrite``. Under ``accelerate launch`` the samples are
sharded across processes.

Writes stay in the run folder: every output path (built from dataset fields) is
resolved, symlinks followed, and must lie inside ``RUN_DIR`` and outside the
dataset's folders (the benchmark's root, the one holding its JSON file, plus
``--coco-dir`` and every folder holding a source image); a sample whose path does
not is refused with a one-line error, counted as failed, and the run goes on. A
``RUN_DIR`` inside the dataset's root folder is refused.
"""

from __future__ import annotations

import functools

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import LimeEditError
from ..io import printable
from .runner import RowStore, failure_line, get_shard

PROTOCOL_SETTINGS: dict[str, dict[str, Any]] = {
    "magicbrush": {"num_inference_steps": 100, "guidance_scale": 7.5, "image_guidance_scale": 1.5},
    "piebench": {"num_inference_steps": 50, "guidance_scale": 7.5, "image_guidance_scale": 1.5},
    "editval": {"num_inference_steps": 50, "guidance_scale": 7.5, "image_guidance_scale": 1.5},
}
DEFAULT_SEED = {"magicbrush": 0, "piebench": 1234, "editval": 0}

#: IP2P instructions for EditVal. The first five are the templates BENCHMARKS.md lists
#: from EditVal's code; the others are ours (EditVal gives no IP2P template for them).
EDITVAL_PROMPTS = {
    "object_addition": "Add a {to}",
    "positional_addition": "Add {to} the {cls}",
    "size": "Change the size of {cls} to {to}",
    "shape": "Change the shape of the {cls} to {to}",
    "alter_parts": "{to} to {cls}",
    # ours:
    "object_replacement": "Replace the {cls} with a {to}",
    "position_replacement": "Move the {cls} to the {to}",
    "color": "Change the color of the {cls} to {to}",
    "texture": "Change the texture of the {cls} to {to}",
    "background": "Change the background to {to}",
    "style": "Make it in {to} style",
    "action": "Make the {cls} {to}",
    "viewpoint": "Show the {cls} from a {to} view",
}


def magicbrush_resize(image, resolution: int = 512):
    """MagicBrush/IP2P ``edit_cli`` input resize: long side ``resolution``, short side
    rounded up to a multiple of 64, then both floored to multiples of 64 and
    ``ImageOps.fit`` with LANCZOS."""
    from PIL import Image, ImageOps

    width, height = image.size
    factor = resolution / max(width, height)
    factor = math.ceil(min(width, height) * factor / 64) * 64 / min(width, height)
    width = int((width * factor) // 64) * 64
    height = int((height * factor) // 64) * 64
    if (width, height) == image.size:
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)


@dataclass
class GenUnit:
    """One sample to generate: ``run(editor, ctx) -> record``; ``outputs`` for skipping,
    ``sources`` (the dataset files it reads) for :class:`OutputGuard`."""

    key: str
    outputs: list[Path]
    run: Callable[[Any, "Ctx"], dict[str, Any]]
    sources: list[Path] = field(default_factory=list)


class OutputGuard:
    """Where ``eval`` may write: inside ``run_dir`` and outside every dataset folder,
    both compared after resolving symlinks (``os.path.realpath``)."""

    def __init__(self, run_dir: str | os.PathLike, data_dirs: list[str | os.PathLike] = ()):
        self.run_dir = Path(os.path.realpath(run_dir))
        self.data_dirs: list[Path] = []
        for d in data_dirs:
            self.add_data_dir(d)

    def add_data_dir(self, folder: str | os.PathLike) -> None:
        real = Path(os.path.realpath(folder))
        if real not in self.data_dirs:
            self.data_dirs.append(real)

    def problem(self, path: str | os.PathLike) -> str | None:
        """Why ``path`` may not be written (one line), or ``None``."""
        real = Path(os.path.realpath(path))
        for d in self.data_dirs:
            if real.is_relative_to(d):
                return f"output {str(path)!r} resolves to {str(real)!r}, inside the dataset folder {str(d)!r}"
        if real == self.run_dir or not real.is_relative_to(self.run_dir):
            return f"output {str(path)!r} resolves to {str(real)!r}, outside the run folder {str(self.run_dir)!r}"
        return None

    def check(self, path: str | os.PathLike) -> Path:
        msg = self.problem(path)
        if msg:
            raise LimeEditError(msg)
        return Path(path)


@dataclass
class Ctx:
    mask: Any                 # "auto" or None
    seed: int
    overrides: dict[str, Any]
    overwrite: bool
    guard: OutputGuard | None = None
    turns: RowStore | None = None   # per-output records of multi-output samples (MagicBrush turns)
    p2p_preset: str | None = None   # a caption editor's preset (PIE-Bench; see piebench_p2p_options)

    def save(self, path: Path, image) -> None:
        """Write an edited image (atomically), after the guard allowed its path."""
        from ..io import atomic_save_image

        if self.guard is not None:
            self.guard.check(path)
        atomic_save_image(path, image.convert("RGB"))

    def put_turn(self, key: str, row: dict[str, Any]) -> None:
        if self.turns is not None:
            if self.guard is not None:
                self.guard.check(self.turns.path(key))
            self.turns.put(key, row)

    def get_turn(self, key: str) -> dict[str, Any] | None:
        row = self.turns.get(key) if self.turns is not None else None
        return None if row is None else {k: v for k, v in row.items() if k != "key"}


def _record(res, t0: float, ctx: Ctx, **fields) -> dict[str, Any]:
    timings = {k: round(float(v), 4) for k, v in (getattr(res, "timings", None) or {}).items()}
    timings.setdefault("total", round(time.perf_counter() - t0, 4))
    return {**fields, "seed": ctx.seed, "lime_applied": bool(getattr(res, "lime_applied", False)),
            "warnings": list(getattr(res, "warnings", []) or []), "timings": timings}


def _edit(editor, image, instruction: str, ctx: Ctx):
    t0 = time.perf_counter()
    res = editor.edit(image, instruction, mask=ctx.mask, seed=ctx.seed, **ctx.overrides)
    return res, _record(res, t0, ctx, instruction=instruction)


def _edit_captions(editor, image, source: str, target: str, ctx: Ctx, p2p: dict[str, Any] | None = None):
    t0 = time.perf_counter()
    res = editor.edit_captions(image, source, target, mask=ctx.mask, seed=ctx.seed, p2p=p2p, **ctx.overrides)
    rec = _record(res, t0, ctx, source_caption=source, target_caption=target)
    if isinstance(getattr(res, "settings", None), dict) and "p2p" in res.settings:
        rec["p2p"] = res.settings["p2p"]         # the preset and the words this sample used
    return res, rec


def piebench_p2p_options(preset: str, blended_word: str) -> dict[str, Any]:
    """The Prompt-to-Prompt settings of one PIE-Bench record (``edit_captions(p2p=...)``):
    preset ``piebench`` takes its blend (and reweighting) words from the record's
    ``blended_word`` ("cat dog": source word, target word), as PnPInversion's
    ``run_editing_p2p.py`` does; ``default`` is lime-edit's P2P defaults (no words)."""
    from ..backbones.p2p import parse_blend_words

    if preset == "piebench":
        return {"preset": preset, "blend_words": parse_blend_words(blended_word)}
    return {"preset": preset}


def _captions(editor) -> bool:
    """Whether the editor edits by captions (the p2p backbone) rather than instructions."""
    return bool(getattr(getattr(editor, "backbone", None), "caption_editing", False))


def _load_input(path: Path):
    from ..io import load_image

    return load_image(path, max_pixels=None)


# --------------------------------------------------------------------------- units
def magicbrush_units(data, out: Path, protocol: str, limit: int | None):
    from .datasets import read_magicbrush

    sessions, problems = read_magicbrush(data)
    sessions = sessions[:limit] if limit is not None else sessions
    units = []
    for s in sessions:
        folder = out / s.img_id
        names = [f"{s.img_id}_1.png"] + [f"{s.img_id}_{'inde' if protocol == 'single' else 'iter'}_{t.index}.png"
                                         for t in s.turns[1:]]
        paths = [folder / n for n in names]
        sources = [t.input for t in s.turns if t.index == 1 or protocol == "single"]
        units.append(GenUnit(s.img_id, paths, _mb_run(s, paths, protocol), sources))
    return units, problems


def _mb_run(session, paths: list[Path], protocol: str):
    def run(editor, ctx: Ctx) -> dict[str, Any]:
        turns = []
        prev = None
        for turn, path in zip(session.turns, paths):
            turn_key = f"{session.img_id}/{path.name}"  # turn 1 is shared by both protocols
            old = None if ctx.overwrite or not path.is_file() else ctx.get_turn(turn_key)
            if old is not None:                      # image and record both there: done
                turns.append(old)
                prev = path
                continue
            if turn.index == 1 or protocol == "single":
                src = turn.input                     # ground-truth input of this turn
            else:
                src = prev                           # the model's own previous output
            image = magicbrush_resize(_load_input(src))
            res, rec = _edit(editor, image, turn.instruction, ctx)
            ctx.save(path, res.image)
            prev = path
            rec = {"turn": turn.index, "output": path.name, "input": src.name, **rec}
            ctx.put_turn(turn_key, rec)
            turns.append(rec)
        return {"turns": turns}

    return run


def piebench_units(data, out: Path, limit: int | None, categories: set[str] | None = None,
                   lossless: bool = False):
    from .datasets import read_piebench

    items, problems = read_piebench(data, categories=categories)
    items = items[:limit] if limit is not None else items
    units = []
    for it in items:
        path = out / "annotation_images" / it.image_path
        if lossless:  # PNG twin of the .jpg name (the scorer accepts either)
            path = path.with_suffix(".png")

        def run(editor, ctx: Ctx, it=it, path=path) -> dict[str, Any]:
            # Called when the image or its record is missing (or --overwrite): an image
            # without its record (killed between the two) is regenerated, never
            # recorded as a bare "skipped" entry.
            if _captions(editor):
                res, rec = _edit_captions(editor, _load_input(it.image), it.clean_original_prompt,
                                          it.clean_editing_prompt, ctx,
                                          p2p=piebench_p2p_options(ctx.p2p_preset or "piebench", it.blended_word))
            else:
                res, rec = _edit(editor, _load_input(it.image), it.editing_instruction, ctx)
            # Saved like PnP-Inversion's scripts: same relative name, PIL defaults for the format.
            ctx.save(path, res.image)
            return {"output": str(path.relative_to(out)), "category": it.editing_type_id, **rec}

        units.append(GenUnit(it.key, [path], run, [it.image]))
    return units, problems


def editval_units(data, out: Path, limit: int | None, coco_dir=None, edit_types: set[str] | None = None):
    from .datasets import read_editval

    edits, problems = read_editval(data, coco_dir=coco_dir, edit_types=edit_types)
    edits = edits[:limit] if limit is not None else edits
    units = []
    for e in edits:
        path = out / e.output_relpath
        template = EDITVAL_PROMPTS.get(e.edit_type, "{to} to {cls}")
        instruction = template.format(to=e.to, cls=e.class_name)

        def run(editor, ctx: Ctx, e=e, path=path, instruction=instruction) -> dict[str, Any]:
            res, rec = _edit(editor, _load_input(e.image), instruction, ctx)  # record missing: (re)do it
            ctx.save(path, res.image)
            return {"output": str(path.relative_to(out)), "edit_type": e.edit_type, **rec}

        units.append(GenUnit(e.key, [path], run, [e.image]))
    return units, problems


# --------------------------------------------------------------------------- editor
def _load_pipeline(args, device):
    """Load the editor once (the tests replace this to inject a fake or tiny one)."""
    import torch

    from lime_edit import LimePipeline  # the public API only

    dtype = getattr(torch, _effective_dtype(args.dtype, device, _family_cuda_dtype(args)))
    from ..cli import family_load_kwargs

    lp = LimePipeline.from_pretrained(args.model, torch_dtype=dtype, device=str(device),
                                      allow_pickle=bool(getattr(args, "allow_pickle", False)),
                                      local_files_only=True if getattr(args, "local_files_only", False) else None,
                                      **family_load_kwargs(args))
    pipe = getattr(lp, "pipe", None)
    if pipe is not None and hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return lp


def _family_sampler(editor, overrides: dict[str, Any], user: dict[str, Any],
                    sampler: dict[str, Any]) -> dict[str, Any]:
    """The benchmark protocols fix IP2P's guidance; another family runs with its own guidance
    where the user set none (the steps stay the benchmark's, except for the families that
    run their own steps: ``Backbone.own_steps_in_benchmarks``, the flow-matching
    transformers, whose distilled samplers are made for few steps).  Updates ``overrides`` in place
    and returns where each sampler value came from, for the manifest."""
    family = getattr(editor, "backbone", None)
    if family is None:
        return sampler
    sampler = {**sampler, "backbone": {"value": family.name, "from": "model"}}
    if family.name == "ip2p":
        return sampler
    keys = ["guidance_scale", "image_guidance_scale", "localization_guidance_scale"]
    if family.own_steps_in_benchmarks:       # a flow-matching / distilled sampler: its own steps too
        keys.append("num_inference_steps")
    for k in keys:
        if k not in user and k in family.sampler_defaults:
            overrides[k] = family.sampler_defaults[k]
            sampler[k] = {"value": overrides[k], "from": f"{family.name} defaults"}
    return sampler


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    try:
        from importlib.metadata import version

        for dist in ("lime-edit", "torch", "diffusers", "transformers", "accelerate"):
            try:
                out[dist] = version(dist)
            except Exception:
                pass
    except ImportError:  # pragma: no cover
        pass
    return out


def _signature(args, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    sig = {"benchmark": args.benchmark, "model": args.model, "lime": not args.no_lime, "seed": seed,
           "backbone": getattr(args, "backbone", None),
           "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(overrides.items())}}
    if getattr(args, "lossless", False):
        sig["lossless"] = True
    if getattr(args, "preset", None) is not None or getattr(args, "backbone", None) == "p2p":
        sig["p2p_preset"] = _p2p_preset(args)
    return sig


def _p2p_preset(args) -> str:
    """The Prompt-to-Prompt preset of a PIE-Bench run with a caption editor: ``--preset``, or
    ``piebench`` (PnPInversion's row, so the numbers sit beside the published ones)."""
    return getattr(args, "preset", None) or "piebench"


def _resolve_model_and_dtype(args) -> None:
    """``--model`` left out: the IP2P default, or with ``--backbone p2p`` PnPInversion's SD v1.4;
    ``--dtype`` left out for the ``piebench`` preset: float32, as PnPInversion runs."""
    from .cli import DEFAULT_MODEL, P2P_MODEL

    p2p = getattr(args, "backbone", None) == "p2p"
    if getattr(args, "model", None) is None:
        args.model = P2P_MODEL if p2p else DEFAULT_MODEL
    if p2p and args.benchmark == "piebench" and _p2p_preset(args) == "piebench" and args.dtype is None:
        args.dtype = "float32"


def _effective_dtype(dtype: str | None, device: Any, cuda_auto: str = "float16") -> str:
    """The weights' dtype a run used: ``--dtype``, or with ``auto`` the family's CUDA dtype
    (``cuda_auto``: float16 for the U-Nets, bfloat16 for the transformers) on CUDA, else float32."""
    if dtype in (None, "auto"):
        return cuda_auto if str(device).startswith("cuda") else "float32"
    return str(dtype)


def _family_cuda_dtype(args) -> str:
    """The CUDA dtype of the family ``--backbone`` names, or a model folder's / cached Hub
    id's ``model_index.json`` class tells; float16 when neither says (single files: the
    U-Net families).  Looked up once per model (a run asks for it several times)."""
    return _cuda_dtype_of(str(args.model), getattr(args, "backbone", None))


@functools.lru_cache(maxsize=8)
def _cuda_dtype_of(model: str, backbone: str | None) -> str:
    from ..backbones import PIPELINE_FAMILIES, get_family
    from ..loading import read_model_index, resolve_model

    name = backbone
    if not name:
        try:
            path = Path(resolve_model(model)).expanduser()
            if path.is_dir():
                index = read_model_index(path)
            elif path.is_file():
                index = {}
            else:
                from diffusers import DiffusionPipeline

                index = DiffusionPipeline.load_config(model, local_files_only=True)
            name = PIPELINE_FAMILIES.get(str(index.get("_class_name", "")))
        except Exception:  # noqa: BLE001 - unknown here; loading reports a bad model in one line
            name = None
    if not name:
        return "float16"
    try:
        return str(get_family(name).cuda_dtype()).replace("torch.", "")
    except LimeEditError:
        return "float16"


def _read_manifest(m: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A manifest's JSON object ({} if it is not one) and its signature; OSError/ValueError
    when it cannot be read or parsed."""
    import json

    whole = json.loads(m.read_text())
    whole = whole if isinstance(whole, dict) else {}
    return whole, whole.get("signature")


def _check_signature(out: Path, sig: dict[str, Any], single_process: bool = True,
                     dtype: str | None = None) -> None:
    """Refuse a folder whose manifests hold other results-changing settings (``sig``), or whose
    samples were made in another weights dtype (``dtype``, effective; older manifests record
    ``--dtype`` and the device it was resolved on). The device alone may change on a resume."""
    manifests = sorted(out.glob("manifest*.json"))
    records = out / ".records"
    # (in a sharded run the other processes may write samples before the main one's manifest)
    if single_process and not manifests and records.is_dir() and any(p.is_file() for p in records.rglob("*")):
        raise LimeEditError(f"{out}: holds generated samples ({records}) but no manifest, so their settings "
                            "cannot be checked; use a new --out, or --overwrite to regenerate everything")
    for m in manifests:
        try:
            whole, old = _read_manifest(m)
        except (OSError, ValueError) as err:
            raise LimeEditError(f"{m}: unreadable ({type(err).__name__}), so this run folder's settings cannot be "
                                "checked; use a new --out, or --overwrite to regenerate everything") from None
        if dtype is not None and isinstance(whole.get("dtype"), str):
            was = _effective_dtype(whole["dtype"], whole.get("device", ""), whole.get("cuda_auto_dtype", "float16"))
            if was != dtype:
                raise LimeEditError(f"{m}: this run folder was generated in {was} and this run would use {dtype}; "
                                    f"rerun with --dtype {was}, use a new --out, or --overwrite to regenerate "
                                    "everything")
        if old and old != sig:
            diff = sorted(k for k in set(old) | set(sig) if old.get(k) != sig.get(k))
            raise LimeEditError(f"{m}: this run folder was generated with other {', '.join(diff)}; "
                                "use a new --out, or --overwrite to regenerate everything")


def _drop_stale_manifests(out: Path, keep: Path, sig: dict[str, Any], shared: Path) -> None:
    """Under ``--overwrite``: another protocol's manifest in the folder (MagicBrush's single and
    multi-turn runs share turn 1) made with other settings no longer describes the outputs this
    run rewrites. It is removed with its run's records and the per-output records both protocols
    share (``shared``; this run rewrites its own), with a notice: that protocol's next run
    regenerates its own samples (with these settings; other ones are refused), instead of resuming
    on turn-1 images made with these settings."""
    import shutil

    for m in sorted(out.glob("manifest*.json")):
        if m.resolve() == keep.resolve():
            continue
        try:
            old = _read_manifest(m)[1]
        except (OSError, ValueError):
            old = None
        if old != sig:
            # manifest-<protocol>.json's records are in .records/<protocol>, manifest.json's in .records/<benchmark>
            name = m.stem.partition("-")[2] or (old or {}).get("benchmark")
            m.unlink(missing_ok=True)
            if isinstance(name, str) and name and name == Path(name).name and not name.startswith("."):
                shutil.rmtree(out / ".records" / name, ignore_errors=True)
            shutil.rmtree(shared, ignore_errors=True)
            print(f"note: removed {m} and its records: that run shares outputs with this one and was made with "
                  "other settings; rerun it to regenerate it", file=sys.stderr)


def run_eval(args) -> int:
    """``lime-edit eval`` (see :mod:`lime_edit.eval.cli`)."""
    from ..cli import collect_overrides
    from ..io import atomic_write_json

    bench = args.benchmark
    from .cli import PROTOCOLS, protocol_error

    if args.protocol is not None and (bench != "magicbrush" or args.protocol not in PROTOCOLS[bench]):
        raise LimeEditError(protocol_error(bench, args.protocol, "eval"))   # e.g. EditVal's: scoring rules only
    protocol = (args.protocol or "single") if bench == "magicbrush" else None
    _resolve_model_and_dtype(args)
    user = collect_overrides(args)
    overrides = {**PROTOCOL_SETTINGS[bench], **user}
    seed = DEFAULT_SEED[bench] if args.seed is None else int(args.seed)
    out = Path(args.out)
    from .datasets import editval_root, first_per_output, magicbrush_root, piebench_root

    root = {"magicbrush": magicbrush_root, "piebench": piebench_root, "editval": editval_root}[bench](args.data)
    guard = OutputGuard(out, [root] + ([args.coco_dir] if getattr(args, "coco_dir", None) else []))
    for d in guard.data_dirs:  # before anything is created
        if guard.run_dir.is_relative_to(d):
            raise LimeEditError(f"--out {str(out)!r} is inside the dataset folder {str(d)!r}; eval never writes "
                                "there: choose a run folder outside it")
    from ..io import check_out_dir

    check_out_dir(out)               # a file, or a folder that cannot be made, is one line
    shard = get_shard(cpu=args.device == "cpu")
    device = args.device or shard.device

    if bench == "magicbrush":
        units, problems = magicbrush_units(args.data, out, protocol, args.limit)
    elif bench == "piebench":
        units, problems = piebench_units(args.data, out, args.limit,
                                         categories=set(args.categories.split(",")) if args.categories else None,
                                         lossless=bool(getattr(args, "lossless", False)))
    else:
        types = None if not args.edit_types else set(args.edit_types.split(","))
        units, problems = editval_units(args.data, out, args.limit, coco_dir=args.coco_dir, edit_types=types)
    # two samples whose names only this run makes one file (--lossless: <stem>.jpg and <stem>.png)
    units, shared = first_per_output(units, key=lambda u: u.key, outputs=lambda u: u.outputs,
                                     entry=lambda u: f"sample {u.key!r}", file=lambda u, name: name)
    problems = problems + shared
    for u in units:  # every folder a source image lies in is dataset too
        for src in u.sources:
            guard.add_data_dir(Path(src).parent)
    refused = {}
    for u in units:
        msg = next((m for m in map(guard.problem, u.outputs) if m), None)
        if msg:
            refused[u.key] = msg

    sig = _signature(args, overrides, seed)
    manifest_path = guard.check(out / (f"manifest-{protocol}.json" if protocol else "manifest.json"))
    if not args.overwrite:
        _check_signature(out, sig, single_process=shard.count == 1,
                         dtype=_effective_dtype(args.dtype, device, _family_cuda_dtype(args)))
    elif shard.is_main:
        _drop_stale_manifests(out, manifest_path, sig, shared=out / ".records" / f"{bench}-outputs")
    shard.barrier()  # every process checked before the main one writes
    base = {"signature": sig, "protocol": protocol, "limit": args.limit, "data": str(args.data),
            "device": str(device), "dtype": args.dtype or "auto", "cuda_auto_dtype": _family_cuda_dtype(args),
            "num_processes": shard.count,
            "versions": _versions(), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    first_run = not manifest_path.exists()
    if shard.is_main:
        atomic_write_json(manifest_path, {**base, "status": "running"})

    records = RowStore(out / ".records" / (protocol or bench))
    ctx = Ctx(mask=None if args.no_lime else "auto", seed=seed, overrides=overrides, overwrite=args.overwrite,
              guard=guard, turns=RowStore(out / ".records" / f"{bench}-outputs") if bench == "magicbrush" else None)

    def put_record(key: str, row: dict[str, Any]) -> None:
        guard.check(records.path(key))
        records.put(key, row)

    mine = shard.split(units)
    failed = 0
    sampler = {k: {"value": v, "from": "user" if k in user else "protocol"} for k, v in overrides.items()
               if k in PROTOCOL_SETTINGS[bench]}
    if shard.is_main:  # records the readers refused (malformed, unsafe paths, missing files): reported now
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
    for u in mine:  # paths that leave the run folder or enter the dataset: refused, counted, no model work
        if u.key in refused:
            failed += 1
            print(f"error: {u.key}: {refused[u.key]}", file=sys.stderr)
            put_record(u.key, {"error": {"file": str(u.outputs[0]) if u.outputs else "", "message": refused[u.key]},
                               "wall_s": 0.0})
    def done(u) -> bool:
        # the images and a successful record: a failure record is redone even if an image lies
        # under its name (an earlier run's, left when an --overwrite run then failed on it)
        rec = records.get(u.key)
        return all(p.is_file() for p in u.outputs) and rec is not None and not rec.get("error")

    todo = [u for u in mine if u.key not in refused and (args.overwrite or not done(u))]
    if todo:
        try:
            editor = _load_pipeline(args, device)
            if _captions(editor) and bench != "piebench":
                raise LimeEditError(f"--backbone {editor.backbone.name} edits by source and target captions; "
                                    f"{bench} gives instructions only (PIE-Bench has captions: eval piebench)")
            sampler = _family_sampler(editor, ctx.overrides, user, sampler)
            if _captions(editor):
                ctx.p2p_preset = _p2p_preset(args)
                sampler["p2p_preset"] = {"value": ctx.p2p_preset,
                                         "from": "user" if getattr(args, "preset", None) else "eval piebench default"}
            elif getattr(args, "preset", None) is not None:
                raise LimeEditError(f"--preset {args.preset}: Prompt-to-Prompt settings, for a caption editor "
                                    f"(--backbone p2p); this model runs the "
                                    f"{getattr(getattr(editor, 'backbone', None), 'name', 'ip2p')} backbone")
            from ..cli import check_model_settings

            check_model_settings(editor, ctx.overrides, args)   # once, not on every sample
        except BaseException:
            # refused before any sample: a folder this run created is not bound to its settings,
            # so the corrected command can use it
            if shard.is_main and first_run:
                manifest_path.unlink(missing_ok=True)
            raise
        try:
            from tqdm import tqdm

            bar = tqdm(todo, desc=f"eval {bench}[{shard.index}]", unit="sample", file=sys.stderr,
                       disable=args.quiet or not sys.stderr.isatty())
        except ImportError:  # pragma: no cover
            bar = todo
        for u in bar:
            t0 = time.perf_counter()
            try:
                rec = u.run(editor, ctx)
                rec["error"] = None
            except KeyboardInterrupt:
                raise
            except Exception as err:  # one bad sample must not end a 700-sample run
                if os.environ.get("LIME_EDIT_DEBUG"):
                    raise
                failed += 1
                msg = " ".join(str(err).split()) or type(err).__name__
                rec = {"error": {"file": "", "message": f"{type(err).__name__}: {msg}"
                                 if not isinstance(err, LimeEditError) else msg}}
                print(printable(f"error: {u.key}: {rec['error']['message']}"), file=sys.stderr)
            rec["wall_s"] = round(time.perf_counter() - t0, 4)
            put_record(u.key, rec)
    shard.barrier()
    if not shard.is_main:
        return 1 if failed else 0
    samples, failures = {}, [p.to_dict() for p in problems]
    for u in units:
        r = records.get(u.key)
        if r is None:
            failures.append({"sample": u.key, "file": "", "message": "not generated"})
            continue
        samples[u.key] = r
        if r.get("error"):
            failures.append({"sample": u.key, **r["error"]})
    manifest = {**base, "sampler": sampler, "status": "complete" if not failures else "incomplete",
                "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "n_samples": len(units) + len(problems), "n_done": len(samples) - sum(
                    1 for r in samples.values() if r.get("error")),
                "n_failed": len(failures), "failures": failures, "samples": samples}
    atomic_write_json(manifest_path, manifest)
    if not args.quiet:
        print(f"{bench}{'-' + protocol if protocol else ''}: {manifest['n_done']} done, "
              f"{manifest['n_failed']} failed or skipped; outputs in {out}; manifest {manifest_path}")
        for f in failures[:10]:
            print(failure_line(f), file=sys.stderr)
    return 0 if not failures else 1
