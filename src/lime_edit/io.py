"""File I/O for the front ends: safe image/mask reading, atomic writes, input
expansion and output planning.

Everything a user can get wrong raises :class:`~lime_edit.errors.LimeEditError`
(or its subclass :class:`~lime_edit.errors.InputImageError`) with a one-line
message that names the file, so the CLI can print ``error: <file>: <message>``
and go on with the rest of a batch.

Writes are atomic: the bytes go to a temporary file in the destination folder,
are flushed and ``fsync``-ed, and only then renamed over the destination with
``os.replace``.  An interrupted run (Ctrl-C, crash, full disk) leaves either the
old file or the complete new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import io as _io
import json
import os
import re
import stat
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image, UnidentifiedImageError

from .errors import InputImageError, LimeEditError, printable  # printable: torch-free, for the CLI's messages
from .imageops import DEFAULT_MAX_PIXELS, check_size, mask_to_tensor, to_rgb

#: Extensions picked up when a folder or a glob is expanded (lower case).
#: A file named explicitly on the command line is always tried, whatever its name.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

_GLOB_CHARS = set("*?[")


# --------------------------------------------------------------------------- reading
_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str | None:
    """Why a file of this ``st_mode`` is not read as an image (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not an image"
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file (not opened)"


def _input_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an input image without opening it (missing,
    symbolic link loop or dangling link, folder, FIFO, device, socket); None
    for a regular file (or a link to one)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop (not opened)"
        if os.path.islink(path):
            return "symbolic link to a missing file"
        if err.errno == errno.ENOENT:
            return "no such file"
        return f"cannot read ({err.strerror or err})"
    return _not_regular(mode)


def _open_regular(path: Path):
    """Open a regular file for reading. Anything else is refused without being
    opened (a FIFO would block forever, a device may have side effects); the
    type is checked again on the open descriptor in case the file was swapped."""
    problem = _input_problem(path)
    if problem:
        raise InputImageError(f"{path}: {problem}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise InputImageError(f"{path}: cannot read image ({err.strerror or err})") from None
    try:
        problem = _not_regular(os.fstat(fd).st_mode)
        if problem:
            raise InputImageError(f"{path}: {problem}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_verified(path: str | os.PathLike, max_pixels: int | None, min_side: int = 8) -> Image.Image:
    """Open ``path`` (a regular file only), check that it is a complete,
    decodable image within the pixel limit and at least ``min_side`` pixels a
    side, and return it fully loaded (first frame of animations)."""
    path = Path(path)
    fh = _open_regular(path)
    try:
        with warnings.catch_warnings():
            # Our own pixel limit replaces PIL's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh) as probe:
                size = probe.size
                check_size(probe, max_pixels, name=str(path), min_side=min_side)  # header only: no decoding yet
                probe.verify()  # structure / checksums (PNG CRC, ...)
            # verify() leaves the image unusable: reopen and decode every pixel,
            # which is what catches truncated files.
            fh.seek(0)
            image = Image.open(fh)
            image.load()
    except Image.DecompressionBombError:
        raise InputImageError(f"{path}: image is far above PIL's decompression-bomb limit; "
                              "refusing to decode it") from None
    except UnidentifiedImageError:
        raise InputImageError(f"{path}: not an image file (or an unsupported format)") from None
    except InputImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as err:
        # PIL raises all of these for damaged files; "image file is truncated" is an OSError.
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputImageError(f"{path}: cannot read image ({reason})") from None
    finally:
        fh.close()  # every pixel is decoded: the image no longer needs the file
    if image.size != size:  # paranoia: header and decoded data disagree
        raise InputImageError(f"{path}: cannot read image (size changed while decoding)")
    return image


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an input image as 8-bit RGB, safely.

    - unreadable, truncated or non-image files raise ``InputImageError`` with a
      one-line message naming the file (checked by decoding every pixel);
    - the pixel limit (``max_pixels``, ``None`` = no limit) is checked on the
      header, before anything is decoded; images smaller than 8x8 are refused;
    - EXIF orientation is applied and every mode (RGBA/LA/P with transparency
      composited on white, CMYK, 16-bit and greyscale) becomes RGB through
      :func:`lime_edit.imageops.to_rgb`; animated files give their first frame.

    The returned image has the *displayed* size (width and height swapped for
    photos taken in portrait with an EXIF rotation tag).
    """
    image = _open_verified(path, max_pixels)
    try:
        rgb = to_rgb(image)
    except (OSError, ValueError) as err:
        if isinstance(err, LimeEditError):
            raise
        raise InputImageError(f"{path}: cannot convert image to RGB ({err})") from None
    finally:
        image.close()
    check_size(rgb, max_pixels, name=str(path))
    return rgb


def load_mask(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Read a user mask file as an ``(H, W)`` bool tensor (True = region to edit).

    Any image format and mode works: transparent images are read by their alpha
    channel, others by luminance, threshold 50% (:func:`imageops.mask_to_tensor`).
    The mask may have any size; the pipeline resizes it to the image.  Whether it
    is empty or full is reported by :func:`mask_coverage` / the pipeline, not
    refused here.
    """
    image = _open_verified(path, max_pixels, min_side=1)   # a 1x1 mask is a valid whole-image mask
    try:
        image = _exif_transposed(image)
        return mask_to_tensor(image, name=str(path))
    except LimeEditError as err:
        msg = str(err)
        raise LimeEditError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    finally:
        image.close()


def _exif_transposed(image: Image.Image) -> Image.Image:
    from PIL import ImageOps

    return ImageOps.exif_transpose(image) or image


def mask_coverage(mask) -> float:
    """Fraction of True pixels of a bool mask (0.0 empty .. 1.0 full)."""
    n = int(mask.numel())
    return float(mask.sum().item()) / n if n else 0.0


# --------------------------------------------------------------------------- atomic writes
def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not possible on every OS (Windows), so best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new hidden temporary file next to ``path``; return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name: a rerun removes what a killed run left (remove_stale_temps)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(OSError):  # mkstemp creates 0600; use the normal mode
            os.chmod(tmp_path, 0o666 & ~_umask())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    return tmp_path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + fsync +
    ``os.replace``). Creates the parent folder. On any error or interrupt the
    destination is untouched and the temporary file is removed."""
    path = Path(path)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def encode_image(image: Image.Image, path: str | os.PathLike, format: str | None = None,
                 **save_kwargs: Any) -> bytes:
    """The bytes of ``image`` saved in the format implied by ``path``'s extension."""
    buf = _io.BytesIO()
    fmt = format or Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise LimeEditError(f"{path}: unknown image extension {Path(path).suffix!r}")
    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    image.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def atomic_save_image(path: str | os.PathLike, image: Image.Image, format: str | None = None,
                      **save_kwargs: Any) -> Path:
    """Save a PIL image atomically (encoded in memory first, then written with
    :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, encode_image(image, path, format, **save_kwargs))


def to_json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON atomically. Paths, tuples, numpy and
    torch scalars/arrays are converted."""
    return atomic_write_bytes(path, to_json_bytes(obj))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    tolist = getattr(obj, "tolist", None)  # numpy / torch
    if callable(tolist):
        return tolist()
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    return str(obj)


def atomic_write_many(files: dict[Path, bytes]) -> list[Path]:
    """Write several files as one step: every file is first written to a temporary
    file next to its destination, and only when all of them are on disk are they
    renamed into place (each rename is atomic).  An error or interrupt before the
    renames leaves all destinations untouched and no temporary file behind."""
    return _stage_and_replace(list(files.items()))


def _stage_and_replace(items: list[tuple[Path, bytes]], before_replace=None) -> list[Path]:
    """Write every ``(path, data)`` to a temporary file, call ``before_replace``, then
    rename them into place in order; on any error the temporary files are removed."""
    for path, _ in items:     # checked before anything is written (os.replace would name the temp file)
        if Path(path).is_dir():
            raise LimeEditError(f"{path}: is a folder, not a file")
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in items:
            staged.append((_write_temp(Path(path), data), Path(path)))
        if before_replace is not None:
            before_replace()
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    for folder in {p.parent for _, p in staged}:
        _fsync_dir(Path(folder))
    return [p for _, p in staged]


# --------------------------------------------------------------------------- inputs
@dataclass
class InputSpec:
    """One command-line input that expanded to nothing usable."""

    spec: str
    message: str


def _is_glob(spec: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in spec)


def _case_hint(spec: str) -> str:
    """For a glob that matched no image: the image files of its (literal) folder that its
    last component matches when case is ignored, as a hint (globs are case-sensitive, as
    in a POSIX shell, while folder expansion takes ``.JPG`` like ``.jpg``)."""
    folder, pattern = os.path.split(os.path.expanduser(spec))
    if not pattern or _is_glob(folder) or not Path(folder or ".").is_dir():
        return ""
    try:
        names = [p.name for p in _image_files_in(Path(folder or "."))
                 if fnmatch.fnmatchcase(p.name.lower(), pattern.lower())]
    except OSError:
        return ""
    if not names:
        return ""
    return (f" (patterns are case-sensitive; {len(names)} image file{'s' if len(names) > 1 else ''} "
            f"match{'es' if len(names) == 1 else ''} it ignoring case, e.g. {names[0]})")


def _image_files_in(folder: Path) -> list[Path]:
    """Entries of ``folder`` with an image extension, not hidden, sorted by name
    (subfolders named like images left out; other non-regular files are kept
    so that they are reported)."""
    return sorted((p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                   and not p.is_dir()),
                  key=lambda p: p.name)


def expand_inputs(specs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[InputSpec]]:
    """Expand command-line inputs into a deterministic list of files.

    - an existing file is used as given, whatever its extension (a non-image file
      is reported when it is read);
    - a folder contributes its image files (by extension, :data:`IMAGE_EXTENSIONS`,
      not recursive, hidden files skipped), sorted by name;
    - anything else containing ``* ? [`` is a glob (``**`` recurses); its matches
      that are image files, sorted;
    - order follows the command line; a file reached twice is kept once;
    - only regular files (or links to them) are kept: a FIFO, device or socket
      (even one named ``x.png``), a symbolic link loop or a dangling link is
      reported and skipped, never opened.

    Returns ``(files, problems)``: ``problems`` lists the specs that named nothing
    (missing path, empty folder, glob without matches) and the entries skipped
    as above, each with a message.
    """
    files: list[Path] = []
    problems: list[InputSpec] = []
    seen: set[str] = set()

    def add(p: Path) -> bool:
        problem = _input_problem(p)
        if problem:
            problems.append(InputSpec(os.fspath(p), problem))
            return False
        key = path_key(p)
        if key not in seen:
            seen.add(key)
            files.append(p)
        return True

    for raw in specs:
        spec = os.fspath(raw)
        path = Path(spec).expanduser()
        if path.is_dir():
            found = _image_files_in(path)
            if not found:
                problems.append(InputSpec(spec, "folder contains no image files "
                                                f"({', '.join(sorted(IMAGE_EXTENSIONS))})"))
            for p in found:
                add(p)
        elif path.exists() or path.is_symlink():
            add(path)
        elif _is_glob(spec):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(spec), recursive=True))
            found = [m for m in matches if m.suffix.lower() in IMAGE_EXTENSIONS and not m.is_dir()]
            if not found:
                problems.append(InputSpec(spec, "no image file matches this pattern" + _case_hint(spec)))
            for p in found:
                add(p)
        else:
            problems.append(InputSpec(spec, "no such file or folder"))
    return files, problems


