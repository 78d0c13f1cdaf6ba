"""The ``lime-edit`` CLI: bad-input handling of issue 2 and end-to-end runs.

Most behaviour (batches with bad files, --overwrite, interrupts, overrides,
exit codes) is checked with a fake pipeline in milliseconds; the end-to-end
tests at the bottom load a tiny model saved with ``save_pretrained`` through
the real loading path (once per session) and run 2 inference steps on 64x64
images.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from lime_edit import cli
from lime_edit import io as lio
from lime_edit.config import LimeConfig
from lime_edit.errors import LimeEditError, ModelLoadError
from lime_edit.results import EditResult, Localization


# --------------------------------------------------------------------------- helpers
def _img(w=64, h=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _no_temp_files(folder: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in folder.iterdir())


class FakeLime:
    """Stands in for LimePipeline: same call signature, instant results."""

    grid = (16, 16)

    def __init__(self, fail_on=(), interrupt_on=()):
        self.config = LimeConfig()
        self.pipe = None
        self.calls: list[dict] = []
        self.fail_on, self.interrupt_on = set(fail_on), set(interrupt_on)
        self.attempts = 0

    def _check(self, image, instruction):
        if not instruction.strip():
            raise LimeEditError("instruction: empty instruction")
        n, self.attempts = self.attempts, self.attempts + 1
        if n in self.interrupt_on:
            raise KeyboardInterrupt
        if n in self.fail_on:
            raise RuntimeError("simulated failure\nsecond line")

    def _loc(self, image) -> Localization:
        seg = torch.zeros(self.grid, dtype=torch.int64)
        seg[:, 8:] = 1
        maps = torch.rand((2,) + self.grid, generator=torch.Generator().manual_seed(0))
        return Localization(mask=seg == 1, segments=seg, attention=maps.mean(0), token_maps=maps,
                            token_indices=[3, 4], tokens=["red", "car"],
                            points=torch.zeros(3, 2, dtype=torch.int64), selected_segments=[1],
                            image_size=image.size)

    def localize(self, image, instruction, seed=0, **overrides):
        self._check(image, instruction)
        self.calls.append(dict(kind="localize", size=image.size, mode=image.mode, instruction=instruction,
                               seed=seed, overrides=overrides))
        return self._loc(image)

    def edit(self, image, instruction, mask="auto", seed=0, **overrides):
        self._check(image, instruction)
        self.calls.append(dict(kind="edit", size=image.size, mode=image.mode, instruction=instruction,
                               seed=seed, overrides=overrides, mask=mask))
        cfg = self.config.replace(**overrides)
        warnings, loc, grid_mask = [], None, None
        if isinstance(mask, str):
            loc = self._loc(image)
            grid_mask = loc.mask
        elif mask is not None:
            grid_mask = torch.nn.functional.interpolate(mask[None, None].float(), size=self.grid)[0, 0] > 0.5
            if not grid_mask.any():
                warnings.append("mask is empty: LIME skipped, plain IP2P result")
                grid_mask = None
            elif grid_mask.all():
                warnings.append("mask covers the whole image: every pixel is regularized")
        return EditResult(image=ImageOps.invert(image.convert("RGB")), mask=grid_mask, localization=loc,
                          lime_applied=grid_mask is not None, seed=seed, warnings=warnings,
                          timings={"localize": 0.01, "edit": 0.02, "total": 0.03, "batch_size": 1},
                          settings=cfg.to_dict())


@pytest.fixture
def fake(monkeypatch):
    """Replace model loading by a FakeLime; ``fake.loads`` counts loads."""
    lime = FakeLime()
    lime.loads = 0

    def load(args):
        lime.loads += 1
        return lime

    monkeypatch.setattr(cli, "_load_pipeline", load)
    return lime


@pytest.fixture
def imgs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _img(64, 64, 0).save(d / "a.png")
    _img(70, 45, 1).save(d / "b.jpg")
    return d


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


# --------------------------------------------------------------------------- parser basics
def test_help_version_and_usage_errors(capsys):
    assert cli.main(["--help"]) == 0
    assert cli.main(["edit", "--help"]) == 0
    assert cli.main(["--version"]) == 0
    assert cli.main([]) == 2
    assert cli.main(["edit", "x.png"]) == 2          # -i missing
    assert cli.main(["nonsense"]) == 2
    assert cli.main(["edit", "x.png", "-i", "a", "--clustering", "dbscan"]) == 2
    capsys.readouterr()


# --------------------------------------------------------------------------- batches with bad files
def test_batch_reports_bad_inputs_and_processes_the_rest(tmp_path, imgs, fake, capsys):
    (imgs / "notes.txt").write_text("not an image")          # skipped when the folder is expanded
    (imgs / "fake.png").write_text("not an image either")    # picked up by extension, fails to read
    full = (imgs / "a.png").read_bytes()
    (imgs / "cut.png").write_bytes(full[: len(full) // 2])   # truncated
    out = tmp_path / "out"
    code, stdout, err = run(["edit", imgs, tmp_path / "missing.png", imgs / "notes.txt", "-i", "make it red",
                             "--out", out], capsys)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4, err
    for name, what in [("missing.png", "no such file"), ("notes.txt", "not an image"),
                       ("fake.png", "not an image"), ("cut.png", "cannot read image")]:
        assert any(name in line and what in line for line in errors), (name, err)
    assert _outputs(out) == sorted(f"{s}{suf}" for s in ("a", "b") for suf in
                                   ("_edited.png", "_mask.png", "_overlay.png", "_segments.png", ".json"))
    assert stdout.split() == [str(out / "a_edited.png"), str(out / "b_edited.png")]
    assert fake.loads == 1 and len(fake.calls) == 2


def test_every_input_mode_reaches_the_pipeline_as_rgb_at_its_size(tmp_path, fake, capsys):
    d = tmp_path / "modes"
    d.mkdir()
    base = _img(61, 37)
    rgba = base.copy()
    rgba.putalpha(128)
    rgba.save(d / "rgba.png")
    base.convert("LA").save(d / "la.png")
    base.convert("P").save(d / "p.png")
    base.convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).save(d / "grey16.png")
    base.convert("L").save(d / "grey.png")
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise for display
    base.save(d / "rotated.jpg", exif=exif)
    out = tmp_path / "out"
    code, _, err = run(["edit", d, "-i", "make the car red", "--out", out], capsys)
    assert code == 0, err
    assert all(c["mode"] == "RGB" for c in fake.calls)
    sizes = {json.loads((out / f"{s}.json").read_text())["input"]: c["size"]
             for s, c in zip(["cmyk", "grey", "grey16", "la", "p", "rgba", "rotated"], fake.calls)}
    assert sizes[str(d / "rotated.jpg")] == (37, 61)
    assert all(v == (61, 37) for k, v in sizes.items() if "rotated" not in k)
    assert Image.open(out / "rotated_edited.png").size == (37, 61)
    assert Image.open(out / "rotated_mask.png").size == (37, 61)
    assert Image.open(out / "rgba_edited.png").mode == "RGB"


def test_pixel_limit_is_a_per_input_error(tmp_path, imgs, fake, capsys):
    code, _, err = run(["edit", imgs / "a.png", imgs / "b.jpg", "-i", "x y", "--max-pixels", 3200,
                        "--out", tmp_path / "out"], capsys)
    assert code == 1
    assert "a.png: 64x64 = 4096 pixels is above the limit of 3200" in err
    assert (tmp_path / "out" / "b_edited.png").exists() and not (tmp_path / "out" / "a_edited.png").exists()


@pytest.mark.parametrize("instruction", ["", "   ", "\t\n"])
def test_empty_instruction_is_a_usage_error(tmp_path, imgs, fake, capsys, instruction):
    code, _, err = run(["edit", imgs / "a.png", "-i", instruction, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "instruction is empty" in err and len(err.strip().splitlines()) == 1
    assert fake.loads == 0


def test_instructions_one_for_all_or_one_per_input(tmp_path, imgs, fake, capsys):
    out = tmp_path / "out"
    code, _, _ = run(["edit", imgs, "-i", "make the dog red", "-i", "make the car blue", "--out", out], capsys)
    assert code == 0
    assert json.loads((out / "a.json").read_text())["instruction"] == "make the dog red"
    assert json.loads((out / "b.json").read_text())["instruction"] == "make the car blue"
    code, _, err = run(["edit", imgs, "-i", "1", "-i", "2", "-i", "3", "--out", out, "--overwrite"], capsys)
    assert code == 2 and "3 instructions for 2 input" in err


def test_no_inputs_is_a_usage_error(tmp_path, fake, capsys):
    code, _, err = run(["edit", tmp_path / "nope*.png", "-i", "x", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "no image file matches" in err and fake.loads == 0


# --------------------------------------------------------------------------- existing outputs
def test_existing_outputs_need_overwrite(tmp_path, imgs, fake, capsys):
    out = tmp_path / "out"
    assert run(["edit", imgs / "a.png", "-i", "x y", "--out", out], capsys)[0] == 0
    before = {n: (out / n).read_bytes() for n in _outputs(out)}
    # checked before any model work: nothing loaded, nothing touched
    code, _, err = run(["edit", imgs / "a.png", "-i", "other", "--out", out], capsys)
    assert code == 1 and "--overwrite" in err and "a.png" in err
    assert fake.loads == 1
    assert {n: (out / n).read_bytes() for n in _outputs(out)} == before
    # mixed batch: the new input is still processed
    code, _, err = run(["edit", imgs, "-i", "other", "--out", out], capsys)
    assert code == 1 and (out / "b_edited.png").exists()
    assert (out / "a.json").read_bytes() == before["a.json"]
    code, _, _ = run(["edit", imgs, "-i", "other", "--out", out, "--overwrite"], capsys)
    assert code == 0 and json.loads((out / "a.json").read_text())["instruction"] == "other"


def test_outputs_never_replace_an_input_or_mask_of_the_run(tmp_path, fake, capsys):
    """photo.png edited into its own folder next to the user's photo_mask.png (given as
    --mask), or photo_edited.png given as a second input: the outputs would replace files
    the run reads. Refused per input, even with --overwrite; the rest of the batch goes on."""
    d = tmp_path / "proj"
    d.mkdir()
    _img(32, 32, 0).save(d / "photo.png")
    m = Image.new("L", (32, 32), 0)
    m.paste(255, (8, 8, 24, 24))
    m.save(d / "photo_mask.png")
    mask_bytes = (d / "photo_mask.png").read_bytes()
    for extra in ([], ["--overwrite"]):
        code, _, err = run(["edit", d / "photo.png", "-i", "make it red", "--mask", d / "photo_mask.png",
                            "--out", d, *extra], capsys)
        assert code == 1 and "photo_mask.png would replace an input or mask of this run" in err, err
        assert (d / "photo_mask.png").read_bytes() == mask_bytes and not (d / "photo_edited.png").exists()
    assert fake.loads == 0
    # photo_edited.png as an input beside photo.png: photo.png is refused, the other one is edited
    _img(32, 32, 1).save(d / "photo_edited.png")
    before = (d / "photo_edited.png").read_bytes()
    code, _, err = run(["edit", d / "photo.png", d / "photo_edited.png", "-i", "make it red", "--no-lime",
                        "--out", d, "--overwrite"], capsys)
    assert code == 1 and err.count("would replace an input") == 1 and "photo.png" in err
    assert (d / "photo_edited.png").read_bytes() == before and (d / "photo_edited_edited.png").is_file()


def _pending(record_path: Path, **names) -> None:
    """What an interrupted publish leaves at the record's place: the new set's record marked pending."""
    rec = json.loads(record_path.read_text()) if record_path.exists() else {
        "lime_edit_version": "x", "outputs": names, "heatmaps": [], "request": {}}
    record_path.write_text(json.dumps({**rec, "pending": True}))


def test_files_named_like_outputs_without_a_record_are_never_replaced_unasked(tmp_path, imgs, fake, capsys):
    # a file named like an output with no lime-edit record is not lime-edit's (an interrupted
    # run leaves a pending record): refused without --overwrite; with it, the input is redone
    # and the stale heatmap removed, while files that may belong to another input's complete
    # set are left alone
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_attn_00_old.png").write_bytes(b"old")
    (out / "a_mask.png").write_bytes(b"the user's")
    (out / "a_attn_00_x_edited.png").write_bytes(b"other input's")
    (out / "a_attn_00_x.json").write_text("{}")
    code, _, err = run(["localize", imgs / "a.png", "-i", "x y", "--out", out, "--explain"], capsys)
    assert code == 1 and "with no lime-edit record" in err and "--overwrite" in err and fake.loads == 0
    assert (out / "a_mask.png").read_bytes() == b"the user's" and (out / "a_attn_00_old.png").read_bytes() == b"old"
    code, _, err = run(["localize", imgs / "a.png", "-i", "x y", "--out", out, "--explain", "--overwrite"], capsys)
    assert code == 0 and fake.loads == 1
    rec = json.loads((out / "a.json").read_text())
    assert [h["file"] for h in rec["heatmaps"]] == ["a_attn_00_red.png", "a_attn_01_car.png"]
    assert not (out / "a_attn_00_old.png").exists()
    assert (out / "a_attn_00_x_edited.png").read_bytes() == b"other input's"


def test_rerun_after_an_interruption_skips_finished_inputs_and_redoes_the_rest(tmp_path, imgs, fake, capsys):
    _img(40, 40, 2).save(imgs / "c.png")
    out = tmp_path / "out"
    cmd = ["edit", imgs, "-i", "make the car red", "--out", out]
    code, stdout, _ = run(cmd, capsys)
    assert code == 0 and len(stdout.splitlines()) == 3
    finished = {n: ((out / n).read_bytes(), (out / n).stat().st_mtime_ns) for n in _outputs(out) if n[0] == "a"}
    # as an interruption leaves it: b's files with its record still pending, c's record
    # pending and its edited picture only (renamed before the interruption)
    _pending(out / "b.json")
    for n in _outputs(out):
        if n.startswith("c"):
            (out / n).unlink()
    _pending(out / "c.json", edited="c_edited.png")
    (out / "c_edited.png").write_bytes(b"partial")
    n_calls = len(fake.calls)
    code, stdout, err = run(cmd, capsys)
    assert code == 0, err
    assert "skipped: " in err and "a.png" in err and "--overwrite" in err
    assert err.count("redoing") == 2 and "error" not in err
    assert len(fake.calls) == n_calls + 2 and {c["size"] for c in fake.calls[n_calls:]} == {(70, 45), (40, 40)}
    assert {n: ((out / n).read_bytes(), (out / n).stat().st_mtime_ns) for n in finished} == finished
    assert json.loads((out / "c.json").read_text())["outputs"]["edited"] == "c_edited.png"
    assert Image.open(out / "c_edited.png").size == (40, 40)  # the partial file was replaced
    assert sorted(Path(p).name for p in stdout.split()) == ["a_edited.png", "b_edited.png", "c_edited.png"]
    assert _no_temp_files(out)
    # everything done: nothing loaded, exit 0
    loads = fake.loads
    code, _, err = run(cmd, capsys)
    assert code == 0 and fake.loads == loads and err.count("skipped: ") == 3
    # a record whose files are not all there is redone too
    (out / "a_mask.png").unlink()
    code, _, err = run(cmd, capsys)
    assert code == 0 and "a_mask.png is missing" in err and (out / "a_mask.png").is_file()
    # another request (seed) is not "done": refused as before; --overwrite redoes everything
    code, _, err = run(cmd + ["--seed", "3"], capsys)
    assert code == 1 and err.count("output exists") == 3 and "seed" in err
    n_calls = len(fake.calls)
    code, _, err = run(cmd + ["--seed", "3", "--overwrite"], capsys)
    assert code == 0 and len(fake.calls) == n_calls + 3 and "skipped" not in err
    assert json.loads((out / "a.json").read_text())["seed"] == 3


def _stop_renames_after(monkeypatch, n: int):
    """Interrupt (as Ctrl-C) the publish of outputs at its rename number ``n + 1``; returns the
    destinations renamed before, and a function that restores renaming."""
    real, renamed = lio.os.replace, []

    def stop(src, dst):
        if len(renamed) == n:
            raise KeyboardInterrupt
        renamed.append(dst)
        return real(src, dst)

    monkeypatch.setattr(lio.os, "replace", stop)
    return renamed, lambda: monkeypatch.setattr(lio.os, "replace", real)


def test_interrupted_publish_never_leaves_a_complete_looking_mix(tmp_path, imgs, fake, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(["edit", imgs / "a.png", "-i", "x y", "--out", out], capsys)[0] == 0
    old_inode = (out / "a_edited.png").stat().st_ino
    renamed, restore = _stop_renames_after(monkeypatch, 2)
    code, _, _ = run(["edit", imgs / "a.png", "-i", "other", "--out", out, "--overwrite"], capsys)
    restore()
    assert code == 130 and len(renamed) == 2
    # the pending record and one new file are in place next to old ones: the set is incomplete
    assert json.loads((out / "a.json").read_text())["pending"] is True
    assert (out / "a_edited.png").stat().st_ino != old_inode
    assert _no_temp_files(out)
    code, _, err = run(["edit", imgs / "a.png", "-i", "other", "--out", out], capsys)
    assert code == 0 and "redoing" in err
    rec = json.loads((out / "a.json").read_text())
    assert rec["instruction"] == "other" and all((out / n).is_file() for n in rec["outputs"].values())


def test_replaced_set_drops_files_the_new_record_does_not_name(tmp_path, imgs, fake, capsys):
    out = tmp_path / "out"
    assert run(["edit", imgs / "a.png", "-i", "x y", "--out", out, "--explain"], capsys)[0] == 0
    assert (out / "a_attn_00_red.png").is_file() and (out / "a_segments.png").is_file()
    code, _, _ = run(["edit", imgs / "a.png", "-i", "x y", "--out", out, "--no-lime", "--overwrite"], capsys)
    assert code == 0 and _outputs(out) == ["a.json", "a_edited.png"]


def test_output_folder_that_is_a_file(tmp_path, imgs, fake, capsys):
    (tmp_path / "out").write_text("x")
    code, _, err = run(["edit", imgs, "-i", "x", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "not a folder" in err


def test_same_stem_inputs_do_not_collide(tmp_path, fake, capsys):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        _img(32, 32).save(tmp_path / sub / "photo.png")
    code, _, _ = run(["edit", tmp_path / "x" / "photo.png", tmp_path / "y" / "photo.png", "-i", "a b",
                      "--out", tmp_path / "out"], capsys)
    assert code == 0
    assert (tmp_path / "out" / "photo-2_edited.png").exists()
    assert json.loads((tmp_path / "out" / "photo-2.json").read_text())["input"].endswith("y/photo.png")


# --------------------------------------------------------------------------- masks
def test_user_masks_any_size_empty_full(tmp_path, imgs, fake, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    m = Image.new("L", (20, 40), 0)          # other size and other aspect ratio
    m.paste(255, (0, 0, 10, 40))
    m.save(masks / "half.png")
    Image.new("L", (64, 64), 0).save(masks / "empty.png")
    Image.new("L", (8, 8), 255).save(masks / "full.png")
    for name, expect in [("half", "stretched to fit"), ("empty", "mask is empty"), ("full", "whole image")]:
        out = tmp_path / f"out-{name}"
        code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "--mask", masks / f"{name}.png",
                            "--out", out], capsys)
        assert code == 0, err
        rec = json.loads((out / "a.json").read_text())
        assert any(expect in w for w in rec["warnings"]), rec["warnings"]
        assert expect in err
        assert rec["mask_source"]["kind"] == "file"
        assert "a_segments.png" not in _outputs(out)
        assert torch.is_tensor(fake.calls[-1]["mask"])
    assert rec["lime_applied"] is True and Image.open(out / "a_mask.png").size == (64, 64)
    # one mask per input; a bad mask file is that input's error
    (masks / "bad.png").write_text("nope")
    code, _, err = run(["edit", imgs / "a.png", imgs / "b.jpg", "-i", "x y", "--mask", masks / "full.png",
                        "--mask", masks / "bad.png", "--out", tmp_path / "per"], capsys)
    assert code == 1 and "bad.png" in err and (tmp_path / "per" / "a_edited.png").exists()
    # a single bad mask for everything: usage error before the model is loaded
    loads = fake.loads
    code, _, err = run(["edit", imgs, "-i", "x y", "--mask", masks / "bad.png", "--out", tmp_path / "o2"], capsys)
    assert code == 2 and "bad.png" in err and fake.loads == loads


def test_no_lime_and_explain_conflicts(tmp_path, imgs, fake, capsys):
    out = tmp_path / "out"
    code, _, _ = run(["edit", imgs / "a.png", "-i", "x y", "--no-lime", "--out", out], capsys)
    assert code == 0 and _outputs(out) == ["a.json", "a_edited.png"]
    assert fake.calls[-1]["mask"] is None
    assert json.loads((out / "a.json").read_text())["lime_applied"] is False
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "--no-lime", "--explain", "--out", out], capsys)
    assert code == 2 and "--explain" in err
    assert cli.main(["edit", "a.png", "-i", "x", "--no-lime", "--mask", "m.png"]) == 2
    capsys.readouterr()


# --------------------------------------------------------------------------- settings
def test_only_user_set_settings_are_forwarded(tmp_path, imgs, fake, capsys):
    out = tmp_path / "out"
    assert run(["edit", imgs / "a.png", "-i", "x y", "--out", out], capsys)[0] == 0
    assert fake.calls[-1]["overrides"] == {} and fake.calls[-1]["seed"] == 0
    assert run(["edit", imgs / "a.png", "-i", "x y", "--out", out, "--overwrite", "--steps", 3, "--seed", 7,
                "--guidance", 7.5, "--image-guidance", 1.2, "--mode", "reward", "--clusters", 4,
                "--clustering", "agglomerative", "--distance-threshold", 0.6, "--top-k", 5,
                "--schedule", "single-pass", "--fast", "--capture-at", 0.5, "--no-drop-verbs",
                "--feature-levels", "2,4", "--set", "kmeans_iters=7", "--set", "localization_steps=none"],
               capsys)[0] == 0
    assert fake.calls[-1]["seed"] == 7
    assert fake.calls[-1]["overrides"] == dict(
        num_inference_steps=3, guidance_scale=7.5, image_guidance_scale=1.2, mode="reward", num_clusters=4,
        clustering="agglomerative", distance_threshold=0.6, top_k=5, schedule="single_pass",
        localization_steps=None, capture_at=0.5, drop_verbs=False, feature_levels=(2, 4), kmeans_iters=7)
    rec = json.loads((out / "a.json").read_text())
    assert rec["seed"] == 7 and rec["settings"]["num_clusters"] == 4 and rec["overrides"]["top_k"] == 5


@pytest.mark.parametrize("bad", [["--clusters", "0"], ["--capture-at", "1.5"], ["--set", "nope=1"],
                                 ["--set", "top_k=many"], ["--feature-levels", "-1"], ["--steps", "x"]])
def test_bad_settings_are_usage_errors(tmp_path, imgs, fake, capsys, bad):
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "--out", tmp_path / "o", *bad], capsys)
    assert code == 2 and fake.loads == 0 and err.strip()


# --------------------------------------------------------------------------- failures and interrupts
def test_model_errors_exit_2_with_one_line(tmp_path, imgs, monkeypatch, capsys):
    def load(args):
        raise ModelLoadError(f"{args.model}: no such file or folder")

    monkeypatch.setattr(cli, "_load_pipeline", load)
    code, _, err = run(["edit", imgs, "-i", "x y", "--model", "./missing-model", "--out", tmp_path / "o"],
                       capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "missing-model" in err


def test_unexpected_error_in_one_item_does_not_stop_the_batch(tmp_path, imgs, monkeypatch, capsys):
    lime = FakeLime(fail_on={0})
    monkeypatch.setattr(cli, "_load_pipeline", lambda args: lime)
    code, _, err = run(["edit", imgs, "-i", "x y", "--out", tmp_path / "out"], capsys)
    assert code == 1
    assert "error: " in err and "a.png: RuntimeError: simulated failure second line" in err
    assert (tmp_path / "out" / "b_edited.png").exists() and not (tmp_path / "out" / "a.json").exists()


def test_interrupt_mid_batch_leaves_no_partial_outputs(tmp_path, imgs, monkeypatch, capsys):
    lime = FakeLime(interrupt_on={1})
    monkeypatch.setattr(cli, "_load_pipeline", lambda args: lime)
    out = tmp_path / "out"
    code, _, err = run(["edit", imgs, "-i", "x y", "--out", out], capsys)
    assert code == 130 and "interrupted" in err
    assert _outputs(out) == ["a.json", "a_edited.png", "a_mask.png", "a_overlay.png", "a_segments.png"]
    assert _no_temp_files(out)


def test_interrupt_while_writing_leaves_no_partial_outputs(tmp_path, imgs, fake, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_edited.png").write_bytes(b"previous run")
    real, n = lio._write_temp, []

    def crash_on_third(path, data):
        n.append(path)
        if len(n) == 3:
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(lio, "_write_temp", crash_on_third)
    code, _, _ = run(["edit", imgs / "a.png", "-i", "x y", "--out", out, "--overwrite"], capsys)
    assert code == 130
    assert _outputs(out) == ["a_edited.png"] and (out / "a_edited.png").read_bytes() == b"previous run"


def test_disk_error_while_writing_is_a_per_item_error(tmp_path, imgs, fake, monkeypatch, capsys):
    real = lio._write_temp

    def full_disk(path, data):
        if path.name.startswith("a"):
            raise OSError(28, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(lio, "_write_temp", full_disk)
    out = tmp_path / "out"
    code, _, err = run(["edit", imgs, "-i", "x y", "--out", out], capsys)
    assert code == 1 and "No space left on device" in err
    assert [n for n in _outputs(out) if n.startswith("a")] == [] and (out / "b.json").exists()


# --------------------------------------------------------------------------- records and pictures
def test_record_and_explain_outputs(tmp_path, imgs, fake, capsys):
    out = tmp_path / "out"
    code, _, _ = run(["edit", imgs / "b.jpg", "-i", "make the red car blue", "--explain", "--out", out,
                      "--model", "some/model"], capsys)
    assert code == 0
    assert _outputs(out) == ["b.json", "b_attn_00_red.png", "b_attn_01_car.png", "b_edited.png", "b_mask.png",
                             "b_overlay.png", "b_segments.png"]
    for name in _outputs(out):
        if name.endswith(".png"):
            assert Image.open(out / name).size == (70, 45), name
    rec = json.loads((out / "b.json").read_text())
    for key in ("lime_edit_version", "input", "input_size", "instruction", "model", "seed", "settings",
                "warnings", "timings", "lime_applied", "localization", "outputs", "versions"):
        assert key in rec, key
    assert rec["model"] == "some/model" and rec["input_size"] == [70, 45]
    assert rec["settings"] == LimeConfig().to_dict()
    assert rec["localization"]["tokens"] == ["red", "car"]
    assert [h["file"] for h in rec["heatmaps"]] == ["b_attn_00_red.png", "b_attn_01_car.png"]
    assert set(rec["outputs"].values()) <= set(_outputs(out))
    assert {"load_model", "read", "localize", "edit", "total", "write"} <= set(rec["timings"])


def test_localize_subcommand(tmp_path, imgs, fake, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(["localize", imgs, "-i", "the red car", "--out", out], capsys)
    assert code == 0 and [c["kind"] for c in fake.calls] == ["localize", "localize"]
    assert _outputs(out) == sorted(f"{s}{suf}" for s in ("a", "b")
                                   for suf in ("_mask.png", "_overlay.png", "_segments.png", ".json"))
    assert stdout.split()[0] == str(out / "a_mask.png")
    rec = json.loads((out / "a.json").read_text())
    assert rec["command"] == "localize" and rec["lime_applied"] is None and "localize" in rec["timings"]


# --------------------------------------------------------------------------- subcommand registry
def test_feature_subcommands_are_registered(monkeypatch, capsys):
    mod = types.ModuleType("lime_edit_testfeature_cli")

    def register(sub):
        p = sub.add_parser("hello")
        p.set_defaults(func=lambda args: 5)

    mod.register = register
    monkeypatch.setitem(sys.modules, "lime_edit_testfeature_cli", mod)
    monkeypatch.setattr(cli, "FEATURE_CLIS", ("lime_edit.not_there.cli", "lime_edit_testfeature_cli"))
    assert cli.main(["hello"]) == 5
    monkeypatch.setattr(cli, "FEATURE_CLIS", ("lime_edit.broken_feature.cli",))
    # a missing dependency *inside* a feature module is a real error, not "feature absent"
    monkeypatch.setattr(cli.importlib, "import_module",
                        lambda name: (_ for _ in ()).throw(ModuleNotFoundError("x", name="gradio")))
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser()
    capsys.readouterr()


# --------------------------------------------------------------------------- end to end (real model)
# ``tiny_model_dir`` (conftest.py): the tiny IP2P pipeline written with save_pretrained.
@pytest.fixture(scope="module")
def loaded_once():
    """Load each model folder once per module through the CLI's real loader."""
    cache: dict = {}
    real = cli._load_pipeline

    def load(args):
        key = (str(args.model), args.device, args.dtype)
        if key not in cache:
            cache[key] = real(args)
        return cache[key]

    return load


