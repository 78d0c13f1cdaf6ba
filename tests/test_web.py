"""Web demo (``lime-edit serve``): callbacks on a tiny model, the served app over
HTTP, and one end-to-end run in headless Chromium (``-m browser``)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web demo needs the 'web' extra: pip install -e '.[web]'")

from lime_edit import LimeConfig, LimeEditError, LimePipeline, Localization
from lime_edit.web import render
from lime_edit.web.app import LimeWebApp, _readable_errors, build_app, launch

REPO = Path(__file__).resolve().parents[1]
STEPS = 2
FAST = LimeConfig.fast(num_inference_steps=STEPS, num_clusters=4, top_k=10)
CHROMIUM = os.environ.get("LIME_EDIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync"]


class Spy:
    """A LimePipeline that records every call (and forwards it)."""

    def __init__(self, lp):
        self.lp, self.config, self.calls = lp, lp.config, []

    def edit(self, image, instruction, mask="auto", seed=0, **overrides):
        self.calls.append(("edit", mask, seed, overrides))
        return self.lp.edit(image, instruction, mask=mask, seed=seed, **overrides)

    def localize(self, image, instruction, seed=0, **overrides):
        self.calls.append(("localize", None, seed, overrides))
        return self.lp.localize(image, instruction, seed=seed, **overrides)


class Failing:
    config = LimeConfig()

    def __init__(self, exc):
        self.exc = exc

    def edit(self, *a, **k):
        raise self.exc


def _settings(app: LimeWebApp, **kw):
    d = app.defaults()
    d.update(kw)
    return [d["steps"], d["seed"], d["guidance"], d["image_guidance"], d["clusters"], d["top_k"]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest.py; scene_file is there too


@pytest.fixture(scope="module")
def spy(tiny_pipe):
    return Spy(LimePipeline(tiny_pipe, FAST))


@pytest.fixture(scope="module")
def app(spy, tmp_path_factory):
    return LimeWebApp(spy, model_name="tiny", workdir=tmp_path_factory.mktemp("web-files"))


@pytest.fixture(scope="module")
def ran(app, spy, scene_file):
    """One Run (LIME + plain IP2P) shared by the tests below."""
    spy.calls.clear()
    out = app.run(str(scene_file), "make the red square blue", *_settings(app), True, None, None)
    return out, list(spy.calls)


def _click_on(session, label: int) -> tuple[float, float]:
    """View coordinates of a grid cell of segment ``label``."""
    seg = session.localization.segments
    rows, cols = np.nonzero(seg.numpy() == label)
    gh, gw = seg.shape
    w, h = session.view_size
    return (cols[0] + 0.5) * w / gw, (rows[0] + 0.5) * h / gh


# ----------------------------------------------------------------------------- callbacks
def test_run_shows_every_view(ran):
    (roi, seg, attn, plain, result, info, files, s), calls = ran
    loc = s.localization
    assert isinstance(loc, Localization)
    for view in (roi, seg, attn, plain, result):
        assert isinstance(view, Image.Image) and view.size == s.view_size == (384, 384)
    assert s.selected == s.applied == tuple(sorted(loc.selected_segments)) and not s.pending
    assert "Related tokens" in info and "LIME applied" in info
    # one LIME edit with automatic localization, one plain IP2P, same seed and settings
    assert [(c[0], c[1], c[2]) for c in calls] == [("edit", "auto", 0), ("edit", None, 0)]
    assert calls[0][3] == calls[1][3] == dict(num_inference_steps=STEPS, guidance_scale=FAST.guidance_scale,
                                               image_guidance_scale=FAST.image_guidance_scale,
                                               num_clusters=4, top_k=10)


def test_downloads_hold_result_mask_and_settings(ran, scene_file):
    (*_, files, s), _ = ran
    by_name = {Path(f).name: Path(f) for f in files}
    assert set(by_name) == {"result.png", "ip2p.png", "mask.png", "settings.json"}
    result = Image.open(by_name["result.png"])
    assert result.size == (64, 64)  # the input's size, not the display size
    assert np.array_equal(np.asarray(result), np.asarray(s.result.image))
    mask = np.asarray(Image.open(by_name["mask.png"]))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert abs((mask > 0).mean() - s.localization.mask.float().mean().item()) < 0.02
    meta = json.loads(by_name["settings.json"].read_text())
    assert meta["instruction"] == "make the red square blue" and meta["seed"] == 0
    assert meta["mask"] == "auto" and meta["selected_segments"] == list(s.selected)
    assert meta["settings"]["num_inference_steps"] == STEPS and meta["model"] == "tiny"


def test_click_toggles_a_segment_and_apply_reuses_the_segmentation(app, spy, ran):
    (*_, s), _ = ran
    loc = s.localization
    others = [v for v in range(loc.num_segments) if v not in s.selected]
    label = others[0] if others else s.selected[0]
    roi, seg, info, s2 = app.toggle_at(s, *_click_on(s, label))
    assert set(s2.selected) == set(s.selected) ^ {label}
    assert s2.pending and s2.mask_source == "refined" and "Apply refined region" in info
    assert s.selected == s.applied  # the earlier state is not mutated
    assert np.array_equal(s2.mask, torch.isin(loc.segments, torch.tensor(s2.selected)).numpy())
    if not s2.selected:
        return
    spy.calls.clear()
    roi, seg, result, info, files, s3 = app.apply(*_settings(app)[:4], s2)
    (kind, mask, seed, overrides), = spy.calls  # one call: the edit pass only
    assert kind == "edit" and isinstance(mask, Localization)
    assert mask.segments is loc.segments  # segmentation reused, not recomputed
    assert mask.selected_segments == list(s2.selected)
    assert s3.applied == s2.selected and not s3.pending and s3.localization is loc
    assert s3.result.lime_applied and result.size == s.view_size
    meta = json.loads(Path([f for f in files if f.endswith("settings.json")][0]).read_text())
    assert meta["mask"] == "refined" and meta["selected_segments"] == list(s2.selected)


def test_toggling_back_and_reset_restore_the_automatic_region(app, ran):
    (*_, s), _ = ran
    xy = _click_on(s, s.selected[0])
    *_, once = app.toggle_at(s, *xy)
    *_, twice = app.toggle_at(once, *xy)
    assert twice.selected == s.selected and twice.mask_source == "auto" and not twice.pending
    *_, reset = app.reset(once)
    assert reset.selected == s.selected and np.array_equal(reset.mask, s.mask)


def test_apply_needs_a_run_and_a_non_empty_region(app, ran):
    (*_, s), _ = ran
    with pytest.raises(gr.Error, match="Run an edit first"):
        app.apply(*_settings(app)[:4], None)
    empty = s
    for label in s.selected:
        *_, empty = app.toggle_at(empty, *_click_on(s, label))
    assert empty.selected == ()
    with pytest.raises(gr.Error, match="region is empty"):
        app.apply(*_settings(app)[:4], empty)


def test_uploaded_mask_replaces_localization(app, spy, scene_file, tmp_path):
    arr = np.zeros((32, 32), np.uint8)
    arr[:, :16] = 255
    Image.fromarray(arr).save(tmp_path / "mask.png")
    spy.calls.clear()
    roi, seg, attn, plain, result, info, files, s = app.run(
        str(scene_file), "make the red square blue", *_settings(app), False, str(tmp_path / "mask.png"), None)
    (kind, mask, *_), = spy.calls
    assert torch.is_tensor(mask) and mask.dtype == torch.bool and mask.shape == (32, 32)
    assert s.mask_source == "uploaded" and s.localization is None
    assert seg is None and attn is None and plain is None and roi.size == s.view_size
    assert "uploaded mask" in info
    assert {Path(f).name for f in files} == {"result.png", "mask.png", "settings.json"}
    with pytest.raises(gr.Error, match="uploaded mask"):
        app.toggle_at(s, 10, 10)


def test_errors_are_one_readable_line(app, scene_file, tmp_path):
    run = _readable_errors(app.run)
    args = _settings(app) + [False, None, None]
    with pytest.raises(gr.Error, match="Upload an image"):
        run(None, "make it red", *args)
    with pytest.raises(gr.Error, match="Type an instruction"):
        run(str(scene_file), "  ", *args)
    bad = tmp_path / "holiday.png"
    bad.write_text("not a picture")
    with pytest.raises(gr.Error) as err:
        run(str(bad), "make it red", *args)
    assert "image holiday.png" in err.value.message and str(tmp_path) not in err.value.message

    lime_err = LimeWebApp(Failing(LimeEditError("mask: the mask is empty")), workdir=tmp_path / "a")
    with pytest.raises(gr.Error) as err:
        _readable_errors(lime_err.run)(str(scene_file), "make it red", *args)
    assert err.value.message == "mask: the mask is empty"
    crash = LimeWebApp(Failing(RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")),
                       workdir=tmp_path / "b")
    with pytest.raises(gr.Error) as err:
        _readable_errors(crash.run)(str(scene_file), "make it red", *args)
    msg = err.value.message
    assert msg.startswith("RuntimeError: CUDA out of memory.") and "\n" not in msg
    assert "Traceback" not in msg


def test_a_word_outside_the_models_vocabulary_is_shown_in_the_status(app, scene_file):
    """The tiny model's vocabulary spells "crimson" in letters: the status under the pictures
    names it (once) as a warning; an instruction it knows gets none."""
    out = app.run(str(scene_file), "make the square crimson, crimson", *_settings(app), False, None, None)
    info = out[5]
    assert info.count("⚠ instruction word 'crimson' is not in this model's vocabulary") == 1, info
    info = app.run(str(scene_file), "make the red square blue", *_settings(app), False, None, None)[5]
    assert "vocabulary" not in info and "⚠" not in info


def _page_events(demo) -> dict:
    """The page's events by (elem_id of the component, event name)."""
    out = {}
    for f in demo.fns.values():
        block, event = f.targets[0]
        out[(getattr(demo.blocks[block], "elem_id", None), event)] = f
    return out


