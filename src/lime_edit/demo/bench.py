"""``lime-edit bench synthetic``: plain IP2P vs IP2P+LIME variants with exact ground truth.

Every method sees the same held-out scenes (test split, scene seeds
``0 .. n-1``), the same instruction and the same sampler seed (= scene seed).
``--split validation`` scores the validation scenes instead (train-split seeds from
``scenes.VALIDATION_SEED0``, clean targets: the scenes ``train-demo`` chooses a model's
recommended settings on), for choosing between models or settings without looking at the
test scenes; its figures are not the benchmark's.
Methods (``--methods`` takes a comma-separated subset):

==================  ==========================================================
ip2p                plain IP2P at its usual text guidance 7.5
ip2p_low_guidance   plain IP2P at LIME's edit-pass guidance (LimeConfig default,
                    2.0), to separate the regularization from the lower guidance
lime                IP2P+LIME with the model's defaults: LimeConfig's (K-means, K = 8,
                    penalize), updated by the model folder's recommended settings
                    (``lime_edit.json``; the bundled demo model recommends its levels and K)
lime_gt_mask        LIME's regularization with the ground-truth mask as RoI
lime_reference      IP2P+LIME with LimeConfig's defaults (the reference code's levels,
                    K = 8), the model's recommended settings ignored: what they buy
lime_k4, lime_k8,   K = 4 / 8 (the paper's) / 16, whatever the model recommends
lime_k16
lime_agglo_0.4 ...  agglomerative clustering, cosine distance threshold 0.4/0.55/0.7
lime_reward         reward related tokens instead of penalizing unrelated ones
lime_fast           ``LimeConfig.fast()`` (short localization schedule)
lime_single_pass    ``schedule="single_pass"`` (one trajectory, IP2P's cost)
p2p                 Prompt-to-Prompt (DDIM + Direct Inversion, word swap), LIME off
p2p_local_blend     P2P with its local blend on the changed words, LIME off
p2p_lime            P2P + LIME, automatic localization (LimeConfig defaults)
vae_roundtrip       no edit: the input encoded and decoded by the model's autoencoder,
                    what the autoencoder alone changes (it does not add up into
                    the other rows: a VAE with half of it left the editing rows'
                    background unchanged, see the README)
==================  ==========================================================

The ``p2p*`` rows are caption edits on a text-to-image model (``--t2i-model``, by
default the bundled ``demo-t2i``, the text-to-image stage of the same training
recipe), loaded only when one of them is asked for: source caption = the scene's
caption, target caption = the same caption with the edited object's colour word
replaced by the new colour (:func:`lime_edit.demo.scenes.caption_pair`); same
scenes, seeds, metrics and ground truth as the IP2P rows.  They run at the p2p
backbone's sampler defaults, P2P's own for Stable Diffusion: ``--p2p-steps`` DDIM
steps (default 50), guidance 7.5 for the edit and (p2p_lime) the localization pass,
cross-attention replaced for the first 40 % of the steps, self-attention for 60 %;
``--steps`` is the IP2P rows' only.  ``results.json`` records them under ``"p2p"``.

Metrics are defined in ``lime_edit.demo.metrics``; ``roi_iou`` is the IoU of the
predicted RoI (resized to the image with nearest neighbour) with the
ground-truth mask, only where a RoI is predicted (null for plain IP2P and the
GT-mask row); ``lime_applied`` is the fraction of edits where LIME did not fall
back to plain IP2P.  ``sec_per_edit`` is the wall time of a batched pipeline
call divided by its batch size, on whatever machine ran it (shared CPUs give
noisy timings).

``--set NAME=VALUE`` changes a LimeConfig field for every method (a method's
own overrides, e.g. ``lime_k4``'s K, win); the settings are recorded in
``results.json`` and a folder holding results of other settings is refused.

Per-sample results are appended to ``DIR/samples.jsonl``; a rerun skips the
(method, scene) pairs already there, so an interrupted run resumes.  Resuming is
only allowed with the same results-changing settings: ``DIR/signature.json``
(written before the first row) holds the model's identity (a SHA-256 of its
files for a local folder or file, the name for a Hub id), the device, the
batch size, the lime-edit version, the split (when not the test split) and each method's
mask kind and effective ``LimeConfig`` (steps included); with a ``p2p*`` method also the text-to-image
model's identity (``t2i_model``) and the methods' backbone and P2P options.  A rerun that differs is refused with a
one-line message naming what changed (``--overwrite`` starts the folder afresh);
methods and scenes may be added (``--methods``, a larger ``--n``), since each row
is one (method, scene seed) pair whose result does not depend on the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

METRIC_KEYS = ("roi_iou", "l1", "l2", "bg_l1", "bg_psnr", "bg_ssim", "in_mask_l1", "edit_success",
               "sec_per_edit")


def method_table() -> dict[str, tuple[str, dict]]:
    """name -> (mask kind: "none" | "auto" | "gt", LimeConfig overrides)."""
    from .. import LimeConfig

    base = LimeConfig()
    fast = {k: v for k, v in LimeConfig.fast().to_dict().items() if base.to_dict()[k] != v}
    return {
        "ip2p": ("none", {"guidance_scale": 7.5}),
        "ip2p_low_guidance": ("none", {}),      # the pipeline's default guidance = LIME's edit pass
        "lime": ("auto", {}),
        "lime_gt_mask": ("gt", {}),
        "lime_reference": ("auto", {}),         # + every recommended setting reset (method_overrides)
        "lime_k4": ("auto", {"num_clusters": 4}),
        "lime_k8": ("auto", {"num_clusters": 8}),
        "lime_k16": ("auto", {"num_clusters": 16}),
        "lime_agglo_0.4": ("auto", {"clustering": "agglomerative", "distance_threshold": 0.4}),
        "lime_agglo_0.55": ("auto", {"clustering": "agglomerative", "distance_threshold": 0.55}),
        "lime_agglo_0.7": ("auto", {"clustering": "agglomerative", "distance_threshold": 0.7}),
        "lime_reward": ("auto", {"mode": "reward"}),
        "lime_fast": ("auto", fast),
        "lime_single_pass": ("auto", {"schedule": "single_pass"}),
        "p2p": ("none", {}),
        "p2p_local_blend": ("none", {}),
        "p2p_lime": ("auto", {}),
        "vae_roundtrip": ("none", {}),
    }


#: Rows that run no sampler (no LIME settings apply; not shown in the examples grid).
AUTOENCODER_METHODS = frozenset({"vae_roundtrip"})


def autoencode(lp, images) -> list:
    """The images through ``lp``'s VAE alone, as the pipeline encodes its input image
    (``latent_dist.mode()``) and decodes its result: what an edit that changed nothing in
    the latent would give back."""
    import torch

    pipe = lp.pipe
    vae = pipe.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))  # as the pipelines do
    try:
        if upcast:
            vae.to(torch.float32)
        x = pipe.image_processor.preprocess(list(images)).to(device=vae.device, dtype=vae.dtype)
        with torch.no_grad():
            dec = vae.decode(vae.encode(x).latent_dist.mode()).sample
    finally:
        if upcast:
            vae.to(dtype)
    return pipe.image_processor.postprocess(dec.float(), output_type="pil")


#: The methods that are caption edits with the p2p backbone on the text-to-image model:
#: name -> P2P backbone options (:class:`lime_edit.backbones.p2p.P2PSettings`).
P2P_METHODS: dict[str, dict[str, Any]] = {
    "p2p": {},
    "p2p_local_blend": {"local_blend": True},
    "p2p_lime": {},
}


def p2p_sampler_defaults() -> dict[str, Any]:
    """The p2p rows' LimeConfig base: the p2p backbone's sampler defaults (50 DDIM steps,
    guidance 7.5 as P2P on Stable Diffusion)."""
    from ..backbones.p2p import P2PBackbone

    return dict(P2PBackbone.sampler_defaults)


def save_png(img, path: Path) -> None:
    """Write a PNG atomically (``lime_edit.io.atomic_save_image``: temp file + os.replace)."""
    from ..io import atomic_save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(path, img)


def _write_atomic_text(path: Path, text: str) -> None:
    from ..io import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def _is_row(r: Any) -> bool:
    """A row as ``bench synthetic`` writes it: method, integer seed, every metric a number or null."""
    num = (int, float)
    return (isinstance(r, dict) and isinstance(r.get("method"), str) and type(r.get("seed")) is int
            and all(k in r and (r[k] is None or (isinstance(r[k], num) and not isinstance(r[k], bool)))
                    for k in METRIC_KEYS))


def load_done(path: Path, repair: bool = False) -> dict[tuple[str, int], dict]:
    """The rows of ``samples.jsonl`` by (method, scene seed). A torn last line (an interrupted
    run: not a complete row, no line end) is dropped, and with ``repair`` cut from the file so
    that new rows start on a line of their own; any other line that is not a row is an error
    naming it."""
    from ..errors import LimeEditError

    done: dict[tuple[str, int], dict] = {}
    if not path.is_file():
        return done
    try:
        data = path.read_bytes()
        lines = data.decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise LimeEditError(f"{path}: unreadable ({getattr(err, 'reason', None) or err}); use a new --out, "
                            "or --overwrite to start afresh") from None
    torn = lines.pop()                     # "" when the file ends with a line end
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue                       # blank lines (hand-merged files)
        r = _parse_row(line)
        if r is None:
            raise LimeEditError(f"{path}:{i}: not a bench synthetic row; use a new --out, or --overwrite "
                                "to start afresh")
        done[(r["method"], r["seed"])] = r
    last = _parse_row(torn) if torn.strip() else None
    if last is not None:                   # a complete row without its line end: kept
        done[(last["method"], last["seed"])] = last
    if torn and repair:
        with open(path, "r+b") as fh:
            if last is not None:
                fh.seek(0, os.SEEK_END)
                fh.write(b"\n")
            else:                          # cut, so that new rows start on a line of their own
                fh.truncate(len(data) - len(torn.encode("utf-8")))
    return done


def _parse_row(line: str) -> dict | None:
    """One row of ``samples.jsonl``, or ``None``. Versions before the torn-line repair
    appended a resumed run's first row to a torn one (``{"method": "ip2p", "se{"method": ...}``):
    the complete row at the end of such a line is taken."""
    for start in (0, line.rfind('{"method"')):
        if start < 0:
            continue
        try:
            r = json.loads(line[start:])
        except ValueError:
            continue
        if _is_row(r):
            return r
    return None


def aggregate(done: dict, methods: list[str], seeds) -> list[dict]:
    """Per-method means over the rows of ``done`` whose scene seed is in ``seeds``."""
    rows = []
    for m in methods:
        rs = [done[(m, s)] for s in seeds if (m, s) in done]
        if not rs:
            continue
        row: dict = {"method": m}
        for k in METRIC_KEYS:
            vals = [r[k] for r in rs if r.get(k) is not None]
            row[k] = float(np.mean(vals)) if vals else None
        la = [r["lime_applied"] for r in rs if r.get("lime_applied") is not None]
        row["lime_applied"] = float(np.mean(la)) if la else None
        row["n_done"] = len(rs)
        rows.append(row)
    return rows


def markdown(rows: list[dict], n: int, header: str) -> str:
    cols = ["method", *METRIC_KEYS, "lime_applied", "n_done"]
    fmt = {"bg_psnr": "{:.2f}", "sec_per_edit": "{:.2f}", "n_done": "{}"}
    out = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("-" if v is None else (v if isinstance(v, str) else fmt.get(c, "{:.4f}").format(v)))
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append("l1/l2: to the target image; bg_*: outside the GT mask, against the input; in_mask_l1: "
               "inside the GT mask, to the target; edit_success: fraction whose object ends nearest the "
               "requested colour; roi_iou: predicted RoI vs GT mask (LIME rows with a predicted RoI).")
    return "\n".join(out) + "\n"


def _examples_grid(out: Path, samples, methods: list[str], k: int) -> bool:
    """Write ``out/examples.png`` (the first ``k`` scenes); False when there is none to write."""
    from PIL import Image, ImageDraw

    k = min(k, len(samples))
    if k == 0:
        return False
    s = 128
    methods = [m for m in methods if m not in AUTOENCODER_METHODS]
    cols = ["input", "target", "GT mask", *methods]
    head = 14
    W = s * len(cols)
    H = head + s * k
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for j, c in enumerate(cols):
        d.text((j * s + 3, 1), c[:21], fill=(0, 0, 0))
    for i, e in enumerate(samples[:k]):
        tiles = [e.image, e.clean_target,
                 Image.fromarray((e.mask * 255).astype(np.uint8)).convert("RGB")]
        for m in methods:
            p = out / "images" / f"{e.seed:05d}_{m}.png"
            tiles.append(Image.open(p).convert("RGB") if p.is_file() else Image.new("RGB", (64, 64), (200, 200, 200)))
        for j, t in enumerate(tiles):
            canvas.paste(t.resize((s, s), Image.NEAREST), (j * s, head + i * s))
    save_png(canvas, out / "examples.png")
    return True


class _Unedited:
    """An autoencoder row's result, read like an ``EditResult`` by the row writer."""

    mask = None
    lime_applied = False
    warnings: tuple = ()

    def __init__(self, image) -> None:
        self.image = image


