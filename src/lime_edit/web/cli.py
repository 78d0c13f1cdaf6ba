"""``lime-edit serve``: the Gradio web demo. Imports nothing heavy until it runs."""

from __future__ import annotations

import argparse
import contextlib
import sys

from ..cli import add_family_args, family_load_kwargs  # light: argparse only


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="start the web demo (Gradio) in the browser",
        description="Serve the LIME web demo: upload an image, type an instruction, see the "
                    "region LIME edits and refine it with clicks. Needs the 'web' extra "
                    "(pip install 'lime-edit[web]').")
    p.add_argument("--model", default="demo",
                   help="model to load: 'demo' (bundled, offline; default), 'demo-t2i' (the bundled "
                        "text-to-image model: caption mode with Prompt-to-Prompt), a Hub id, a local "
                        "diffusers folder or a .safetensors file. A text-to-image model (or --backbone "
                        "p2p) gives the caption mode: source and target captions instead of an instruction")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda or cpu (default: auto)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickled .ckpt/.bin weights")
    add_family_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; "
                        "0.0.0.0 serves everyone who can reach it)")
    p.add_argument("--port", type=_port, default=7860, help="port, 1-65535 (default 7860)")
    p.add_argument("--max-upload-mb", type=_positive_float, default=10.0,
                   help="refuse uploads larger than this many MB (default 10)")
    p.add_argument("--max-pixels", type=_non_negative_int, default=None, metavar="N",
                   help="refuse uploads above N pixels, checked on the file header before decoding "
                        "(default 4096*4096). 0 = no limit of ours, but images above PIL's "
                        "decompression-bomb limit (about 179 million pixels) are always refused")
    p.add_argument("--max-disk-mb", type=_positive_float, default=1024.0,
                   help="disk the server's files may use: downloads, uploads and the pictures it "
                        "serves; the oldest are deleted first (default 1024). Everything is deleted "
                        "when the server stops")
    p.add_argument("--max-side", type=_positive_int, default=512,
                   help="scale uploaded images down so the longer side is at most this many "
                        "pixels (default 512)")
    p.add_argument("--concurrency", type=_positive_int, default=1,
                   help="edits that run at once; each loads its own copy of the model (default 1)")
    p.add_argument("--max-queue", type=_positive_int, default=16,
                   help="edits waiting at most; more are refused with a message (default 16)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the messages and model-loading bars of diffusers/transformers")
    p.set_defaults(func=serve)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _port(text: str) -> int:
    # 0 ("any free port") is refused too: Gradio would announce and check http://HOST:0
    v = _positive_int(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, got {v}")
    return v


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0 or 0 < v < 64:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or at least 64, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return v


def demo_examples(n: int = 6, captions: bool = False) -> list[tuple[str, ...]]:
    """``(image_path, instruction)`` pairs of synthetic test scenes, the kind of
    image the bundled demo models were trained on (written to a temporary folder);
    ``captions=True``: ``(image_path, source, target)`` for the caption mode
    (``scenes.caption_pair``: the scene's caption, and the same with the edited
    object's colour changed)."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    try:
        from lime_edit.demo.scenes import caption_pair, make_edit
    except ImportError:
        return []
    folder = Path(tempfile.mkdtemp(prefix="lime-web-examples-"))
    atexit.register(shutil.rmtree, folder, True)
    out: list[tuple[str, ...]] = []
    for seed in range(n):
        sample = make_edit(seed, "test")
        path = folder / f"scene-{seed}.png"
        sample.image.save(path)
        out.append((str(path), *caption_pair(sample)) if captions else (str(path), sample.instruction))
    return out


def _port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (None when it can)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"unknown host ({e.strerror})"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return e.strerror or str(e)
    return None


def serve(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the web demo needs Gradio: pip install 'lime-edit[web]'", file=sys.stderr)
        return 2
    problem = _port_problem(args.host, args.port)  # before a model load that may take minutes
    if problem:
        print(f"error: cannot serve on {args.host}:{args.port}: {problem}", file=sys.stderr)
        return 2
    from lime_edit import LimeEditError, LimePipeline
    from lime_edit.cli import quiet_libraries

    from .app import LimeWebApp, launch

    try:
        with quiet_libraries(getattr(args, "verbose", False), load=True):  # no model-loading bars
            pipelines = [LimePipeline.from_pretrained(args.model, device=args.device,
                                                      allow_pickle=args.allow_pickle, **family_load_kwargs(args))
                         for _ in range(args.concurrency)]
    except LimeEditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this machine can use the "
              "demo", file=sys.stderr)
    captions = bool(getattr(pipelines[0].backbone, "caption_editing", False))
    examples = demo_examples(captions=captions) if args.model in ("demo", "demo-t2i") else []
    with private_files() as (downloads, cache):
        app = LimeWebApp(pipelines, model_name=args.model, max_side=args.max_side, max_queue=args.max_queue,
                         max_pixels=_max_pixels(args.max_pixels), max_disk_mb=args.max_disk_mb,
                         workdir=downloads, cache_dir=cache, examples=examples)
        demo = app.build()
        app.start_janitor()
        try:
            launch(demo, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)
        except OSError as e:
            print(f"error: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (lime-edit's main turns it into this)
            pass
        finally:
            app.close()
            demo.close()
    return 0


def _max_pixels(value: int | None) -> int | None:
    from lime_edit.imageops import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS if value is None else (value or None)


@contextlib.contextmanager
def private_files():
    """A private temporary folder for one server run, removed when it ends
    (normally, Ctrl-C or SIGTERM): ``downloads/`` for the files offered for
    download and ``gradio/`` as Gradio's cache (``GRADIO_TEMP_DIR``: uploads and
    the pictures it serves), so that nothing is left in the shared temp folder
    and the disk cap can count all of it. Yields ``(downloads, cache)``."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="lime-web-"))
    saved = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    try:
        (root / "downloads").mkdir()
        (root / "gradio").mkdir()
        yield root / "downloads", root / "gradio"
    finally:
        if saved is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved
        shutil.rmtree(root, ignore_errors=True)