@pytest.fixture
def real_model(tiny_model_dir, loaded_once, monkeypatch):
    monkeypatch.setattr(cli, "_load_pipeline", loaded_once)
    return tiny_model_dir


FAST = ["--steps", "2", "--localization-steps", "1", "--seed", "3"]


def test_end_to_end_edit_batch(tmp_path, real_model, capsys):
    d = tmp_path / "in"
    d.mkdir()
    _img(64, 64, 0).save(d / "a.png")
    rgba = _img(70, 45, 1)
    rgba.putalpha(200)
    rgba.save(d / "b.png")                         # non-square, not a multiple of 8, RGBA
    (d / "c.png").write_text("not an image")       # a bad input in the batch
    out = tmp_path / "out"
    long = " ".join(["make the red car blue"] + ["please"] * 90)
    code, stdout, err = run(["edit", d, "-i", "make the red car blue", "-i", long, "-i", "x",
                             "--model", real_model, "--out", out, "--explain", *FAST], capsys)
    assert code == 1 and "c.png" in err
    assert len(stdout.split()) == 2
    a = json.loads((out / "a.json").read_text())
    assert a["lime_applied"] is True and a["seed"] == 3 and a["warnings"] == []
    assert a["settings"]["num_inference_steps"] == 2 and a["overrides"] == {
        "num_inference_steps": 2, "localization_steps": 1}
    assert a["localization"]["tokens"] and a["heatmaps"]
    for name in ("a_edited.png", "a_mask.png", "a_overlay.png", "a_segments.png", a["heatmaps"][0]["file"]):
        assert Image.open(out / name).size == (64, 64)
    b = json.loads((out / "b.json").read_text())
    assert any("truncated" in w for w in b["warnings"]), b["warnings"]
    edited = Image.open(out / "b_edited.png")
    assert edited.size == (70, 45) and edited.mode == "RGB"
    assert Image.open(out / "b_mask.png").size == (70, 45)
    assert b["localization"]["processed_size"] != [70, 45]  # processed at a multiple of 8, output at input size
    assert _no_temp_files(out)