def check_counts(args, minimums: dict[str, int]) -> None:
    """Usage errors (``lime_edit.cli.UsageError``, exit 2) for integer options
    below their minimum; ``None`` (unset) is left to the defaults."""
    from ..cli import UsageError

    for name, low in minimums.items():
        value = getattr(args, name, None)
        if value is not None and int(value) < low:
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be at least {low}")


def model_identity(model: str) -> dict[str, Any]:
    """What identifies a model's weights: for a local folder or file, the SHA-256 of
    its (non-hidden) files' relative names, sizes and contents, so a moved copy
    matches and a retrained one does not; for a Hub id, the id."""
    path = Path(model)
    if not path.exists():
        return {"hub_id": str(model)}
    if path.is_file():
        files, base = [path], path.parent
    else:
        base = path
        files = sorted((f for f in path.rglob("*") if f.is_file()
                        and not any(part.startswith(".") for part in f.relative_to(path).parts)),
                       key=lambda f: f.relative_to(path).as_posix())
    digest, total = hashlib.sha256(), 0
    for f in files:
        size = f.stat().st_size
        total += size
        digest.update(f"{f.relative_to(base).as_posix()}\0{size}\0".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return {"sha256": digest.hexdigest(), "files": len(files), "bytes": total}


#: rows that ignore the model's recommended settings (lime_edit.json): LimeConfig's defaults
IGNORES_RECOMMENDED = frozenset({"lime_reference"})


def method_overrides(m: str, model: str | None) -> dict[str, Any]:
    """The LimeConfig overrides of IP2P-backbone row ``m`` on top of the pipeline's settings
    (LimeConfig's defaults updated by the model's recommended settings)."""
    from .. import LimeConfig

    reset = {}
    if m in IGNORES_RECOMMENDED:
        defaults = LimeConfig()
        reset = {k: getattr(defaults, k) for k in recommended_settings(model)}
    return {**reset, **method_table()[m][1]}


def recommended_settings(model: str | None) -> dict[str, Any]:
    """A local model folder's recommended ``LimeConfig`` fields (its ``lime_edit.json``), else ``{}``."""
    from ..loading import read_model_settings

    if model is None or not Path(model).is_dir():
        return {}
    return dict(read_model_settings(Path(model)).get("lime_config", {}))


def make_signature(model: str, device: str, batch: int, methods: list[str], steps: int | None,
                   settings: dict[str, Any] | None = None, t2i_model: str | None = None,
                   p2p_steps: int | None = None, split: str = "test") -> dict[str, Any]:
    """Everything that changes a row of ``samples.jsonl`` (see the module docstring).
    ``t2i_model`` / ``p2p_steps``: the text-to-image model and steps of the ``p2p*`` methods;
    ``split``: the scenes (recorded only when not the test split, so test folders keep the
    signature they always had)."""
    from .. import LimeConfig
    from ..cli import _version

    table = method_table()
    extra = {"num_inference_steps": steps} if steps is not None else {}
    p2p_extra = {"num_inference_steps": p2p_steps} if p2p_steps is not None else {}
    # the defaults every row starts from: LimeConfig's, then the model folder's recommended
    # settings (lime_edit.json), exactly as LimePipeline.from_pretrained builds them
    base = LimeConfig(**recommended_settings(model))

    def entry(m: str) -> dict[str, Any]:
        if m in AUTOENCODER_METHODS:
            return {"mask": "none", "autoencoder_only": True}
        if m not in P2P_METHODS:
            return {"mask": table[m][0],
                    "settings": base.replace(**{**(settings or {}), **extra, **method_overrides(m, model)}).to_dict()}
        cfg = LimeConfig(**{**p2p_sampler_defaults(), **recommended_settings(t2i_model)}).replace(
            **{**(settings or {}), **p2p_extra, **table[m][1]})
        return {"mask": table[m][0], "backbone": "p2p", "p2p": dict(P2P_METHODS[m]), "settings": cfg.to_dict()}

    sig = {"format": 1, "lime_edit": _version(), "model": model_identity(model), "device": str(device),
           "batch": int(batch), "methods": {m: entry(m) for m in methods}}
    if split != "test":
        sig["split"] = split
    if any(m in P2P_METHODS for m in methods):
        if t2i_model is None:
            raise ValueError("make_signature: p2p methods need t2i_model")
        sig["t2i_model"] = model_identity(t2i_model)
    return sig


#: Top-level signature entries only some runs have (the text-to-image model: runs with a p2p
#: method): compared when both runs have one, and kept from the earlier run otherwise.
_OPTIONAL_KEYS = ("t2i_model",)


def _signature_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diff = [k for k in sorted(set(old) | set(new)) if k != "methods" and old.get(k) != new.get(k)
            and not (k in _OPTIONAL_KEYS and (k not in old or k not in new))]
    old_m, new_m = old.get("methods") or {}, new.get("methods") or {}
    changed: list[str] = []
    for m in sorted(set(old_m) & set(new_m)):
        a, b = old_m[m], new_m[m]
        if a.get("mask") != b.get("mask") and "mask kind" not in changed:
            changed.append("mask kind")
        for key, what in (("backbone", "backbone"), ("p2p", "P2P options")):
            if a.get(key) != b.get(key) and what not in changed:
                changed.append(what)
        sa, sb = a.get("settings") or {}, b.get("settings") or {}
        changed += [k for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k) and k not in changed]
    return diff + changed


