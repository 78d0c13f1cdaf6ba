"""``lime-edit score``: score any method's outputs with each benchmark's own protocol.

Output layouts read (the ones ``lime-edit eval`` writes, and the benchmarks' own):

- MagicBrush: ``OUTPUTS/<img_id>/<img_id>_1.png`` (turn 1), ``<img_id>_inde_<k>.png``
  (single-turn protocol, turn k >= 2), ``<img_id>_iter_<k>.png`` (multi-turn, turn k >= 2).
  Single-turn scores every turn against ``<img_id>-output<k>.png``; multi-turn scores the
  last turn of each session (``_1`` for one-turn sessions) against the last output.
- PIE-Bench: ``OUTPUTS/annotation_images/<image_path>`` (or ``OUTPUTS/<image_path>``; a
  ``.png``/``.jpg`` twin of the same stem is accepted; in a run folder of ``eval`` the file
  its record names, and a sample it recorded as failed is a failed row). QUIRK (matched): a non-square
  output is cropped to its bottom-right 512x512 (their methods save source|edited side
  by side).
- EditVal: ``OUTPUTS/<edit_type>/<image_id>/<to>.png``.

Per sample a row is stored atomically under ``SCORES/rows/`` (resumable; under
``accelerate launch`` the samples are sharded and the main process merges), then
``SCORES/rows.csv`` and the JSON report are written and the table is printed with
the paper's rows marked as quoted. A missing or unreadable output is a failed row
(named, counted in the report), never a crash.

EditVal has two sets of decision rules (``--protocol``, :mod:`lime_edit.eval.editval`):
``fixed`` (the default; ``SCORES = scores/editval``) and ``official`` (``auto_eval.py``'s
decisions bug for bug, as the published numbers; ``scores/editval-official``; a size
sample is a failed row, as that code crashes there). Each row records its rules
(``rules``) and a row made with the other rules, or before they were recorded, is
scored afresh, so a shared ``--scores-dir`` never mixes them. The report's
``protocol`` and ``protocol_rules`` and the table's title say which was used.

Two protocol choices (see :mod:`lime_edit.eval.extractors`):

- PIE-Bench structure distance resizes without antialias by default, as torchvision
  0.13.1 (pinned by PnP-Inversion) did for their published numbers;
  ``structure_antialias=True`` (``--structure-antialias``) gives torchvision >= 0.17's
  antialiased resize. The report's ``structure_resize`` records which was used, and a
  row computed with the other setting is recomputed.
- A caption longer than CLIP's 77 tokens is cut as each benchmark's scorer would
  (MagicBrush: end token kept; PIE-Bench: torchmetrics' cut, end token dropped). It
  is warned once per sample on stderr and kept in the row (``warnings``), the CSV and
  the report.
"""

from __future__ import annotations

import csv
import io as _io
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import LimeEditError, ModelLoadError
from . import references
from .datasets import EDITVAL_ABBREV, EDITVAL_SCORED
from .runner import RowStore, Shard, failure_line, from_json_number, get_shard, json_safe

METRICS: dict[str, tuple[str, ...]] = {
    "magicbrush": ("l1", "l2", "clip_i", "dino", "clip_t"),
    "piebench": ("structure_distance", "psnr", "lpips", "mse", "ssim", "clip_whole", "clip_edited"),
    "editval": ("owlvit",),
}
#: backbone each metric needs (pixel metrics need none)
NEEDS = {"clip_i": "clip", "clip_t": "clip", "dino": "dino", "structure_distance": "dino_structure",
         "lpips": "lpips", "clip_whole": "clip_large", "clip_edited": "clip_large", "owlvit": "owlvit"}
#: how each CLIP cuts a caption over 77 tokens (its benchmark's scorer; see extractors.LONG_TEXT)
LONG_TEXT_RULE = {"clip": "keep_end", "clip_large": "drop_end"}
BACKBONE_FLAGS = {"clip": "clip_model", "clip_large": "clip_large_model", "dino": "dino_model",
                  "dino_structure": "dino_structure_model", "owlvit": "owlvit_model", "lpips": "lpips_model"}


def default_sources() -> dict[str, str | None]:
    from . import extractors as ex

    return {"clip": ex.CLIP_B32, "clip_large": ex.CLIP_L14, "dino": ex.DINO_S16, "dino_structure": ex.DINO_B8,
            "owlvit": ex.OWLVIT_B32, "lpips": None}


