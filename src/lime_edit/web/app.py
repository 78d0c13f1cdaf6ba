"""The Gradio app behind ``lime-edit serve``: edit, see LIME's region, refine it by clicking.

Built on the public task API only (``LimePipeline.edit`` / ``edit_captions`` and
``Localization``):

* **Run** calls ``lp.edit(image, instruction, mask="auto" | uploaded mask)`` and,
  for comparison, ``lp.edit(..., mask=None)`` (plain InstructPix2Pix) with the
  same seed and settings.
* **Caption mode**: when the model's backbone edits by captions
  (``lp.backbone.caption_editing``: Prompt-to-Prompt on a text-to-image model) the
  page asks for a source and a target caption instead of an instruction, shows
  Prompt-to-Prompt's settings next to LIME's, and Run / Apply call
  ``lp.edit_captions(image, source, target, p2p={...})`` instead (plain P2P for the
  comparison).  Everything else (views, clicks, downloads, limits) is the same.
* Clicking a segment toggles it in the region of interest
  (``Localization.with_segments``); nothing is recomputed.
* **Apply** re-runs only the edit pass with ``mask=localization.with_segments(...)``,
  so the segmentation of the first run is reused.

Everything a user did lives in a per-session :class:`Session` held by
``gr.State``; the app object itself keeps no per-user data.  Heavy jobs borrow a
pipeline from a :class:`ModelPool` (one pipeline per concurrent job: a
pipeline's attention processors and scheduler are per-call state) and the
Gradio queue admits at most ``len(pool)`` of them at once.

The callbacks (:meth:`LimeWebApp.run`, :meth:`~LimeWebApp.toggle_at`,
:meth:`~LimeWebApp.apply`, :meth:`~LimeWebApp.reset`) are plain methods that the
tests call directly; :meth:`LimeWebApp.build` wires them to the page.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image
from starlette.formparsers import MultiPartException

from .. import io as lio
from .. import viz
from ..config import check_seed, is_real
from ..errors import LimeEditError
from ..imageops import DEFAULT_MAX_PIXELS
from . import render

log = logging.getLogger(__name__)

#: Uploaded images are scaled down (aspect kept) so the longer side is at most this.
DEFAULT_MAX_SIDE = 512
#: Disk the server's files may use (downloads + its own Gradio cache), in MB; oldest go first.
DEFAULT_MAX_DISK_MB = 1024.0
#: Uploads one client address may make per UPLOAD_WINDOW_S seconds (more are refused with 429).
DEFAULT_MAX_UPLOADS = 60
UPLOAD_WINDOW_S = 600.0

#: Settings a page (or an API client) sends: label, lowest, highest, whole number. The
#: server checks them itself: a client can send any value, not only what a slider offers.
SLIDERS = {
    "steps": ("Steps", 1, 100, True),
    "guidance": ("Text guidance", 0.0, 20.0, False),
    "image_guidance": ("Image guidance", 0.0, 5.0, False),
    "clusters": ("Segments (clusters)", 1, 16, True),
    "top_k": ("Top-k attention points (per 128x128 grid)", 1, 1000, True),
    "cross_replace": ("Cross-attention replace", 0.0, 1.0, False),
    "self_replace": ("Self-attention replace", 0.0, 1.0, False),
}
#: Reweighting (caption mode): at most this many words, each scale within +-REWEIGHT_MAX.
REWEIGHT_WORDS = 8
REWEIGHT_MAX = 10.0


def uploaded_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose upload reaches the callback as the uploaded file's
    path, untouched. Gradio's own preprocessing decodes the file with PIL and, for
    a non-image, a zero-byte file, an SVG or PDF named ``.png`` or a huge image,
    fails with a server traceback and a client message holding the server's temp
    path; here the callback reads the file with :mod:`lime_edit.io` instead (safe
    decoding, the pixel limit, one-line errors). Done on the instance: a
    ``gr.Image`` subclass would make Gradio write a ``.pyi`` file into this
    package at import time."""
    component = gr.Image(type="filepath", **kwargs)

    def preprocess(payload: Any) -> str | None:
        return None if payload is None else str(payload.path)

    component.preprocess = preprocess
    return component


def unprocessed(component: gr.components.Component) -> gr.components.Component:
    """``component`` with Gradio's preprocessing turned off: the callback gets the
    value the page or an API client sent, as it was sent, and checks it itself
    (:func:`setting`, :func:`seed_value`), with a message naming the setting.
    Gradio's own checks of a ``gr.Slider`` / ``gr.Number`` give messages that do
    not (``Value -1 is less than minimum value 0.``), leak ``TypeError`` text for a
    wrong type and log a traceback, and its rounding (``precision``) would turn a
    seed of 1.5 into 2 before any check. Done on the instance, as
    :func:`uploaded_image`."""
    component.preprocess = _as_sent
    return component


def _as_sent(payload: Any) -> Any:
    return payload


