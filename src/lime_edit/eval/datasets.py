"""Readers for the three benchmarks' own data layouts (no images are decoded here).

Each reader returns ``(samples, problems)``: a malformed record or a missing file
becomes a :class:`Problem` naming the sample and the file, and the sample is left
out, so one bad record never stops a 700-sample run.

MagicBrush test split (the zip from the authors, unpacked)::

    test/images/<img_id>/<img_id>-input.png, <img_id>-mask<N>.png, <img_id>-output<N>.png
    test/edit_sessions.json       {img_id: [{"input", "mask", "output", "instruction"}, ...]}
    test/local_descriptions.json  {img_id: {"<img_id>-output<N>.png": caption}}
    test/global_descriptions.json (not used by the metrics)

PIE-Bench (``data/`` of the PnP-Inversion release)::

    mapping_file.json   {id: {image_path, original_prompt, editing_prompt, editing_instruction,
                              editing_type_id, blended_word, mask}}
    annotation_images/<image_path>

EditVal: ``object.json`` ``{class: {coco_image_id: {edit_type: {"from": [...], "to": [...]}}}}``
plus the COCO train2017 originals (see :func:`find_coco_image`).

Fields that become parts of file paths are checked here, since ``eval`` writes its
outputs under the same names: a MagicBrush ``img_id`` and an EditVal ``image_id``
or ``edit_type`` must be one plain file-name component, and a PIE-Bench
``image_path`` or a MagicBrush turn file a relative path that stays inside its
folder (no absolute path, drive or ``..``). A record that breaks this is a
:class:`Problem`, like any other malformed record.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable

import numpy as np

from ..errors import LimeEditError


@dataclass(frozen=True)
class Problem:
    """A sample that could not be used: which one, which file, and why (one line)."""

    sample: str
    file: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"sample": self.sample, "file": self.file, "message": self.message}

    def __str__(self) -> str:
        return f"{self.sample}: {self.file}: {self.message}"


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise LimeEditError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LimeEditError(f"{path}: not valid JSON ({err})") from None


# --------------------------------------------------------------------------- MagicBrush
@dataclass(frozen=True)
class MBTurn:
    """One turn (1-based ``index``) of a MagicBrush session; paths are absolute."""

    index: int
    input: Path
    mask: Path | None
    output: Path
    instruction: str
    local_description: str | None


@dataclass(frozen=True)
class MBSession:
    img_id: str
    turns: tuple[MBTurn, ...]

    @property
    def key(self) -> str:
        return self.img_id


def magicbrush_root(data: str | os.PathLike) -> Path:
    """The folder holding ``edit_sessions.json`` (``DATA`` or ``DATA/test``)."""
    data = Path(data)
    for cand in (data, data / "test"):
        if (cand / "edit_sessions.json").is_file():
            return cand
    raise LimeEditError(f"{data}: no edit_sessions.json here or in test/ (unpack the MagicBrush test zip "
                        "and pass the folder that contains test/)")


def read_magicbrush(data: str | os.PathLike, check_files: bool = True
                    ) -> tuple[list[MBSession], list[Problem]]:
    """Sessions sorted by image id; a session with a malformed turn or a missing
    ground-truth file is reported as a problem and left out."""
    root = magicbrush_root(data)
    sessions_json = root / "edit_sessions.json"
    raw = _load_json(sessions_json)
    if not isinstance(raw, dict):
        raise LimeEditError(f"{sessions_json}: expected an object {{img_id: [turns]}}")
    local_path = root / "local_descriptions.json"
    local = _load_json(local_path) if local_path.is_file() else {}
    if not isinstance(local, dict):
        raise LimeEditError(f"{local_path}: expected an object {{img_id: {{output file: caption}}}}")
    sessions, problems = [], []
    for img_id in sorted(raw, key=_natural_key):
        turns_raw = raw[img_id]
        try:
            folder = root / "images" / path_component(img_id, "img_id", str(sessions_json))
            if not isinstance(turns_raw, list) or not turns_raw:
                raise _Bad(str(sessions_json), "expected a non-empty list of turns")
            turns = []
            for k, t in enumerate(turns_raw, start=1):
                if not isinstance(t, dict):
                    raise _Bad(str(sessions_json), f"turn {k} is not an object")
                missing = [f for f in ("input", "output", "instruction") if not t.get(f)]
                if missing:
                    raise _Bad(str(sessions_json), f"turn {k} lacks {', '.join(missing)}")
                _require_text(t, ("input", "output", "instruction") + (("mask",) if t.get("mask") else ()),
                              str(sessions_json), f"turn {k} ")
                inp = folder / relative_path(t["input"], f"turn {k} input", str(sessions_json))
                out = folder / relative_path(t["output"], f"turn {k} output", str(sessions_json))
                mask = folder / relative_path(t["mask"], f"turn {k} mask", str(sessions_json)) \
                    if t.get("mask") else None
                if check_files:
                    for f in (inp, out) if k == 1 else (out,):
                        if not f.is_file():
                            raise _Bad(str(f), "no such file")
                desc = local.get(str(img_id), {}).get(Path(str(t["output"])).name) \
                    if isinstance(local.get(str(img_id)), dict) else None
                if desc is not None and not isinstance(desc, str):
                    raise _Bad(str(local_path), f"the caption of {Path(t['output']).name} is not text")
                turns.append(MBTurn(k, inp, mask, out, str(t["instruction"]), desc))
        except _Bad as bad:
            problems.append(Problem(str(img_id), bad.file, bad.message))
            continue
        sessions.append(MBSession(str(img_id), tuple(turns)))
    return sessions, problems


# --------------------------------------------------------------------------- PIE-Bench
PIE_CATEGORIES = {
    "0": "random", "1": "change object", "2": "add object", "3": "delete object",
    "4": "change content", "5": "change pose", "6": "change color", "7": "change material",
    "8": "change background", "9": "change style",
}


@dataclass(frozen=True)
class PieItem:
    key: str
    image: Path
    image_path: str          # relative path inside annotation_images/ (also the output layout)
    original_prompt: str
    editing_prompt: str
    editing_instruction: str
    editing_type_id: str
    blended_word: str
    mask_rle: tuple[int, ...] = field(repr=False)

    @property
    def clean_editing_prompt(self) -> str:
        """The edit prompt with the ``[ ]`` change markers removed (as their scorer does)."""
        return self.editing_prompt.replace("[", "").replace("]", "")

    @property
    def clean_original_prompt(self) -> str:
        """The source caption without ``[ ]`` markers (caption editors: P2P)."""
        return self.original_prompt.replace("[", "").replace("]", "")


def piebench_root(data: str | os.PathLike) -> Path:
    data = Path(data)
    for cand in (data, data / "data"):
        if (cand / "mapping_file.json").is_file():
            return cand
    raise LimeEditError(f"{data}: no mapping_file.json here or in data/ (download PIE-Bench and pass "
                        "the folder with mapping_file.json and annotation_images/)")


def read_piebench(data: str | os.PathLike, check_files: bool = True,
                  categories: set[str] | None = None) -> tuple[list[PieItem], list[Problem]]:
    root = piebench_root(data)
    mapping = root / "mapping_file.json"
    raw = _load_json(mapping)
    if not isinstance(raw, dict):
        raise LimeEditError(f"{mapping}: expected an object {{id: record}}")
    items, problems = [], []
    for key in sorted(raw, key=_natural_key):
        rec = raw[key]
        try:
            if not isinstance(rec, dict):
                raise _Bad(str(mapping), "record is not an object")
            missing = [f for f in ("image_path", "editing_prompt", "editing_instruction", "editing_type_id",
                                   "mask") if f not in rec]
            if missing:
                raise _Bad(str(mapping), f"record lacks {', '.join(missing)}")
            _require_text(rec, ("image_path", "editing_prompt", "editing_instruction"), str(mapping))
            cat = str(rec["editing_type_id"])
            if categories is not None and cat not in categories:
                continue
            rle = rec["mask"]
            _check_rle(rle)
            image = root / "annotation_images" / relative_path(rec["image_path"], "image_path", str(mapping))
            if check_files and not image.is_file():
                raise _Bad(str(image), "no such file")
            items.append(PieItem(str(key), image, str(rec["image_path"]), str(rec.get("original_prompt", "")),
                                 str(rec["editing_prompt"]), str(rec["editing_instruction"]), cat,
                                 str(rec.get("blended_word", "")), tuple(int(v) for v in rle)))
        except _Bad as bad:
            problems.append(Problem(str(key), bad.file, bad.message))
        except LimeEditError as err:
            problems.append(Problem(str(key), str(mapping), f"bad mask: {err}"))
    # two records with one image_path: one output file (annotation_images/<image_path>)
    items, shared = first_per_output(
        items, key=lambda it: it.key, outputs=lambda it: [str(Path(it.image_path))], file=lambda it, name: str(mapping),
        entry=lambda it: f"record {it.key!r}")
    return items, problems + shared


def _check_rle(rle: Any) -> None:
    if not isinstance(rle, list) or len(rle) % 2:
        raise LimeEditError("expected a flat list [start, length, ...] of even length")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in rle):
        raise LimeEditError("run starts and lengths must be non-negative integers")


def decode_rle_mask(rle: list[int] | tuple[int, ...], shape: tuple[int, int] = (512, 512),
                    border: bool = True) -> np.ndarray:
    """PIE-Bench mask: ``(H, W)`` bool array, True = edit region.

    ``rle`` is ``[start0, len0, start1, len1, ...]`` over the row-major flattened
    array; runs are clipped at the end of the array.  QUIRK (matched on purpose):
    their decoder also sets the first/last rows and columns to 1 "to avoid
    annotation errors in boundary", so the background (``1 - mask``) never
    includes the image border; ``border=False`` gives the raw annotation.
    """
    _check_rle(list(rle))
    h, w = shape
    n = h * w
    flat = np.zeros(n + 1, dtype=np.int32)
    starts = np.asarray(rle[0::2], dtype=np.int64)
    ends = np.minimum(starts + np.asarray(rle[1::2], dtype=np.int64), n)
    keep = starts < ends
    np.add.at(flat, starts[keep], 1)     # difference array: +1 at run start, -1 at run end
    np.add.at(flat, ends[keep], -1)
    mask = (np.cumsum(flat[:n]) > 0).reshape(h, w)
    if border:
        mask[0, :] = mask[-1, :] = True
        mask[:, 0] = mask[:, -1] = True
    return mask


def encode_rle_mask(mask: np.ndarray) -> list[int]:
    """Inverse of :func:`decode_rle_mask` (without the border): runs of True pixels."""
    flat = np.asarray(mask, dtype=bool).reshape(-1).astype(np.int8)
    d = np.diff(np.concatenate([[0], flat, [0]]))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    out: list[int] = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        out += [int(s), int(e - s)]
    return out


# --------------------------------------------------------------------------- EditVal
#: The edit types EditVal scores automatically with OWL-ViT (paper Tab. 5 column order).
EDITVAL_SCORED = ("object_addition", "object_replacement", "position_replacement",
                  "positional_addition", "size", "alter_parts")
EDITVAL_ABBREV = {"object_addition": "O.A.", "object_replacement": "O.R.", "position_replacement": "P.R.",
                  "positional_addition": "P.A.", "size": "S.", "alter_parts": "A.P."}


@dataclass(frozen=True)
class EditValEdit:
    key: str                 # "<edit_type>/<image_id>/<to>"
    class_name: str
    image_id: str
    edit_type: str
    to: str
    from_: tuple[str, ...]
    image: Path

    @property
    def output_relpath(self) -> str:
        """Where the edited image goes: ``<edit_type>/<image_id>/<to>.png`` (a long ``to``
        shortened, see :func:`safe_component`)."""
        return f"{self.edit_type}/{self.image_id}/{safe_component(self.to)}.png"


#: longest file-name-safe ``to`` (UTF-8 bytes) used as it is in an output name; a longer one
#: ("File name too long": names are limited to 255 bytes, and the atomic writer's temporary
#: name adds 14) is cut and given a hash of the whole value, as the run folder's record names
MAX_NAME_BYTES = 200


def safe_component(text: str) -> str:
    """A file-name-safe version of an EditVal ``to`` value (keeps spaces). Over
    :data:`MAX_NAME_BYTES` it is cut to its first 100 bytes + ``~`` + 16 hex digits of
    the value's SHA-256, so long values keep distinct, stable names; shorter ones are unchanged."""
    raw = str(text)
    text = re.sub(r"[\\/:*?\"<>|\x00-\x1f]", "_", raw).strip().strip(".")
    data = text.encode("utf-8", "surrogatepass")
    if len(data) > MAX_NAME_BYTES:
        digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        head = data[:100].decode("utf-8", "ignore").rstrip(" .")
        text = f"{head}~{digest}"
    return text or "_"