class Backbones:
    """Loads each metric backbone on first use, from its Hub id or local folder.

    ``structure_antialias``: PIE-Bench structure distance resizes with antialias
    (torchvision >= 0.17) instead of without (torchvision 0.13.1, the default)."""

    def __init__(self, sources: dict[str, str | None], device="cpu", local_files_only: bool | None = None,
                 structure_antialias: bool = False):
        self.sources, self.device, self.local_files_only = dict(sources), device, local_files_only
        self.structure_antialias = bool(structure_antialias)
        self._cache: dict[str, Any] = {}

    def source_id(self, name: str) -> str:
        src = self.sources.get(name)
        return "default" if src is None else str(src)

    def row_id(self, name: str) -> str:
        """What a row records as having produced a metric: the source, plus the resize
        setting of the structure backbone and the long-caption rule of the CLIPs (rows
        from before these were recorded, or with the other resize, are recomputed)."""
        if name == "dino_structure":
            return self.source_id(name) + (" | resize antialias" if self.structure_antialias
                                           else " | resize no-antialias")
        if name in LONG_TEXT_RULE:
            return f"{self.source_id(name)} | long text {LONG_TEXT_RULE[name]}"
        return self.source_id(name)

    def get(self, name: str):
        if name not in self._cache:
            from . import extractors as ex
            from .lpips import load_lpips

            src, kw = self.sources.get(name), dict(device=self.device, local_files_only=self.local_files_only)
            if name in ("clip", "clip_large"):
                self._cache[name] = ex.ClipEncoder.load(src, **kw)
            elif name == "dino":
                self._cache[name] = ex.DinoEncoder.load(src, **kw)
            elif name == "dino_structure":
                self._cache[name] = ex.DinoKeyEncoder.load(src, antialias=self.structure_antialias, **kw)
            elif name == "owlvit":
                self._cache[name] = ex.OwlVitDetector.load(src, **kw)
            elif name == "lpips":
                self._cache[name] = load_lpips(src, **kw)
            else:  # pragma: no cover
                raise KeyError(name)
        return self._cache[name]


class SampleError(Exception):
    """A bad sample: names the file; becomes a failed row."""

    def __init__(self, file: str | os.PathLike, message: str):
        super().__init__(f"{file}: {message}")
        self.file, self.message = str(file), message


def read_rgb(path: Path):
    """``Image.open(path).convert("RGB")`` as the benchmarks do, with errors named."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise SampleError(path, "no such file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise SampleError(path, f"cannot read image ({str(err).splitlines()[0] if str(err) else type(err).__name__})")


def _find(candidates: Sequence[Path]) -> Path:
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def _with_twins(p: Path) -> list[Path]:
    return [p] + [p.with_suffix(s) for s in (".png", ".jpg", ".jpeg") if s != p.suffix.lower()]


# --------------------------------------------------------------------------- units
#: ``warn(metric, message)``: a per-sample warning about how a metric was computed
Warn = Callable[[str, str], None]


def _no_warn(metric: str, message: str) -> None:
    pass


@dataclass
class Unit:
    """One scored sample: its key, what to read, and descriptive columns.
    ``compute(backbones, metrics, warn)`` returns the metrics' values."""

    key: str
    info: dict[str, Any]
    compute: Callable[..., dict[str, float]] = field(repr=False)
    #: the edited image it scores: a stored row is reused only while this file is unchanged
    output: Path | None = None
    #: the decision rules it is scored with (EditVal: "fixed" or "official"); a stored row
    #: made with other rules (or before rules were recorded) is scored afresh
    rules: str | None = None


def _stamp(path: Path | None) -> list | None:
    """What identifies the scored file's contents cheaply: name, size and modification time."""
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return None if st is None else [path.name, st.st_size, st.st_mtime_ns]


def magicbrush_units(data, outputs: Path, protocol: str, limit: int | None):
    from .datasets import read_magicbrush

    sessions, problems = read_magicbrush(data)
    if limit is not None:
        sessions = sessions[:limit]
    units = []
    for s in sessions:
        folder = outputs / s.img_id
        if protocol == "single":
            pairs = [(t, folder / (f"{s.img_id}_1.png" if t.index == 1 else f"{s.img_id}_inde_{t.index}.png"))
                     for t in s.turns]
        else:
            t = s.turns[-1]
            pairs = [(t, folder / (f"{s.img_id}_1.png" if t.index == 1 else f"{s.img_id}_iter_{t.index}.png"))]
        for turn, gen in pairs:
            key = f"{s.img_id}/{turn.index}" if protocol == "single" else s.img_id
            out = _find(_with_twins(gen))
            units.append(Unit(key, {"img_id": s.img_id, "turn": turn.index},
                              _mb_compute(out, turn.output, turn.local_description), out))
    return units, problems