def test_a_failed_request_on_the_page_is_one_message_in_the_status(app, scene_file):
    """Raised, an error put an "Error" badge on each of the event's outputs (six pictures and
    fields); on the page it is now one message in the status, every other output left as it was,
    while the API endpoint still raises it."""
    demo = app.build()
    events = _page_events(demo)
    info = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "lime-info")
    settings = _settings(app)

    def one_message(f, *args) -> str:
        out = f.fn(*args)
        at = [getattr(o, "_id", o) for o in f.outputs].index(info._id)
        assert [v for i, v in enumerate(out) if i != at] == [gr.skip()] * (len(out) - 1)
        return out[at]

    run = events[("lime-run", "click")]
    assert one_message(run, None, "make it red", *settings, False, None, None) == "⚠ Upload an image first."
    assert one_message(events[("lime-instruction", "submit")], str(scene_file), " ", *settings, False, None,
                       None).startswith("⚠ Type an instruction")
    assert one_message(events[("lime-apply", "click")], *settings[:4], None).startswith("⚠ Run an edit first")
    assert one_message(events[("lime-reset", "click")], None).startswith("⚠ Run an edit first")
    api = next(f for f in demo.fns.values() if f.api_name == "edit")
    with pytest.raises(gr.Error, match="Upload an image first"):
        api.fn(None, "make it red", *settings, False, None, None)
    # after an edit, a failed request keeps its pictures and says they are the last edit's
    ok = run.fn(str(scene_file), "make the red square blue", *settings, False, None, None)
    text = one_message(run, None, "make it red", *settings, False, None, ok[7])
    assert text.startswith("⚠ Upload an image first.") and "last edit that ran" in text
    assert "Related tokens" in text
    # the message is shown as typed (a file name's underscores are not Markdown)
    assert app.error_status("image my_holiday_2.png: not an image", None) == "⚠ image my\\_holiday\\_2.png: not an image"