def test_end_to_end_no_related_token_falls_back(tmp_path, real_model, capsys):
    _img(64, 64, 2).save(tmp_path / "a.png")
    out = tmp_path / "out"
    code, _, err = run(["edit", tmp_path / "a.png", "-i", "make it so", "--model", real_model, "--out", out,
                        *FAST], capsys)
    assert code == 0, err
    rec = json.loads((out / "a.json").read_text())
    assert rec["lime_applied"] is False and any("plain IP2P" in w for w in rec["warnings"])
    assert "warning:" in err


def test_end_to_end_localize_and_mask(tmp_path, real_model, capsys):
    _img(64, 64, 4).save(tmp_path / "a.png")
    out = tmp_path / "loc"
    code, _, err = run(["localize", tmp_path / "a.png", "-i", "make the red car blue", "--model", real_model,
                        "--out", out, *FAST], capsys)
    assert code == 0, err
    assert _outputs(out) == ["a.json", "a_mask.png", "a_overlay.png", "a_segments.png"]
    rec = json.loads((out / "a.json").read_text())
    assert rec["settings"]["localization_steps"] == 1 and rec["localization"]["num_segments"] >= 1
    # the localized mask, fed back as a user mask, skips localization
    code, _, err = run(["edit", tmp_path / "a.png", "-i", "make the red car blue", "--mask", out / "a_mask.png",
                        "--model", real_model, "--out", tmp_path / "edit", *FAST], capsys)
    rec = json.loads((tmp_path / "edit" / "a.json").read_text())
    assert code == 0 and rec["mask_source"]["kind"] == "file" and rec["localization"]["grid_size"]