def editval_root(data: str | os.PathLike) -> Path:
    data = Path(data)
    for cand in (data, data / "editval"):
        if (cand / "object.json").is_file():
            return cand
    raise LimeEditError(f"{data}: no object.json here (pass the folder with EditVal's object.json "
                        "and the COCO images, see --coco-dir)")


def find_coco_image(image_id: str, roots: list[Path]) -> Path | None:
    """COCO train2017 original of ``image_id`` under any of ``roots`` (and their
    ``images/``, ``train2017/`` sub-folders): ``000000XXXXXX.jpg`` (COCO's name),
    ``img_<id>.png`` (EditVal's saved copies) or ``<id>.png/.jpg``."""
    names = []
    if image_id.isdigit():
        names.append(f"{int(image_id):012d}.jpg")
    names += [f"img_{image_id}.png", f"{image_id}.png", f"{image_id}.jpg"]
    for root in roots:
        for sub in (root, root / "images", root / "train2017", root / "coco" / "train2017"):
            for name in names:
                p = sub / name
                if p.is_file():
                    return p
    return None


def read_editval(data: str | os.PathLike, coco_dir: str | os.PathLike | None = None,
                 edit_types: set[str] | None = None, check_files: bool = True
                 ) -> tuple[list[EditValEdit], list[Problem]]:
    """One :class:`EditValEdit` per (image, edit type, ``to`` value), sorted by key.
    ``edit_types=None`` keeps the six automatically scored types."""
    root = editval_root(data)
    obj = root / "object.json"
    raw = _load_json(obj)
    if not isinstance(raw, dict):
        raise LimeEditError(f"{obj}: expected {{class: {{image_id: {{edit_type: {{from, to}}}}}}}}")
    wanted = set(EDITVAL_SCORED) if edit_types is None else edit_types
    roots = [root] + ([Path(coco_dir)] if coco_dir else [])
    edits, problems = [], []
    for cls in sorted(raw):
        per_image = raw[cls]
        if not isinstance(per_image, dict):
            problems.append(Problem(str(cls), str(obj), "class entry is not an object"))
            continue
        for image_id in sorted(per_image, key=_natural_key):
            types = per_image[image_id]
            if not isinstance(types, dict):
                problems.append(Problem(f"{cls}/{image_id}", str(obj), "image entry is not an object"))
                continue
            try:
                path_component(image_id, "image_id", str(obj))
            except _Bad as bad:
                problems.append(Problem(f"{cls}/{image_id}", bad.file, bad.message))
                continue
            image = find_coco_image(str(image_id), roots)
            for edit_type in sorted(types):
                if "all" not in wanted and edit_type not in wanted:
                    continue
                spec = types[edit_type]
                key0 = f"{edit_type}/{image_id}"
                try:
                    path_component(edit_type, "edit_type", str(obj))
                except _Bad as bad:
                    problems.append(Problem(key0, bad.file, bad.message))
                    continue
                if not isinstance(spec, dict) or not isinstance(spec.get("to"), list):
                    problems.append(Problem(key0, str(obj), "expected {\"from\": [...], \"to\": [...]}"))
                    continue
                frm = spec.get("from") or []
                for to in spec["to"]:
                    key = f"{key0}/{to}"
                    if not isinstance(to, str) or not to.strip():
                        problems.append(Problem(key, str(obj), "empty or non-text 'to' value"))
                        continue
                    if check_files and image is None:
                        problems.append(Problem(key, f"{root}/images/{image_id}",
                                                "COCO image not found (give --coco-dir)"))
                        continue
                    edits.append(EditValEdit(key, str(cls), str(image_id), edit_type, to,
                                             tuple(str(v) for v in frm if isinstance(v, str)),
                                             image or root / "images" / f"{image_id}"))
    edits.sort(key=lambda e: e.key)
    # e.g. the same image id under two classes, or 'to' values that differ only in characters
    # a file name cannot hold: one output file, so the second would overwrite the first's
    edits, shared = first_per_output(
        edits, key=lambda e: e.key, outputs=lambda e: [e.output_relpath], file=lambda e, name: str(obj),
        entry=lambda e: f"class {e.class_name!r} image {e.image_id!r} {e.edit_type} 'to' {e.to!r}")
    return edits, problems + shared