def _mb_compute(gen_path: Path, gt_path: Path, caption: str | None):
    def compute(bb: Backbones, want: set[str], warn: Warn = _no_warn) -> dict[str, float]:
        from . import metrics as M

        gen, gt = read_rgb(gen_path), read_rgb(gt_path)
        out: dict[str, float] = {}
        if "l1" in want:
            out["l1"] = M.l1_distance(gen, gt)
        if "l2" in want:
            out["l2"] = M.l2_distance(gen, gt)
        if "clip_i" in want or "clip_t" in want:
            clip = bb.get("clip")
            f = clip.image_features([gen, gt])                                  # (2, D)
            if "clip_i" in want:
                out["clip_i"] = M.cosine(f[0], f[1])
            if "clip_t" in want:
                if caption is None:
                    out["clip_t"] = out["clip_t_gt"] = math.nan
                else:
                    # a caption over 77 tokens: clip.tokenize(truncate=True)'s cut (theirs raises)
                    enc = clip.encode_text(caption, long_text=LONG_TEXT_RULE["clip"])
                    if enc.warning:
                        warn("clip_t", f"CLIP-T: local description of {gt_path.name}: {enc.warning}")
                    t = enc.features
                    out["clip_t"], out["clip_t_gt"] = M.cosine(f[0], t), M.cosine(f[1], t)
        if "dino" in want:
            f = bb.get("dino").image_features([gen, gt])
            out["dino"] = M.cosine(f[0], f[1])
        return out

    return compute


def piebench_units(data, outputs: Path, protocol: str | None, limit: int | None,
                   categories: set[str] | None = None):
    from .datasets import read_piebench

    items, problems = read_piebench(data, categories=categories)
    if limit is not None:
        items = items[:limit]
    units = []
    records = RowStore(outputs / ".records" / "piebench")   # a run folder of `lime-edit eval`
    for it in items:
        rec = records.get(it.key)
        if rec is not None and rec.get("error"):
            # a leftover under the sample's name (e.g. from before --overwrite) is not this run's edit
            msg = rec["error"].get("message") if isinstance(rec["error"], dict) else None
            units.append(Unit(it.key, {"category": it.editing_type_id},
                              _failed(records.path(it.key), f"eval failed on this sample: {msg or 'no output'}")))
            continue
        # the file the run's record names (a .png after --lossless, even beside a stale .jpg), else the
        # benchmark's layout: <image_path> under annotation_images/ or not, or its .png/.jpg twin
        out = _recorded_output(rec, outputs) or _find(
            _with_twins(outputs / "annotation_images" / it.image_path) + _with_twins(outputs / it.image_path))
        units.append(Unit(it.key, {"category": it.editing_type_id}, _pie_compute(it, out), out))
    return units, problems


def _recorded_output(record: dict | None, outputs: Path) -> Path | None:
    """The output file an eval record names (relative to the run folder), if it names one."""
    rel = (record or {}).get("output")
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return None
    return outputs / rel


def _failed(file: Path, message: str):
    def compute(bb: Backbones, want: set[str], warn: Warn = _no_warn) -> dict[str, float]:
        raise SampleError(file, message)

    return compute