def test_end_to_end_bad_model_folder(tmp_path, imgs, capsys):
    (tmp_path / "empty-model").mkdir()
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "--model", tmp_path / "empty-model",
                        "--out", tmp_path / "o"], capsys)
    assert code == 2 and "model_index.json" in err and err.strip().count("\n") == 0


# --------------------------------------------------------------------------- issue 12: validation, names, flags
@pytest.mark.parametrize("bad", [["--guidance", "inf"], ["--image-guidance", "nan"],
                                 ["--localization-guidance", "-inf"], ["--capture-at", "nan"],
                                 ["--distance-threshold", "inf"], ["--regularize-until", "nan"],
                                 ["--set", "guidance_scale=inf"], ["--set", "regularize_from=nan"],
                                 ["--seed", str(2**64)], ["--seed", "-1"], ["--seed", "1.5"],
                                 ["--set", "num_inference_steps=2.5"], ["--set", "drop_verbs=maybe"],
                                 ["--set", "layers="], ["--set", "mode=sideways"]])
def test_non_finite_numbers_and_bad_seeds_are_usage_errors(tmp_path, imgs, fake, capsys, bad):
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "-o", tmp_path / "o", *bad], capsys)
    assert code == 2 and fake.loads == 0 and not (tmp_path / "o").exists()
    last = err.strip().splitlines()[-1]
    assert "error:" in last and (bad[1].split("=")[0] in last or bad[0] in last), err
    if bad[0] == "--seed":
        assert "0..2**64-1" in last