#: Files ``bench synthetic`` owns in its folder (removed by ``--overwrite``).
_OWN_FILES = ("samples.jsonl", "results.json", "results.md", "examples.png", "signature.json")


def prepare_folder(out: Path, sig: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """Check (or with ``overwrite`` reset) the results in ``out`` against ``sig``;
    return the signature to store: ``sig`` plus the methods of earlier runs."""
    from ..errors import LimeEditError

    sig_path, samples_path = out / "signature.json", out / "samples.jsonl"
    for name in _OWN_FILES:
        if (out / name).exists() and not (out / name).is_file():   # never removed, not even by --overwrite
            raise LimeEditError(f"{out / name}: exists and is not a file; move it away or use a new --out")
    if overwrite:
        for name in _OWN_FILES:
            (out / name).unlink(missing_ok=True)
        images = out / "images"
        if images.is_dir():
            for p in images.glob("[0-9][0-9][0-9][0-9][0-9]_*.png"):
                p.unlink(missing_ok=True)
        return sig
    if not sig_path.is_file():
        if samples_path.is_file() and samples_path.stat().st_size:
            raise LimeEditError(f"{samples_path}: results without {sig_path.name} (made by an older lime-edit), "
                                "so their settings are unknown; use a new --out, or --overwrite to start afresh")
        return sig
    if not (samples_path.is_file() and samples_path.stat().st_size) and not (out / "results.json").exists():
        return sig    # a signature alone (a run that failed before its first row) binds nothing
    try:
        old = json.loads(sig_path.read_text(encoding="utf-8"))
        if not (isinstance(old, dict) and isinstance(old.get("methods"), dict)
                and all(isinstance(v, dict) for v in old["methods"].values())):
            raise ValueError
    except (OSError, ValueError):
        raise LimeEditError(f"{sig_path}: unreadable; use a new --out, or --overwrite to start afresh") from None
    diff = _signature_diff(old, sig)
    if diff:
        raise LimeEditError(f"{out}: holds results made with other {', '.join(diff)}; "
                            "use a new --out, or --overwrite to start afresh")
    kept = {k: old[k] for k in _OPTIONAL_KEYS if k in old and k not in sig}
    return {**sig, **kept, "methods": {**(old.get("methods") or {}), **sig["methods"]}}


def _quiet_loading(verbose: bool = False) -> None:
    """No per-component loading bars from diffusers/transformers in our commands
    (``-v`` keeps them)."""
    if verbose:
        return
    try:
        from diffusers.utils import logging as dlog

        dlog.disable_progress_bar()
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def run_bench(args) -> int:
    from tqdm.auto import tqdm

    from .. import LimeConfig, LimePipeline
    from ..errors import LimeEditError
    from ..loading import resolve_model
    from .metrics import all_metrics, roi_iou, to_float
    from .scenes import BENCH_SPLITS, caption_pair, split_edits

    check_counts(args, {"n": 1, "steps": 1, "batch": 1, "examples": 0, "threads": 0, "p2p_steps": 1})
    split = getattr(args, "split", "test")
    if split not in BENCH_SPLITS:
        from ..cli import UsageError

        raise UsageError(f"--split {split}: expected one of {', '.join(BENCH_SPLITS)}")
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(int(args.threads))
    out = Path(args.out)
    table = method_table()
    methods = list(table) if args.methods is None else list(dict.fromkeys(   # a method named twice runs once
        m.strip() for m in args.methods.split(",") if m.strip()))
    if not methods:
        from ..cli import UsageError

        raise UsageError(f"--methods {args.methods!r}: no method named; known: {', '.join(table)}")
    unknown = [m for m in methods if m not in table]
    if unknown:
        raise LimeEditError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(table)}")
    n = int(args.n)
    settings = _settings(args)
    if "num_inference_steps" in settings:   # every row's calls pass --steps / --p2p-steps: never used
        from ..cli import UsageError

        raise UsageError("--set num_inference_steps: the steps are set by --steps (IP2P rows) and "
                         "--p2p-steps (p2p rows)")
    model = resolve_model(args.model or "demo")
    device = getattr(args, "device", "cpu")
    batch = int(args.batch)
    steps = args.steps if args.steps is not None else LimeConfig().num_inference_steps
    p2p_wanted = [m for m in methods if m in P2P_METHODS]
    t2i_model, p2p_steps, p2p_info = None, None, None
    if p2p_wanted:
        t2i_model = resolve_model(getattr(args, "t2i_model", None) or "demo-t2i")
        p2p_steps = (args.p2p_steps if getattr(args, "p2p_steps", None) is not None
                     else p2p_sampler_defaults()["num_inference_steps"])
    from ..io import check_out_dir

    check_out_dir(out)                     # a file, or a folder that cannot be made, is one line
    sig = prepare_folder(out, make_signature(model, device, batch, methods, steps, settings, t2i_model,
                                             p2p_steps, split), bool(getattr(args, "overwrite", False)))
    samples_path = out / "samples.jsonl"
    done = load_done(samples_path, repair=True)   # a damaged folder is refused before any model loads
    _quiet_loading(getattr(args, "verbose", False))
    # each model is loaded only when one of its methods is asked for, before any row is written
    lp = LimePipeline.from_pretrained(model, device=device) if len(p2p_wanted) < len(methods) else None
    if lp is not None:
        from ..cli import refuse_caption_model

        refuse_caption_model(lp, getattr(args, "model", None) or model)
    p2p_lp: LimePipeline | None = None
    if p2p_wanted:
        try:
            base = LimePipeline.from_pretrained(t2i_model, backbone="p2p", device=device)
        except LimeEditError as err:
            where = "--t2i-model" if t2i_model in str(err) else f"--t2i-model {t2i_model}"
            raise type(err)(f"{where}: {err}") from None
        p2p_lp = base                # each method's P2P options go with its calls (edit_captions(p2p=...))
        cfg0 = base.config.replace(**{**settings, "num_inference_steps": p2p_steps})

        def described(m: str) -> dict[str, Any]:
            with base.backbone.using(**P2P_METHODS[m]):
                return base.backbone.describe()["p2p"]

        p2p_info = {"t2i_model": t2i_model, "captions": "lime_edit.demo.scenes.caption_pair",
                    "scheduler": type(base.pipe.scheduler).__name__,
                    "prediction_type": base.pipe.scheduler.config.get("prediction_type"),
                    "num_inference_steps": p2p_steps, "guidance_scale": cfg0.guidance_scale,
                    "localization_guidance_scale": cfg0.localization_guidance_scale,
                    "methods": {m: described(m) for m in p2p_wanted}}
    for pipe in (lp, p2p_lp):
        try:
            if pipe is not None:
                pipe.pipe.set_progress_bar_config(disable=True)
        except Exception:  # noqa: BLE001
            pass
    extra = {**settings, "num_inference_steps": steps}
    p2p_extra = {**settings, "num_inference_steps": p2p_steps}
    _write_atomic_text(out / "signature.json", json.dumps(sig, indent=2) + "\n")  # before any row
    overrides = {m: table[m][1] if m in P2P_METHODS else method_overrides(m, model) for m in methods}
    for m in methods:                      # a setting a row's model cannot take: refused before the bar
        if m not in AUTOENCODER_METHODS:
            (p2p_lp if m in P2P_METHODS else lp).check_settings(
                **{**(p2p_extra if m in P2P_METHODS else extra), **overrides[m]})
    samples = split_edits(split, n)
    seeds = [e.seed for e in samples]
    shown = set(seeds[:max(0, int(args.examples))])
    todo = sum(1 for m in methods for s in seeds if (m, s) not in done)
    from ..cli import _err

    _err(plan_line(methods, seeds, done, all_methods=list(table)))   # before the minutes the edits take
    bar = tqdm(total=todo, desc="bench synthetic", unit="edit", disable=args.no_progress or todo == 0)
    with open(samples_path, "a", buffering=1) as f:
        for start in range(0, n, batch):
            chunk = samples[start:start + batch]
            for m in methods:
                items = [e for e in chunk if (m, e.seed) not in done]
                if not items:
                    continue
                kind, ov = table[m][0], overrides[m]
                masks = [None if kind == "none" else ("auto" if kind == "auto" else e.mask) for e in items]
                t0 = time.perf_counter()
                if m in AUTOENCODER_METHODS:
                    results = [_Unedited(img) for img in autoencode(lp, [e.image for e in items])]
                elif m in P2P_METHODS:
                    pairs = [caption_pair(e) for e in items]
                    results = p2p_lp.edit_captions(
                        [e.image for e in items], [a for a, _ in pairs], [b for _, b in pairs], mask=masks,
                        seed=[e.seed for e in items], p2p=P2P_METHODS[m], **{**p2p_extra, **ov})
                else:
                    results = lp.edit([e.image for e in items], [e.instruction for e in items], mask=masks,
                                      seed=[e.seed for e in items], **{**extra, **ov})
                dt = (time.perf_counter() - t0) / len(items)
                for e, r in zip(items, results):
                    o = to_float(r.image)
                    rec = {"method": m, "seed": e.seed,
                           **all_metrics(o, to_float(e.image), to_float(e.clean_target), e.mask, e.target_colour)}
                    roi = None
                    if kind == "auto" and r.mask is not None:
                        roi = roi_iou(r.mask, e.mask)
                    elif kind == "auto":
                        roi = 0.0  # fell back to plain IP2P / P2P: no RoI, counts as a miss
                    rec["roi_iou"] = roi
                    rec["lime_applied"] = None if kind == "none" else bool(r.lime_applied)
                    rec["sec_per_edit"] = dt
                    rec["warnings"] = list(r.warnings)
                    f.write(json.dumps(rec) + "\n")
                    done[(m, e.seed)] = rec
                    if e.seed in shown:
                        save_png(r.image, out / "images" / f"{e.seed:05d}_{m}.png")
                bar.update(len(items))
            rows = aggregate(done, methods, seeds)
            _write_results(out, rows, n, args, model, steps, batch, sig, p2p_info)
    bar.close()
    rows = aggregate(done, methods, seeds)
    _write_results(out, rows, n, args, model, steps, batch, sig, p2p_info)
    grid = _examples_grid(out, samples, methods, args.examples)
    print(markdown(rows, n, _title(n, split)))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}" + (f", {out / 'examples.png'}" if grid else ""))
    return 0