# --------------------------------------------------------------------------- outputs
#: Output kinds and their file-name suffixes: ``<stem><suffix>``.
OUTPUT_SUFFIXES = {
    "edited": "_edited.png",
    "mask": "_mask.png",
    "overlay": "_overlay.png",
    "segments": "_segments.png",
    "record": ".json",
}
#: Per-token heatmaps (``--explain``): ``<stem>_attn_<nn>_<token>.png``.
HEATMAP_GLOB = "_attn_*.png"


@dataclass
class OutputPlan:
    """Where the outputs of one input go.

    stem: the base name shared by all outputs (the input's name without extension,
        with ``-2``, ``-3`` ... appended when two inputs share a name).
    paths: kind -> path, for the kinds planned (see :data:`OUTPUT_SUFFIXES`).
    explain: whether per-token heatmaps will be written (names known only after
        localization; see :meth:`heatmap_path`).
    """

    source: Path
    out_dir: Path
    stem: str
    paths: dict[str, Path]
    explain: bool = False
    existing: list[Path] = field(default_factory=list)
    #: :func:`file_stamp` of the record when the run planned this input (under :func:`output_lock`)
    record_stamp: Any = None
    #: the run's inputs and masks (:func:`run_files`): never written or removed
    protected: dict[str, Path] = field(default_factory=dict)

    def replaces(self, paths: Iterable[Path] | None = None) -> Path | None:
        """The file of :attr:`protected` that one of ``paths`` (default: this plan's
        outputs) would replace or remove, or ``None``."""
        for p in self.paths.values() if paths is None else paths:
            hit = self.protected.get(path_key(p))
            if hit is not None:
                return hit
        return None

    def _heatmap_name(self) -> re.Pattern:
        """File names of this input's heatmaps: ``<stem>_attn_NN_<token>.png``."""
        return re.compile(re.escape(self.stem) + r"_attn_\d\d_[A-Za-z0-9._-]+\.png")

    def heatmap_path(self, index: int, token: str) -> Path:
        return self.out_dir / f"{self.stem}_attn_{index:02d}_{safe_name(token)}.png"

    def find_existing(self) -> list[Path]:
        """Planned outputs that already exist (heatmaps by pattern)."""
        found = [p for p in self.paths.values() if p.exists() or p.is_symlink()]
        if self.explain and self.out_dir.is_dir():
            found += sorted(self.out_dir.glob(glob.escape(self.stem) + HEATMAP_GLOB))
        return found

    def leftover_heatmaps(self, batch_stems: Iterable[str] = ()) -> list[Path]:
        """Heatmaps of this input found with no record (named like
        ``<stem>_attn_NN_<token>.png``; what ``--overwrite`` replaces), excluding any file whose name could also
        belong to another input's outputs (one in ``batch_stems`` or with a JSON
        record in the folder): those are never touched."""
        if not self.out_dir.is_dir():
            return []
        own = self._heatmap_name()
        others = {s.lower() for s in batch_stems} - {self.stem.lower()}
        found = []
        for p in sorted(self.out_dir.glob(glob.escape(self.stem) + HEATMAP_GLOB)):
            if not own.fullmatch(p.name) or not p.is_file():
                continue
            owners = {p.name[:-len(suf)] for suf in OUTPUT_SUFFIXES.values() if p.name.endswith(suf)}
            owners |= {p.name[:m.start()] for m in re.finditer(r"_attn_\d\d_", p.name)}
            owners.discard(self.stem)
            if any(o.lower() in others or (self.out_dir / f"{o}.json").exists() for o in owners):
                continue
            found.append(p)
        return found

    def recorded_files(self, record: dict[str, Any]) -> list[str] | None:
        """The file names a record of this input names (outputs, then heatmaps);
        ``None`` when it names anything but plain names of this input's outputs."""
        outputs, heatmaps = record.get("outputs"), record.get("heatmaps") or []
        replaced = record.get("replaces") or []        # a pending record: the set it replaces
        if not isinstance(outputs, dict) or not isinstance(heatmaps, list) or not isinstance(replaced, list):
            return None
        names = list(outputs.values()) + [h.get("file") if isinstance(h, dict) else None for h in heatmaps]
        own = {self.stem + suffix for suffix in OUTPUT_SUFFIXES.values()}
        heat = self._heatmap_name()
        ok = all(isinstance(n, str) and (n in own or heat.fullmatch(n)) for n in [*names, *replaced])
        return [*names, *(n for n in replaced if n not in names)] if ok else None

    def state(self, request: dict[str, Any]) -> tuple[str, str]:
        """Where this input's output set stands, for a rerun with ``request`` (what
        identifies the job: input, instruction, model, settings ...). Returns
        ``(state, detail)``:

        - ``"new"``: none of its outputs exist;
        - ``"done"``: complete: its JSON record exists (it is written last), was
          made for the same ``request`` and every file it names exists;
        - ``"redo"``: incomplete: a *pending* record (what :func:`publish_outputs`
          leaves when interrupted), or a record of the same request whose files are
          not all there;
        - ``"conflict"``: a record made for another request, a file named like the
          record that is not a lime-edit record, or files named like outputs with no
          record at all (not made by lime-edit, or their record was removed: never
          replaced without ``--overwrite``).
        """
        rec_path = self.paths["record"]
        if not (rec_path.exists() or rec_path.is_symlink()):
            if self.existing:
                return "conflict", ", ".join(str(p) for p in self.existing[:3]) \
                    + (" ..." if len(self.existing) > 3 else "") + ", with no lime-edit record"
            return "new", ""
        record = read_record(rec_path)
        names = self.recorded_files(record) if record is not None else None
        if names is None:
            return "conflict", f"{rec_path}, not a lime-edit record"
        if record.get("pending"):
            return "redo", "incomplete outputs of an interrupted run"
        old, new = record.get("request"), json.loads(to_json_bytes(request))
        if not isinstance(old, dict):
            return "conflict", f"{rec_path}, made by an older lime-edit"
        if old != new:
            diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            return "conflict", f"{rec_path}, made with another {', '.join(diff)}"
        missing = [n for n in names if not (self.out_dir / n).is_file()]
        if missing:
            return "redo", f"incomplete outputs: {missing[0]} is missing"
        return "done", str(rec_path)