def test_seed_range_ends_are_accepted(tmp_path, imgs, fake, capsys):
    for seed in (0, 2**64 - 1, "0x10"):
        assert run(["edit", imgs / "a.png", "-i", "x y", "-o", tmp_path / "o", "--overwrite", "--seed", seed],
                   capsys)[0] == 0
    assert [c["seed"] for c in fake.calls] == [0, 2**64 - 1, 16]


def test_every_config_field_is_settable_with_set(tmp_path, imgs, fake, capsys):
    import dataclasses

    assert set(cli._set_parsers()) == {f.name for f in dataclasses.fields(LimeConfig)}
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "-o", tmp_path / "o",
                        "--set", "layers=up_blocks.*attn2*, mid_block.*", "--set", "localization_steps=none",
                        "--set", "schedule=single-pass", "--set", "guidance_scale=3", "--set", "drop_verbs=off",
                        "--set", "feature_levels=2,4", "--set", "agglomerative_max_points=64",
                        "--set", "clustering=agglomerative"], capsys)
    assert code == 0, err
    assert fake.calls[-1]["overrides"] == dict(
        layers=("up_blocks.*attn2*", "mid_block.*"), localization_steps=None, schedule="single_pass",
        guidance_scale=3.0, drop_verbs=False, feature_levels=(2, 4), agglomerative_max_points=64,
        clustering="agglomerative")
    assert run(["edit", imgs / "a.png", "-i", "x y", "-o", tmp_path / "o", "--overwrite",
                "--set", "layers=none"], capsys)[0] == 0
    assert fake.calls[-1]["overrides"] == dict(layers=None)


def test_short_o_is_out_everywhere():
    parser = cli.build_parser()
    for argv in (["edit", "x.png", "-i", "t", "-o", "D"], ["localize", "x.png", "-i", "t", "-o", "D"],
                 ["demo", "-o", "D"], ["bench", "synthetic", "-o", "D"], ["train-demo", "-o", "D"],
                 ["eval", "piebench", "--data", "x", "-o", "D"]):
        assert parser.parse_args(argv).out == "D", argv


@pytest.mark.parametrize("command", [["edit"], ["localize"], ["p2p"]])
def test_help_lists_the_common_flags_and_help_all_every_one(command, capsys):
    """--help: the flags most runs need; --help-all adds the paper-level settings and rarer
    loading options (which work the same whether listed or not)."""
    assert cli.main([*command, "--help"]) == 0
    short = capsys.readouterr().out
    assert cli.main([*command, "--help-all"]) == 0
    full = capsys.readouterr().out
    assert len(short.splitlines()) < 0.65 * len(full.splitlines())
    for flag in ("--help-all", "--model", "--steps", "--guidance", "--seed", "--out", "--mask", "--fast", "--set"):
        assert flag in short and flag in full, flag
    for flag in ("--feature-levels", "--top-k", "--capture-at", "--regularize-until", "--penalize-padding",
                 "--model-config", "--max-pixels"):
        assert flag not in short and flag in full, flag
    assert "advanced (listed by --help-all only)" in full
    parser = cli.build_parser()                      # hidden from --help, parsed all the same
    args = parser.parse_args([*command, "x.png", *(["--source", "a", "--target", "b"] if command == ["p2p"] else
                                                   ["-i", "t"]), "--top-k", "7", "--max-pixels", "9"])
    assert args.cfg_top_k == 7 and args.max_pixels == 9