def plan_line(methods: list[str], seeds: list[int], done: dict, all_methods: list[str]) -> str:
    """What a run will do, said before it starts: methods x scenes = edits, how many of them an
    earlier run did, and how to run fewer."""
    total = len(methods) * len(seeds)
    left = sum(1 for m in methods for s in seeds if (m, s) not in done)
    line = (f"bench synthetic: {len(methods)} method{'s' * (len(methods) != 1)} x {len(seeds)} "
            f"scene{'s' * (len(seeds) != 1)} = {total} edit{'s' * (total != 1)}")
    line += f" ({total - left} done by an earlier run, {left} to go)" if left < total else ""
    if len(methods) == len(all_methods):
        line += f"; --methods picks fewer, e.g. --methods ip2p,lime (all: {','.join(all_methods)})"
    return line


def _settings(args) -> dict:
    """The ``--set NAME=VALUE`` LimeConfig overrides (validated like ``lime-edit edit --set``: a
    field set twice differently is refused)."""
    from ..cli import UsageError, parse_set_items
    from ..config import LimeConfig

    settings = parse_set_items(getattr(args, "cfg_set", None))
    try:
        LimeConfig().replace(**settings)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    return settings


def _title(n: int, split: str) -> str:
    if split == "test":
        return f"## Synthetic benchmark (n = {n})"
    return f"## Synthetic benchmark, {split} scenes (n = {n}; for choosing models and settings, not benchmark figures)"