def _pie_compute(item, gen_path: Path):
    def compute(bb: Backbones, want: set[str], warn: Warn = _no_warn) -> dict[str, float]:
        import numpy as np

        from . import metrics as M
        from .datasets import decode_rle_mask

        src_img, tgt_img = read_rgb(item.image), read_rgb(gen_path)
        if tgt_img.size[0] != tgt_img.size[1]:
            # QUIRK (PIE-Bench evaluate.py): outputs saved as [source | edited] strips;
            # the edited image is the bottom-right 512x512.
            w, h = tgt_img.size
            tgt_img = tgt_img.crop((w - 512, h - 512, w, h))
        src, tgt = np.asarray(src_img), np.asarray(tgt_img)
        if src.shape != tgt.shape:
            raise SampleError(gen_path, f"edited image is {tgt.shape[1]}x{tgt.shape[0]}, source is "
                                        f"{src.shape[1]}x{src.shape[0]} (PIE-Bench compares same-size images)")
        try:
            mask = decode_rle_mask(item.mask_rle, shape=src.shape[:2])
        except LimeEditError as err:
            raise SampleError(item.image, f"bad mask: {err}") from None
        out: dict[str, float] = {}
        if "structure_distance" in want:
            enc = bb.get("dino_structure")
            out["structure_distance"] = M.structure_distance(enc.self_similarity(src), enc.self_similarity(tgt))
        bg = [m for m in ("psnr", "lpips", "mse", "ssim") if m in want]
        if bg:
            lp = bb.get("lpips") if "lpips" in bg else None
            out.update(M.background_metrics(src, tgt, mask, (lambda a, b: float(lp(a, b)[0])) if lp else None,
                                            which=bg))
        if "clip_whole" in want or "clip_edited" in want:
            clip = bb.get("clip_large")
            # a prompt over 77 tokens: torchmetrics CLIPScore's cut, as their scorer
            enc = clip.encode_text(item.clean_editing_prompt, long_text=LONG_TEXT_RULE["clip_large"])
            if enc.warning:
                for m in ("clip_whole", "clip_edited"):
                    if m in want:
                        warn(m, f"CLIP score: editing prompt: {enc.warning}")
            text = enc.features
            if "clip_whole" in want:
                out["clip_whole"] = M.clip_score(clip.image_features([tgt])[0], text)
            if "clip_edited" in want:
                out["clip_edited"] = M.clip_score(clip.image_features([M.masked_uint8(tgt, mask)])[0], text) \
                    if mask.any() else math.nan
        return out

    return compute


def editval_units(data, outputs: Path, protocol: str | None, limit: int | None,
                  coco_dir=None, edit_types: set[str] | None = None):
    """``protocol``: "fixed" (None: the default) or "official" (auto_eval.py's decisions;
    see :mod:`lime_edit.eval.editval`)."""
    from .datasets import EDITVAL_SCORED, read_editval
    from .editval import PROTOCOLS

    protocol = protocol or "fixed"
    if protocol not in PROTOCOLS:
        raise LimeEditError(f"--protocol {protocol!r}: EditVal's are {', '.join(PROTOCOLS)}")

    types = set(EDITVAL_SCORED) if not edit_types else (set(edit_types) & set(EDITVAL_SCORED))
    edits, problems = read_editval(data, coco_dir=coco_dir, edit_types=types)
    if limit is not None:
        edits = edits[:limit]
    units = [Unit(e.key, {"edit_type": e.edit_type, "class": e.class_name},
                  _editval_compute(e, outputs / e.output_relpath, protocol), outputs / e.output_relpath,
                  rules=protocol) for e in edits]
    return units, problems


def _editval_compute(edit, gen_path: Path, protocol: str = "fixed"):
    def compute(bb: Backbones, want: set[str], warn: Warn = _no_warn) -> dict[str, float]:
        from . import editval as R

        det = bb.get("owlvit")
        t, cls = edit.edit_type, edit.class_name
        if t not in EDITVAL_SCORED:  # pragma: no cover - filtered by the reader
            raise SampleError(gen_path, f"edit type {t} is not scored automatically")
        on_edited, on_original = R.queries(t, edit.to, cls, protocol)
        edited = read_rgb(gen_path)
        before, scale = None, (1.0, 1.0)
        if on_original is not None:
            original = read_rgb(edit.image)
            # fixed rules: edited boxes scaled to the original's pixel frame (official: raw frames)
            scale = (original.size[0] / edited.size[0], original.size[1] / edited.size[1])
            before = det.detect(original, on_original)
        after = det.detect(edited, on_edited)
        try:
            ok = R.decide(t, edit.to, after, before, scale, protocol=protocol)
        except R.OfficialCrash as err:
            raise SampleError(gen_path, str(err)) from None
        return {"owlvit": float(ok)}

    return compute


def build_units(benchmark: str, data, outputs: Path, protocol: str | None, limit: int | None, **kw):
    if benchmark == "magicbrush":
        return magicbrush_units(data, outputs, protocol or "single", limit)
    if benchmark == "piebench":
        return piebench_units(data, outputs, protocol, limit, categories=kw.get("categories"))
    if benchmark == "editval":
        return editval_units(data, outputs, protocol, limit, coco_dir=kw.get("coco_dir"),
                             edit_types=kw.get("edit_types"))
    raise LimeEditError(f"unknown benchmark {benchmark!r}")


