"""``bench synthetic``'s Prompt-to-Prompt rows (p2p, p2p_local_blend, p2p_lime) on a tiny
text-to-image model built here (v-prediction like the demo models): they run on the
held-out scenes with the scenes' caption pairs, resume, and never mix text-to-image models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from lime_edit import cli as lime_cli

P2P = "p2p,p2p_local_blend,p2p_lime"


@pytest.fixture(scope="module")
def t2i_dir(tmp_path_factory):
    """A tiny StableDiffusionPipeline folder whose tokenizer spells every scene word."""
    from diffusers import DDIMScheduler

    from lime_edit.demo.scenes import VOCAB
    from lime_edit.testing import tiny_t2i_pipeline

    pipe = tiny_t2i_pipeline(tmp_path_factory.mktemp("tok"), words=VOCAB)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    path = tmp_path_factory.mktemp("t2i") / "model"
    pipe.save_pretrained(str(path))
    return path


def _bench(out, t2i, *extra, methods=P2P, n=2):
    return lime_cli.main(["bench", "synthetic", "--n", str(n), "--out", str(out), "--no-progress",
                          "--methods", methods, "--t2i-model", str(t2i), "--p2p-steps", "3",
                          "--batch", "2", "--examples", "1",
                          "--threads", "0",  # leave torch's global thread count alone
                          *extra])


def _rows(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_p2p_rows_run_with_the_scenes_caption_pairs(t2i_dir, tmp_path, capsys):
    from lime_edit import LimePipeline
    from lime_edit.demo.scenes import caption_pair, make_edit

    out = tmp_path / "b"
    assert _bench(out, t2i_dir) == 0
    rows = _rows(out)
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        (m, s) for m in sorted(P2P.split(",")) for s in (0, 1)]
    for r in rows:
        assert all(r[k] is not None for k in ("l1", "bg_l1", "in_mask_l1", "edit_success", "sec_per_edit"))
        if r["method"] == "p2p_lime":
            assert isinstance(r["lime_applied"], bool) and r["roi_iou"] is not None   # measured like `lime`'s
        else:
            assert r["lime_applied"] is None and r["roi_iou"] is None
    res = json.loads((out / "results.json").read_text())
    assert {row["method"] for row in res["rows"]} == set(P2P.split(","))
    p2p = res["p2p"]
    assert p2p["t2i_model"] == str(t2i_dir) and p2p["num_inference_steps"] == 3
    assert p2p["guidance_scale"] == 7.5 and p2p["prediction_type"] == "v_prediction"
    assert p2p["methods"]["p2p_local_blend"]["local_blend"] and not p2p["methods"]["p2p"]["local_blend"]
    sig = json.loads((out / "signature.json").read_text())
    assert "sha256" in sig["t2i_model"]
    assert sig["methods"]["p2p_lime"]["backbone"] == "p2p"
    assert sig["methods"]["p2p"]["settings"]["num_inference_steps"] == 3
    assert "p2p rows" in (out / "results.md").read_text()
    # the p2p row is exactly a caption edit of scene 0 with caption_pair's captions, LIME off
    e = make_edit(0, "test")
    src, tgt = caption_pair(e)
    lp = LimePipeline.from_pretrained(str(t2i_dir), backbone="p2p")
    lp.pipe.set_progress_bar_config(disable=True)
    want = lp.edit_captions(e.image, src, tgt, mask=None, seed=0, num_inference_steps=3).image
    got = Image.open(out / "images" / "00000_p2p.png")
    assert np.abs(np.asarray(got, np.int16) - np.asarray(want, np.int16)).max() <= 2


def test_p2p_rows_resume_and_refuse_another_t2i_model(t2i_dir, tmp_path, capsys):
    out = tmp_path / "b"
    assert _bench(out, t2i_dir, methods="p2p", n=1) == 0
    first = _rows(out)
    # the same command again: nothing recomputed; a larger --n adds only the new scene
    assert _bench(out, t2i_dir, methods="p2p", n=1) == 0
    assert _rows(out) == first
    assert _bench(out, t2i_dir, methods="p2p,p2p_lime", n=2) == 0
    rows = _rows(out)
    assert rows[0] == first[0] and len(rows) == 4
    capsys.readouterr()
    # an identical copy elsewhere is the same model; a changed one is refused with one line
    copy = tmp_path / "t2i-copy"
    shutil.copytree(t2i_dir, copy)
    assert _bench(out, copy, methods="p2p", n=2) == 0
    cfg = copy / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text() + " ")
    capsys.readouterr()                       # the run above said how many edits it had to do
    assert _bench(out, copy, methods="p2p", n=2) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t2i_model" in err[0] and "--overwrite" in err[0], err
    assert len(_rows(out)) == 4
    # other P2P steps: refused, naming the setting
    assert _bench(out, t2i_dir, "--p2p-steps", "4", methods="p2p", n=2) == 2
    assert "num_inference_steps" in capsys.readouterr().err
    assert len(_rows(out)) == 4


def test_ip2p_and_p2p_rows_share_a_folder(t2i_dir, tmp_path, capsys):
    """IP2P rows never load (or hash) the text-to-image model; adding p2p rows to an IP2P
    folder is allowed, and a later IP2P-only rerun keeps the recorded t2i model."""
    out = tmp_path / "b"
    assert _bench(out, tmp_path / "no-such-t2i", "--steps", "2", methods="ip2p", n=1) == 0
    assert "t2i_model" not in json.loads((out / "signature.json").read_text())
    assert _bench(out, t2i_dir, "--steps", "2", methods="ip2p,p2p", n=1) == 0
    sig = json.loads((out / "signature.json").read_text())
    assert "sha256" in sig["t2i_model"] and set(sig["methods"]) == {"ip2p", "p2p"}
    assert _bench(out, tmp_path / "no-such-t2i", "--steps", "2", methods="ip2p", n=2) == 0
    sig2 = json.loads((out / "signature.json").read_text())
    assert sig2["t2i_model"] == sig["t2i_model"] and set(sig2["methods"]) == {"ip2p", "p2p"}
    assert sorted((r["method"], r["seed"]) for r in _rows(out)) == [("ip2p", 0), ("ip2p", 1), ("p2p", 0)]


def test_bad_t2i_model_and_p2p_steps_are_one_line_errors(tmp_path, tiny_model_dir, capsys):
    # an instruction editor is not a text-to-image model: one line naming the option, no row
    assert _bench(tmp_path / "a", tiny_model_dir, methods="p2p", n=1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --t2i-model") and "text-to-image" in err[0], err
    assert not (tmp_path / "a" / "samples.jsonl").exists()
    # --p2p-steps below 1: a usage error before any model loads
    assert _bench(tmp_path / "b", tmp_path / "missing", "--p2p-steps", "0", methods="p2p", n=1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--p2p-steps 0" in err[0], err
    # a missing folder: one line too
    assert _bench(tmp_path / "c", tmp_path / "missing", methods="p2p", n=1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing" in err[0], err