def test_max_pixels_help_says_pil_bomb_limit_stays(capsys):
    assert cli.main(["edit", "--help-all"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "0 = no limit of ours" in text and "decompression-bomb limit" in text


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs FIFOs")
def test_fifo_in_a_batch_is_reported_and_the_rest_goes_on(tmp_path, imgs, fake, capsys):
    import os

    os.mkfifo(imgs / "x.png")
    code, out, err = run(["edit", imgs, "-i", "x y", "-o", tmp_path / "o"], capsys)
    assert code == 1 and len(fake.calls) == 2
    assert f"error: {imgs / 'x.png'}: is a named pipe (FIFO), not a regular file (not opened)" in err.splitlines()


def test_file_names_are_printed_escaped(tmp_path, fake, capsys):
    d = tmp_path / "in"
    d.mkdir()
    evil = d / "a\nerror: forged\x1b[31m.png"
    evil.write_text("not an image")
    code, _, err = run(["edit", evil, "-i", "x y", "-o", tmp_path / "o"], capsys)
    assert code == 1 and "\x1b" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert lines[0] == f"error: {d}/a\\nerror: forged\\x1b[31m.png: not an image file (or an unsupported format)"


def test_model_errors_do_not_repeat_the_name(tmp_path, imgs, monkeypatch, capsys):
    def load(args):
        raise ModelLoadError(f"{args.model}: no such file or folder")

    monkeypatch.setattr(cli, "_load_pipeline", load)
    _, _, err = run(["edit", imgs / "a.png", "-i", "x y", "--model", "./gone", "-o", tmp_path / "o"], capsys)
    assert err.strip() == "error: model ./gone: no such file or folder"


def test_quiet_libraries_hides_library_logs_and_bars_unless_verbose(monkeypatch):
    import logging
    import os

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    before = [(m.get_verbosity(), m.is_progress_bar_enabled()) for m in (dlog, tlog)]
    with cli.quiet_libraries(verbose=False):
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
        for m in (dlog, tlog):
            assert m.get_verbosity() == logging.ERROR and not m.is_progress_bar_enabled()
    assert [(m.get_verbosity(), m.is_progress_bar_enabled()) for m in (dlog, tlog)] == before
    assert "TRANSFORMERS_VERBOSITY" not in os.environ
    dlog.set_verbosity_warning()
    with cli.quiet_libraries(verbose=True):
        assert dlog.get_verbosity() == logging.WARNING and "TRANSFORMERS_VERBOSITY" not in os.environ
    dlog.set_verbosity(before[0][0])


def test_a_word_outside_the_models_vocabulary_is_one_warning_line(tmp_path, real_model, capsys):
    """The tiny model's vocabulary spells "crimson" in letters: one ``warning:`` line on stderr naming
    the word (once, though the instruction has it twice), recorded in the JSON too; an instruction
    in its vocabulary gets none."""
    _img(64, 64, 0).save(tmp_path / "a.png")
    code, _, err = run(["localize", tmp_path / "a.png", "-i", "make the crimson car crimson",
                        "--model", real_model, "--out", tmp_path / "o", *FAST], capsys)
    assert code == 0
    lines = [ln for ln in err.splitlines() if "vocabulary" in ln]
    assert lines == [f"warning: {tmp_path / 'a.png'}: instruction word 'crimson' is not in this model's "
                     "vocabulary (its tokenizer splits it into c + ri + m + s + on): the model may not know it, and then "
                     "LIME's region may miss what it names"], err
    assert any("'crimson'" in w for w in json.loads((tmp_path / "o" / "a.json").read_text())["warnings"])
    code, _, err = run(["localize", tmp_path / "a.png", "-i", "make the red car blue", "--model", real_model,
                        "--out", tmp_path / "o2", *FAST], capsys)
    assert code == 0 and "warning" not in err


def test_commands_print_only_their_own_output(tmp_path):
    """A fresh process (library warnings fire once per process): no transformers
    'requires torchvision' lines, no diffusers loading bars."""
    import os
    import subprocess

    pytest.importorskip("lime_edit.demo")
    env = dict(os.environ, PYTHONPATH=str(Path(cli.__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "lime_edit.cli", "demo", "--steps", "1", "-o", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # stdout: every file the demo wrote, the panel first, and nothing else in the folder
    names = ["panel.png", "input.png", "ip2p.png", "ip2p_low_guidance.png", "ip2p_lime.png", "demo.json"]
    assert proc.stderr.strip() == "" and proc.stdout.split("\n")[:-1] == [str(tmp_path / n) for n in names]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    # the docs' commands use only files that `lime-edit demo` writes (no scene0.png nothing creates)
    repo = Path(cli.__file__).resolve().parents[2]
    for doc in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        for used in re.findall(r"lime-demo/([\w.-]+\.(?:png|json))", doc.read_text()):
            assert used in names, (doc.name, used)
        assert "scene0.png" not in doc.read_text(), doc.name


def test_every_command_that_runs_a_model_has_one_threads_rule(capsys):
    """edit, localize, p2p, demo and bench synthetic all default to torch's own thread count
    (--threads 0) and say so the same way."""
    parser = cli.build_parser()
    for argv in (["edit", "x.png", "-i", "t"], ["localize", "x.png", "-i", "t"],
                 ["p2p", "x.png", "--source", "a", "--target", "b"], ["demo"], ["bench", "synthetic"]):
        assert parser.parse_args(argv).threads == 0, argv
        assert cli.main([*(argv[:2] if argv[0] == "bench" else argv[:1]), "--help"]) == 0
        assert " ".join(cli.THREADS_HELP.split()) in " ".join(capsys.readouterr().out.split()), argv


def test_train_demo_flags_all_have_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    train = sub.choices["train-demo"]
    bare = [a.option_strings[-1] for a in train._actions if a.option_strings and not a.help]
    assert bare == []


def test_default_output_folders_of_the_readme_commands_are_ignored_by_git():
    repo = Path(cli.__file__).resolve().parents[2]
    ignored = (repo / ".gitignore").read_text().splitlines()
    parser = cli.build_parser()
    for argv in (["demo"], ["bench", "synthetic"], ["edit", "x.png", "-i", "t"]):
        assert f"/{parser.parse_args(argv).out}/" in ignored, argv


def test_bench_synthetic_says_how_many_edits_before_it_starts(tmp_path, capsys):
    """The first line on stderr, before the progress bar: methods x scenes = edits; by default
    (every method) with how to run fewer."""
    out = tmp_path / "b"
    cmd = ["bench", "synthetic", "--n", "2", "--steps", "1", "--methods", "ip2p,lime", "--no-progress", "-o", out]
    code, _, err = run(cmd, capsys)
    assert code == 0 and err.splitlines()[0] == "bench synthetic: 2 methods x 2 scenes = 4 edits", err
    code, _, err = run([*cmd[:3], "3", *cmd[4:]], capsys)        # resumed with one more scene
    assert code == 0
    assert err.splitlines()[0] == "bench synthetic: 2 methods x 3 scenes = 6 edits (4 done by an earlier run, 2 to go)"


def test_bench_plan_counts_what_an_earlier_run_did():
    from lime_edit.demo.bench import plan_line

    done = {("ip2p", 0): {}, ("lime", 0): {}, ("lime", 1): {}, ("other", 5): {}}
    assert plan_line(["ip2p", "lime"], [0, 1], done, ["ip2p", "lime", "x"]) == \
        "bench synthetic: 2 methods x 2 scenes = 4 edits (3 done by an earlier run, 1 to go)"
    every = ["a", "b", "c"]
    assert plan_line(every, [0], {}, every) == ("bench synthetic: 3 methods x 1 scene = 3 edits; --methods picks "
                                                "fewer, e.g. --methods ip2p,lime (all: a,b,c)")
    assert plan_line(["a"], [0], {}, every) == "bench synthetic: 1 method x 1 scene = 1 edit"


def test_max_pixels_0_still_refuses_images_above_pils_bomb_limit(tmp_path, imgs, fake, capsys):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    bomb = imgs / "bomb.png"  # 20000 x 10000 = 200 M pixels in the header, no real data
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b""))
    code, _, err = run(["edit", imgs, "-i", "x y", "-o", tmp_path / "o", "--max-pixels", "0"], capsys)
    assert code == 1 and len(fake.calls) == 2
    assert f"error: {bomb}: image is far above PIL's decompression-bomb limit" in err


@pytest.mark.parametrize("argv, line", [
    (["--steps", "0"], "error: --steps 0: must be in 1..10000"),
    (["--out-scale", "99"], "error: --out-scale 99: must be in 1..16 or None"),
    (["--set", "top_k=0"], "error: --set top_k: must be >= 1"),
    # a rule between two settings is reported on the one a user raises past the other's default
    (["--regularize-from", "0.95"], "error: --regularize-from 0.95: must be at most regularize_until (0.9)"),
    (["--regularize-from", "1.5"], "error: --regularize-from 1.5: must be in [0, 1]"),
])
def test_setting_errors_name_the_flag_not_the_config_field(tmp_path, imgs, fake, capsys, argv, line):
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "--out", tmp_path / "o", *argv], capsys)
    assert code == 2 and err.strip().splitlines() == [line] and fake.loads == 0


@pytest.mark.parametrize("argv, line", [
    (["--cross-replace", "nan"], "error: --cross-replace: must be in [0, 1], got nan"),
    (["--self-replace", "-1"], "error: --self-replace: must be in [0, 1], got -1.0"),
    (["--blend-threshold", "inf"], "error: --blend-threshold: must be in [0, 1], got inf"),
])
def test_p2p_settings_are_usage_errors_before_the_model_loads(tmp_path, imgs, fake, capsys, argv, line):
    code, _, err = run(["p2p", imgs / "a.png", "--source", "a red car", "--target", "a blue car",
                        "--out", tmp_path / "o", *argv], capsys)
    assert code == 2 and err.strip().splitlines() == [line] and fake.loads == 0


def test_cleanup_never_removes_record_less_files_or_the_runs_own_inputs(tmp_path, imgs, fake, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    # a heatmap-named file with no record, and a run without --explain: kept
    (out / "a_attn_00_user.png").write_bytes(b"the user's")
    assert run(["localize", imgs / "a.png", "-i", "x y", "--out", out], capsys)[0] == 0
    assert (out / "a_attn_00_user.png").read_bytes() == b"the user's"
    # an earlier set's heatmap given as the mask of an --overwrite run: read, not removed as stale
    assert run(["edit", imgs / "a.png", "-i", "x y", "--out", out, "--explain", "--overwrite"], capsys)[0] == 0
    heat = out / "a_attn_00_red.png"
    assert heat.is_file()
    monkeypatch.chdir(out)                       # relative paths resolve to the same files
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "--mask", "a_attn_00_red.png", "--out", ".",
                        "--overwrite"], capsys)
    assert code == 0 and heat.is_file(), err
    # an earlier set's overlay given as a second input: not removed before it is read
    code, _, err = run(["edit", imgs / "a.png", "a_overlay.png", "-i", "x y", "--no-lime", "--out", ".",
                        "--overwrite"], capsys)
    assert code == 0 and (out / "a_overlay.png").is_file() and (out / "a_overlay_edited.png").is_file(), err


