"""Benchmark harness end to end: fixture datasets in each benchmark's real layout,
generation with a stand-in editor (and once with the tiny real pipeline), scoring
with tiny random backbones loaded from folders, resume, bad data, sharding."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torchmetrics")  # the eval extra: pip install -e ".[eval]"

from lime_edit import cli as lime_cli  # noqa: E402
from lime_edit.errors import LimeEditError  # noqa: E402
from lime_edit.eval import generate, runner  # noqa: E402
from lime_edit.eval.cli import register  # noqa: E402
from lime_edit.eval.testing import (save_tiny_backbones, write_editval_fixture,  # noqa: E402
                                    write_magicbrush_fixture,
                                    write_piebench_fixture)


def main(argv: list[str]) -> int:
    """``lime-edit`` with only the eval/score subcommands, same exit codes as
    :func:`lime_edit.cli.main` (kept apart from the other feature packages' CLIs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="lime-edit")
    register(parser.add_subparsers())
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return lime_cli.EXIT_INTERRUPTED
    except (LimeEditError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return lime_cli.EXIT_USAGE


class FakeEditor:
    """Stands in for LimePipeline: brightens the image by 10 and records each call."""

    def __init__(self, interrupt_after: int | None = None, fail_on: str | None = None):
        self.calls: list[dict] = []
        self.interrupt_after, self.fail_on = interrupt_after, fail_on

    def edit(self, image, instruction, mask="auto", seed=0, **overrides):
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        if self.fail_on and self.fail_on in instruction:
            raise RuntimeError("boom")
        self.calls.append(dict(image=np.asarray(image).copy(), instruction=instruction, mask=mask, seed=seed,
                               overrides=overrides))
        out = np.clip(np.asarray(image).astype(np.int16) + 10, 0, 255).astype(np.uint8)
        return SimpleNamespace(image=Image.fromarray(out), warnings=[], timings={"edit": 0.0},
                               lime_applied=mask == "auto", seed=seed)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    return SimpleNamespace(root=root, mb=write_magicbrush_fixture(root / "mb"),
                           pie=write_piebench_fixture(root / "pie", n=4, size=64),
                           ev=write_editval_fixture(root / "ev"))


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    return {k: str(v) for k, v in save_tiny_backbones(tmp_path_factory.mktemp("bb")).items()}


def use_editor(monkeypatch, editor):
    monkeypatch.setattr(generate, "_load_pipeline", lambda args, device: editor)
    return editor


def read_json(p):
    return json.loads(Path(p).read_text())


# --------------------------------------------------------------------------- generation
def test_cli_registers_eval_and_score(capsys):
    assert lime_cli.main(["eval", "--help"]) == 0
    assert lime_cli.main(["score", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--no-lime" in out and "--lpips-model" in out


def test_eval_cli_module_imports_nothing_heavy():
    code = ("import sys, lime_edit.eval.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'diffusers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_magicbrush_single_and_multi_turn(tmp_path, monkeypatch, data):
    out = tmp_path / "run"
    ed = use_editor(monkeypatch, FakeEditor())
    assert main(["eval", "magicbrush", "--data", str(data.mb), "--out", str(out), "-q"]) == 0
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names == ["101/101_1.png", "202/202_1.png", "202/202_inde_2.png",
                     "303/303_1.png", "303/303_inde_2.png", "303/303_inde_3.png"]
    assert len(ed.calls) == 6 and all(c["mask"] == "auto" for c in ed.calls)
    # protocol sampler settings + MagicBrush input resize (64 px -> long side 512)
    assert ed.calls[0]["overrides"]["num_inference_steps"] == 100
    assert ed.calls[0]["image"].shape == (512, 512, 3)
    # single-turn: turn 2 edits the ground-truth output of turn 1
    gt1 = generate.magicbrush_resize(Image.open(data.mb / "test/images/303/303-output1.png").convert("RGB"))
    assert np.array_equal(ed.calls[4]["image"], np.asarray(gt1))  # calls: 101 (1), 202 (2), 303 (3)

    ed2 = use_editor(monkeypatch, FakeEditor())
    assert main(["eval", "magicbrush", "--protocol", "multi", "--data", str(data.mb), "--out", str(out),
                 "--no-lime", "-q"]) == 2  # other settings (--no-lime) in the same folder: refused
    assert main(["eval", "magicbrush", "--protocol", "multi", "--data", str(data.mb), "--out", str(out), "-q"]) == 0
    assert len(ed2.calls) == 3  # turn 1 (_1) is shared with the single-turn run
    # multi-turn: turn k edits the model's own output of turn k-1
    own1 = np.asarray(Image.open(out / "303/303_1.png"))
    own2 = np.asarray(Image.open(out / "303/303_iter_2.png"))
    assert np.array_equal(ed2.calls[1]["image"], own1) and np.array_equal(ed2.calls[2]["image"], own2)
    man = read_json(out / "manifest-multi.json")
    assert man["status"] == "complete" and man["signature"]["lime"] is True and man["signature"]["seed"] == 0
    assert man["samples"]["303"]["turns"][2]["output"] == "303_iter_3.png"
    assert "torch" in man["versions"]

    # pixel metrics need no model; both protocols read the same folder
    assert main(["score", "magicbrush", "--data", str(data.mb), "--outputs", str(out), "--metrics", "l1,l2",
                 "-q"]) == 0
    rep = read_json(out / "scores/magicbrush/report.json")
    assert rep["n"] == 6 and rep["n_failed"] == 0 and set(rep["metrics"]) == {"l1", "l2"}
    assert main(["score", "magicbrush", "--protocol", "multi", "--data", str(data.mb), "--outputs", str(out),
                 "--metrics", "l1", "-q"]) == 0
    rep_m = read_json(out / "scores/magicbrush-multi/report.json")
    assert rep_m["n"] == 3 and rep_m["protocol"] == "multi"
    from lime_edit.eval.metrics import l1_distance

    expect = np.mean([l1_distance(Image.open(out / f"{i}/{f}"), Image.open(data.mb / f"test/images/{i}/{g}"))
                      for i, f, g in (("101", "101_1.png", "101-output1.png"),
                                      ("202", "202_iter_2.png", "202-output2.png"),
                                      ("303", "303_iter_3.png", "303-output3.png"))])
    assert rep_m["metrics"]["l1"] == pytest.approx(expect, rel=1e-6)


def test_editval_generation_prompts_and_layout(tmp_path, monkeypatch, data):
    ed = use_editor(monkeypatch, FakeEditor())
    out = tmp_path / "ev"
    assert main(["eval", "editval", "--data", str(data.ev), "--out", str(out), "-q", "--no-lime"]) == 0
    got = {c["instruction"] for c in ed.calls}
    assert {"Add a ball", "Add cup left the dog", "Change the size of dog to large", "add wheels to car"} <= got
    assert (out / "object_addition/1234/ball.png").is_file()
    assert (out / "alter_parts/5678/add wheels.png").is_file()
    assert not (out / "color").exists()  # only the six automatically scored types by default
    assert all(c["mask"] is None for c in ed.calls)


def test_resume_after_interruption_loses_nothing(tmp_path, monkeypatch, data):
    out, ref = tmp_path / "run", tmp_path / "ref"
    use_editor(monkeypatch, FakeEditor(interrupt_after=2))
    assert main(["eval", "piebench", "--data", str(data.pie), "--out", str(out), "-q"]) == 130
    assert len(list((out / "annotation_images").rglob("*.jpg"))) == 2
    assert not list(out.rglob("*.tmp"))  # atomic writes: no partial files
    ed = use_editor(monkeypatch, FakeEditor())
    assert main(["eval", "piebench", "--data", str(data.pie), "--out", str(out), "-q"]) == 0
    assert len(ed.calls) == 2  # only what was missing
    assert ed.calls[0]["seed"] == 1234  # PIE-Bench protocol seed
    use_editor(monkeypatch, FakeEditor())
    assert main(["eval", "piebench", "--data", str(data.pie), "--out", str(ref), "-q"]) == 0
    for p in (ref / "annotation_images").rglob("*.jpg"):
        q = out / p.relative_to(ref)
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(q)))
    a, b = read_json(out / "manifest.json"), read_json(ref / "manifest.json")
    assert a["status"] == b["status"] == "complete" and set(a["samples"]) == set(b["samples"])
    # the rerun of a finished run does nothing
    ed = use_editor(monkeypatch, FakeEditor())
    assert main(["eval", "piebench", "--data", str(data.pie), "--out", str(out), "-q"]) == 0
    assert ed.calls == []
    assert main(["eval", "piebench", "--data", str(data.pie), "--out", str(out), "--steps", "3", "-q"]) == 2


class _FakeState:
    device = "cpu"

    def __init__(self, index, count):
        self.process_index, self.num_processes = index, count

    def split_between_processes(self, items):
        import contextlib

        n, k = len(items), self.num_processes
        size, rem = divmod(n, k)
        start = self.process_index * size + min(self.process_index, rem)
        stop = start + size + (1 if self.process_index < rem else 0)
        return contextlib.nullcontext(items[start:stop])

    def wait_for_everyone(self):
        pass


def test_generation_shards_merge_to_the_single_process_result(tmp_path, monkeypatch, data):
    single, sharded = tmp_path / "one", tmp_path / "two"
    use_editor(monkeypatch, FakeEditor())
    assert main(["eval", "piebench", "--data", str(data.pie), "--out", str(single), "-q"]) == 0
    calls = []
    for index in (1, 0):  # the main process (0) finishes last and merges
        ed = use_editor(monkeypatch, FakeEditor())
        monkeypatch.setattr(generate, "get_shard",
                            lambda cpu=False, i=index: runner.Shard(i, 2, _FakeState(i, 2)))
        main(["eval", "piebench", "--data", str(data.pie), "--out", str(sharded), "-q"])
        calls.append(len(ed.calls))
    assert calls == [2, 2]
    a, b = read_json(single / "manifest.json"), read_json(sharded / "manifest.json")
    assert a["n_done"] == b["n_done"] == 4 and b["num_processes"] == 2
    assert {k: v["output"] for k, v in a["samples"].items()} == {k: v["output"] for k, v in b["samples"].items()}


# --------------------------------------------------------------------------- bad data
def test_bad_records_and_files_are_counted_not_fatal(tmp_path, monkeypatch, data):
    pie = tmp_path / "pie"
    shutil.copytree(data.pie, pie)
    mapping = read_json(pie / "mapping_file.json")
    keys = sorted(mapping)
    mapping["bad_record"] = {"image_path": "x.png"}                                  # fields missing
    mapping["bad_mask"] = dict(mapping[keys[0]], mask=[1, 2, 3])                     # odd-length RLE
    mapping["no_image"] = dict(mapping[keys[0]], image_path="9_category/none.png")   # missing file
    (pie / "mapping_file.json").write_text(json.dumps(mapping))
    (pie / "annotation_images" / mapping[keys[1]]["image_path"]).write_bytes(b"not a png")  # corrupt source
    out = tmp_path / "run"
    use_editor(monkeypatch, FakeEditor())
    assert main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q"]) == 1
    man = read_json(out / "manifest.json")
    assert man["n_done"] == 3 and man["n_failed"] == 4
    msgs = {f["sample"]: f for f in man["failures"]}
    assert "lacks" in msgs["bad_record"]["message"] and "bad mask" in msgs["bad_mask"]["message"]
    assert "none.png" in msgs["no_image"]["file"] and keys[1] in msgs
    # an unreadable output is a failed row, named in the report and the CSV
    victim = out / "annotation_images" / mapping[keys[2]]["image_path"]
    victim.write_bytes(b"garbage")
    assert main(["score", "piebench", "--data", str(pie), "--outputs", str(out), "--metrics", "psnr,mse",
                 "-q"]) == 1
    rep = read_json(out / "scores/piebench/report.json")
    assert rep["n"] == 2 and rep["n_expected"] == 7 and rep["n_failed"] == 5
    failed = {f["sample"]: f for f in rep["failures"]}
    assert str(victim) == failed[keys[2]]["file"] and "cannot read" in failed[keys[2]]["message"]
    assert "failed" in (out / "scores/piebench/rows.csv").read_text()


# --------------------------------------------------------------------------- scoring
def _copy_sources_as_outputs(pie: Path, out: Path) -> None:
    for p in (pie / "annotation_images").rglob("*.jpg"):
        q = out / "annotation_images" / p.relative_to(pie / "annotation_images")
        q.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, q)


def test_score_all_benchmarks_with_tiny_backbones(tmp_path, data, backbones, capsys):
    # MagicBrush: ground truth as the "generated" images -> L1 0, CLIP-I and DINO 1
    mb_out = tmp_path / "mb"
    for d in (data.mb / "test/images").iterdir():
        (mb_out / d.name).mkdir(parents=True)
        for k, p in enumerate(sorted(d.glob("*-output*.png")), 1):
            shutil.copy(p, mb_out / d.name / (f"{d.name}_1.png" if k == 1 else f"{d.name}_inde_{k}.png"))
    assert main(["score", "magicbrush", "--data", str(data.mb), "--outputs", str(mb_out),
                 "--clip-model", backbones["clip"], "--dino-model", backbones["dino"], "--local-files-only"]) == 0
    table = capsys.readouterr().out
    assert "[quoted] IP2P + LIME" in table and "this run (n=6)" in table
    m = read_json(mb_out / "scores/magicbrush/report.json")["metrics"]
    assert m["l1"] == 0 and m["clip_i"] == pytest.approx(1, abs=1e-5) and m["dino"] == pytest.approx(1, abs=1e-5)
    assert m["clip_t"] == pytest.approx(m["clip_t_gt"], abs=1e-6)
    # PIE-Bench: source as the edited image -> structure 0, LPIPS 0, MSE 0, SSIM 100 (x1e2)
    pie_out = tmp_path / "pie"
    _copy_sources_as_outputs(data.pie, pie_out)
    assert main(["score", "piebench", "--data", str(data.pie), "--outputs", str(pie_out), "-q",
                 "--clip-large-model", backbones["clip_large"], "--lpips-model", backbones["lpips"],
                 "--dino-structure-model", backbones["dino_structure"]]) == 0
    rep = read_json(pie_out / "scores/piebench/report.json")
    m = rep["metrics"]
    assert m["structure_distance_x1e3"] == 0 and m["lpips_x1e3"] == 0 and m["mse_x1e4"] == 0
    assert m["psnr"] == "inf" and m["ssim_x1e2"] == pytest.approx(100, abs=1e-3)
    assert 0 <= m["clip_whole"] <= 100 and set(rep["per_category"]) == {"0", "1", "2", "3"}
    assert rep["backbones"]["lpips"] == backbones["lpips"]
    # EditVal: originals as the edited images; OWL-ViT rules give 0/1 per edit
    ev_out = tmp_path / "ev"
    from lime_edit.eval.datasets import read_editval

    edits, _ = read_editval(data.ev)
    for e in edits:
        (ev_out / e.output_relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.open(e.image).save(ev_out / e.output_relpath)
    assert main(["score", "editval", "--data", str(data.ev), "--outputs", str(ev_out), "-q",
                 "--owlvit-model", backbones["owlvit"]]) == 0
    rep = read_json(ev_out / "scores/editval/report.json")
    assert rep["n"] == 6 and set(rep["metrics"]) == {"object_addition", "object_replacement", "position_replacement",
                                                     "positional_addition", "size", "alter_parts", "average"}
    assert all(v in (0.0, 1.0) for k, v in rep["metrics"].items() if k != "average")


def test_score_resume_reuses_rows_and_adds_metrics(tmp_path, data):
    out = tmp_path / "pie"
    _copy_sources_as_outputs(data.pie, out)
    # make the outputs differ from the sources a little
    for p in (out / "annotation_images").rglob("*.jpg"):
        a = np.asarray(Image.open(p)).astype(np.int16)
        Image.fromarray(np.clip(a + 7, 0, 255).astype(np.uint8)).save(p.with_suffix(".png"))
        p.unlink()  # a lossless twin of the .jpg name is read instead
    args = ["score", "piebench", "--data", str(data.pie), "--outputs", str(out), "-q"]
    assert main(args + ["--metrics", "mse"]) == 0
    first = read_json(out / "scores/piebench/report.json")
    rows = sorted((out / "scores/piebench/rows").glob("*.json"))
    assert len(rows) == 4
    rows[0].unlink()                       # as if killed before this sample finished
    stamp = {p: p.stat().st_mtime_ns for p in rows[1:]}
    assert main(args + ["--metrics", "mse"]) == 0
    assert read_json(out / "scores/piebench/report.json") == first
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())  # finished rows untouched
    assert main(args + ["--metrics", "mse,psnr"]) == 0   # only the new metric is computed
    rep = read_json(out / "scores/piebench/report.json")
    assert rep["metrics"]["mse_x1e4"] == first["metrics"]["mse_x1e4"] and "psnr" in rep["metrics"]


def test_two_processes_under_accelerate_equal_one(tmp_path, data, backbones):
    out = tmp_path / "pie"
    _copy_sources_as_outputs(data.pie, out)
    for i, p in enumerate(sorted((out / "annotation_images").rglob("*.jpg"))):
        a = np.asarray(Image.open(p)).astype(np.int16)
        Image.fromarray(np.clip(a + 5 * (i + 1), 0, 255).astype(np.uint8)).save(p, quality=95)
    common = ["score", "piebench", "--data", str(data.pie), "--outputs", str(out), "-q",
              "--metrics", "structure_distance,psnr,mse,ssim", "--dino-structure-model", backbones["dino_structure"]]
    assert main(common + ["--scores-dir", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    # CPU-only: accelerate's --cpu flag starts a single process; --multi_gpu starts N
    # processes (torchrun underneath) and --device cpu makes them use gloo.
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "lime_edit.cli", *common, "--device", "cpu", "--scores-dir", str(tmp_path / "two")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = read_json(tmp_path / "one/report.json"), read_json(tmp_path / "two/report.json")
    assert one.keys() == two.keys() and one["n"] == two["n"] == 4
    for k, v in one["metrics"].items():
        assert two["metrics"][k] == pytest.approx(v, rel=1e-6)
    assert {k: one[k] for k in one if k != "metrics" and k != "per_category"} == \
        {k: two[k] for k in two if k != "metrics" and k != "per_category"}
    procs = {read_json(p)["process"] for p in (tmp_path / "two/rows").glob("*.json")}
    assert procs == {0, 1}  # both processes scored a share


# --------------------------------------------------------------------------- real (tiny) pipeline
def test_eval_with_tiny_lime_pipeline(tmp_path, data):
    pytest.importorskip("lime_edit.pipeline")
    from lime_edit.testing import tiny_pipeline

    model = tmp_path / "tiny"
    tiny_pipeline(tmp_path / "tok").save_pretrained(model)
    pie = write_piebench_fixture(tmp_path / "pie32", n=1, size=32)
    out = tmp_path / "run"
    rc = main(["eval", "piebench", "--data", str(pie), "--out", str(out), "--model", str(model), "--device", "cpu",
               "--steps", "2", "--localization-steps", "2", "--local-files-only", "--lossless", "-q"])
    man = read_json(out / "manifest.json")
    assert rc == 0, man.get("failures")
    (rec,) = man["samples"].values()
    assert rec["seed"] == 1234 and rec["timings"] and rec["error"] is None
    assert rec["lime_applied"] in (True, False)  # the tiny model may fall back to plain IP2P
    (img,) = list((out / "annotation_images").rglob("*.png"))
    assert Image.open(img).size == (32, 32)


def test_a_level_the_models_unet_lacks_is_refused_once_before_any_sample(tmp_path, data, capsys):
    from lime_edit.testing import tiny_pipeline

    model = tmp_path / "tiny"
    tiny_pipeline(tmp_path / "tok").save_pretrained(model)
    pie = write_piebench_fixture(tmp_path / "pie32", n=2, size=32)
    out = tmp_path / "run"
    capsys.readouterr()                              # the fixtures' own output
    rc = main(["eval", "piebench", "--data", str(pie), "--out", str(out), "--model", str(model), "--device", "cpu",
               "--steps", "2", "--feature-levels", "1024", "--local-files-only", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: --feature-levels 1024: this U-Net has no attention layer"), err
    assert not list(out.rglob("*.png"))
    # the corrected command runs in the same folder (the refused one bound no settings)
    rc = main(["eval", "piebench", "--data", str(pie), "--out", str(out), "--model", str(model), "--device", "cpu",
               "--steps", "2", "--localization-steps", "2", "--local-files-only", "-q"])
    assert rc == 0, capsys.readouterr().err


def test_a_failure_without_a_file_prints_no_empty_field():
    from lime_edit.eval.runner import failure_line

    assert failure_line({"sample": "0010000001", "file": "", "message": "instruction: empty"}) == \
        "failed: 0010000001: instruction: empty"
    assert failure_line({"sample": "7", "file": "a/b.png", "message": "bad\nimage"}) == \
        "failed: 7: a/b.png: bad\\nimage"


@pytest.mark.parametrize("damage", ["corrupt", "deleted"])
def test_a_run_folder_whose_manifest_is_damaged_or_gone_is_not_resumed_blindly(tmp_path, monkeypatch, data, capsys,
                                                                            damage):
    out = tmp_path / "run"
    use_editor(monkeypatch, FakeEditor())
    assert main(["eval", "piebench", "--data", str(data.pie), "--out", str(out), "-q"]) == 0
    if damage == "corrupt":
        (out / "manifest.json").write_text("{broken")
    else:
        (out / "manifest.json").unlink()
    capsys.readouterr()
    assert main(["eval", "piebench", "--data", str(data.pie), "--out", str(out), "-q", "--steps", "3"]) == 2
    assert "settings cannot be checked" in capsys.readouterr().err
    assert main(["eval", "piebench", "--data", str(data.pie), "--out", str(out), "-q", "--steps", "3",
                 "--overwrite"]) == 0


def test_an_out_that_is_a_file_is_one_line(tmp_path, monkeypatch, data, capsys):
    out = tmp_path / "afile"
    out.write_text("x")
    use_editor(monkeypatch, FakeEditor())
    assert main(["eval", "piebench", "--data", str(data.pie), "--out", str(out), "-q"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {out}: output path exists and is not a folder"