# --------------------------------------------------------------------------- helpers
def first_per_output(items: list, key: Callable[[Any], str], outputs: Callable[[Any], list],
                     entry: Callable[[Any], str], file: Callable[[Any, str], str]) -> tuple[list, list[Problem]]:
    """Keep the first item (in the given order) of each output file; a later one with an
    output an earlier one has (two entries that would overwrite each other's file) becomes a
    :class:`Problem` naming both entries. ``outputs(item)``: its output names (compared as the
    platform does, ``os.path.normcase``); ``file(item, name)``: the file the problem names."""
    seen: dict[str, tuple[Any, str]] = {}
    kept, problems = [], []
    for it in items:
        names = [str(n) for n in outputs(it)]
        clash = next((n for n in names if os.path.normcase(n) in seen), None)
        if clash is not None:
            first = seen[os.path.normcase(clash)][0]
            problems.append(Problem(key(it), file(it, clash),
                                    f"{entry(it)} has the same output file {clash!r} as {entry(first)}; "
                                    "left out, so that neither overwrites the other"))
            continue
        for n in names:
            seen[os.path.normcase(n)] = (it, n)
        kept.append(it)
    return kept, problems


class _Bad(Exception):
    def __init__(self, file: str, message: str):
        super().__init__(message)
        self.file, self.message = file, message