def _shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` for a one-line message, shortened (a client can send anything)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def setting(name: str, value: Any) -> int | float:
    """A page setting checked against :data:`SLIDERS` (a number, finite, in range,
    whole where it must be); otherwise a ``LimeEditError`` naming it."""
    label, lo, hi, whole = SLIDERS[name]
    kind = "a whole number" if whole else "a number"
    error = LimeEditError(f"{label}: expected {kind} from {lo} to {hi}, got {_shown(value)}")
    if not is_real(value):
        raise error
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise error from None
    if not math.isfinite(v) or not lo <= v <= hi or (whole and v != int(v)):
        raise error
    return int(v) if whole else v


def flag(label: str, value: Any) -> bool:
    """A checkbox's value: ``True``/``False`` only (an API client may send anything)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise LimeEditError(f"{label}: expected true or false, got {value!r}")


def reweight_words(text: Any) -> tuple[tuple[str, float], ...]:
    """The page's reweighting, ``"glitter=2, red=0.5"`` -> ``(("glitter", 2.0), ("red", 0.5))``
    (empty: none); a one-line error naming the entry otherwise. Whether each word is in
    the target caption is checked by the backbone."""
    if text is None:
        return ()
    if not isinstance(text, str):
        raise LimeEditError(f"Reweight: expected text such as 'glitter=2', got {type(text).__name__}")
    out: dict[str, float] = {}
    for item in (p.strip() for p in text.replace(";", ",").replace("\n", ",").split(",")):
        if not item:
            continue
        word, sep, value = item.partition("=")
        word = word.strip()
        try:
            scale = float(value)
        except ValueError:
            scale = float("nan")
        if not sep or not word or not math.isfinite(scale) or abs(scale) > REWEIGHT_MAX:
            raise LimeEditError(f"Reweight: expected WORD=SCALE with a number from {-REWEIGHT_MAX:g} to "
                                f"{REWEIGHT_MAX:g}, e.g. glitter=2; got {_one_line(item, 60)!r}")
        out[word] = scale
    if len(out) > REWEIGHT_WORDS:
        raise LimeEditError(f"Reweight: at most {REWEIGHT_WORDS} words, got {len(out)}")
    return tuple(out.items())


def seed_value(value: Any) -> int:
    """The page's seed as an int in 0..2**64-1 (``check_seed``), or a one-line error."""
    error = LimeEditError(f"Seed: expected a whole number in 0..2**64-1, got {_shown(value)}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise error
        value = int(value)
    if isinstance(value, str):  # text keeps any seed exact (a JSON number may pass through a float)
        if len(value) > 40:
            raise error
        try:
            value = int(value.strip())
        except ValueError:
            raise error from None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**80:
        raise error  # check_seed would print all its digits
    return check_seed(value, "Seed")


def click_point(index: Any) -> tuple[float, float]:
    """A click's pixel ``(x, y)`` (a select event's ``index``): two finite numbers,
    else a one-line ``LimeEditError``. A point outside the picture is the nearest
    edge, as :func:`render.grid_cell` maps it."""
    if isinstance(index, (list, tuple)) and len(index) == 2 and all(is_real(v) for v in index):
        try:
            x, y = float(index[0]), float(index[1])
        except (OverflowError, ValueError):
            pass
        else:
            if math.isfinite(x) and math.isfinite(y):
                return x, y
    raise LimeEditError(f"Click: expected pixel coordinates (two numbers x, y), got {_shown(index)}")


class ModelPool:
    """A fixed set of ``LimePipeline`` s; each job borrows one for its duration.

    A pipeline runs one job at a time (LIME swaps the U-Net's attention
    processors and the scheduler keeps per-call state), so the pool size is the
    number of jobs that can run at once.
    """

    def __init__(self, pipelines: Sequence[Any]):
        pipelines = list(pipelines)
        if not pipelines:
            raise ValueError("ModelPool needs at least one pipeline")
        self.size = len(pipelines)
        self.config = pipelines[0].config
        backbone = getattr(pipelines[0], "backbone", None)
        #: the model edits by source/target captions (Prompt-to-Prompt), not by instructions
        self.caption_editing = bool(getattr(backbone, "caption_editing", False))
        #: the plain editor LIME is compared with, as the page names it; whether it has image guidance
        self.editor_name = str(getattr(backbone, "display_name", "InstructPix2Pix"))
        self.image_guidance = bool(getattr(backbone, "has_image_guidance", True))
        #: the loaded backbone's Prompt-to-Prompt settings (the page's defaults in caption mode)
        self.p2p_defaults: dict[str, Any] = dict(backbone.describe().get("p2p", {})) \
            if self.caption_editing and hasattr(backbone, "describe") else {}
        self._free: queue.Queue = queue.Queue()
        for p in pipelines:
            self._free.put(p)

    @contextmanager
    def borrow(self) -> Iterator[Any]:
        lp = self._free.get()
        try:
            yield lp
        finally:
            self._free.put(lp)


@dataclass
class Session:
    """What one browser session has done so far (held in ``gr.State``).

    image: the RGB image that was edited (after the ``max_side`` downscale).
    instruction: the instruction, or in caption mode the target caption.
    source: the source caption (caption mode; None for instruction editors).
    p2p: Prompt-to-Prompt settings of the shown result (caption mode).
    localization: LIME's stage-1 output of the last **Run** (None when the user
        uploaded a mask); its segmentation is what clicks refine.
    selected: segment labels in the region currently shown.
    applied: segment labels the shown LIME result was made with (differs from
        ``selected`` while a refinement is pending).
    mask: ``(H, W)`` bool region shown (grid of the localization, or of the
        uploaded mask).
    mask_source: "auto", "refined" or "uploaded".
    """

    image: Image.Image
    instruction: str
    seed: int
    overrides: dict[str, Any]
    localization: Any | None
    selected: tuple[int, ...]
    applied: tuple[int, ...]
    mask: np.ndarray | None
    mask_source: str
    result: Any | None = None
    plain: Image.Image | None = None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str | None = None
    p2p: dict[str, Any] = field(default_factory=dict)

    @property
    def view_size(self) -> tuple[int, int]:
        return render.display_size(self.image.size)

    @property
    def pending(self) -> bool:
        return self.localization is not None and self.selected != self.applied


#: The caption under the RoI, segment and attention pictures: what their rings are.
TOP_K_LEGEND = ("Cyan rings (on the region and attention pictures): the top-k pixels where the related "
                "tokens' attention is highest; the segments they fall in make up the region of interest. "
                "How many there are is in the status below; the Top-k setting changes it.")


def _readable_errors(fn: Callable) -> Callable:
    """Turn any exception into a ``gr.Error`` with a one-line message (the page
    shows it as a toast); unexpected ones are logged with their traceback on
    the server only."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except LimeEditError as e:
            raise gr.Error(_one_line(str(e)), print_exception=False) from None
        except Exception as e:
            log.exception("web demo: %s failed", fn.__name__)
            raise gr.Error(_one_line(f"{type(e).__name__}: {e}") + " (details in the server log)",
                           print_exception=False) from None

    return wrapper


def _error_in_status(fn: Callable, n_outputs: int, status_at: int, status: Callable[[str, Any], str]) -> Callable:
    """For the page's own events: a ``gr.Error`` of ``fn`` (see :func:`_readable_errors`) becomes ONE
    message, in the status under the pictures (``status(message, session)`` at output
    ``status_at``), and every other output stays as it was (``gr.skip()``). Raised, Gradio would put
    an "Error" badge on each output instead; the API endpoints still raise (a client gets the error)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as e:
            session = args[-1] if args and isinstance(args[-1], Session) else None
            out: list[Any] = [gr.skip()] * n_outputs
            out[status_at] = status(str(e.message), session)
            return tuple(out)

    return wrapper


def _apply_hint(fn: Callable) -> Callable:
    """Append an update of the Apply button to a callback's outputs (whose last
    one is the :class:`Session`): primary while the region differs from the
    one the shown result was made with."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        pending = isinstance(out[-1], Session) and out[-1].pending
        return (*out, gr.update(variant="primary" if pending else "secondary"))

    return wrapper


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lime-edit")
    except Exception:  # noqa: BLE001
        return "unknown"


class LimeWebApp:
    """Callbacks and page of the demo for one model pool.

    pipelines: one ``LimePipeline`` or several (replicas of one model; that many
        edits run at once).
    model_name: shown on the page and written to ``settings.json``.
    max_side: uploads larger than this (longer side, pixels) are scaled down;
        None keeps the size.
    max_pixels: uploads above this many pixels are refused (checked on the file
        header, before decoding).
    max_queue: jobs waiting in the queue at most (more are refused with a message).
    workdir: folder for the files offered for download (a temporary folder by
        default, removed by :meth:`close` and at exit; entries older than
        ``keep_files_s`` are pruned).
    max_disk_mb: disk the downloads (and ``cache_dir``) may use; before each
        edit and every ``janitor`` round the oldest files go until the total is
        below it (None: no cap).
    cache_dir: the Gradio cache folder when it belongs to this server alone
        (``lime-edit serve`` points ``GRADIO_TEMP_DIR`` at a private folder):
        uploads and served pictures there count towards ``max_disk_mb``. Never
        pass a shared folder: its oldest files would be deleted.
    examples: ``[(image_path, instruction), ...]`` offered under the inputs
        (e.g. synthetic scenes for the demo model, which knows nothing else); in
        caption mode ``[(image_path, source, target), ...]``.

    The page is in caption mode when the pipelines' backbone edits by captions
    (``lp.backbone.caption_editing``, the ``p2p`` backbone): :meth:`run_captions`
    and :meth:`apply_captions` are its Run and Apply.
    """

    def __init__(self, pipelines: Any | Sequence[Any], *, model_name: str = "",
                 max_side: int | None = DEFAULT_MAX_SIDE, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 max_queue: int = 16,
                 workdir: str | Path | None = None, keep_files_s: float = 3600.0,
                 max_disk_mb: float | None = DEFAULT_MAX_DISK_MB, cache_dir: str | Path | None = None,
                 examples: Sequence[tuple[str, str]] = ()):
        if not isinstance(pipelines, (list, tuple)):
            pipelines = [pipelines]
        for lp in pipelines:  # concurrent jobs would interleave progress bars in the server log
            pipe = getattr(lp, "pipe", None)
            if hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(disable=True)
        self.pool = ModelPool(pipelines)
        # a local path is shown (and written to settings.json) by its last part only
        self.model_name = Path(model_name).name if ("/" in model_name and Path(model_name).exists()) \
            else model_name
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.max_queue = max_queue
        self.keep_files_s = keep_files_s
        self.caption_mode = self.pool.caption_editing
        self.examples = [tuple(str(v) for v in e) for e in examples]
        arity = 3 if self.caption_mode else 2
        if any(len(e) != arity for e in self.examples):
            fields = "image, source, target" if self.caption_mode else "image, instruction"
            raise ValueError(f"examples: expected ({fields}) tuples")
        self.max_disk_bytes = None if max_disk_mb is None else int(max_disk_mb * 1024 * 1024)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._own_workdir = not workdir
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="lime-web-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prune_lock = threading.Lock()
        self._stop = threading.Event()
        # removed at close(), when the app is garbage-collected, or at exit, whichever comes first
        self._remove_workdir = (weakref.finalize(self, shutil.rmtree, str(self.workdir), True)
                                if self._own_workdir else None)

    def close(self) -> None:
        """Stop the janitor and remove the downloads folder if this app made it
        (``lime-edit serve`` also removes its Gradio cache folder)."""
        self._stop.set()
        if self._remove_workdir is not None:
            self._remove_workdir()

    def start_janitor(self, every_s: float = 30.0) -> threading.Thread:
        """Prune the files (age, disk cap) every ``every_s`` seconds in a daemon
        thread until :meth:`close`: uploads arrive without an edit too."""
        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    self._prune()
                except Exception:  # noqa: BLE001 - never kill the janitor
                    log.exception("web demo: pruning failed")

        t = threading.Thread(target=loop, name="lime-web-janitor", daemon=True)
        t.start()
        return t

    # ---- helpers ---------------------------------------------------------------
    @property
    def method(self) -> str:
        """The plain editor LIME is compared with, as the page names it."""
        return "Prompt-to-Prompt" if self.caption_mode else self.pool.editor_name

    def defaults(self) -> dict[str, Any]:
        c = self.pool.config
        d = dict(steps=c.num_inference_steps, seed=0, guidance=c.guidance_scale,
                 image_guidance=c.image_guidance_scale, clusters=c.num_clusters, top_k=c.top_k)
        if self.caption_mode:
            p = self.pool.p2p_defaults
            d.update(cross_replace=p.get("cross_replace", 0.4), self_replace=p.get("self_replace", 0.6),
                     local_blend=bool(p.get("local_blend", False)),
                     reweight=", ".join(f"{w}={v:g}" for w, v in dict(p.get("reweight") or {}).items()))
        return d

    def _read(self, path: str, what: str, loader: Callable) -> Any:
        """Read an upload with ``lime_edit.io`` (safe decoding, pixel limit); its
        messages name the upload, not the server's temporary path."""
        try:
            return loader(path, self.max_pixels)
        except LimeEditError as e:
            # the pixel limit's advice is for the command line; a web user cannot raise it
            msg = str(e).replace(str(path), f"{what} {Path(path).name}").replace(
                "(raise --max-pixels or resize it)", "pixels set by the server: make it smaller and upload "
                                                     "it again")
            raise LimeEditError(msg) from None

    def _prepare(self, image: str | None) -> tuple[Image.Image, list[str]]:
        if image is None:
            raise gr.Error("Upload an image first.", print_exception=False)
        img = self._read(image, "image", lio.load_image)
        notes = []
        if self.max_side and max(img.size) > self.max_side:
            w, h = img.size
            s = self.max_side / max(w, h)
            size = (max(8, round(w * s)), max(8, round(h * s)))
            img = img.resize(size, Image.Resampling.LANCZOS)
            notes.append(f"resized from {w}x{h} to {size[0]}x{size[1]} (server limit {self.max_side} px)")
        return img, notes

    @staticmethod
    def _edit_overrides(steps, guidance, image_guidance=None) -> dict[str, Any]:
        """Sampler overrides; ``image_guidance`` None (caption mode: Prompt-to-Prompt has
        no image guidance) leaves it out."""
        out = dict(num_inference_steps=setting("steps", steps), guidance_scale=setting("guidance", guidance))
        if image_guidance is not None:
            out["image_guidance_scale"] = setting("image_guidance", image_guidance)
        return out

    @staticmethod
    def _p2p_settings(cross_replace, self_replace, local_blend, reweight) -> dict[str, Any]:
        """The page's Prompt-to-Prompt settings, checked (``edit_captions(p2p=...)``)."""
        return dict(cross_replace=setting("cross_replace", cross_replace),
                    self_replace=setting("self_replace", self_replace),
                    local_blend=flag("Local blend", local_blend), reweight=reweight_words(reweight))

    @staticmethod
    def _call(lp, s: "Session", mask: Any, seed: int, overrides: dict[str, Any]):
        """One edit of the session's image through the public API: ``edit`` for an
        instruction, ``edit_captions`` in caption mode."""
        if s.source is None:
            return lp.edit(s.image, s.instruction, mask=mask, seed=seed, **overrides)
        return lp.edit_captions(s.image, s.source, s.instruction, mask=mask, seed=seed, p2p=dict(s.p2p),
                                **overrides)

    def _write_files(self, s: Session) -> list[str]:
        """result.png, mask.png, settings.json (and ip2p.png) in a fresh folder."""
        self._prune()
        edit_id = uuid.uuid4().hex
        folder = self.workdir / edit_id
        folder.mkdir()
        # Gradio caches served files by content hash: two edits with identical outputs would
        # share one cache file, written by one request while another downloads it. The edit id
        # in every file keeps each edit's downloads its own.
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("lime-edit-id", edit_id)
        res = s.result
        files = []
        res.image.save(folder / "result.png", pnginfo=info)
        files.append(folder / "result.png")
        if s.plain is not None:
            plain = "p2p.png" if s.source is not None else "ip2p.png"
            s.plain.save(folder / plain, pnginfo=info)
            files.append(folder / plain)
        if res.mask is not None:
            render.mask_image(_np(res.mask), res.image.size).save(folder / "mask.png", pnginfo=info)
            files.append(folder / "mask.png")
        loc = s.localization
        meta = {
            "edit_id": edit_id,
            "lime_edit_version": _version(),
            "model": self.model_name,
            **({"instruction": s.instruction} if s.source is None else
               {"source": s.source, "target": s.instruction, "p2p": _jsonable(s.p2p)}),
            "seed": s.seed,
            "image_size": list(s.image.size),
            "mask": s.mask_source,
            "selected_segments": list(s.applied),
            "related_tokens": [viz.token_label(t) for t in loc.tokens] if loc is not None else None,
            "lime_applied": bool(res.lime_applied),
            "warnings": list(res.warnings),
            "timings": dict(res.timings),
            "overrides": dict(s.overrides),
            "settings": dict(res.settings),
            "notes": list(s.notes),
        }
        (folder / "settings.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        files.append(folder / "settings.json")
        return [str(f) for f in files]

    def _prune(self) -> None:
        """Remove download folders older than ``keep_files_s``, then the oldest
        downloads and (own) Gradio cache files until they fit ``max_disk_mb``."""
        with self._prune_lock:
            cutoff = time.time() - self.keep_files_s
            entries: list[tuple[float, int, Path]] = []
            for d in list(self.workdir.iterdir()):
                try:
                    mtime = d.stat().st_mtime
                    if d.is_dir() and mtime < cutoff:
                        shutil.rmtree(d, ignore_errors=True)
                    else:
                        entries.append((mtime, _disk_size(d), d))
                except OSError:
                    pass
            if self.max_disk_bytes is None:
                return
            if self.cache_dir is not None and self.cache_dir.is_dir():
                for root, _, names in os.walk(self.cache_dir):
                    for name in names:
                        f = Path(root) / name
                        try:
                            entries.append((f.lstat().st_mtime, f.lstat().st_size, f))
                        except OSError:
                            pass
            total = sum(size for _, size, _ in entries)
            for _, size, path in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_disk_bytes:
                    break
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                    if path.parent != self.cache_dir and self.cache_dir is not None:
                        try:
                            path.parent.rmdir()  # Gradio keeps one folder per file; drop it when empty
                        except OSError:
                            pass
                total -= size

    # ---- views -----------------------------------------------------------------
    def view_roi(self, s: Session) -> Image.Image:
        loc = s.localization
        points = _np(loc.points) if loc is not None and s.mask_source == "auto" else None
        grid = tuple(loc.grid_size) if loc is not None else None
        return render.roi_overlay(s.image, s.mask, s.view_size, points=points, grid=grid)

    def view_segments(self, s: Session) -> Image.Image | None:
        if s.localization is None:
            return None
        return render.segment_map(s.image, _np(s.localization.segments), s.selected, s.view_size)

    def view_attention(self, s: Session) -> Image.Image | None:
        if s.localization is None:
            return None
        loc = s.localization
        return render.heatmap(s.image, _np(loc.attention), s.view_size, points=_np(loc.points))

    @staticmethod
    def view_result(s: Session, image: Image.Image | None) -> Image.Image | None:
        """An edited image for the page: small results are scaled up (nearest) to
        the display size; the downloads keep the exact result."""
        if image is None:
            return None
        return render.view(image, s.view_size) if max(image.size) < max(s.view_size) else image

    def error_status(self, message: str, s: Session | None) -> str:
        """The status after a failed request: its one-line message; the pictures, if any, are
        still those of the session's last edit."""
        text = "⚠ " + re.sub(r"([\\`*_\[\]<>|~#])", r"\\\1", message)   # shown as typed, not as Markdown
        if s is not None and s.result is not None:
            text += "\n\nThe pictures are still those of the last edit that ran:\n\n" + self.info(s)
        return text

    def info(self, s: Session) -> str:
        res, loc = s.result, s.localization
        lines = []
        if res is not None:
            if res.lime_applied:
                where = "your mask" if s.mask_source == "uploaded" else "segments " + _labels(s.applied)
                lines.append(f"**LIME applied** ({where}).")
            else:
                lines.append(f"**Plain {self.method}**: LIME was not applied.")
        if loc is not None:
            toks = ", ".join(f"`{viz.token_label(t)}`" for t in loc.tokens) or "none"
            lines.append(f"Related tokens: {toks}. {loc.num_segments} segments; "
                         f"region: {_labels(s.selected)}; {loc.top_k} top-k points (cyan rings).")
        if s.pending:
            lines.append("Region changed: press **Apply refined region** to re-run the edit "
                         "pass with it (the segmentation is reused).")
        elif loc is not None:
            lines.append("Click a segment (on either of the first two pictures) to add it to "
                         "or remove it from the region.")
        if s.mask_source == "uploaded":
            lines.append("Region = your uploaded mask (clear it to let LIME find the region).")
        times = {k: v for k, v in (getattr(res, "timings", None) or {}).items()
                 if k in ("localize", "edit", "total") and v}
        if times:
            lines.append("Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) + ".")
        for w in list(getattr(res, "warnings", []) or []) + s.notes:
            lines.append(f"⚠ {w}")
        return "\n\n".join(lines)

    # ---- callbacks -------------------------------------------------------------
    def run(self, image, instruction, steps, seed, guidance, image_guidance, clusters, top_k,
            compare, user_mask, session: Session | None):
        """Run: LIME edit (auto or uploaded mask) + plain IP2P.
        Returns (roi, segments, attention, plain, result, info, files, session)."""
        if self.caption_mode:
            raise gr.Error("This model edits by captions: give a source and a target caption "
                           "(the page's Run does; API: /edit_captions).", print_exception=False)
        instruction = (instruction or "").strip()
        img, notes = self._prepare(image)
        if not instruction:
            raise gr.Error("Type an instruction, e.g. “make the sky red”.", print_exception=False)
        seed = seed_value(seed)
        overrides = dict(self._edit_overrides(steps, guidance, image_guidance),
                         num_clusters=setting("clusters", clusters), top_k=setting("top_k", top_k))
        return self._first_run(Session(image=img, instruction=instruction, seed=seed, overrides=overrides,
                                       localization=None, selected=(), applied=(), mask=None,
                                       mask_source="auto", notes=notes), compare, user_mask)

    def run_captions(self, image, source, target, steps, seed, guidance, clusters, top_k, cross_replace,
                     self_replace, local_blend, reweight, compare, user_mask, session: Session | None):
        """Run in caption mode: Prompt-to-Prompt + LIME (auto or uploaded mask) + plain P2P.
        Returns (roi, segments, attention, plain, result, info, files, session)."""
        if not self.caption_mode:
            raise gr.Error("This model edits by instructions: type an instruction "
                           "(the page's Run does; API: /edit).", print_exception=False)
        img, notes = self._prepare(image)
        source, target = (source or "").strip(), (target or "").strip()
        if not source:
            raise gr.Error("Type a source caption: what the image shows, e.g. “a red circle and a blue "
                           "square”.", print_exception=False)
        if not target:
            raise gr.Error("Type a target caption: the source caption with the words changed, e.g. "
                           "“a green circle and a blue square”.", print_exception=False)
        seed = seed_value(seed)
        overrides = dict(self._edit_overrides(steps, guidance),
                         num_clusters=setting("clusters", clusters), top_k=setting("top_k", top_k))
        p2p = self._p2p_settings(cross_replace, self_replace, local_blend, reweight)
        return self._first_run(Session(image=img, instruction=target, source=source, p2p=p2p, seed=seed,
                                       overrides=overrides, localization=None, selected=(), applied=(),
                                       mask=None, mask_source="auto", notes=notes), compare, user_mask)

    def _first_run(self, s: Session, compare: Any, user_mask: str | None):
        """The edit of a Run (LIME, and the plain editor when ``compare``) for a checked
        request ``s``; returns the views, the files and the new session."""
        compare = flag(f"Also run plain {self.method}", compare)
        mask_arg: Any = "auto" if user_mask is None else self._read(user_mask, "mask", lio.load_mask)
        with self.pool.borrow() as lp:
            res = self._call(lp, s, mask_arg, s.seed, s.overrides)
            plain = self._call(lp, s, None, s.seed, s.overrides).image if compare else None
        loc = res.localization if user_mask is None else None
        if user_mask is not None:
            shown = _np(res.mask) if res.mask is not None else _np(mask_arg)
            selected: tuple[int, ...] = ()
        else:
            shown = _np(loc.mask) if loc is not None else None
            selected = tuple(sorted(int(v) for v in loc.selected_segments)) if loc is not None else ()
        s = replace(s, localization=loc, selected=selected, applied=selected, mask=shown,
                    mask_source="uploaded" if user_mask is not None else "auto", result=res, plain=plain)
        s.files = self._write_files(s)
        return (self.view_roi(s), self.view_segments(s), self.view_attention(s),
                self.view_result(s, plain), self.view_result(s, res.image), self.info(s), s.files, s)

    def toggle_at(self, session: Session | None, x: float, y: float):
        """A click at pixel ``(x, y)`` of the RoI or segment view toggles that segment.
        Returns (roi, segments, info, session)."""
        x, y = click_point((x, y))
        s = self._need_segments(session)
        row, col = render.grid_cell(x, y, s.view_size, s.localization.grid_size)
        label = int(s.localization.segments[row, col])
        selected = set(s.selected) ^ {label}
        return self._with_selection(s, selected)

    def reset(self, session: Session | None):
        """Back to the region LIME chose. Returns (roi, segments, info, session)."""
        s = self._need_segments(session)
        return self._with_selection(s, s.localization.selected_segments)

    def apply(self, steps, seed, guidance, image_guidance, session: Session | None):
        """Re-run only the edit pass with the refined region.
        Returns (roi, segments, result, info, files, session)."""
        s = self._need_segments(session)
        return self._reapply(s, self._edit_overrides(steps, guidance, image_guidance), seed, s.p2p)

    def apply_captions(self, steps, seed, guidance, cross_replace, self_replace, local_blend, reweight,
                       session: Session | None):
        """Caption mode's Apply: the edit pass again with the refined region and the
        page's sampler and Prompt-to-Prompt settings.
        Returns (roi, segments, result, info, files, session)."""
        s = self._need_segments(session)
        return self._reapply(s, self._edit_overrides(steps, guidance), seed,
                             self._p2p_settings(cross_replace, self_replace, local_blend, reweight))

    def _reapply(self, s: Session, sampler: dict[str, Any], seed: Any, p2p: dict[str, Any]):
        if not s.selected:
            raise gr.Error("The region is empty: click at least one segment, or press Reset.",
                           print_exception=False)
        refined = s.localization.with_segments(list(s.selected))
        overrides = dict(s.overrides, **sampler)
        seed = seed_value(seed)
        s = replace(s, p2p=p2p)
        with self.pool.borrow() as lp:
            res = self._call(lp, s, refined, seed, overrides)
        auto = tuple(sorted(int(v) for v in s.localization.selected_segments))
        s = replace(s, result=res, seed=seed, overrides=overrides, applied=s.selected,
                    mask_source="auto" if s.selected == auto else "refined")
        s.files = self._write_files(s)
        return (self.view_roi(s), self.view_segments(s), self.view_result(s, res.image), self.info(s),
                s.files, s)

    def _need_segments(self, s: Session | None) -> Session:
        if s is None:
            raise gr.Error("Run an edit first; then click segments to refine the region.",
                           print_exception=False)
        if s.localization is None and s.mask_source == "uploaded":
            raise gr.Error("This edit used your uploaded mask, so there are no segments to "
                           "click: clear the mask and press Run.", print_exception=False)
        if s.localization is None:
            what = "these captions" if s.source is not None else "this instruction"
            raise gr.Error(f"LIME found no region for {what}, so there are no segments "
                           "to click (see the notes under the pictures).", print_exception=False)
        return s

    def _with_selection(self, s: Session, selected) -> tuple:
        selected = tuple(sorted(int(v) for v in selected))
        loc = s.localization
        mask = _np(loc.with_segments(list(selected)).mask)
        auto = tuple(sorted(int(v) for v in loc.selected_segments))
        s = replace(s, selected=selected, mask=mask,
                    mask_source="auto" if selected == auto else "refined")
        return self.view_roi(s), self.view_segments(s), self.info(s), s

    # ---- page ------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        d = self.defaults()
        out_img = dict(type="pil", format="png", interactive=False, buttons=["download", "fullscreen"])
        with gr.Blocks(title="LIME: localized image editing", analytics_enabled=False,
                       delete_cache=(1800, 3600)) as demo:
            state = gr.State(None, time_to_live=3600)  # idle sessions are dropped after an hour
            model = f" Model: `{self.model_name}`." if self.model_name else ""
            if self.caption_mode:
                gr.Markdown(
                    "## LIME + Prompt-to-Prompt: localized caption-based image editing\n"
                    "Upload an image, describe it (**source caption**) and the result you want "
                    "(**target caption**: the same words with some replaced or added), press **Run**. "
                    "The image is inverted and regenerated under the target caption with "
                    "Prompt-to-Prompt; LIME finds the region of the words that changed and keeps the "
                    "edit there. Click segments to change the region, then **Apply refined region**."
                    + model)
            else:
                gr.Markdown(
                    "## LIME: localized instruction-based image editing\n"
                    "Upload an image, describe the edit, press **Run**. LIME finds the region the "
                    "instruction is about and keeps the edit there. Click segments to change the "
                    "region, then **Apply refined region**." + model)
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    image = uploaded_image(label="Image", image_mode=None,
                                           sources=["upload", "clipboard"], elem_id="lime-input")
                    if self.caption_mode:
                        source = gr.Textbox(label="Source caption (what the image shows)",
                                            placeholder="a red circle and a blue square", lines=1,
                                            max_lines=3, elem_id="lime-source")
                        target = gr.Textbox(label="Target caption (the result)",
                                            placeholder="a green circle and a blue square", lines=1,
                                            max_lines=3, elem_id="lime-target")
                        texts = [source, target]
                    else:
                        instruction = gr.Textbox(label="Instruction", placeholder="make the sky red",
                                                 lines=1, max_lines=3, elem_id="lime-instruction")
                        texts = [instruction]
                    run_btn = gr.Button("Run", variant="primary", elem_id="lime-run")
                    if self.examples:
                        gr.Examples([list(e) for e in self.examples], inputs=[image, *texts],
                                    label="Examples", examples_per_page=8, cache_examples=False)
                    with gr.Accordion("Settings", open=True):
                        # settings reach the callbacks as sent (``unprocessed``): the callbacks
                        # check them (``setting``, ``seed_value``) with messages naming them
                        steps = unprocessed(gr.Slider(1, 100, value=d["steps"], step=1,
                                                      label="Steps", elem_id="lime-steps"))
                        # text, not a number field: the browser's numbers are doubles, so a seed
                        # above 2**53 typed there would arrive changed; seed_value parses the text
                        # (1.5 is refused, not made 2)
                        seed = unprocessed(gr.Textbox(value=str(d["seed"]), max_lines=1, label="Seed",
                                                      info="a whole number in 0..2**64-1", elem_id="lime-seed"))
                        guidance = unprocessed(gr.Slider(0, 20, value=d["guidance"], step=0.1,
                                                         label="Text guidance", elem_id="lime-guidance"))
                        if not self.caption_mode:  # Prompt-to-Prompt has no image guidance
                            # a family without image guidance (the transformers) shows it disabled
                            image_guidance = unprocessed(gr.Slider(0, 5, value=d["image_guidance"],
                                                                   step=0.05, label="Image guidance",
                                                                   interactive=self.pool.image_guidance,
                                                                   visible=self.pool.image_guidance,
                                                                   elem_id="lime-image-guidance"))
                        clusters = unprocessed(gr.Slider(1, 16, value=d["clusters"], step=1,
                                                         label="Segments (clusters)",
                                                         elem_id="lime-clusters"))
                        top_k = unprocessed(gr.Slider(1, 1000, value=d["top_k"], step=1,
                                                      label="Top-k attention points (per 128x128 grid, "
                                                            "scaled to the model's grid)",
                                                      elem_id="lime-topk"))
                        compare = gr.Checkbox(value=True, label=f"Also run plain {self.method}",
                                              elem_id="lime-compare")
                    if self.caption_mode:
                        with gr.Accordion("Prompt-to-Prompt", open=True):
                            cross = unprocessed(gr.Slider(0, 1, value=d["cross_replace"], step=0.05,
                                                          label="Cross-attention replace",
                                                          info="fraction of the steps in which the target "
                                                               "caption's shared words take the source's "
                                                               "attention maps",
                                                          elem_id="lime-cross-replace"))
                            self_ = unprocessed(gr.Slider(0, 1, value=d["self_replace"], step=0.05,
                                                          label="Self-attention replace",
                                                          info="fraction of the steps in which the coarse "
                                                               "layers' self-attention is the source's "
                                                               "(keeps the layout)",
                                                          elem_id="lime-self-replace"))
                            blend = gr.Checkbox(value=d["local_blend"],
                                                label="Local blend (P2P's own localization: keep the "
                                                      "source outside the changed words' attention)",
                                                elem_id="lime-local-blend")
                            reweight = gr.Textbox(value=d["reweight"], label="Reweight target words",
                                                  placeholder="glitter=2, red=0.5", lines=1, max_lines=1,
                                                  info=f"WORD=SCALE, comma-separated (at most "
                                                       f"{REWEIGHT_WORDS}; scales within ±{REWEIGHT_MAX:g})",
                                                  elem_id="lime-reweight")
                        p2p_inputs = [cross, self_, blend, reweight]
                    with gr.Accordion("Your own mask (optional)", open=False):
                        user_mask = uploaded_image(label="Mask: white = edit", image_mode=None,
                                                   sources=["upload"], elem_id="lime-mask")
                with gr.Column(scale=3):
                    with gr.Row():
                        roi_view = gr.Image(label="Region of interest (click to refine)",
                                            elem_id="lime-roi", **out_img)
                        seg_view = gr.Image(label="Segments (click to add / remove)",
                                            elem_id="lime-segments", **out_img)
                        attn_view = gr.Image(label="Attention of the related tokens",
                                             elem_id="lime-attention", **out_img)
                    gr.Markdown(TOP_K_LEGEND, elem_id="lime-legend")
                    with gr.Row():
                        apply_btn = gr.Button("Apply refined region", elem_id="lime-apply")
                        reset_btn = gr.Button("Reset region", elem_id="lime-reset")
                    info = gr.Markdown(elem_id="lime-info")
                    with gr.Row():
                        plain_view = gr.Image(label=f"{self.method} (same settings, no LIME)",
                                              elem_id="lime-plain", **out_img)
                        lime_view = gr.Image(label=f"{self.method} + LIME", elem_id="lime-result",
                                             **out_img)
                    files = gr.File(label="Downloads: result, mask, settings", file_count="multiple",
                                    interactive=False, elem_id="lime-downloads")

            heavy = dict(concurrency_limit=self.pool.size, concurrency_id="model")
            if self.caption_mode:
                run_fn, run_api, apply_fn = self.run_captions, "edit_captions", self.apply_captions
                run_inputs = [image, source, target, steps, seed, guidance, clusters, top_k,
                              *p2p_inputs, compare, user_mask, state]
                apply_inputs = [steps, seed, guidance, *p2p_inputs, state]
            else:
                run_fn, run_api, apply_fn = self.run, "edit", self.apply
                run_inputs = [image, instruction, steps, seed, guidance, image_guidance, clusters,
                              top_k, compare, user_mask, state]
                apply_inputs = [steps, seed, guidance, image_guidance, state]
            run_outputs = [roi_view, seg_view, attn_view, plain_view, lime_view, info, files, state]
            # every callback also updates the Apply button: highlighted while a refinement is pending
            def wire(fn: Callable) -> Callable:
                return _apply_hint(_readable_errors(fn))

            run_outputs.append(apply_btn)
            apply_outputs = [roi_view, seg_view, lime_view, info, files, state, apply_btn]
            sel_outputs = [roi_view, seg_view, info, state, apply_btn]

            def page(fn: Callable, outputs: list) -> Callable:   # the page's events: errors in the status
                return _error_in_status(wire(fn), len(outputs), outputs.index(info), self.error_status)
            # the API endpoints (/edit or /edit_captions, /apply): the same callbacks, raising their errors;
            # registered first, so the page's private events below do not take their names
            api_run, api_apply = gr.Button(visible=False), gr.Button(visible=False)
            api_run.click(wire(run_fn), run_inputs, run_outputs, api_name=run_api, **heavy)
            api_apply.click(wire(apply_fn), apply_inputs, apply_outputs, api_name="apply", **heavy)
            run_btn.click(page(run_fn, run_outputs), run_inputs, run_outputs, api_visibility="private", **heavy)
            for text in texts:
                text.submit(page(run_fn, run_outputs), run_inputs, run_outputs, api_visibility="private", **heavy)
            apply_btn.click(page(apply_fn, apply_outputs), apply_inputs, apply_outputs, api_visibility="private",
                            **heavy)
            for view in (roi_view, seg_view):
                view.select(page(self._on_select, sel_outputs), [state], sel_outputs, api_visibility="private",
                            concurrency_limit=None, show_progress="hidden")
            reset_btn.click(page(self.reset, sel_outputs), [state], sel_outputs, api_visibility="private",
                            concurrency_limit=None)
        demo.queue(max_size=self.max_queue, default_concurrency_limit=self.pool.size)
        return demo

    def _on_select(self, session: Session | None, evt: gr.EventData):
        """A click on the RoI or segment view. Typed ``gr.EventData``, not
        ``gr.SelectData``: Gradio builds a ``SelectData`` before the callback runs and
        fails with its own error on an event without ``index`` or ``value``; here the
        event's data is checked (:func:`click_point`) like any other input."""
        data = getattr(evt, "_data", None)
        return self.toggle_at(session, *click_point(data.get("index") if isinstance(data, dict) else None))


def _disk_size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                pass
    return total


class _UploadRefused(MultiPartException):
    """Raised into Gradio's upload parser (from the request body's stream) when a
    request's files go past the client's allowance: the parser deletes the files it
    has written so far, exactly as for its own limits (too many files, a file too
    large)."""


class _FileParts:
    """Counts the files of a ``multipart/form-data`` body as it streams past: a part
    whose ``Content-Disposition`` has a ``filename`` (those Gradio writes to disk).
    ``on_file`` runs when a file part's headers end, before any of its data is
    passed on; a body this cannot parse is left to Gradio's parser (which refuses
    it)."""

    max_header = 16 * 1024

    def __init__(self, content_type: bytes, on_file: Callable[[], None]):
        from python_multipart.multipart import MultipartParser, parse_options_header

        self._options = parse_options_header
        self.on_file = on_file
        self._name = self._value = self._disposition = b""
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._field,
            "on_header_value": self._val, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
        }) if boundary else None

    def _part_begin(self) -> None:
        self._name = self._value = self._disposition = b""

    def _field(self, data: bytes, start: int, end: int) -> None:
        if len(self._name) < self.max_header:
            self._name += data[start:end]

    def _val(self, data: bytes, start: int, end: int) -> None:
        if len(self._value) < self.max_header:
            self._value += data[start:end]

    def _header_end(self) -> None:
        if self._name.lower() == b"content-disposition":
            self._disposition = self._value
        self._name = self._value = b""

    def _headers_finished(self) -> None:
        _, options = self._options(self._disposition)
        if b"filename" in options:
            self.on_file()

    def feed(self, chunk: bytes) -> None:
        if self.parser is None or not chunk:
            return
        try:
            self.parser.write(chunk)
        except _UploadRefused:
            raise
        except Exception:  # noqa: BLE001 - malformed: Gradio's own parser refuses the request
            self.parser = None