def path_key(path: str | os.PathLike) -> str:
    """What makes two paths the same file here: links and ``..`` resolved, case folded
    where the platform folds it."""
    return os.path.normcase(os.path.realpath(path))


def run_files(paths: Iterable[str | os.PathLike]) -> dict[str, Path]:
    """The files a run reads (inputs, masks) by :func:`path_key`, for
    :attr:`OutputPlan.protected`."""
    return {path_key(p): Path(p) for p in paths}


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The lime-edit JSON record at ``path`` (an object with ``lime_edit_version``
    and ``outputs``), or ``None`` if it is missing, unreadable or something else."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(16 * 2 ** 20 + 1)
        record = json.loads(data.decode("utf-8")) if len(data) <= 16 * 2 ** 20 else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if isinstance(record, dict) and "lime_edit_version" in record and isinstance(record.get("outputs"), dict):
        return record
    return None


def recorded_outputs(out_dir: str | os.PathLike) -> set[str]:
    """:func:`path_key` of every file that a lime-edit record in ``out_dir`` lists as its
    output (nothing if the folder does not exist)."""
    out_dir = Path(out_dir)
    keys: set[str] = set()
    if not out_dir.is_dir():
        return keys
    for f in out_dir.glob("*.json"):
        record = read_record(f)
        for name in (record or {}).get("outputs", {}).values():
            if isinstance(name, str):
                keys.add(path_key(out_dir / name))
    return keys