def test_the_top_k_rings_have_a_legend(app, ran):
    from lime_edit.web.app import TOP_K_LEGEND

    demo = app.build()
    (legend,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "lime-legend"]
    assert legend.value == TOP_K_LEGEND and "Cyan rings" in TOP_K_LEGEND and "top-k" in TOP_K_LEGEND
    (roi, seg, attn, *_rest, info, files, s), _ = ran
    assert f"{s.localization.top_k} top-k points (cyan rings)" in info
    # the rings the legend names are cyan, on the attention and region pictures
    for picture in (attn, roi):
        px = np.asarray(picture).reshape(-1, 3)
        assert ((px[:, 0] == 0) & (px[:, 1] == 255) & (px[:, 2] == 255)).any()


def test_large_uploads_are_scaled_down(app, tmp_path):
    Image.new("RGB", (1200, 300), (10, 200, 10)).save(tmp_path / "wide.png")
    img, notes = app._prepare(str(tmp_path / "wide.png"))
    assert img.size == (512, 128) and "resized from 1200x300" in notes[0]


def test_pool_size_is_the_concurrency_limit(tiny_pipe, tmp_path):
    lps = [LimePipeline(tiny_pipe, FAST), LimePipeline(tiny_pipe, FAST)]
    demo = build_app(lps, workdir=tmp_path)
    heavy = [f for f in demo.fns.values() if f.concurrency_id == "model"]
    assert len(heavy) >= 3 and all(f.concurrency_limit == 2 for f in heavy)
    assert demo._queue.max_size == 16


def test_render_click_mapping():
    assert render.display_size((64, 32)) == (384, 192)
    assert render.display_size((2000, 1000)) == (768, 384)
    assert render.display_size((500, 400)) == (500, 400)
    assert render.grid_cell(0, 0, (384, 192), (16, 32)) == (0, 0)
    assert render.grid_cell(383.9, 191.9, (384, 192), (16, 32)) == (15, 31)
    assert render.grid_cell(500, -3, (384, 192), (16, 32)) == (0, 31)
    assert render.grid_cell(12.1, 12.1, (384, 192), (16, 32)) == (1, 1)


# ----------------------------------------------------------------------------- CLI
def test_serve_arguments():
    from lime_edit.web.cli import register, serve

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve"])
    assert (args.model, args.host, args.port, args.concurrency, args.func) == ("demo", "127.0.0.1", 7860, 1, serve)
    assert args.max_upload_mb == 10.0
    args = parser.parse_args(["serve", "--model", "m", "--port", "8000", "--max-upload-mb", "2.5",
                              "--concurrency", "2", "--host", "0.0.0.0"])
    assert (args.model, args.port, args.max_upload_mb, args.concurrency) == ("m", 8000, 2.5, 2)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--concurrency", "0"])


