"""Web demo: what an API client (not only the page) can send. Seeds are not rounded
before the app's check, settings and clicks are checked by the app with one line
naming them, uploads are limited per file, and the pixel limit is worded for a web user."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web demo needs the 'web' extra: pip install -e '.[web]'")

from lime_edit import LimeConfig, LimePipeline
from lime_edit.web.app import LimeWebApp, _readable_errors, build_app, launch, setting

FAST = LimeConfig.fast(num_inference_steps=1, num_clusters=4, top_k=10)
SEED_MSG = "Seed: expected a whole number in 0..2**64-1, got "


class Recorder:
    """A LimePipeline that records the seed and settings of every edit."""

    def __init__(self, lp):
        self.lp, self.config, self.calls = lp, lp.config, []

    def edit(self, image, instruction, mask="auto", seed=0, **overrides):
        self.calls.append((seed, overrides))
        return self.lp.edit(image, instruction, mask=mask, seed=seed, **overrides)


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # conftest.py; scene_file is there too


@pytest.fixture(scope="module")
def rec(tiny_pipe):
    return Recorder(LimePipeline(tiny_pipe, FAST))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(rec, tmp_path_factory):
    """The demo served on a free port (upload limit high enough for the calls below)."""
    demo = build_app(rec, workdir=tmp_path_factory.mktemp("probe-files"))
    port = _free_port()
    launch(demo, port=port, block=False, quiet=True, max_uploads=1000)
    yield f"http://127.0.0.1:{port}/", demo
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)


def _edit(client, scene_file, steps=1, seed=0, guidance=2.0, image_guidance=1.5, clusters=4, top_k=10):
    from gradio_client import handle_file

    return client.predict(handle_file(str(scene_file)), "make the red square blue", steps, seed, guidance,
                          image_guidance, clusters, top_k, False, None, api_name="/edit")


# ----------------------------------------------------------------------------- W3: seed
@pytest.mark.parametrize("value, shown", [(1.5, "1.5"), (2.5, "2.5"), (True, "bool True"), ("1.5", "'1.5'")])
def test_api_seed_is_not_rounded_before_the_check(client, rec, scene_file, value, shown):
    rec.calls.clear()
    with pytest.raises(Exception) as err:
        _edit(client, scene_file, seed=value)
    assert str(err.value).strip() == SEED_MSG + shown
    assert rec.calls == []  # refused before any model work


@pytest.mark.parametrize("value", [2**64 - 1, 2**53 + 1, 7.0, "18446744073709551615"])
def test_api_large_and_whole_seeds_stay_exact(client, rec, scene_file, value):
    rec.calls.clear()
    _edit(client, scene_file, seed=value)
    assert [seed for seed, _ in rec.calls] == [int(value)]
    assert all(type(seed) is int for seed, _ in rec.calls)


def test_page_seed_component_keeps_the_value_as_sent(served):
    _, demo = served
    seed = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "lime-seed")
    # a text field: a number field's browser value is a double, which changes seeds above 2**53
    assert type(seed).__name__ == "Textbox" and seed.value == "0"
    for value in (1.5, 2**64 - 1, 2**53 + 1, True, "3", str(2**53 + 1)):
        out = seed.preprocess(value)
        assert out == value and type(out) is type(value)


# ----------------------------------------------------------------------------- W1/W2: settings
@pytest.mark.parametrize("field, value, label", [
    ("steps", -1, "Steps"), ("steps", "x", "Steps"), ("seed", -1, "Seed"), ("seed", "abc", "Seed"),
    ("guidance", None, "Text guidance"), ("image_guidance", [1], "Image guidance"),
    ("image_guidance", 6, "Image guidance"), ("clusters", 10**400, "Segments (clusters)"),
    ("top_k", True, "Top-k attention points"), ("top_k", "10", "Top-k attention points")])
def test_api_bad_settings_name_the_setting_in_one_line(client, rec, scene_file, capfd, field, value, label):
    rec.calls.clear()
    capfd.readouterr()
    with pytest.raises(Exception) as err:
        _edit(client, scene_file, **{field: value})
    msg = str(err.value).strip()
    assert msg.startswith(label) and ": expected" in msg or msg.startswith("Seed: -1 is out of range"), msg
    assert "\n" not in msg and len(msg) < 200, msg
    for leak in ("Value ", "Original error", "Error:", "preprocess", "server log", "Traceback"):
        assert leak not in msg, msg
    assert rec.calls == []
    out, errout = capfd.readouterr()
    assert "Traceback" not in out + errout


def test_setting_refuses_what_is_not_a_number():
    for value in (True, np.bool_(True), "5", b"5", None, [5], {"v": 5}):
        with pytest.raises(Exception, match=r"^Steps: expected a whole number from 1 to 100, got "):
            setting("steps", value)
    assert setting("steps", 5) == 5 and setting("steps", 5.0) == 5 and setting("steps", np.int64(5)) == 5
    assert setting("guidance", np.float32(2.5)) == 2.5
    with pytest.raises(Exception) as err:
        setting("clusters", 10**400)
    assert len(str(err.value)) < 120


# ----------------------------------------------------------------------------- W4: clicks
@pytest.fixture(scope="module")
def app(rec, tmp_path_factory):
    return LimeWebApp(rec, workdir=tmp_path_factory.mktemp("probe-app"))


@pytest.fixture(scope="module")
def session(app, scene_file):
    *_, s = app.run(str(scene_file), "make the red square blue", 1, 0, 2.0, 1.5, 4, 10, False, None, None)
    assert s.localization is not None
    return s


BAD_EVENTS = [{"index": [float("nan"), 1], "value": None}, {"index": None, "value": None},
              {"index": ["a", "b"], "value": None}, {"index": ["1", "2"], "value": None},
              {"index": [1, 2, 3], "value": None}, {"index": [float("inf"), 1], "value": None},
              {"index": [10**400, 1], "value": None}, {"index": [True, False], "value": None},
              {"index": 5, "value": None}, {"value": None}, None, "click", [1, 2]]


@pytest.mark.parametrize("event", BAD_EVENTS, ids=range(len(BAD_EVENTS)))
def test_bad_click_events_are_one_line_errors(app, session, event):
    with pytest.raises(gr.Error) as err:
        _readable_errors(app._on_select)(session, gr.EventData(None, event))
    msg = err.value.message
    assert msg.startswith("Click: expected pixel coordinates") and "\n" not in msg and len(msg) < 150, msg
    assert "server log" not in msg


def test_good_clicks_still_toggle_and_outside_is_the_nearest_edge(app, session):
    w, h = session.view_size
    *_, s = app._on_select(session, gr.EventData(None, {"index": [w / 2, h / 2]}))  # no "value": fine
    assert s.selected != session.selected
    *_, edge = app._on_select(session, gr.EventData(None, {"index": [w + 500, -3.5], "value": None}))
    *_, corner = app.toggle_at(session, w - 1, 0)
    assert edge.selected == corner.selected
    with pytest.raises(Exception, match="Click: expected pixel coordinates"):
        app.toggle_at(session, float("nan"), 3)


def _select(url: str, fn_index: int, session_hash: str, event) -> dict:
    """A select event sent through the queue API the way the page sends it."""
    import httpx

    body = {"data": [None], "event_data": event, "fn_index": fn_index, "session_hash": session_hash,
            "trigger_id": None}
    r = httpx.post(url + "gradio_api/queue/join", content=json.dumps(body),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text
    with httpx.stream("GET", url + f"gradio_api/queue/data?session_hash={session_hash}", timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError("no answer")


def test_bad_click_events_over_the_queue_api(served, client, scene_file, capfd):
    url, demo = served
    _edit(client, scene_file)  # this session now has segments to click
    fn_index = next(i for i, f in demo.fns.items() if f.name == "_on_select")
    capfd.readouterr()
    for event in BAD_EVENTS:   # a click is the page's own event: its error is one message in the status
        out = _select(url, fn_index, client.session_hash, event)
        roi, seg, status, _state, apply = out["output"]["data"]
        assert out["success"] and status.startswith("⚠ Click: expected pixel coordinates"), (event, out)
        assert roi == seg == apply == {"__type__": "update"} and not out["output"]["changed_state_ids"]
        assert "\n" not in status and "server log" not in status
    ok = _select(url, fn_index, client.session_hash, {"index": [10, 10], "value": None})
    assert ok["success"], ok  # the server keeps serving, and a real click works
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


# ----------------------------------------------------------------------------- W5: uploads
def test_upload_limit_counts_files_not_requests(tmp_path, monkeypatch):
    import httpx

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    demo = build_app([_Stub()], workdir=tmp_path / "dl")
    port = _free_port()
    launch(demo, port=port, block=False, quiet=True, max_uploads=3, upload_window_s=60)
    url = f"http://127.0.0.1:{port}/gradio_api/upload"

    def post(n: int, size: int = 100, tag: int = 0) -> httpx.Response:
        files = [("files", (f"f{i}.png", bytes([tag, i]) * (size // 2), "image/png")) for i in range(n)]
        return httpx.post(url, files=files, timeout=60)

    def stored() -> list[Path]:
        return [p for p in (tmp_path / "gradio").rglob("*") if p.is_file()]

    try:
        many = post(100)
        assert many.status_code == 429 and "too many uploads" in many.text and "3 files" in many.text
        # files large enough to arrive in several chunks: the first three are written before the
        # fourth one's headers arrive, and are deleted with the refused request
        big = post(4, size=300_000, tag=1)
        assert big.status_code == 429, big.text
        assert stored() == []
        # refused requests stored nothing and count nothing: three files are still allowed ...
        ok = post(3, tag=2)
        assert ok.status_code == 200 and len(ok.json()) == 3 and len(stored()) == 3
        # ... and then no more, not even one
        assert post(1, tag=3).status_code == 429
        assert len(stored()) == 3
    finally:
        demo.close()


def test_upload_limit_counts_files_across_requests(tmp_path, monkeypatch):
    import httpx

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    demo = build_app([_Stub()], workdir=tmp_path / "dl")
    port = _free_port()
    launch(demo, port=port, block=False, quiet=True, max_uploads=5, upload_window_s=60)
    url = f"http://127.0.0.1:{port}/gradio_api/upload"

    def post(n: int, tag: int) -> int:
        files = [("files", (f"f{i}.png", bytes([tag, i]) * 50, "image/png")) for i in range(n)]
        return httpx.post(url, files=files, timeout=60).status_code

    try:
        assert [post(2, 0), post(2, 1), post(2, 2), post(1, 3), post(1, 4)] == [200, 200, 429, 200, 429]
    finally:
        demo.close()


class _Stub:
    config = LimeConfig()

    def edit(self, *a, **k):  # never called: these tests only upload
        raise AssertionError("no edits here")


# ----------------------------------------------------------------------------- pixel limit wording
def test_pixel_limit_message_is_for_a_web_user(rec, tmp_path):
    Image.new("RGB", (100, 100), (10, 200, 10)).save(tmp_path / "big.png")
    app = LimeWebApp(rec, workdir=tmp_path / "dl", max_pixels=4096)
    Image.new("RGB", (32, 32)).save(tmp_path / "small.png")
    big, small = str(tmp_path / "big.png"), str(tmp_path / "small.png")
    for image, mask in ((big, None), (small, big)):
        with pytest.raises(gr.Error) as err:
            _readable_errors(app.run)(image, "make it red", 1, 0, 2.0, 1.5, 4, 10, False, mask, None)
        msg = err.value.message
        what = "image" if mask is None else "mask"
        expect = f"{what} big.png: 100x100 = 10000 pixels is above the limit of 4096 pixels"
        assert msg.startswith(expect), msg
        assert "--max-pixels" not in msg and "set by the server" in msg and str(tmp_path) not in msg


# ----------------------------------------------------------------------------- caption page
@pytest.fixture(scope="module")
def caption_demo(tmp_path_factory):
    from lime_edit.testing import tiny_t2i_pipeline

    lp = LimePipeline(tiny_t2i_pipeline(tmp_path_factory.mktemp("probe-t2i")), backbone="p2p")
    return build_app(lp, workdir=tmp_path_factory.mktemp("probe-cap-files"))


def test_every_number_input_of_both_pages_reaches_the_app_as_sent(served, caption_demo):
    for demo in (served[1], caption_demo):
        numbers = [b for b in demo.blocks.values() if isinstance(b, (gr.Slider, gr.Number))
                   or getattr(b, "elem_id", None) == "lime-seed"]
        assert len(numbers) >= 6
        for block in numbers:
            for value in (-5, 1.5, "x", None, True, 10**30):
                assert block.preprocess(value) is value or block.preprocess(value) == value, (block, value)


@pytest.mark.parametrize("cross, self_, expect", [
    (1.5, 0.6, "Cross-attention replace: expected a number from 0.0 to 1.0, got 1.5"),
    (0.4, "x", "Self-attention replace: expected a number from 0.0 to 1.0, got 'x'")])
def test_caption_page_settings_over_the_api(caption_demo, scene_file, capfd, cross, self_, expect):
    from gradio_client import Client, handle_file

    port = _free_port()
    launch(caption_demo, port=port, block=False, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        capfd.readouterr()
        with pytest.raises(Exception) as err:
            client.predict(handle_file(str(scene_file)), "a red square", "a blue square", 1, 0, 2.0, 4, 10,
                           cross, self_, False, "", False, None, api_name="/edit_captions")
    finally:
        caption_demo.close()
    assert str(err.value).strip() == expect
    assert "Traceback" not in "".join(capfd.readouterr())
