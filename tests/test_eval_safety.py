"""``lime-edit eval`` never writes outside its run folder nor into the dataset, whatever
the dataset's records say (traversal, absolute paths, symlinks), and a resumed run
after a kill between an image and its record gives full records (issue 12, items 1, 4)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from lime_edit import cli as lime_cli
from lime_edit.errors import LimeEditError
from lime_edit.eval import generate
from lime_edit.eval.cli import register
from lime_edit.eval.runner import RowStore
from lime_edit.eval.testing import (scene, write_editval_fixture, write_magicbrush_fixture,
                                    write_piebench_fixture)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lime-edit")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return lime_cli.EXIT_INTERRUPTED
    except LimeEditError as err:
        print(f"error: {err}", file=sys.stderr)
        return lime_cli.EXIT_USAGE


class FakeEditor:
    """Brightens the image by 10; raises KeyboardInterrupt after ``interrupt_after`` calls."""

    def __init__(self, interrupt_after: int | None = None):
        self.calls: list[str] = []
        self.interrupt_after = interrupt_after

    def edit(self, image, instruction, mask="auto", seed=0, **overrides):
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(instruction)
        out = np.clip(np.asarray(image).astype(np.int16) + 10, 0, 255).astype(np.uint8)
        return SimpleNamespace(image=Image.fromarray(out), warnings=["w"], timings={"edit": 0.0},
                               lime_applied=True, seed=seed)


def use_editor(monkeypatch, editor=None):
    editor = editor or FakeEditor()
    monkeypatch.setattr(generate, "_load_pipeline", lambda args, device: editor)
    return editor


def snapshot(root: Path, skip: Path) -> dict[str, str]:
    """Every file under ``root`` except under ``skip``: relative path -> content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        for f in filenames:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "?"
    return out


def read_json(p):
    return json.loads(Path(p).read_text())


