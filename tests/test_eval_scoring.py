"""Scoring choices that decide whether numbers sit beside the published ones:
PIE-Bench's structure-distance resize (torchvision 0.13.1: no antialias) and
captions longer than CLIP's 77 tokens (per benchmark, warned per sample)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchmetrics")  # the eval extra
pytest.importorskip("transformers")

from lime_edit import cli as lime_cli  # noqa: E402
from lime_edit.eval import extractors as ex  # noqa: E402
from lime_edit.eval.runner import RowStore  # noqa: E402
from lime_edit.eval.testing import (save_tiny_backbones, write_magicbrush_fixture,  # noqa: E402
                                    write_piebench_fixture)

# ImageNet statistics, written out here rather than imported
MEAN = np.array([0.485, 0.456, 0.406], np.float64)
STD = np.array([0.229, 0.224, 0.225], np.float64)
LONG = "a red car with a blue hat and a green ball " * 12          # far over 77 tokens
LONG_OTHER = "the white cat on the black tree to the left " * 12


def bilinear_no_antialias(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Plain bilinear resampling of ``(C, H, W)`` with half-pixel centres: for each
    output pixel, source coordinate ``(i + 0.5) * in / out - 0.5`` clamped at 0, the
    two nearest source pixels weighted linearly (edge pixel repeated). No prefilter."""
    c, h, w = img.shape

    def taps(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = taps(h, out_h)
    x0, x1, fx = taps(w, out_w)
    img = img.astype(np.float64)
    rows = img[:, y0, :] * (1 - fy)[None, :, None] + img[:, y1, :] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx)[None, None, :] + rows[:, :, x1] * fx[None, None, :]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    return {k: str(v) for k, v in save_tiny_backbones(tmp_path_factory.mktemp("bb")).items()}


@pytest.fixture(scope="module")
def clip(backbones):
    return ex.ClipEncoder.load(backbones["clip"], local_files_only=True)


def read_json(p):
    return json.loads(Path(p).read_text())


# --------------------------------------------------------------------------- structure resize
@pytest.mark.parametrize("hw, expected", [((40, 64), (32, 51)), ((64, 40), (51, 32)), ((48, 48), (32, 32)),
                                          ((20, 100), (13, 69))])   # last: long side capped at max_size
def test_structure_resize_default_is_plain_bilinear_without_antialias(hw, expected):
    rng = np.random.default_rng(sum(hw))
    img = rng.uniform(0, 255, (3, *hw)).astype(np.float32)      # noisy: antialias would change it a lot
    out = ex.structure_resize(torch.from_numpy(img), 32, max_size=69)
    assert tuple(out.shape[1:]) == expected
    assert np.allclose(out.numpy(), bilinear_no_antialias(img, *expected), atol=2e-3)
    smoothed = ex.structure_resize(torch.from_numpy(img), 32, max_size=69, antialias=True)
    assert np.abs(smoothed.numpy() - out.numpy()).mean() > 5     # the option really is different


def test_structure_resize_antialias_option_is_pils_bilinear_filter_and_same_size_is_untouched():
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, (3, 50, 80)).astype(np.float32)
    out = ex.structure_resize(torch.from_numpy(img), 32, max_size=69, antialias=True)
    # Pillow's BILINEAR on float images widens the triangle filter when shrinking (antialias)
    pil = np.stack([np.asarray(Image.fromarray(ch, mode="F").resize((51, 32), Image.Resampling.BILINEAR))
                    for ch in img])
    assert np.allclose(out.numpy(), pil, atol=1e-2)
    same = torch.from_numpy(rng.uniform(0, 255, (3, 32, 40)).astype(np.float32))
    assert ex.structure_resize(same, 32, max_size=69) is same        # torchvision returns the input
    with pytest.raises(ValueError):
        ex.structure_resize(same, 32, max_size=32)