# --------------------------------------------------------------------------- scoring loop
def score_units(units: Sequence[Unit], want: Sequence[str], store: RowStore, backbones: Backbones,
                shard: Shard, progress: bool = False) -> int:
    """Compute (or reuse) this shard's rows; returns how many were computed now."""
    done = 0
    mine = shard.split(units)
    try:
        from tqdm import tqdm

        it = tqdm(mine, desc=f"score[{shard.index}]", disable=not progress, file=sys.stderr)
    except ImportError:  # pragma: no cover
        it = mine
    for u in it:
        row = store.get(u.key) or {}
        stamp = _stamp(u.output)
        if row and row.get("output") != stamp:      # the edited image changed or went: score it afresh
            row = {}
        if row and row.get("rules") != u.rules:     # scored with other decision rules (EditVal's protocols)
            row = {}
        have = dict(row.get("metrics") or {}) if not row.get("error") else {}
        models = dict(row.get("models") or {}) if not row.get("error") else {}
        notes = dict(row.get("warnings") or {}) if not row.get("error") else {}
        need = {m for m in want
                if m not in have or (m in NEEDS and models.get(NEEDS[m]) != backbones.row_id(NEEDS[m]))}
        if not need:
            continue
        new_notes: dict[str, str] = {}
        try:
            new = u.compute(backbones, need, new_notes.__setitem__)
        except SampleError as err:
            store.put(u.key, {"info": u.info, "metrics": {}, "models": {}, "process": shard.index,
                              "output": stamp, "error": {"file": err.file, "message": err.message},
                              **_rules(u)})
            done += 1
            continue
        except (KeyboardInterrupt, ModelLoadError):
            raise  # a backbone that cannot load is fatal for every sample: stop with its message
        except Exception as err:  # anything else is this sample's problem, named in the report
            if os.environ.get("LIME_EDIT_DEBUG"):
                raise
            msg = " ".join(str(err).split()) or type(err).__name__
            store.put(u.key, {"info": u.info, "metrics": {}, "models": {}, "process": shard.index,
                              "output": stamp, "error": {"file": "", "message": f"{type(err).__name__}: {msg}"},
                              **_rules(u)})
            done += 1
            continue
        have.update(json_safe(new))
        for m in need:
            if m in NEEDS:
                models[NEEDS[m]] = backbones.row_id(NEEDS[m])
            notes.pop(m, None)
        notes.update(new_notes)
        for message in dict.fromkeys(new_notes.values()):  # once per sample, even if shared by metrics
            print(f"warning: {u.key}: {message}", file=sys.stderr)
        row = {"info": u.info, "metrics": have, "models": models, "error": None, "process": shard.index,
               "output": stamp, **_rules(u)}
        if notes:
            row["warnings"] = notes
        store.put(u.key, row)
        done += 1
    return done


def _rules(u: Unit) -> dict[str, str]:
    """The row's record of its decision rules (only units that have a choice of them)."""
    return {"rules": u.rules} if u.rules is not None else {}


def _row_warnings(row: dict | None, want: Sequence[str]) -> list[str]:
    """The distinct warnings of a scored row about the metrics asked for."""
    notes = (row or {}).get("warnings") or {}
    return list(dict.fromkeys(notes[m] for m in want if m in notes))


# --------------------------------------------------------------------------- report
def _mean(values: list[float]) -> tuple[float, int]:
    finite = [v for v in values if not math.isnan(v)]
    return (sum(finite) / len(finite) if finite else math.nan), len(values) - len(finite)


PIE_SCALE = {"structure_distance": ("structure_distance_x1e3", 1e3), "psnr": ("psnr", 1.0),
             "lpips": ("lpips_x1e3", 1e3), "mse": ("mse_x1e4", 1e4), "ssim": ("ssim_x1e2", 1e2),
             "clip_whole": ("clip_whole", 1.0), "clip_edited": ("clip_edited", 1.0)}


