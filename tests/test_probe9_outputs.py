"""Probe 9: "outputs are written atomically and work is never lost" for the CLI.

Each test failed before its fix:
- an interrupt while the CLI imports (``importlib.metadata`` in ``--version``'s text, torch
  in ``edit``) gave a traceback (an ``UnboundLocalError``, or the message printer importing
  torch again) instead of ``interrupted`` and exit 130;
- temporary files of a run killed while writing (SIGKILL, power loss: no cleanup runs)
  stayed in the output folder for ever;
- two runs on one output folder: a set another run published after this one planned (over
  an interrupted run's pending record) was silently replaced, and checking and publishing
  were not one step against the other run (no lock), so both could publish one input.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lime_edit import cli
from lime_edit import io as lio

from test_cli import fake, imgs  # noqa: F401  (the fake pipeline and two input images, as fixtures)


def run(argv, capsys):
    try:
        code = cli.main([str(a) for a in argv])
    except KeyboardInterrupt:       # would end the pytest session
        pytest.fail("KeyboardInterrupt escaped cli.main")
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


def _interrupt_imports(monkeypatch, hit):
    real = builtins.__import__

    def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
        if hit(name, (globals or {}).get("__package__"), tuple(fromlist or ()), level):
            raise KeyboardInterrupt
        return real(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", fake_import)


# --------------------------------------------------------------------------- interrupts while importing
def test_interrupt_while_importing_metadata_for_the_parser_is_an_interrupt(tmp_path, imgs, fake, monkeypatch,
                                                                            capsys):
    _interrupt_imports(monkeypatch, lambda name, pkg, fromlist, level: name == "importlib.metadata")
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "-o", tmp_path / "out"], capsys)
    assert code == 130 and "interrupted" in err and "UnboundLocalError" not in err


def test_interrupt_while_importing_torch_is_reported_without_importing_it_again(tmp_path, imgs, fake,
                                                                                monkeypatch, capsys):
    # `from . import io` (which imports torch) is interrupted; the report must not import it again
    # (a half-imported torch then fails with AttributeError, or aborts in its C++ code)
    def io_import(name, pkg, fromlist, level):
        return (level == 1 and pkg == "lime_edit" and (name == "io" or "io" in fromlist)) or name == "lime_edit.io"

    _interrupt_imports(monkeypatch, io_import)
    code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "-o", tmp_path / "out"], capsys)
    assert code == 130 and "interrupted" in err


# --------------------------------------------------------------------------- temporary files of a killed run
def test_a_rerun_removes_the_temporary_files_a_killed_run_left(tmp_path, imgs, fake, capsys):
    out = tmp_path / "out"
    out.mkdir()
    # a real writer killed after writing its temporary file (no cleanup can run on SIGKILL)
    code = ("import os, signal, sys; from pathlib import Path; from lime_edit import io; "
            "io._write_temp(Path(sys.argv[1]), b'half'); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(out / "a_mask.png")], timeout=120)
    assert proc.returncode == -9
    left = [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other_live = out / f".a_overlay.png.{alive.pid}-abcdefgh.tmp"
        other_live.write_bytes(b"x")
        unrelated = out / ".notes.txt.1-abcdefgh.tmp"               # not an output of this input
        unrelated.write_bytes(b"x")
        code, _, err = run(["edit", imgs / "a.png", "-i", "x y", "-o", out], capsys)
        assert code == 0, err
        assert not left[0].exists()
        assert other_live.exists() and unrelated.exists()
    finally:
        alive.kill()
        alive.wait()
    rec = json.loads((out / "a.json").read_text())
    assert all((out / n).is_file() for n in rec["outputs"].values())


# --------------------------------------------------------------------------- two runs, one folder
def test_a_set_published_by_another_run_after_planning_is_not_replaced(tmp_path, imgs, fake, monkeypatch,
                                                                       capsys):
    out = tmp_path / "out"
    # a run of "make it blue" interrupted mid-publish leaves a pending record
    assert run(["edit", imgs / "a.png", "-i", "make it blue", "-o", out], capsys)[0] == 0
    rec = json.loads((out / "a.json").read_text())
    (out / "a.json").write_text(json.dumps({**rec, "pending": True, "replaces": []}))
    # run B ("make it red") plans a redo; while it computes, run A ("make it green") redoes
    # and publishes the same input completely
    real_edit, nested = fake.edit, []

    def edit(image, instruction, **kw):
        if instruction == "make it red" and not nested:
            nested.append(run(["edit", imgs / "a.png", "-i", "make it green", "-o", out], capsys))
        return real_edit(image, instruction, **kw)

    monkeypatch.setattr(fake, "edit", edit)
    code, stdout, err = cli.main([str(a) for a in ["edit", imgs / "a.png", "-i", "make it red", "-o", out]]), \
        *capsys.readouterr()
    assert nested[0][0] == 0 and nested[0][1].strip() == str(out / "a_edited.png")   # A reported it done
    assert code == 1 and "output appeared while running" in err and stdout == ""
    rec = json.loads((out / "a.json").read_text())
    assert rec["instruction"] == "make it green" and not rec.get("pending")            # A's work kept


def _lock_is_held(folder: Path) -> bool:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # another open file description: conflicts
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_planning_and_publishing_hold_the_output_folder_lock(tmp_path, imgs, fake, monkeypatch, capsys):
    out = tmp_path / "out"
    seen = {"state": [], "publish": []}
    real_state, real_publish = lio.OutputPlan.state, lio.publish_outputs

    def state(self, request):
        seen["state"].append(_lock_is_held(self.out_dir))
        return real_state(self, request)

    def publish(files, record_path, record, replaces=()):
        seen["publish"].append(_lock_is_held(Path(record_path).parent))
        return real_publish(files, record_path, record, replaces)

    monkeypatch.setattr(lio.OutputPlan, "state", state)
    monkeypatch.setattr(lio, "publish_outputs", publish)
    code, _, err = run(["edit", imgs, "-i", "x y", "-o", out], capsys)
    assert code == 0, err
    assert seen["state"] == [True, True] and seen["publish"] == [True, True]
    assert not _lock_is_held(out)                      # released when the run ends