class UploadLimit:
    """ASGI middleware: each client address may upload at most ``max_uploads``
    files per ``window_s`` seconds; more get HTTP 429 with a one-line reason.
    (Gradio's upload request carries no session, so the client address stands
    for it.)

    Files are counted, not requests: the multipart body is read as it streams to
    Gradio's upload route, and each file is counted when its part's headers arrive,
    before its data is passed on. The file that goes past the allowance refuses the
    whole request: it is never passed on, Gradio's parser deletes the files of the
    request it has already written, the request's files are not counted, and the
    client gets 429 instead of Gradio's answer."""

    def __init__(self, app, max_uploads: int = DEFAULT_MAX_UPLOADS, window_s: float = UPLOAD_WINDOW_S):
        self.app, self.max_uploads, self.window_s = app, max_uploads, window_s
        self._hits: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    @property
    def message(self) -> str:
        return (f"too many uploads: at most {self.max_uploads} files per {self.window_s / 60:g} minutes; "
                "try again later")

    def _recent(self, client: str, now: float) -> collections.deque:
        """The client's upload times in the window (call with the lock held)."""
        hits = self._hits.setdefault(client, collections.deque())
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if len(self._hits) > 10_000:  # forget idle clients
            for key in [k for k, v in self._hits.items() if not v and k != client]:
                del self._hits[key]
        return hits

    async def _too_many(self, scope, receive, send) -> None:
        from starlette.responses import PlainTextResponse

        await PlainTextResponse(self.message, status_code=429)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if not (scope.get("type") == "http" and scope.get("method") == "POST"
                and scope.get("path", "").rstrip("/").endswith("/upload")):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown",))[0]
        with self._lock:
            full = len(self._recent(client, time.monotonic())) >= self.max_uploads
        if full:  # nothing read
            await self._too_many(scope, receive, send)
            return
        taken: list[float] = []
        refused = started = False

        def take_one() -> None:
            nonlocal refused
            with self._lock:
                now = time.monotonic()
                hits = self._recent(client, now)
                if len(hits) >= self.max_uploads:
                    refused = True
                    raise _UploadRefused(self.message)
                hits.append(now)
                taken.append(now)

        content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
        parts = _FileParts(content_type, take_one)

        async def counting_receive():
            message = await receive()
            if message.get("type") == "http.request" and not refused:
                parts.feed(message.get("body", b""))  # raises _UploadRefused into Gradio's parser
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:  # Gradio's answer to the aborted upload: replaced by the 429 below
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _UploadRefused:  # a Gradio that lets it through: still a 429, not a 500
            if not refused:
                raise
        if refused:
            with self._lock:  # the request stored nothing: its files do not count
                hits = self._hits.get(client)
                for t in taken:
                    try:
                        hits.remove(t)
                    except (AttributeError, ValueError):
                        pass
            if not started:
                await self._too_many(scope, receive, send)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    """Prompt-to-Prompt settings for settings.json (reweighting as ``{word: scale}``)."""
    return {k: dict(v) if k == "reweight" else v for k, v in settings.items()}