def test_interrupted_overwrite_still_removes_the_replaced_sets_extra_files(tmp_path, imgs, fake, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(["edit", imgs / "a.png", "-i", "x y", "--out", out, "--explain"], capsys)[0] == 0
    assert (out / "a_attn_00_red.png").is_file() and (out / "a_segments.png").is_file()
    renamed, restore = _stop_renames_after(monkeypatch, 2)
    assert run(["edit", imgs / "a.png", "-i", "x y", "--out", out, "--no-lime", "--overwrite"], capsys)[0] == 130
    restore()
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "--out", out, "--no-lime"], capsys)
    assert code == 0 and "redoing" in err
    assert _outputs(out) == ["a.json", "a_edited.png"]


def test_a_file_given_twice_is_edited_once_and_a_count_mismatch_says_so(tmp_path, imgs, fake, capsys, monkeypatch):
    monkeypatch.chdir(imgs)
    code, _, err = run(["edit", "a.png", "./a.png", "-i", "x y", "-i", "y z", "--out", tmp_path / "o"], capsys)
    assert code == 2 and fake.loads == 0
    assert err.strip().splitlines() == ["error: got 2 instructions for 1 input image(s) (a file given twice is "
                                        "edited once): give one instruction for all inputs or exactly one per input"]
    code, _, err = run(["edit", "a.png", "b.jpg", "-i", "x y", "-i", "y z", "-i", "z", "--out", tmp_path / "o"],
                       capsys)
    assert code == 2 and "(a file given twice" not in err