def make_report(benchmark: str, protocol: str | None, units: Sequence[Unit], rows: dict[str, dict | None],
                want: Sequence[str], problems: Sequence, backbones: Backbones | None = None) -> dict[str, Any]:
    """The JSON report (deterministic: no timestamps), metrics in the paper's units."""
    ok = {u.key: rows[u.key] for u in units if rows.get(u.key) and not rows[u.key].get("error")}
    failures = [p.to_dict() for p in problems]
    for u in units:
        r = rows.get(u.key)
        if r is None:
            failures.append({"sample": u.key, "file": "", "message": "not scored (run interrupted?)"})
        elif r.get("error"):
            failures.append({"sample": u.key, **r["error"]})

    def values(metric: str, keys=None) -> list[float]:
        return [from_json_number(r["metrics"][metric]) for k, r in ok.items()
                if metric in r["metrics"] and (keys is None or k in keys)]

    report: dict[str, Any] = {"benchmark": benchmark, "protocol": protocol, "n": len(ok)}
    metrics: dict[str, float] = {}
    nan_counts: dict[str, int] = {}
    extra: dict[str, Any] = {}
    if benchmark == "magicbrush":
        for m in list(want) + (["clip_t_gt"] if "clip_t" in want else []):
            metrics[m], nan_counts[m] = _mean(values(m))
    elif benchmark == "piebench":
        for m in want:
            name, scale = PIE_SCALE[m]
            mean, nan_counts[m] = _mean(values(m))
            metrics[name] = mean * scale
        per_cat: dict[str, dict[str, float]] = {}
        for cat in sorted({u.info["category"] for u in units}, key=lambda c: int(c) if c.isdigit() else 99):
            keys = {u.key for u in units if u.info["category"] == cat}
            per_cat[cat] = {PIE_SCALE[m][0]: _mean(values(m, keys))[0] * PIE_SCALE[m][1] for m in want}
            per_cat[cat]["n"] = len(keys & set(ok))
        extra["per_category"] = per_cat
    elif benchmark == "editval":
        per_type = {}
        for t in references.EDITVAL_METRICS[:-1]:
            keys = {u.key for u in units if u.info["edit_type"] == t}
            if keys:
                metrics[t], _ = _mean(values("owlvit", keys))
                per_type[t] = len(keys & set(ok))
        typed = [metrics[t] for t in per_type if not math.isnan(metrics[t])]
        metrics["average"] = sum(typed) / len(typed) if typed else math.nan
        extra["n_per_type"] = per_type
        # the types the average is over (official mode: never size, whose every sample fails)
        extra["average_over"] = [t for t in per_type if not math.isnan(metrics[t])]
    report["metrics"] = metrics
    report["n_expected"] = len(units) + len(problems)
    report["n_failed"] = len(failures)
    report["failures"] = failures
    report["warnings"] = [{"sample": u.key, "message": msg} for u in units if u.key in ok
                          for msg in _row_warnings(ok[u.key], want)]
    if benchmark == "piebench" and "structure_distance" in want:
        from .extractors import STRUCTURE_RESIZE

        aa = bool(backbones.structure_antialias) if backbones is not None else False
        report["structure_resize"] = {"antialias": aa, "as": STRUCTURE_RESIZE[aa]}
    if any(nan_counts.values()):
        report["nan_counts"] = {k: v for k, v in nan_counts.items() if v}
    report.update(extra)
    if backbones is not None:
        report["backbones"] = {NEEDS[m]: backbones.source_id(NEEDS[m]) for m in want if m in NEEDS}
    if benchmark == "editval":
        from .editval import PROTOCOL_NOTES

        report["protocol_rules"] = PROTOCOL_NOTES.get(protocol or "fixed", "")
    report["reference_rows_quoted"] = references.reference_rows(benchmark, protocol)
    return json_safe(report)


def generation_settings(outputs: Path, benchmark: str, protocol: str | None = None) -> dict[str, Any] | None:
    """What made the outputs, when they are a ``lime-edit eval`` run folder: its manifest's
    signature (model, backbone, LIME on/off, seed, settings and, for a caption editor on
    PIE-Bench, ``p2p_preset``); ``None`` for another tool's folder or an unreadable manifest."""
    import json

    path = outputs / (f"manifest-{protocol or 'single'}.json" if benchmark == "magicbrush" else "manifest.json")
    try:
        sig = json.loads(path.read_text()).get("signature")
    except (OSError, ValueError, AttributeError):
        return None
    return sig if isinstance(sig, dict) else None