def test_serve_refuses_a_busy_port_before_loading_a_model(tmp_path, capsys):
    from lime_edit.web.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = parser.parse_args(["serve", "--model", str(tmp_path / "never-loaded"),
                                  "--port", str(busy.getsockname()[1])])
        assert args.func(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot serve on 127.0.0.1:") and "in use" in err


def test_serve_module_imports_nothing_heavy():
    code = ("import sys, lime_edit.web, lime_edit.web.cli; "
            "print(sorted(m for m in ('torch', 'gradio', 'diffusers', 'transformers', 'numpy', 'PIL') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_serve_reports_a_bad_model_in_one_line(tmp_path, capsys):
    from lime_edit.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err


# ----------------------------------------------------------------------------- served app
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_for_serving(tiny_model_dir) -> tuple[str, int]:
    """The bundled demo model when it is installed (with the defaults ``lime-edit serve`` uses,
    so the screenshot shows what a user gets), else the tiny one (few steps)."""
    try:
        from lime_edit.demo import bundled_model_path

        bundled_model_path()
        return "demo", None
    except (ImportError, LimeEditError):
        return str(tiny_model_dir), STEPS


@pytest.fixture(scope="module")
def server(tiny_model_dir, scene_file, tmp_path_factory):
    """The app served on a free localhost port (1 MB upload limit), loaded the way
    ``lime-edit serve`` loads it."""
    from lime_edit.web.cli import demo_examples

    model, steps = _model_for_serving(tiny_model_dir)
    config = LimeConfig.fast(num_inference_steps=steps) if steps else None
    lp = LimePipeline.from_pretrained(model, config=config, device="cpu")
    examples = demo_examples(4) if model == "demo" else [(str(scene_file), "make the red square blue")]
    demo = build_app(lp, model_name=model, workdir=tmp_path_factory.mktemp("served"), examples=examples)
    port = _free_port()
    launch(demo, port=port, max_upload_mb=1, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/", model
    demo.close()


def test_uploads_over_the_limit_are_refused(server):
    import httpx

    url, _ = server
    big = {"files": ("big.png", b"\0" * (1024 * 1024 + 10), "image/png")}
    assert httpx.post(url + "gradio_api/upload", files=big, timeout=30).status_code == 413
    small = {"files": ("small.png", b"\0" * 1000, "image/png")}
    assert httpx.post(url + "gradio_api/upload", files=small, timeout=30).status_code == 200


def test_sessions_do_not_share_state(server, scene_file):
    from gradio_client import Client, handle_file

    url, _ = server
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)
    out = alice.predict(handle_file(str(scene_file)), "make the red square blue", STEPS, 0, 2.0, 1.5,
                        4, 10, False, None, api_name="/edit")
    assert Path(out[4]).is_file()  # alice got her result ...
    with pytest.raises(Exception, match="Run an edit first"):  # ... bob has no edit to refine
        bob.predict(STEPS, 0, 2.0, 1.5, api_name="/apply")
    again = alice.predict(STEPS, 0, 2.0, 1.5, api_name="/apply")  # alice's session still has it
    assert Path(again[2]).is_file()


class Slow:
    """Plain-IP2P stand-in that takes a while and records when each call ran."""

    config = LimeConfig()

    def __init__(self, log: list):
        self.log = log

    def edit(self, image, instruction, mask="auto", seed=0, **overrides):
        import time

        from lime_edit import EditResult

        start = time.monotonic()
        time.sleep(1.5)
        self.log.append((start, time.monotonic()))
        # a different picture per call: Gradio caches outputs by content hash, and identical
        # outputs of concurrent requests would share (and race on) one cache file
        image = image.copy()
        image.putpixel((0, 0), (len(self.log) * 37 % 256, id(self) % 256, 0))
        return EditResult(image=image, mask=None, localization=None, lime_applied=False, seed=seed)


def test_queue_runs_at_most_concurrency_edits_at_once(scene_file, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    log: list = []
    demo = build_app([Slow(log), Slow(log)], workdir=tmp_path)
    port = _free_port()
    launch(demo, port=port, block=False, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        clients = [Client(url, verbose=False) for _ in range(4)]

        def edit(client):
            return client.predict(handle_file(str(scene_file)), "make it red", 1, 0, 2.0, 1.5, 4, 10,
                                  False, None, api_name="/edit")

        with ThreadPoolExecutor(4) as ex:
            results = list(ex.map(edit, clients))
    finally:
        demo.close()
    assert len(results) == 4 and len(log) == 4
    overlap = max(sum(s <= t < e for s, e in log) for t, _ in log)
    assert overlap == 2  # two pipelines: two edits at once, never more


def screenshot_path(name: str, tmp_dir: Path, override: str | None = None) -> Path:
    """Where a browser test writes its screenshot ``name``: ``tmp_dir`` by default, so a test run
    leaves the clone clean; ``docs/NAME`` (the tracked pictures README and docs/web.md show) only
    with ``LIME_EDIT_REFRESH_DOCS=1``. The environment variable ``override`` names a path that wins
    over both."""
    if override and os.environ.get(override):
        return Path(os.environ[override])
    if os.environ.get("LIME_EDIT_REFRESH_DOCS") == "1":
        return REPO / "docs" / name
    return tmp_dir / name


def launch_chromium(pw):
    """Headless Chromium: Debian's (``apt-get install chromium``, what ``.ci/run`` installs; or the
    one ``LIME_EDIT_CHROMIUM`` names), else Playwright's own (``python -m playwright install
    chromium``); the test is skipped, saying so, when neither is there."""
    if Path(CHROMIUM).is_file():
        return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        own = Path(pw.chromium.executable_path)
    except Exception:  # noqa: BLE001 - an older Playwright without its browser registry
        own = None
    if own is None or not own.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} nor Playwright's own: apt-get install -y chromium "
                    "(what .ci/run does), or python -m playwright install chromium, or set LIME_EDIT_CHROMIUM")
    return pw.chromium.launch(headless=True, args=CHROMIUM_ARGS)


def close_toasts(page) -> None:
    """Close the page's message toasts. Gradio also closes them on its own after a few seconds,
    so a toast may be detached (or inert while it fades) when clicked: that is not a failure;
    what is checked is that none is left."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect

    for close in page.locator(".toast-close").all():
        try:
            close.click(timeout=2_000)
        except PlaywrightError:
            pass
    expect(page.locator(".toast-close")).to_have_count(0, timeout=30_000)


def test_browser_screenshots_leave_the_tracked_pictures_alone_unless_asked(tmp_path, monkeypatch):
    """A test run writes its screenshots to a temporary folder: the clone stays clean. Only
    LIME_EDIT_REFRESH_DOCS=1 points them at the tracked docs/web-demo*.png."""
    for var in ("LIME_EDIT_REFRESH_DOCS", "LIME_EDIT_SCREENSHOT"):
        monkeypatch.delenv(var, raising=False)
    for name in ("web-demo.png", "web-demo-captions.png"):
        assert screenshot_path(name, tmp_path) == tmp_path / name
    monkeypatch.setenv("LIME_EDIT_REFRESH_DOCS", "0")
    assert screenshot_path("web-demo.png", tmp_path) == tmp_path / "web-demo.png"
    monkeypatch.setenv("LIME_EDIT_REFRESH_DOCS", "1")
    assert screenshot_path("web-demo.png", tmp_path) == REPO / "docs" / "web-demo.png"
    assert (REPO / "docs" / "web-demo.png").is_file()            # the name the docs show
    monkeypatch.setenv("LIME_EDIT_SCREENSHOT", str(tmp_path / "mine.png"))
    assert screenshot_path("web-demo.png", tmp_path, override="LIME_EDIT_SCREENSHOT") == tmp_path / "mine.png"


# ----------------------------------------------------------------------------- browser
@pytest.mark.browser
def test_browser_edit_refine_and_screenshot(server, scene_file, tmp_path):
    import httpx
    from playwright.sync_api import expect, sync_playwright

    url, model = server
    image, instruction = scene_file, "make the red square blue"
    if model == "demo":
        from lime_edit.demo.scenes import make_edit

        sample = make_edit(0, "test")   # the first held-out scene, as `lime-edit demo`
        image = scene_file.with_name("demo-scene.png")
        sample.image.save(image)
        instruction = sample.instruction

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            # an error is a readable message in the page
            page.click("#lime-run")
            expect(page.get_by_text("Upload an image first.")).to_be_visible(timeout=30_000)

            page.locator("#lime-input input[type=file]").set_input_files(str(image))
            page.locator("#lime-instruction textarea").fill(instruction)
            page.click("#lime-run")
            info = page.locator("#lime-info")
            expect(info).to_contain_text("Related tokens", timeout=120_000)
            for view in ("#lime-result img", "#lime-plain img", "#lime-roi img", "#lime-segments img",
                         "#lime-attention img"):
                expect(page.locator(view)).to_be_visible()
            first = page.locator("#lime-result img").get_attribute("src")
            # the screenshot shows the automatic region (no click yet), as a user first sees it
            close_toasts(page)  # none expected: the earlier error is a message in the status
            shot = screenshot_path("web-demo.png", tmp_path, override="LIME_EDIT_SCREENSHOT")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.mouse.move(0, 0)
            page.wait_for_timeout(600)  # let the toast close
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # click a segment outside the region (the first one is enough: any click toggles)
            seg = page.locator("#lime-segments img")
            box = seg.bounding_box()
            seg.click(position={"x": box["width"] * 0.9, "y": box["height"] * 0.9})
            expect(info).to_contain_text("Region changed", timeout=30_000)
            apply = page.locator("#lime-apply")
            expect(apply).to_have_class(re.compile(r"\bprimary\b"))  # highlighted while pending
            apply.click()
            expect(info).not_to_contain_text("Region changed", timeout=120_000)
            expect(apply).to_have_class(re.compile(r"\bsecondary\b"))
            expect(page.locator("#lime-result img")).not_to_have_attribute("src", first)
            link = page.locator("#lime-downloads a[href$='settings.json']")
            expect(link).to_have_count(1)
            meta = httpx.get(link.get_attribute("href"), timeout=30).json()
            assert meta["mask"] == "refined" and meta["instruction"] == instruction
        finally:
            browser.close()


# ----------------------------------------------------------------------------- issue 12: bad input, files
def _bad_uploads(folder: Path) -> dict[str, Path]:
    import struct
    import zlib

    folder.mkdir(parents=True, exist_ok=True)
    files = {"text.png": b"not a picture\n", "empty.png": b"",
             "vector.png": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" '
                           b'height="9"><rect width="9" height="9"/></svg>',
             "paper.png": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"}

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    files["huge.png"] = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                         + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b""))
    out = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


def test_bad_uploads_give_one_readable_line_over_http(server, scene_file, tmp_path, capfd):
    """Through Gradio's upload and preprocessing, as a browser would: image and mask."""
    from gradio_client import Client, handle_file

    url, _ = server
    client = Client(url, verbose=False)
    capfd.readouterr()
    for name, path in _bad_uploads(tmp_path / "bad").items():
        for role in ("image", "mask"):
            image, mask = (path, None) if role == "image" else (scene_file, path)
            with pytest.raises(Exception) as err:
                client.predict(handle_file(str(image)), "make it red", STEPS, 0, 2.0, 1.5, 4, 10, False,
                               None if mask is None else handle_file(str(mask)), api_name="/edit")
            msg = str(err.value)
            assert f"{role} {name}:" in msg and "\n" not in msg.strip(), (role, name, msg)
            assert "/tmp" not in msg and "gradio" not in msg.lower() and "Traceback" not in msg, msg
            if name == "huge.png":
                assert "above the limit" in msg or "decompression-bomb" in msg
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out


@pytest.mark.parametrize("field, value", [("guidance", float("inf")), ("image_guidance", float("nan")),
                                          ("steps", 2.5), ("steps", 10_000), ("top_k", float("nan")),
                                          ("clusters", "many"), ("seed", 2**64), ("seed", -1),
                                          ("seed", float("inf")), ("seed", 1.5)])
def test_bad_settings_are_one_line_errors(app, scene_file, field, value):
    kw = {field: value}
    with pytest.raises(gr.Error) as err:
        _readable_errors(app.run)(str(scene_file), "make it red", *_settings(app, **kw), False, None, None)
    msg = err.value.message
    label = "Seed" if field == "seed" else app_module().SLIDERS[field][0]
    assert msg.startswith(f"{label}:") and "\n" not in msg and "server log" not in msg, msg
    if field == "seed":
        assert "0..2**64-1" in msg


def app_module():
    from lime_edit.web import app as module

    return module


def test_largest_seed_is_accepted(app, scene_file):
    *_, s = app.run(str(scene_file), "make the red square blue", *_settings(app, seed=2**64 - 1), False,
                    None, None)
    assert s.seed == 2**64 - 1


def test_disk_cap_removes_the_oldest_files_first(spy, scene_file, tmp_path):
    import time

    cache = tmp_path / "cache"
    for n, age in (("h1", 200), ("h2", 100)):  # two uploads nobody edited, h1 the older
        (cache / n).mkdir(parents=True)
        (cache / n / "upload.png").write_bytes(b"\0" * 600_000)
        os.utime(cache / n / "upload.png", (time.time() - age,) * 2)
    app = LimeWebApp(spy, workdir=tmp_path / "dl", cache_dir=cache, max_disk_mb=1.0)
    app._prune()
    assert not (cache / "h1").exists() and (cache / "h2" / "upload.png").is_file()

    app = LimeWebApp(spy, workdir=tmp_path / "dl2", max_disk_mb=0.05)
    runs = [app.run(str(scene_file), "make the red square blue", *_settings(app), True, None, None)[6]
            for _ in range(8)]
    app._prune()
    used = sum(f.stat().st_size for f in (tmp_path / "dl2").rglob("*") if f.is_file())
    assert used <= 0.05 * 1024 * 1024
    assert all(Path(f).is_file() for f in runs[-1]) and not Path(runs[0][0]).exists()


def test_close_removes_the_apps_own_download_folder(spy):
    app = LimeWebApp(spy)
    assert app.workdir.is_dir() and app.workdir.name.startswith("lime-web-")
    app.close()
    assert not app.workdir.exists()


def test_uploads_per_client_are_bounded(scene_file, tmp_path):
    import httpx

    demo = build_app([Slow([])], workdir=tmp_path)
    port = _free_port()
    launch(demo, port=port, block=False, quiet=True, max_uploads=3, upload_window_s=60)
    try:
        url = f"http://127.0.0.1:{port}/gradio_api/upload"
        codes = [httpx.post(url, files={"files": ("a.png", b"\0" * 100, "image/png")}, timeout=30).status_code
                 for _ in range(5)]
        last = httpx.post(url, files={"files": ("a.png", b"\0" * 100, "image/png")}, timeout=30)
    finally:
        demo.close()
    assert codes == [200, 200, 200, 429, 429] and "too many uploads" in last.text


def test_serve_has_max_pixels_and_a_disk_cap():
    from lime_edit.web.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--max-pixels", "0", "--max-disk-mb", "50"])
    assert args.max_pixels == 0 and args.max_disk_mb == 50.0
    for bad in (["--max-pixels", "10"], ["--max-disk-mb", "inf"], ["--max-upload-mb", "nan"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", *bad])


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_serve_removes_its_files_when_stopped(tiny_model_dir, scene_file, tmp_path, sig="SIGTERM"):
    """A real ``lime-edit serve`` process: after an edit, SIGTERM leaves no
    downloads folder and no Gradio cache behind (Ctrl-C takes the same path:
    lime-edit turns SIGTERM into KeyboardInterrupt)."""
    import signal
    import time

    from gradio_client import Client, handle_file

    port = _free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(REPO / "src"))
    env.pop("GRADIO_TEMP_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "lime_edit.cli", "serve", "--model", str(tiny_model_dir),
                             "--port", str(port), "--device", "cpu"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
                time.sleep(0.5)
        out = client.predict(handle_file(str(scene_file)), "make the red square blue", 1, 0, 2.0, 1.5, 4, 10,
                             False, None, api_name="/edit")
        assert Path(out[4]).is_file()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("lime-web-")]
    finally:
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("lime-web-")], list(tmp_path.iterdir())
    # nothing in Gradio's shared temp folder either (it makes an empty folder there on start)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], list(tmp_path.rglob("*"))


# ----------------------------------------------------------------------------- issue 11: caption mode
SRC, TGT = "a red circle and a blue square", "a green circle and a blue square"


class CaptionSpy:
    """A caption-editing LimePipeline that records every call (and forwards it)."""

    def __init__(self, lp):
        self.lp, self.config, self.backbone, self.calls = lp, lp.config, lp.backbone, []

    def edit_captions(self, image, source, target, mask="auto", seed=0, p2p=None, **overrides):
        self.calls.append(("edit_captions", source, target, mask, seed, p2p, overrides))
        return self.lp.edit_captions(image, source, target, mask=mask, seed=seed, p2p=p2p, **overrides)


def _caption_settings(app: LimeWebApp, **kw):
    """run_captions' settings after the captions: steps, seed, guidance, clusters, top_k, P2P's four."""
    d = dict(app.defaults(), steps=STEPS, clusters=4, top_k=10)
    d.update(kw)
    return [d["steps"], d["seed"], d["guidance"], d["clusters"], d["top_k"], d["cross_replace"],
            d["self_replace"], d["local_blend"], d["reweight"]]


@pytest.fixture(scope="module")
def t2i_lp(tmp_path_factory):
    from lime_edit.testing import tiny_t2i_pipeline

    return LimePipeline(tiny_t2i_pipeline(tmp_path_factory.mktemp("web_t2i")), backbone="p2p")


@pytest.fixture(scope="module")
def cap_spy(t2i_lp):
    return CaptionSpy(t2i_lp)


@pytest.fixture(scope="module")
def cap_app(cap_spy, tmp_path_factory):
    return LimeWebApp(cap_spy, model_name="tiny-t2i", workdir=tmp_path_factory.mktemp("web-cap-files"))


@pytest.fixture(scope="module")
def cap_ran(cap_app, cap_spy, scene_file):
    cap_spy.calls.clear()
    out = cap_app.run_captions(str(scene_file), f"  {SRC} ", TGT, *_caption_settings(cap_app, reweight="green=2"),
                               True, None, None)
    return out, list(cap_spy.calls)


def test_caption_mode_is_chosen_by_the_backbone(cap_app, app, t2i_lp):
    assert t2i_lp.backbone.caption_editing and cap_app.caption_mode and not app.caption_mode
    d = cap_app.defaults()
    p = t2i_lp.backbone.settings
    assert (d["cross_replace"], d["self_replace"], d["local_blend"], d["reweight"]) == \
        (p.cross_replace, p.self_replace, p.local_blend, "")
    assert d["steps"] == t2i_lp.config.num_inference_steps and d["guidance"] == t2i_lp.config.guidance_scale


def test_caption_mode_run_shows_every_view_and_writes_source_and_target(cap_ran, scene_file):
    (roi, seg, attn, plain, result, info, files, s), calls = cap_ran
    assert isinstance(s.localization, Localization) and s.source == SRC and s.instruction == TGT
    for view in (roi, seg, attn, plain, result):
        assert isinstance(view, Image.Image) and view.size == s.view_size == (384, 384)
    assert "Related tokens: `green`" in info and "LIME applied" in info
    # P2P + LIME with automatic localization, then plain P2P: same captions, seed and settings
    p2p = dict(cross_replace=0.4, self_replace=0.6, local_blend=False, reweight=(("green", 2.0),))
    overrides = dict(num_inference_steps=STEPS, guidance_scale=7.5, num_clusters=4, top_k=10)
    assert calls == [("edit_captions", SRC, TGT, "auto", 0, p2p, overrides),
                     ("edit_captions", SRC, TGT, None, 0, p2p, overrides)]
    by_name = {Path(f).name: Path(f) for f in files}
    assert set(by_name) == {"result.png", "p2p.png", "mask.png", "settings.json"}
    assert np.array_equal(np.asarray(Image.open(by_name["result.png"])), np.asarray(s.result.image))
    assert np.array_equal(np.asarray(Image.open(by_name["p2p.png"])), np.asarray(s.plain))
    meta = json.loads(by_name["settings.json"].read_text())
    assert (meta["source"], meta["target"]) == (SRC, TGT) and "instruction" not in meta
    assert meta["p2p"] == dict(p2p, reweight={"green": 2.0}) and meta["lime_applied"] is True
    assert meta["settings"]["source"] == SRC and meta["settings"]["target"] == TGT
    assert meta["settings"]["p2p"]["reweight"] == {"green": 2.0} and meta["settings"]["backbone"] == "p2p"
    assert "image_guidance_scale" not in meta["overrides"]


def test_caption_mode_apply_reuses_the_segmentation_with_the_pages_p2p_settings(cap_app, cap_spy, cap_ran):
    (*_, s), _ = cap_ran
    loc = s.localization
    others = [v for v in range(loc.num_segments) if v not in s.selected]
    *_, s2 = cap_app.toggle_at(s, *_click_on(s, others[0] if others else s.selected[0]))
    if not s2.selected:
        *_, s2 = cap_app.toggle_at(s2, *_click_on(s, s.selected[0]))
    cap_spy.calls.clear()
    roi, seg, result, info, files, s3 = cap_app.apply_captions(STEPS, 3, 7.5, 0.2, 0.5, True, "", s2)
    (kind, src, tgt, mask, seed, p2p, overrides), = cap_spy.calls
    assert (kind, src, tgt, seed) == ("edit_captions", SRC, TGT, 3)
    assert isinstance(mask, Localization) and mask.segments is loc.segments
    assert p2p == dict(cross_replace=0.2, self_replace=0.5, local_blend=True, reweight=())
    assert s3.result.lime_applied and s3.p2p == p2p and s3.applied == s2.selected
    meta = json.loads(Path([f for f in files if f.endswith("settings.json")][0]).read_text())
    assert meta["settings"]["p2p"]["local_blend"] is True and meta["settings"]["p2p"]["cross_replace"] == 0.2
    assert meta["p2p"]["reweight"] == {} and meta["target"] == TGT


def test_caption_mode_uploaded_mask(cap_app, cap_spy, scene_file, tmp_path):
    arr = np.zeros((32, 32), np.uint8)
    arr[:, :16] = 255
    Image.fromarray(arr).save(tmp_path / "mask.png")
    cap_spy.calls.clear()
    *_, info, files, s = cap_app.run_captions(str(scene_file), SRC, TGT, *_caption_settings(cap_app), False,
                                              str(tmp_path / "mask.png"), None)
    (_, _, _, mask, *_), = cap_spy.calls
    assert torch.is_tensor(mask) and s.mask_source == "uploaded" and s.result.lime_applied
    assert {Path(f).name for f in files} == {"result.png", "mask.png", "settings.json"}


@pytest.mark.parametrize("source, target, kw, expect", [
    ("", TGT, {}, "Type a source caption"),
    (SRC, "   ", {}, "Type a target caption"),
    (SRC, TGT, {"cross_replace": 1.5}, "Cross-attention replace: expected a number from 0.0 to 1.0"),
    (SRC, TGT, {"self_replace": float("nan")}, "Self-attention replace: expected a number"),
    (SRC, TGT, {"local_blend": "yes"}, "Local blend: expected true or false"),
    (SRC, TGT, {"reweight": "green"}, "Reweight: expected WORD=SCALE"),
    (SRC, TGT, {"reweight": "green=inf"}, "Reweight: expected WORD=SCALE"),
    (SRC, TGT, {"reweight": "green=99"}, "Reweight: expected WORD=SCALE with a number from -10 to 10"),
    (SRC, TGT, {"reweight": "purple=2"}, "reweight: 'purple' is not a word of the target caption"),
    (SRC, TGT, {"guidance": 1.0}, "guidance_scale: P2P runs with classifier-free guidance"),
    (SRC, TGT, {"seed": -1}, "Seed:"),
    (SRC, TGT, {"steps": 0}, "Steps:"),
])
def test_caption_mode_errors_are_one_readable_line(cap_app, scene_file, source, target, kw, expect):
    with pytest.raises(gr.Error) as err:
        _readable_errors(cap_app.run_captions)(str(scene_file), source, target, *_caption_settings(cap_app, **kw),
                                               False, None, None)
    msg = err.value.message
    assert msg.startswith(expect) and "\n" not in msg and "server log" not in msg, msg


def test_each_mode_refuses_the_others_callbacks(cap_app, app, scene_file):
    with pytest.raises(gr.Error, match="This model edits by captions"):
        cap_app.run(str(scene_file), "make it red", *_settings(app), False, None, None)
    with pytest.raises(gr.Error, match="This model edits by instructions"):
        app.run_captions(str(scene_file), SRC, TGT, *_caption_settings(cap_app), False, None, None)
    with pytest.raises(gr.Error, match="Upload an image"):
        cap_app.run_captions(None, SRC, TGT, *_caption_settings(cap_app), False, None, None)


def _page(demo) -> tuple[set[str], set[str]]:
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    apis = {f.api_name for f in demo.fns.values() if f.api_name and f.api_visibility != "private"}
    return ids, apis


def test_caption_mode_page_and_instruction_page(cap_app, app):
    ids, apis = _page(cap_app.build())
    assert {"lime-source", "lime-target", "lime-cross-replace", "lime-self-replace", "lime-local-blend",
            "lime-reweight", "lime-run", "lime-apply", "lime-result", "lime-plain", "lime-roi"} <= ids
    assert not {"lime-instruction", "lime-image-guidance"} & ids
    assert {"edit_captions", "apply"} <= apis and "edit" not in apis
    ids, apis = _page(app.build())  # instruction editors keep their page
    assert {"lime-instruction", "lime-image-guidance"} <= ids and not {"lime-source", "lime-reweight"} & ids
    assert {"edit", "apply"} <= apis and "edit_captions" not in apis


def test_caption_examples_for_the_demo_text_to_image_model(cap_spy, tmp_path):
    from lime_edit.demo.scenes import caption_pair, make_edit
    from lime_edit.web.cli import demo_examples

    examples = demo_examples(2, captions=True)
    assert [e[1:] for e in examples] == [caption_pair(make_edit(i, "test")) for i in range(2)]
    assert all(Path(e[0]).is_file() for e in examples)
    LimeWebApp(cap_spy, workdir=tmp_path / "a", examples=examples).build()
    with pytest.raises(ValueError, match="image, source, target"):
        LimeWebApp(cap_spy, workdir=tmp_path / "b", examples=demo_examples(1))


def test_caption_mode_over_http(cap_spy, scene_file, tmp_path):
    """The served caption page: /edit_captions, then /apply, through Gradio's client."""
    from gradio_client import Client, handle_file

    demo = build_app(cap_spy, model_name="tiny-t2i", workdir=tmp_path)
    port = _free_port()
    launch(demo, port=port, block=False, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(Exception, match="Type a target caption"):
            client.predict(handle_file(str(scene_file)), SRC, "", STEPS, 0, 7.5, 4, 10, 0.4, 0.6, False, "",
                           False, None, api_name="/edit_captions")
        out = client.predict(handle_file(str(scene_file)), SRC, TGT, STEPS, 0, 7.5, 4, 10, 0.4, 0.6, True, "",
                             False, None, api_name="/edit_captions")
        assert Path(out[4]).is_file() and "Related tokens: `green`" in out[5]
        again = client.predict(STEPS, 1, 7.5, 0.4, 0.6, False, "", api_name="/apply")
        assert Path(again[2]).is_file()
    finally:
        demo.close()


def test_caption_mode_identical_captions_give_the_reconstruction_with_readable_notes(cap_app, scene_file):
    *_, info, files, s = cap_app.run_captions(str(scene_file), SRC, SRC, *_caption_settings(cap_app), False,
                                              None, None)
    assert not s.result.lime_applied and s.localization is None
    assert "**Plain Prompt-to-Prompt**: LIME was not applied." in info
    assert "source and target captions are identical" in info
    assert "no content word of the target caption was added or replaced: LIME skipped, plain P2P result" in info
    assert "IP2P" not in info and "instruction" not in info
    with pytest.raises(gr.Error, match="LIME found no region for these captions"):
        cap_app.toggle_at(s, 1, 1)


@pytest.fixture(scope="module")
def caption_server(t2i_lp, tmp_path_factory):
    """The caption page served on a free port: the bundled demo text-to-image model when it
    is installed (with its example scenes), else the tiny random one."""
    from lime_edit.web.cli import demo_examples

    try:
        from lime_edit.demo import bundled_t2i_path

        bundled_t2i_path()
        lp, model, steps = LimePipeline.from_pretrained("demo-t2i", device="cpu"), "demo-t2i", 20
    except (ImportError, LimeEditError):
        lp, model, steps = t2i_lp, "tiny-t2i", STEPS
    demo = build_app(lp, model_name=model, workdir=tmp_path_factory.mktemp("served-cap"),
                     examples=demo_examples(4, captions=True))
    port = _free_port()
    launch(demo, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/", model, steps
    demo.close()


@pytest.mark.browser
def test_browser_caption_mode(caption_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from lime_edit.demo.scenes import caption_pair, make_edit

    url, model, steps = caption_server
    sample = make_edit(0, "test")   # the first held-out scene, as `lime-edit demo`
    source, target = caption_pair(sample)
    sample.image.save(tmp_path / "scene.png")
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            expect(page.locator("#lime-source textarea")).to_be_visible(timeout=30_000)
            assert page.locator("#lime-instruction").count() == 0
            page.locator("#lime-input input[type=file]").set_input_files(str(tmp_path / "scene.png"))
            page.locator("#lime-source textarea").fill(source)
            page.click("#lime-run")  # no target caption yet: a readable message
            expect(page.get_by_text("Type a target caption")).to_be_visible(timeout=30_000)
            close_toasts(page)
            page.locator("#lime-target textarea").fill(target)
            page.locator("#lime-steps input[type=number]").fill(str(steps))
            page.click("#lime-run")
            info = page.locator("#lime-info")
            expect(info).to_contain_text(f"Related tokens: {sample.target_colour}", timeout=120_000)
            for view in ("#lime-result img", "#lime-plain img", "#lime-roi img", "#lime-segments img"):
                expect(page.locator(view)).to_be_visible()
            expect(page.locator("#lime-downloads a[href$='p2p.png']")).to_have_count(1)
            shot = screenshot_path("web-demo-captions.png", tmp_path, override="LIME_EDIT_CAPTION_SCREENSHOT")
            if model != "demo-t2i" and shot == REPO / "docs" / "web-demo-captions.png":
                shot = tmp_path / "web-demo-captions.png"    # the docs picture shows the bundled demo-t2i
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.mouse.move(0, 0)
            page.wait_for_timeout(600)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def test_serve_demo_t2i_gives_the_caption_page_with_scene_examples(t2i_lp, monkeypatch):
    """``lime-edit serve --model demo-t2i`` (the model load and the server replaced): the
    caption page, with held-out scenes and their caption pairs as examples."""
    from lime_edit.demo.scenes import caption_pair, make_edit
    from lime_edit.web import app as app_module
    from lime_edit.web.cli import register

    loaded, served = [], []
    monkeypatch.setattr(LimePipeline, "from_pretrained",
                        classmethod(lambda cls, model, **kw: loaded.append((model, kw)) or t2i_lp))
    monkeypatch.setattr(app_module, "launch", lambda demo, **kw: served.append(demo))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model", "demo-t2i", "--port", str(_free_port())])
    assert args.func(args) == 0
    assert loaded[0][0] == "demo-t2i"
    (demo,) = served
    ids, apis = _page(demo)
    assert "lime-source" in ids and "edit_captions" in apis
    (dataset,) = [b for b in demo.blocks.values() if isinstance(b, gr.Dataset)]
    pairs = [tuple(sample[1:]) for sample in dataset.samples]
    assert pairs == [caption_pair(make_edit(i, "test")) for i in range(len(pairs))] and len(pairs) == 6