def test_dino_key_encoder_preprocess_pins_the_pie_bench_transform(backbones):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (48, 72, 3), dtype=np.uint8)
    enc = ex.DinoKeyEncoder.load(backbones["dino_structure"], local_files_only=True)
    assert enc.antialias is False
    # their transform: pixels in [0, 255] (not /255), Resize(224 -> 32 here) bilinear, ImageNet mean/std
    resized = bilinear_no_antialias(image.transpose(2, 0, 1).astype(np.float32), 32, 48)
    expected = (resized - MEAN[:, None, None]) / STD[:, None, None]
    got = enc.preprocess(Image.fromarray(image)).numpy()
    assert got.shape == (3, 32, 48) and np.allclose(got, expected, atol=1e-2)
    aa = ex.DinoKeyEncoder.load(backbones["dino_structure"], local_files_only=True, antialias=True)
    assert aa.antialias is True and not np.allclose(aa.preprocess(image).numpy(), expected, atol=1.0)


# --------------------------------------------------------------------------- long captions
def test_short_caption_is_unchanged_and_not_warned(clip):
    text = "a red car and a dog"
    enc = clip.encode_text(text, long_text="keep_end")
    ids = clip.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = ex._first_tensor(clip.model.get_text_features(input_ids=ids))[0]
    assert enc.warning is None and enc.n_tokens == ids.shape[1]
    assert torch.allclose(enc.features, ref, atol=1e-6)
    assert torch.allclose(clip.encode_text(text, long_text="drop_end").features, ref, atol=1e-6)
    with pytest.raises(ValueError):
        clip.token_ids(text, long_text="middle")


def test_magicbrush_long_caption_keeps_the_end_token_like_clip_tokenize_truncate(clip):
    tok = clip.tokenizer
    full = tok(LONG)["input_ids"]
    assert len(full) > 77
    enc = clip.encode_text(LONG, long_text="keep_end")
    assert enc.n_tokens == len(full) and "clip.tokenize(truncate=True)" in enc.warning
    # clip.tokenize(truncate=True): tokens[:77], then tokens[76] = end token
    ids = full[:77]
    ids[76] = tok.eos_token_id
    assert clip.token_ids(LONG, "keep_end") == (ids, len(full))
    with torch.no_grad():   # transformers' own pooling of that sequence (at its end token)
        ref = ex._first_tensor(clip.model.get_text_features(input_ids=torch.tensor([ids])))[0]
    assert torch.allclose(enc.features, ref, atol=1e-6)


def test_piebench_long_caption_is_cut_like_torchmetrics_clipscore(clip):
    tok = clip.tokenizer
    full = tok(LONG)["input_ids"]
    enc = clip.encode_text(LONG, long_text="drop_end")
    assert "torchmetrics" in enc.warning and enc.n_tokens == len(full)
    assert clip.token_ids(LONG, "drop_end") == (full[:77], len(full))   # end token dropped
    # the highest id left is the start token (position 0): pooled there, after the final layer norm
    with torch.no_grad():
        hidden = clip.model.text_model(input_ids=torch.tensor([full[:77]])).last_hidden_state
        ref = clip.model.text_projection(hidden[0, 0])
    assert torch.allclose(enc.features, ref, atol=1e-6)
    # hence the same embedding for every over-long prompt (what their numbers got)
    assert torch.allclose(clip.encode_text(LONG_OTHER, "drop_end").features, enc.features, atol=1e-6)
    assert not torch.allclose(clip.encode_text(LONG, "keep_end").features, enc.features, atol=1e-3)


def test_piebench_long_caption_equals_installed_torchmetrics_text_path(clip):
    tm = pytest.importorskip("torchmetrics.functional.multimodal.clip_score")
    if not hasattr(tm, "_get_features"):
        pytest.skip("torchmetrics without _get_features (< 1.7)")
    with pytest.warns(UserWarning, match="longer than"):
        theirs = tm._get_features([LONG], "text", torch.device("cpu"), clip.model, clip.tokenizer)
    theirs = ex._first_tensor(theirs)[0].detach()
    assert torch.allclose(clip.encode_text(LONG, "drop_end").features, theirs, atol=1e-6)