def format_table(report: dict[str, Any]) -> str:
    """The paper-style table: this run's row, then the paper's rows marked as quoted."""
    bench = report["benchmark"]
    cols = [c for c in references.table_metrics(bench)]
    mine = report["metrics"]
    heads = {"l1": "L1", "l2": "L2", "clip_i": "CLIP-I", "dino": "DINO", "clip_t": "CLIP-T",
             "structure_distance_x1e3": "Struct.x1e3", "psnr": "PSNR", "lpips_x1e3": "LPIPSx1e3",
             "mse_x1e4": "MSEx1e4", "ssim_x1e2": "SSIMx1e2", "clip_whole": "CLIP whole",
             "clip_edited": "CLIP edited", **EDITVAL_ABBREV, "average": "Avg."}
    digits = 3 if bench in ("magicbrush",) else 2
    title = {"magicbrush": f"MagicBrush test, {report.get('protocol') or 'single'}-turn",
             "piebench": "PIE-Bench",
             "editval": f"EditVal (OWL-ViT automatic scores), protocol {report.get('protocol') or 'fixed'}"}[bench]
    w = 30
    lines = [title, f"{'method':<{w}}" + "".join(f"{heads.get(c, c):>13}" for c in cols)]

    def fmt(v: Any) -> str:
        if v is None:
            return f"{'-':>13}"
        v = from_json_number(v)
        return f"{'nan':>13}" if math.isnan(v) else f"{v:>13.{digits}f}"

    lines.append(f"{'this run (n=' + str(report['n']) + ')':<{w}}" + "".join(fmt(mine.get(c)) for c in cols))
    for name, row in report.get("reference_rows_quoted", {}).items():
        lines.append(f"{('[quoted] ' + name)[:w - 1]:<{w}}" + "".join(fmt(row.get(c)) for c in cols))
    lines.append("[quoted] rows are the published numbers, copied from the papers, not computed here.")
    if bench == "editval":
        lines.append(f"protocol {report.get('protocol') or 'fixed'}: {report.get('protocol_rules', '')}")
        if (report.get("protocol") or "fixed") == "fixed":
            lines.append("the [quoted] rows were scored with EditVal's own code: --protocol official scores as it did")
        over, typed = report.get("average_over", []), list(report.get("n_per_type", {}))
        if len(over) < len(typed):
            none = ", ".join(EDITVAL_ABBREV.get(t, t) for t in typed if t not in over)
            lines.append(f"Avg. is over {len(over)} of {len(typed)} edit types ({none}: no value), "
                         "the quoted Avg. over 6: not comparable")
    if report.get("structure_resize"):
        lines.append(f"structure distance resize: {report['structure_resize']['as']}")
    if report.get("warnings"):
        n = len({w["sample"] for w in report["warnings"]})
        lines.append(f"{n} sample(s) scored with warnings (listed under 'warnings' in the report)")
    if report.get("n_failed"):
        lines.append(f"{report['n_failed']} sample(s) failed or missing (listed under 'failures' in the report)")
    return "\n".join(lines)


def write_csv(path: Path, units: Sequence[Unit], rows: dict[str, dict | None], want: Sequence[str]) -> None:
    from ..io import atomic_write_bytes

    info_cols = sorted({k for u in units for k in u.info})
    metric_cols = list(want) + (["clip_t_gt"] if "clip_t" in want else [])
    buf = _io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(["key", "status", *info_cols, *metric_cols, "file", "message", "warnings"])
    for u in units:
        r = rows.get(u.key)
        if r is None:
            wr.writerow([u.key, "missing", *[u.info.get(c, "") for c in info_cols], *[""] * len(metric_cols),
                         "", "not scored", ""])
        elif r.get("error"):
            wr.writerow([u.key, "failed", *[u.info.get(c, "") for c in info_cols], *[""] * len(metric_cols),
                         r["error"]["file"], r["error"]["message"], ""])
        else:
            wr.writerow([u.key, "ok", *[u.info.get(c, "") for c in info_cols],
                         *[r["metrics"].get(m, "") for m in metric_cols], "", "",
                         " | ".join(_row_warnings(r, want))])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