def publish_outputs(files: dict[Path, bytes], record_path: Path, record: dict[str, Any],
                    replaces: Sequence[str] = ()) -> list[Path]:
    """Publish the output set of one input, all-or-nothing: every file (``files``
    and the record) is first written to a temporary file; then a *pending* copy of
    the record (``"pending": true``) replaces any record at ``record_path`` (from
    here on the set counts as incomplete, and its files as lime-edit's), the files
    are renamed into place, and the record is renamed LAST. So a set is complete iff
    its record exists and is not pending, and then it names files of this set only;
    an interrupted publish leaves a pending record that a rerun redoes, while files
    named like outputs with no record at all are someone else's (see
    :meth:`OutputPlan.state`). An error or interrupt before the renames leaves the
    destinations untouched and no temporary file behind. ``replaces``: names of the
    replaced set's files that the new set lacks (the caller removes them after this
    returns); the pending record lists them, so a rerun after an interruption still does."""
    record_path = Path(record_path)
    pending = to_json_bytes({**record, "pending": True, "replaces": list(replaces)})

    def mark_pending() -> None:     # from here on the old set counts as incomplete
        atomic_write_bytes(record_path, pending)
    return _stage_and_replace([*files.items(), (record_path, to_json_bytes(record))], mark_pending)


def safe_name(text: str, max_len: int = 40) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``-``, ``_``, ``.``)."""
    out = "".join(ch if (ch.isalnum() and ch.isascii()) or ch in "-_." else "_" for ch in text)
    out = out.strip("._") or "x"
    return out[:max_len]


def plan_outputs(inputs: Sequence[Path], out_dir: str | os.PathLike, kinds: Iterable[str],
                 explain: bool = False) -> list[OutputPlan]:
    """Plan output paths for each input in ``out_dir``; nothing is written.

    Names are ``<stem><suffix>`` (see :data:`OUTPUT_SUFFIXES`); inputs whose
    stems collide (``a/x.png`` and ``b/x.jpg``) get ``x``, ``x-2``, ``x-3`` in
    input order, so a batch never writes one output twice.  ``plan.existing``
    lists the outputs already on disk; call this before any expensive work and
    refuse those inputs unless the user allowed overwriting.
    """
    out_dir = Path(out_dir)
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in OUTPUT_SUFFIXES]
    if unknown:
        raise ValueError(f"unknown output kind(s): {unknown}")
    used: set[str] = set()
    plans: list[OutputPlan] = []
    for src in inputs:
        base = safe_name(Path(src).stem, max_len=120)
        stem, n = base, 1
        while stem.lower() in used:
            n += 1
            stem = f"{base}-{n}"
        used.add(stem.lower())
        plan = OutputPlan(Path(src), out_dir, stem,
                          {k: out_dir / f"{stem}{OUTPUT_SUFFIXES[k]}" for k in kinds}, explain)
        plan.existing = plan.find_existing()
        plans.append(plan)
    return plans


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False        # this process: its temporary files of a finished publish are gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # EPERM: alive, another user's
        return True
    return True


def remove_stale_temps(out_dir: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files that a killed run (SIGKILL, power loss: no cleanup ran)
    or a failed cleanup (read-only folder) left for the outputs ``names`` in ``out_dir``:
    ``.<name>.<pid>-XXXXXXXX.tmp`` of a process that no longer runs. POSIX only (elsewhere
    a pid cannot be checked safely); returns what was removed."""
    if os.name != "posix":
        return []
    out_dir, names = Path(out_dir), set(names)
    pattern = re.compile(r"\.(.+)\.(\d+)-[A-Za-z0-9_]{8}\.tmp")
    removed = []
    try:
        entries = list(os.scandir(out_dir))
    except OSError:
        return []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if not m or m.group(1) not in names or _alive(int(m.group(2))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def file_stamp(path: str | os.PathLike) -> tuple[int, int, int, int] | None:
    """What changes whenever a file is replaced or rewritten (device, inode, mtime, size);
    ``None`` for no file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


@contextlib.contextmanager
def output_lock(out_dir: str | os.PathLike):
    """Hold an exclusive advisory lock (``flock``) on the output folder: runs sharing a
    folder plan and publish one at a time, so one never reads another's half-published
    set or replaces a set published after it planned. Without ``fcntl`` (Windows) or
    when the folder cannot be opened, no lock is taken."""
    try:
        import fcntl
    except ImportError:       # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(out_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:       # a file system without flock: go on unlocked
            pass
        yield
    finally:
        os.close(fd)          # releases the lock


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and check that it is a writable folder;
    raise ``LimeEditError`` otherwise (before any expensive work)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LimeEditError(f"{out}: output path exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LimeEditError(f"{out}: cannot create output folder ({err.strerror or err})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise LimeEditError(f"{out}: output folder is not writable")
    return out


__all__ = [
    "IMAGE_EXTENSIONS", "OUTPUT_SUFFIXES", "InputSpec", "OutputPlan",
    "load_image", "load_mask", "mask_coverage",
    "atomic_write_bytes", "atomic_save_image", "atomic_write_json", "atomic_write_many",
    "encode_image", "to_json_bytes", "expand_inputs", "plan_outputs", "check_out_dir", "safe_name",
    "read_record", "publish_outputs", "path_key", "run_files",
    "output_lock", "file_stamp", "remove_stale_temps",
    "printable",
]