def test_a_level_the_unet_lacks_is_refused_once_before_any_input(tmp_path, imgs, real_model, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["edit", imgs / "a.png", imgs / "b.jpg", "-i", "make the red car blue",
                             "--model", real_model, "--out", out, "--feature-levels", "1,1024", *FAST], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and stdout == "" and len(lines) == 1, err
    assert lines[0].startswith("error: --feature-levels 1,1024: this U-Net has no attention layer at latent "
                               "level(s) 1024"), err
    assert not out.exists() or _outputs(out) == []
    code, _, err = run(["localize", imgs / "a.png", "-i", "make the red car blue", "--model", real_model,
                        "--out", out, "--set", "regularization_levels=1024", *FAST], capsys)
    assert code == 2 and err.strip().startswith("error: --set regularization_levels: this U-Net"), err


# --------------------------------------------------------------------------- probe of 2026-12-06
@pytest.mark.parametrize("argv, flag", [
    (["edit", "-i", "\udcff make it red"], "-i/--instruction"),
    (["p2p", "--source", "a \udcff car", "--target", "a blue car"], "--source"),
    (["p2p", "--source", "a red car", "--target", "a \ud800 car"], "--target"),
])
def test_undecodable_text_is_a_usage_error_naming_the_flag(tmp_path, imgs, fake, capsys, argv, flag):
    # a Latin-1 byte in a UTF-8 shell reaches Python as a lone surrogate; the tokenizer
    # used to fail on it with "TypeError: TextEncodeInput must be ..." once per input
    code, _, err = run([argv[0], imgs / "a.png", *argv[1:], "--out", tmp_path / "o"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and fake.loads == 0 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {flag} ") and "not valid text" in lines[0]


def test_a_reweight_word_given_two_scales_is_a_usage_error(tmp_path, imgs, fake, capsys):
    code, _, err = run(["p2p", imgs / "a.png", "--source", "a red car", "--target", "a blue car",
                        "--reweight", "blue=2", "--reweight", "blue=3", "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.strip() == "error: --reweight blue is given twice, as 2 and 3: keep one"


@pytest.mark.parametrize("scale", ["nan", "inf", "1e308", "-101"])
def test_a_reweight_scale_out_of_range_is_a_usage_error(tmp_path, imgs, fake, capsys, scale):
    code, _, err = run(["p2p", imgs / "a.png", "--source", "a red car", "--target", "a blue car",
                        "--reweight", f"blue={scale}", "--out", tmp_path / "o"], capsys)
    assert code == 2 and fake.loads == 0
    assert err.strip().startswith("error: --reweight: blue=") and "[-100, 100]" in err


def test_an_output_path_taken_by_a_folder_fails_that_input_before_any_work(tmp_path, imgs, fake, capsys):
    out = tmp_path / "o"
    (out / "a_edited.png").mkdir(parents=True)
    code, stdout, err = run(["edit", imgs / "a.png", imgs / "b.jpg", "-i", "x y", "--out", out, "--no-lime",
                             "--overwrite"], capsys)
    assert code == 1
    assert err.strip().splitlines()[0] == (f"error: {imgs / 'a.png'}: its output {out / 'a_edited.png'} is a "
                                           "folder; remove it or use another --out")
    assert len(fake.calls) == 1                                                  # only b.jpg ran
    assert _outputs(out) == ["a_edited.png", "b.json", "b_edited.png"]          # no pending a.json
    assert (out / "a_edited.png").is_dir()


def test_publishing_onto_a_folder_names_the_output_not_a_temp_file(tmp_path):
    (tmp_path / "x.png").mkdir()
    with pytest.raises(LimeEditError, match=r"x\.png: is a folder, not a file$"):
        lio.publish_outputs({tmp_path / "x.png": b"data"}, tmp_path / "x.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]       # no pending record, no temp file


def test_a_layer_pattern_matching_nothing_is_refused_once_before_any_input(tmp_path, imgs, real_model, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["edit", imgs / "a.png", imgs / "b.jpg", "-i", "make the red car blue",
                             "--model", real_model, "--out", out, "--set", "layers=nomatch*", *FAST], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and stdout == "" and len(lines) == 1, err
    assert lines[0].startswith("error: --set layers: no attention layer matches 'nomatch*'"), err
    assert not out.exists() or _outputs(out) == []


def test_a_result_that_is_not_finite_fails_the_input_instead_of_saving_black(tmp_path, imgs, real_model, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["edit", imgs / "a.png", "-i", "make the red car blue", "--model", real_model,
                             "--out", out, "--guidance", "1e30", "--no-lime", *FAST], capsys)
    assert code == 1 and stdout == ""
    assert "the model produced NaN/inf values in its image (guidance 1e+30" in err and "RuntimeWarning" not in err
    assert not out.exists() or _outputs(out) == []


def test_the_sdxl_backbone_on_an_sd1_editor_is_one_usage_error(tmp_path, imgs, tiny_model_dir, capsys):
    code, stdout, err = run(["edit", imgs / "a.png", imgs / "b.jpg", "-i", "make the red car blue", "--model",
                             tiny_model_dir, "--backbone", "sdxl-ip2p", "--out", tmp_path / "o", *FAST], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "not an SDXL instruction editor" in lines[0], err


def test_instruction_commands_on_a_text_to_image_model_point_at_p2p(tmp_path, imgs, tmp_path_factory, capsys):
    from lime_edit.testing import tiny_t2i_pipeline

    model = tmp_path / "t2i"
    tiny_t2i_pipeline(tmp_path_factory.mktemp("tok")).save_pretrained(str(model))
    capsys.readouterr()
    for task in ("edit", "localize"):
        code, stdout, err = run([task, imgs / "a.png", imgs / "b.jpg", "-i", "make the red car blue", "--model",
                                 model, "--out", tmp_path / task, *FAST], capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and stdout == "" and len(lines) == 1, err
        assert lines[0] == (f"error: --model {model}: a text-to-image model (p2p backbone) edits with captions, "
                            f"not instructions: use `lime-edit p2p IMAGE --model {model} --source CAPTION "
                            "--target CAPTION`")


def test_library_deprecation_warnings_are_hidden_unless_verbose(tmp_path, imgs, tiny_model_dir, capsys, recwarn):
    # an IP2P folder loaded as a text-to-image pipeline makes diffusers warn (FutureWarning,
    # its scheduler config); the command's user gets the one-line error only
    argv = ["p2p", imgs / "a.png", "--source", "a red car", "--target", "a blue car", "--model", tiny_model_dir,
            "--out", tmp_path / "o"]
    code, _, err = run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
    run([*argv, "-v"], capsys)
    assert [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_an_input_folder_that_is_also_the_output_folder_resumes(tmp_path, fake, capsys):
    d = tmp_path / "photos"
    d.mkdir()
    _img(64, 64, 0).save(d / "p.png")
    argv = ["edit", d, "-i", "x y", "--out", d, "--no-lime"]
    assert run(argv, capsys)[0] == 0
    code, _, err = run(argv, capsys)                  # its outputs are not taken as new inputs
    assert code == 0 and len(fake.calls) == 1 and "skipped" in err and "not taken as inputs" in err
    assert run([*argv, "--overwrite"], capsys)[0] == 0
    assert len(fake.calls) == 2 and _outputs(d) == ["p.json", "p.png", "p_edited.png"]
    code, _, _ = run(["edit", d / "p_edited.png", "-i", "x y", "--out", d, "--no-lime"], capsys)
    assert code == 0 and len(fake.calls) == 3          # named on its own, an output is an input


def test_a_missing_file_among_inputs_paired_one_to_one_fails_alone(tmp_path, imgs, fake, capsys):
    out = tmp_path / "o"
    code, _, err = run(["edit", imgs / "a.png", imgs / "gone.png", imgs / "b.jpg", "-i", "one", "-i", "two",
                        "-i", "three", "--out", out, "--no-lime"], capsys)
    assert code == 1 and "gone.png" in err
    assert [c["instruction"] for c in fake.calls] == ["one", "three"]
    assert json.loads((out / "b.json").read_text())["instruction"] == "three"


def test_p2p_help_gives_the_p2p_backbones_defaults_and_no_image_guidance(tmp_path, imgs, fake, capsys):
    from lime_edit.backbones.p2p import P2PBackbone

    d = P2PBackbone.sampler_defaults
    assert f"default {d['num_inference_steps']}," in cli.P2P_SETTING_HELP["num_inference_steps"]
    assert f"default {d['guidance_scale']:g}," in cli.P2P_SETTING_HELP["guidance_scale"]
    assert f"default {d['localization_guidance_scale']:g})" in cli.P2P_SETTING_HELP["localization_guidance_scale"]
    assert cli.main(["p2p", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 50, P2P's)" in text and "--image-guidance" not in text
    code, _, err = run(["p2p", imgs / "a.png", "--source", "a red car", "--target", "a blue car",
                        "--image-guidance", "9", "--out", tmp_path / "o"], capsys)
    assert code == 2 and fake.loads == 0


@pytest.mark.parametrize("argv, line", [
    (["--feature-levels", "4", "--set", "feature_levels=1,2"],
     "error: --feature-levels and --set feature_levels set the same setting differently: keep one"),
    (["--set", "top_k=5", "--set", "top_k=6"], "error: --set top_k is given twice, as 5 and 6: keep one"),
])
def test_one_setting_given_two_values_is_a_usage_error(tmp_path, imgs, fake, capsys, argv, line):
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "--out", tmp_path / "o", *argv], capsys)
    assert code == 2 and err.strip().splitlines() == [line] and fake.loads == 0
    assert run(["edit", imgs / "a.png", "-i", "x y", "--out", tmp_path / "o2", "--steps", "3", "--set",
                "num_inference_steps=3"], capsys)[0] == 0                       # the same value twice is fine


def test_every_setting_that_defaults_to_none_takes_none_in_set(tmp_path, imgs, fake, capsys):
    code, _, _ = run(["edit", imgs / "a.png", "-i", "x y", "--out", tmp_path / "o", "--set", "out_scale=none",
                      "--set", "feature_levels=None", "--set", "regularization_levels=none"], capsys)
    assert code == 0
    over = fake.calls[0]["overrides"]
    assert over["out_scale"] is None and over["feature_levels"] is None and over["regularization_levels"] is None


@pytest.mark.parametrize("cmd", [["edit", "IMG", "-i", "x y"], ["demo"]])
def test_an_empty_model_is_a_usage_error(tmp_path, imgs, fake, capsys, cmd):
    argv = [str(imgs / "a.png") if a == "IMG" else a for a in cmd]
    code, _, err = run([*argv, "--model", "", "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.strip().startswith("error: --model is empty") and fake.loads == 0


def test_a_run_of_two_inputs_where_one_is_missing_ends_with_its_summary(tmp_path, imgs, fake, capsys):
    """The summary line counts the inputs given, not those left after a missing one."""
    code, _, err = run(["localize", imgs / "a.png", imgs / "gone.png", "-i", "x y", "--out", tmp_path / "o"], capsys)
    assert code == 1 and "gone.png" in err
    assert "localize: 1 done, 1 failed" in err, err


def test_an_empty_levels_value_is_named_in_its_error(tmp_path, imgs, fake, capsys):
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "--out", tmp_path / "o", "--feature-levels", ","], capsys)
    assert code == 2 and err.startswith("error: --feature-levels (no value): "), err


def test_threads_sets_torch_threads_before_loading(tmp_path, imgs, fake, capsys, monkeypatch):
    # a small model on a shared CPU runs several times faster with 1 thread (README); 0 keeps torch's
    import torch

    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n))
    code, _, _ = run(["edit", imgs / "a.png", "-i", "x y", "-o", tmp_path / "o", "--threads", "1"], capsys)
    assert code == 0 and seen == [1]
    code, _, _ = run(["edit", imgs / "a.png", "-i", "x y", "-o", tmp_path / "o2"], capsys)
    assert code == 0 and seen == [1]
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "-o", tmp_path / "o3", "--threads", "-1"], capsys)
    assert code == 2 and err.strip() == "error: --threads -1: must be at least 0 (0 = torch's default)"