def _write_results(out: Path, rows, n, args, model, steps: int, batch: int, sig: dict,
                   p2p: dict | None = None) -> None:
    cmd = "lime-edit bench synthetic " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else \
        f"lime-edit bench synthetic --n {n} --out {args.out}" + (
            f" --split {sig['split']}" if "split" in sig else "")
    import platform

    import torch

    dev = getattr(args, "device", "cpu")
    machine = (torch.cuda.get_device_name(0) if str(dev).startswith("cuda") and torch.cuda.is_available()
               else f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads")
    split = sig.get("split", "test")
    payload = {"n": n, "split": split, "rows": rows, "model": str(model), "steps": steps, "settings": _settings(args), "batch": batch, "command": cmd,
               "device": str(dev), "machine": machine, "torch": torch.__version__, "signature": sig}
    header = f"{_title(n, split)}\n\n`{cmd}` on {machine}, torch {torch.__version__}"
    if p2p is not None:
        payload["p2p"] = p2p
        header += (f"\n\np2p rows: caption edits on the text-to-image model {p2p['t2i_model']}, "
                   f"{p2p['num_inference_steps']} {p2p['scheduler']} steps, guidance {p2p['guidance_scale']:g}")
        if any(r["method"] not in P2P_METHODS for r in rows):
            header += f" (IP2P rows: {steps} steps)"
    _write_atomic_text(out / "results.json", json.dumps(payload, indent=2) + "\n")
    _write_atomic_text(out / "results.md", markdown(rows, n, header))