# --------------------------------------------------------------------------- command
def parse_metrics(benchmark: str, text: str | None) -> list[str]:
    allowed = METRICS[benchmark]
    if text is None:
        return list(allowed)
    if not any(v.strip() for v in text.split(",")):      # as bench's --methods: name one, or leave it out
        raise LimeEditError(f"--metrics {text!r}: no metric named; leave it out for all of {', '.join(allowed)}")
    aliases = {"clip-i": "clip_i", "clip-t": "clip_t", "structure": "structure_distance",
               "clip-whole": "clip_whole", "clip-edited": "clip_edited", "accuracy": "owlvit"}
    out = []
    for m in (v.strip().lower() for v in text.split(",") if v.strip()):
        m = aliases.get(m, m.replace("-", "_"))
        if m not in allowed:
            raise LimeEditError(f"--metrics: unknown metric {m!r} for {benchmark}; choose from {', '.join(allowed)}")
        if m not in out:
            out.append(m)
    return [m for m in allowed if m in out]


def run_score(args) -> int:
    """``lime-edit score`` (see :mod:`lime_edit.eval.cli`)."""
    from ..io import atomic_write_json

    from .cli import PROTOCOLS, protocol_error

    bench = args.benchmark
    protocol = args.protocol
    if protocol is not None and protocol not in PROTOCOLS[bench]:
        raise LimeEditError(protocol_error(bench, protocol, "score"))
    if bench == "editval":
        protocol = protocol or "fixed"
    structure_antialias = bool(getattr(args, "structure_antialias", False))
    if structure_antialias and bench != "piebench":
        raise LimeEditError("--structure-antialias applies to piebench only")
    want = parse_metrics(bench, args.metrics)
    outputs = Path(args.outputs)
    if not outputs.is_dir():
        raise LimeEditError(f"{outputs}: no such folder (--outputs)")
    # scores/editval (fixed rules, the default) and scores/editval-official: never each other's rows
    tag = bench + (f"-{protocol}" if protocol and not (bench == "editval" and protocol == "fixed") else "")
    scores_dir = Path(args.scores_dir) if args.scores_dir else outputs / "scores" / tag
    report_path = Path(args.report) if args.report else scores_dir / "report.json"
    from .datasets import editval_root, magicbrush_root, piebench_root

    data_root = {"magicbrush": magicbrush_root, "piebench": piebench_root, "editval": editval_root}[bench](args.data)
    data_dirs = [Path(d).resolve() for d in (data_root, getattr(args, "coco_dir", None)) if d]
    # score reads the dataset and never writes into it (a report over mapping_file.json; the
    # dataset's own images scored as if they were edits)
    for flag, path in (("--outputs", outputs), ("--scores-dir", scores_dir), ("--report", report_path)):
        real = path.resolve()
        inside = next((d for d in data_dirs if real.is_relative_to(d)), None)
        if inside is not None:
            raise LimeEditError(f"{flag} {str(path)!r} is inside the dataset folder {str(inside)!r}; score never "
                                "writes there and scores a run folder of `lime-edit eval`: choose one outside it")
    if report_path.is_dir():
        raise LimeEditError(f"--report {str(report_path)!r} is a folder; give a file name")
    sources = default_sources()
    for name, flag in BACKBONE_FLAGS.items():
        if getattr(args, flag, None):
            sources[name] = getattr(args, flag)
    shard = get_shard(cpu=args.device == "cpu")
    device = args.device or shard.device
    units, problems = build_units(bench, args.data, outputs, protocol, args.limit,
                                  categories=set(args.categories.split(",")) if args.categories else None,
                                  coco_dir=args.coco_dir,
                                  edit_types=set(args.edit_types.split(",")) if args.edit_types else None)
    store = RowStore(scores_dir / "rows")
    backbones = Backbones(sources, device=device, local_files_only=True if args.local_files_only else None,
                          structure_antialias=structure_antialias)
    score_units(units, want, store, backbones, shard, progress=not args.quiet and sys.stderr.isatty())
    shard.barrier()
    if not shard.is_main:
        return 0
    rows = {k: r for k, r in store.rows([u.key for u in units])}
    report = make_report(bench, protocol, units, rows, want, problems, backbones)
    made = generation_settings(outputs, bench, protocol)
    if made:
        report["generated_with"] = made
    write_csv(scores_dir / "rows.csv", units, rows, want)
    atomic_write_json(report_path, report)
    if not args.quiet:
        print(format_table(report))
        for f in report["failures"][:10]:
            print(failure_line(f), file=sys.stderr)
        if len(report["failures"]) > 10:
            print(f"... and {len(report['failures']) - 10} more (see {report_path})", file=sys.stderr)
        print(f"report: {report_path}\nrows: {scores_dir / 'rows.csv'}")
    return 0 if report["n_failed"] == 0 else 1