def _labels(labels) -> str:
    labels = list(labels)
    return ", ".join(str(v) for v in labels) if labels else "empty"


def build_app(pipelines: Any | Sequence[Any], **kwargs: Any) -> gr.Blocks:
    """The demo page for a ``LimePipeline`` (or a list of replicas); keyword
    arguments as :class:`LimeWebApp`."""
    return LimeWebApp(pipelines, **kwargs).build()


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None,
           max_upload_mb: float = 10.0, max_uploads: int = DEFAULT_MAX_UPLOADS,
           upload_window_s: float = UPLOAD_WINDOW_S, block: bool = True, quiet: bool = False):
    """Serve ``demo``; uploads above ``max_upload_mb`` are refused before they
    reach a callback, and a client address may upload ``max_uploads`` files per
    ``upload_window_s`` seconds. ``block=False`` returns once the server is up
    (tests)."""
    from starlette.middleware import Middleware

    limit = Middleware(UploadLimit, max_uploads=max_uploads, window_s=upload_window_s)
    return demo.launch(server_name=host, server_port=port, max_file_size=int(max_upload_mb * 1024 * 1024),
                       show_error=True, ssr_mode=False, prevent_thread_lock=not block, quiet=quiet,
                       state_session_capacity=1000, app_kwargs={"middleware": [limit]},
                       footer_links=["gradio", "settings"], mcp_server=False, pwa=False)