# --------------------------------------------------------------------------- through `lime-edit score`
def test_score_warns_once_per_long_caption_sample_and_records_it(tmp_path, backbones, capsys):
    mb = write_magicbrush_fixture(tmp_path / "mb")
    local = read_json(mb / "test/local_descriptions.json")
    local["303"]["303-output2.png"] = LONG
    (mb / "test/local_descriptions.json").write_text(json.dumps(local))
    out = tmp_path / "mb-out"
    for d in (mb / "test/images").iterdir():
        (out / d.name).mkdir(parents=True)
        for k, p in enumerate(sorted(d.glob("*-output*.png")), 1):
            shutil.copy(p, out / d.name / (f"{d.name}_1.png" if k == 1 else f"{d.name}_inde_{k}.png"))
    args = ["score", "magicbrush", "--data", str(mb), "--outputs", str(out), "--metrics", "clip_t",
            "--clip-model", backbones["clip"], "--local-files-only", "-q"]
    assert lime_cli.main(args) == 0
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("warning:")] == [
        ln for ln in err.splitlines() if ln.startswith("warning: 303/2: CLIP-T: local description of 303-output2")]
    assert err.count("warning: 303/2:") == 1
    scores = out / "scores/magicbrush"
    rows = RowStore(scores / "rows")
    assert "clip.tokenize(truncate=True)" in rows.get("303/2")["warnings"]["clip_t"]
    assert "warnings" not in rows.get("303/1")
    rep = read_json(scores / "report.json")
    assert [w["sample"] for w in rep["warnings"]] == ["303/2"] and rep["n"] == 6
    assert "303-output2" in [ln for ln in (scores / "rows.csv").read_text().splitlines()
                             if ln.startswith("303/2,")][0]
    assert lime_cli.main(args) == 0                      # resumed: nothing recomputed, nothing re-printed
    assert "warning:" not in capsys.readouterr().err
    assert read_json(scores / "report.json") == rep
    assert lime_cli.main(args[:-1]) == 0                 # the table says so too
    assert "1 sample(s) scored with warnings" in capsys.readouterr().out


def test_score_piebench_long_prompt_warns_once_and_structure_resize_is_recorded(tmp_path, backbones, capsys):
    pie = write_piebench_fixture(tmp_path / "pie", n=2, size=64)
    mapping = read_json(pie / "mapping_file.json")
    long_key, short_key = sorted(mapping)
    mapping[long_key]["editing_prompt"] = "[" + LONG + "]"
    (pie / "mapping_file.json").write_text(json.dumps(mapping))
    out = tmp_path / "pie-out"
    for p in (pie / "annotation_images").rglob("*.jpg"):
        q = out / "annotation_images" / p.relative_to(pie / "annotation_images")
        q.parent.mkdir(parents=True, exist_ok=True)
        a = np.asarray(Image.open(p)).astype(np.int16)
        Image.fromarray(np.clip(a[:, ::-1] + 9, 0, 255).astype(np.uint8)).save(q.with_suffix(".png"))
    args = ["score", "piebench", "--data", str(pie), "--outputs", str(out), "-q", "--local-files-only",
            "--metrics", "structure_distance,clip_whole,clip_edited",
            "--clip-large-model", backbones["clip_large"], "--dino-structure-model", backbones["dino_structure"]]
    assert lime_cli.main(args) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"warning: {long_key}: CLIP score: editing prompt" in err
    scores = out / "scores/piebench"
    rows = RowStore(scores / "rows")
    row = rows.get(long_key)
    assert set(row["warnings"]) == {"clip_whole", "clip_edited"} and "torchmetrics" in row["warnings"]["clip_whole"]
    rep = read_json(scores / "report.json")
    assert [w["sample"] for w in rep["warnings"]] == [long_key]
    assert rep["structure_resize"]["antialias"] is False and "0.13.1" in rep["structure_resize"]["as"]
    plain = {k: rows.get(k)["metrics"]["structure_distance"] for k in mapping}
    assert all(v > 0 for v in plain.values())
    # the option: rows made with the other resize are recomputed and the report says which
    assert lime_cli.main(args + ["--structure-antialias"]) == 0
    assert "warning:" not in capsys.readouterr().err           # CLIP rows were reused
    rep2 = read_json(scores / "report.json")
    assert rep2["structure_resize"]["antialias"] is True and ">= 0.17" in rep2["structure_resize"]["as"]
    smooth = {k: rows.get(k)["metrics"]["structure_distance"] for k in mapping}
    assert all(not math.isclose(smooth[k], plain[k], rel_tol=1e-6) for k in mapping)
    assert rep2["metrics"]["clip_whole"] == rep["metrics"]["clip_whole"] and rep2["warnings"] == rep["warnings"]
    # a row written before the long-caption rule was recorded (older lime-edit) is rescored
    old = rows.get(long_key)
    old["models"] = {k: v.split(" | ")[0] for k, v in old["models"].items()}
    del old["warnings"]
    rows.put(long_key, old)
    assert lime_cli.main(args + ["--structure-antialias"]) == 0
    assert capsys.readouterr().err.count(f"warning: {long_key}: CLIP score") == 1
    assert read_json(scores / "report.json") == rep2
    assert lime_cli.main(args[:4] + ["--outputs", str(out), "-q", "--metrics", "mse"]) == 0
    assert "structure_resize" not in read_json(scores / "report.json")   # only said when it was used
    assert lime_cli.main(["score", "magicbrush", "--data", str(pie), "--outputs", str(out),
                          "--structure-antialias"]) == 2
    assert "--structure-antialias applies to piebench only" in capsys.readouterr().err