def test_piebench_paths_out_of_the_run_folder_are_refused(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    pie = write_piebench_fixture(data / "pie", n=2, size=32)
    mapping = read_json(pie / "mapping_file.json")
    k0 = sorted(mapping)[0]
    (data / "evil_src").mkdir()
    scene(7, (32, 32)).save(data / "evil_src" / "x.jpg")    # the old reader found it, the old writer wrote
    mapping["evil_rel"] = dict(mapping[k0], image_path="../../evil_src/x.jpg")     # to RUN/../../evil_src/
    mapping["evil_dots"] = dict(mapping[k0], image_path="0_category/../../../evil_src/x.jpg")
    mapping["evil_abs"] = dict(mapping[k0], image_path=str(pie / "annotation_images" / mapping[k0]["image_path"]))
    (pie / "mapping_file.json").write_text(json.dumps(mapping))
    out = tmp_path / "run" / "pie"
    before = snapshot(tmp_path, out)
    ed = use_editor(monkeypatch)
    for extra in ([], ["--overwrite"]):
        assert main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q", *extra]) == 1
        err = capsys.readouterr().err.splitlines()  # one line per refused record, even with -q
        assert len(err) == 3 and all(e.startswith("error: evil_") and "image_path" in e for e in err), err
        assert snapshot(tmp_path, out) == before    # nothing outside the run folder changed or appeared
        man = read_json(out / "manifest.json")
        assert man["n_done"] == 2 and man["n_failed"] == 3
        fails = {f["sample"]: f["message"] for f in man["failures"]}
        assert set(fails) == {"evil_rel", "evil_dots", "evil_abs"}
        assert all("image_path" in m and "\n" not in m for m in fails.values())
    assert len(ed.calls) == 4  # 2 good samples, twice (the second run with --overwrite)


def test_magicbrush_and_editval_ids_cannot_leave_the_run_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    mb = write_magicbrush_fixture(data / "mb")
    sessions = read_json(mb / "test/edit_sessions.json")
    evil = data / "mb" / "mbevil"                    # = test/images/../../mbevil
    evil.mkdir()
    scene(1).save(evil / "e-input.png")
    scene(2).save(evil / "e-output1.png")
    sessions["../../mbevil"] = [{"input": "e-input.png", "output": "e-output1.png", "instruction": "make it red"}]
    sessions["404"] = [{"input": "../101/101-input.png", "output": "/etc/passwd", "instruction": "x"}]
    (mb / "test/edit_sessions.json").write_text(json.dumps(sessions))
    out = tmp_path / "run" / "mb"
    before = snapshot(tmp_path, out)
    use_editor(monkeypatch)
    assert main(["eval", "magicbrush", "--data", str(mb), "--out", str(out), "-q", "--overwrite"]) == 1
    assert snapshot(tmp_path, out) == before
    man = read_json(out / "manifest-single.json")
    fails = {f["sample"]: f["message"] for f in man["failures"]}
    assert set(fails) == {"../../mbevil", "404"} and "img_id" in fails["../../mbevil"]
    assert "turn 1 input" in fails["404"] and man["n_done"] == 3

    ev = write_editval_fixture(data / "ev")
    obj = read_json(ev / "object.json")
    obj["dog"]["1234"]["../../evx"] = {"from": [], "to": ["ball"]}
    obj["dog"]["../1234"] = {"object_addition": {"from": [], "to": ["ball"]}}
    (ev / "object.json").write_text(json.dumps(obj))
    out = tmp_path / "run" / "ev"
    before = snapshot(tmp_path, out)
    assert main(["eval", "editval", "--data", str(ev), "--out", str(out), "-q", "--edit-types", "all",
                 "--overwrite"]) == 1
    assert snapshot(tmp_path, out) == before
    fails = {f["sample"]: f["message"] for f in read_json(out / "manifest.json")["failures"]}
    assert "edit_type" in fails["../../evx/1234"] and "image_id" in fails["dog/../1234"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinks_in_the_run_folder_cannot_redirect_writes(tmp_path, monkeypatch, capsys):
    pie = write_piebench_fixture(tmp_path / "pie", n=3, size=32)
    keys = sorted(read_json(pie / "mapping_file.json"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "run"
    (out / "annotation_images").mkdir(parents=True)
    # a category folder linked into the dataset, another one out of the run folder,
    # and one output file linked to its own source image
    os.symlink(pie / "annotation_images" / "0_category", out / "annotation_images" / "0_category")
    os.symlink(elsewhere, out / "annotation_images" / "1_category")
    (out / "annotation_images" / "2_category").mkdir()
    src2 = pie / "annotation_images" / "2_category" / f"{keys[2]}.jpg"
    os.symlink(src2, out / "annotation_images" / "2_category" / f"{keys[2]}.jpg")
    before = snapshot(tmp_path, out)
    ed = use_editor(monkeypatch)
    assert main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q", "--overwrite"]) == 1
    assert ed.calls == [] and snapshot(tmp_path, out) == before and not list(elsewhere.iterdir())
    err = capsys.readouterr().err
    assert err.count("error: ") == 3 and "inside the dataset folder" in err and "outside the run folder" in err
    man = read_json(out / "manifest.json")
    assert man["n_done"] == 0 and {f["sample"] for f in man["failures"]} == set(keys)
    # the whole run folder linked into the dataset
    os.symlink(pie, tmp_path / "link")
    assert main(["eval", "piebench", "--data", str(pie), "--out", str(tmp_path / "link" / "run"), "-q"]) == 2
    assert "inside the dataset folder" in capsys.readouterr().err and not (pie / "run").exists()


def test_run_folder_inside_the_dataset_is_refused(tmp_path, monkeypatch, capsys):
    pie = write_piebench_fixture(tmp_path / "pie", n=1, size=32)
    before = snapshot(tmp_path, tmp_path / "none")
    use_editor(monkeypatch)
    for out in (pie, pie / "outputs"):
        assert main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q", "--overwrite"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "inside the dataset folder" in err[0]
    assert snapshot(tmp_path, tmp_path / "none") == before


def test_guard_rejects_escapes_and_dataset_paths(tmp_path):
    g = generate.OutputGuard(tmp_path / "run", [tmp_path / "data"])
    assert g.problem(tmp_path / "run" / "a" / "b.png") is None
    assert "outside" in g.problem(tmp_path / "run" / ".." / "x.png")
    assert "outside" in g.problem(tmp_path / "run")
    assert "outside" in g.problem("/etc/passwd")
    g2 = generate.OutputGuard(tmp_path, [tmp_path / "data"])
    assert "dataset" in g2.problem(tmp_path / "data" / "x.png")
    with pytest.raises(LimeEditError):
        g2.check(tmp_path / "data" / "x.png")


def test_row_store_names_stay_one_component(tmp_path):
    store = RowStore(tmp_path)
    for key in ("..", "../../x", ".hidden", "a/b", "x" * 400, "\ud800"):
        p = store.path(key)
        assert p.parent == tmp_path and not p.name.startswith(".") and len(p.name.encode()) < 255
        store.put(key, {"v": 1})
        assert store.get(key)["v"] == 1


# --------------------------------------------------------------------------- item 4: full records after a kill
def test_image_without_its_record_is_redone_not_marked_skipped(tmp_path, monkeypatch):
    pie = write_piebench_fixture(tmp_path / "pie", n=3, size=32)
    out = tmp_path / "run"
    use_editor(monkeypatch)
    assert main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q"]) == 0
    key = sorted(read_json(pie / "mapping_file.json"))[1]
    full = read_json(out / "manifest.json")["samples"][key]
    RowStore(out / ".records" / "piebench").path(key).unlink()  # killed between the image and its record
    ed = use_editor(monkeypatch)
    assert main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q"]) == 0
    assert len(ed.calls) == 1
    rec = read_json(out / "manifest.json")["samples"][key]
    assert "skipped" not in rec
    assert rec["instruction"] == full["instruction"] and rec["seed"] == 1234 and rec["warnings"] == ["w"]


def test_interrupted_magicbrush_session_resumes_with_full_turn_records(tmp_path, monkeypatch):
    mb = write_magicbrush_fixture(tmp_path / "mb")
    out = tmp_path / "run"
    # calls: 101 turn 1, 202 turns 1-2, 303 turn 1, then Ctrl-C in 303 turn 2
    use_editor(monkeypatch, FakeEditor(interrupt_after=4))
    assert main(["eval", "magicbrush", "--data", str(mb), "--out", str(out), "-q"]) == 130
    assert (out / "303/303_1.png").is_file() and not (out / "303/303_inde_2.png").exists()
    ed = use_editor(monkeypatch)
    assert main(["eval", "magicbrush", "--data", str(mb), "--out", str(out), "-q"]) == 0
    assert len(ed.calls) == 2  # 303 turns 2 and 3; turn 1 kept with its record
    turns = read_json(out / "manifest-single.json")["samples"]["303"]["turns"]
    assert [t["turn"] for t in turns] == [1, 2, 3]
    for t in turns:
        assert "skipped" not in t and t["instruction"] and t["seed"] == 0 and t["warnings"] == ["w"]
    # killed between turn 1's image and its record: that turn alone is redone
    turn_store = RowStore(out / ".records" / "magicbrush-outputs")
    turn_store.path("303/303_1.png").unlink()
    RowStore(out / ".records" / "single").path("303").unlink()
    ed = use_editor(monkeypatch)
    assert main(["eval", "magicbrush", "--data", str(mb), "--out", str(out), "-q"]) == 0
    assert len(ed.calls) == 1
    # the multi-turn protocol reuses turn 1 with its full record
    ed = use_editor(monkeypatch)
    assert main(["eval", "magicbrush", "--protocol", "multi", "--data", str(mb), "--out", str(out), "-q"]) == 0
    assert len(ed.calls) == 3
    first = read_json(out / "manifest-multi.json")["samples"]["303"]["turns"][0]
    assert first["turn"] == 1 and first["instruction"] and "skipped" not in first


def test_run_folder_next_to_the_benchmark_root_is_fine(tmp_path, monkeypatch):
    # --data DATA with the MagicBrush split in DATA/test: DATA/runs holds no dataset file
    mb = write_magicbrush_fixture(tmp_path / "mb")
    use_editor(monkeypatch)
    assert main(["eval", "magicbrush", "--data", str(mb), "--out", str(mb / "runs"), "-q"]) == 0
    assert main(["eval", "magicbrush", "--data", str(mb), "--out", str(mb / "test" / "runs"), "-q"]) == 2


def test_dataset_fields_that_are_not_text_are_per_sample_problems(tmp_path):
    import json

    from lime_edit.errors import LimeEditError
    from lime_edit.eval.datasets import read_magicbrush, read_piebench
    from lime_edit.eval.testing import write_magicbrush_fixture, write_piebench_fixture

    pie = write_piebench_fixture(tmp_path / "pie", n=2, size=32)
    mapping = json.loads((pie / "mapping_file.json").read_text())
    bad_key = sorted(mapping)[0]
    mapping[bad_key]["editing_instruction"] = None             # was edited as the instruction "None"
    (pie / "mapping_file.json").write_text(json.dumps(mapping))
    items, problems = read_piebench(pie)
    assert [p.sample for p in problems] == [bad_key] and "editing_instruction is not text" in problems[0].message
    assert len(items) == 1

    mb = write_magicbrush_fixture(tmp_path / "mb")
    sessions_file = mb / "test" / "edit_sessions.json"
    sessions = json.loads(sessions_file.read_text())
    img_id = sorted(sessions)[0]
    sessions[img_id][0]["instruction"] = {"x": 1}
    sessions_file.write_text(json.dumps(sessions))
    _, problems = read_magicbrush(mb)
    assert [p.sample for p in problems] == [img_id] and "turn 1 instruction is not text" in problems[0].message
    (mb / "test" / "local_descriptions.json").write_text("[]")
    with pytest.raises(LimeEditError, match=r"local_descriptions\.json: expected an object"):
        read_magicbrush(mb)