def path_component(value: Any, what: str, file: str) -> str:
    """``value`` as one plain file-name component (no separator, not ``.``/``..``,
    no NUL), or ``_Bad`` naming the field."""
    text = str(value)
    if not text or text in (".", "..") or any(c in text for c in "/\\\x00"):
        raise _Bad(file, f"{what} {text!r} is not a plain file name (refused: outputs are named after it)")
    return text


def relative_path(value: Any, what: str, file: str) -> str:
    """``value`` as a relative path that stays inside its folder (no absolute path,
    drive or ``..`` component, ``/`` or ``\\`` separators), or ``_Bad`` naming the field."""
    text = str(value)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if (not text or "\x00" in text or text.startswith(("/", "\\")) or PureWindowsPath(text).drive
            or ".." in parts or not parts):
        raise _Bad(file, f"{what} {text!r} is not a relative path inside the dataset folder "
                         "(refused: outputs are written under the same name)")
    return text


def _require_text(record: dict, fields: tuple[str, ...], file: str, prefix: str = "") -> None:
    """Each field a string (a number or null would be turned into the text "5" or "None")."""
    for f in fields:
        if not isinstance(record.get(f), str):
            raise _Bad(file, f"{prefix}{f} is not text (got {type(record.get(f)).__name__})")


def _natural_key(s: Any) -> tuple:
    s = str(s)
    return (0, int(s), s) if s.isascii() and s.isdigit() else (1, 0, s)      # "²".isdigit() is True