def test_an_empty_metrics_list_is_refused_and_none_means_all():
    from lime_edit.errors import LimeEditError
    from lime_edit.eval.score import METRICS, parse_metrics

    assert parse_metrics("magicbrush", None) == list(METRICS["magicbrush"])
    for text in ("", " , "):
        with pytest.raises(LimeEditError, match=r"^--metrics .*: no metric named"):
            parse_metrics("magicbrush", text)


@pytest.mark.parametrize("where", ["report", "outputs", "scores_dir"])
def test_score_never_writes_into_the_dataset(tmp_path, capsys, where):
    pie = write_piebench_fixture(tmp_path / "pie", n=2, size=64)
    before = (pie / "mapping_file.json").read_bytes()
    out = tmp_path / "run"
    out.mkdir()
    args = ["score", "piebench", "--data", str(pie), "--outputs", str(pie if where == "outputs" else out), "-q",
            "--local-files-only", "--metrics", "psnr"]
    if where == "report":
        args += ["--report", str(pie / "mapping_file.json")]
    if where == "scores_dir":
        args += ["--scores-dir", str(pie / "scores")]
    flag = {"report": "--report", "outputs": "--outputs", "scores_dir": "--scores-dir"}[where]
    assert lime_cli.main(args) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {flag} ")
    assert (pie / "mapping_file.json").read_bytes() == before and not (pie / "scores").exists()


def test_a_key_of_unicode_digits_sorts_without_crashing():
    from lime_edit.eval.datasets import _natural_key

    assert sorted(["10", "²", "9"], key=_natural_key) == ["9", "10", "²"]


def test_a_rescore_recomputes_a_row_whose_image_changed_or_went(tmp_path, capsys):
    pie = write_piebench_fixture(tmp_path / "pie", n=2, size=64)
    out = tmp_path / "run"
    edited = []
    for p in sorted((pie / "annotation_images").rglob("*.jpg")):
        q = (out / "annotation_images" / p.relative_to(pie / "annotation_images")).with_suffix(".png")
        q.parent.mkdir(parents=True, exist_ok=True)
        Image.open(p).save(q)
        edited.append(q)
    args = ["score", "piebench", "--data", str(pie), "--outputs", str(out), "-q", "--local-files-only",
            "--metrics", "psnr"]
    assert lime_cli.main(args) == 0
    rows = RowStore(out / "scores/piebench/rows")
    key = sorted(read_json(pie / "mapping_file.json"))[0]
    first = rows.get(key)["metrics"]["psnr"]
    Image.new("RGB", (64, 64), (255, 0, 0)).save(edited[0])          # the run's image is replaced
    os.utime(edited[0], ns=(1, 1))                                   # whatever the clock's resolution
    assert lime_cli.main(args) == 0
    assert rows.get(key)["metrics"]["psnr"] != first
    edited[0].unlink()                                               # and then removed
    assert lime_cli.main(args) == 1
    assert rows.get(key)["error"] is not None
