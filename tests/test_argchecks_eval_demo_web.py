"""Argument checks of ``eval``/``score``, ``train-demo`` and ``serve``: bad values are one-line
usage errors (exit 2) naming the flag, before anything is written, loaded or started; a
train-demo interrupt says how train-demo resumes, and a resume with other results-changing
settings is refused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lime_edit import cli as lime_cli


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(("error:", "lime-edit"))]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- serve --port
@pytest.mark.parametrize("port", ["70000", "65536", "-1", "0", "abc"])
def test_serve_port_outside_1_to_65535_is_a_usage_error(tmp_path, capsys, monkeypatch, no_model_load, port):
    from lime_edit.web import cli as web_cli

    def probe(*a, **k):
        raise AssertionError("a port was probed")

    monkeypatch.setattr(web_cli, "_port_problem", probe)
    assert lime_cli.main(["serve", "--model", str(tmp_path / "never-loaded"), "--port", port]) == 2
    line = _one_error_line(capsys)
    assert "argument --port" in line and port in line, line


def test_serve_port_range_ends_are_accepted():
    import argparse

    from lime_edit.web.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["serve", "--port", "1"]).port == 1
    assert parser.parse_args(["serve", "--port", "65535"]).port == 65535


# ----------------------------------------------------------------------------- eval / score
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from lime_edit.eval.testing import write_editval_fixture, write_magicbrush_fixture, write_piebench_fixture

    root = tmp_path_factory.mktemp("evaldata")
    return SimpleNamespace(mb=write_magicbrush_fixture(root / "mb"),
                           pie=write_piebench_fixture(root / "pie", n=4, size=64),
                           ev=write_editval_fixture(root / "ev"))


@pytest.fixture()
def no_eval_model(monkeypatch):
    from lime_edit.eval import generate

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(generate, "_load_pipeline", refuse)


class _Editor:
    """Stands in for LimePipeline in eval: returns its input."""

    def __init__(self):
        self.instructions: list[str] = []

    def edit(self, image, instruction, mask="auto", seed=0, **overrides):
        self.instructions.append(instruction)
        return SimpleNamespace(image=image.copy(), warnings=[], timings={}, lime_applied=mask == "auto", seed=seed)


@pytest.mark.parametrize("bench, extra, flag, shows", [
    ("magicbrush", ["--limit", "-1"], "--limit -1: must be at least 1", ""),
    ("magicbrush", ["--limit", "0"], "--limit 0: must be at least 1", ""),
    ("piebench", ["--categories", "99"], "--categories '99'", "9 (change style)"),
    ("piebench", ["--categories", "abc"], "--categories 'abc'", "0 (random)"),
    ("piebench", ["--categories", "1,abc"], "--categories '1,abc'", "0 (random)"),
    ("piebench", ["--categories", ","], "--categories ','", "0 (random)"),
    ("editval", ["--edit-types", "bogus"], "--edit-types 'bogus'", "viewpoint"),
    ("editval", ["--edit-types", "size,bogus"], "--edit-types 'size,bogus'", "object_addition"),
])
def test_eval_selection_errors_name_the_flag_and_write_nothing(tmp_path, capsys, data, no_eval_model,
                                                                 bench, extra, flag, shows):
    out = tmp_path / "run"
    folder = {"magicbrush": data.mb, "piebench": data.pie, "editval": data.ev}[bench]
    assert lime_cli.main(["eval", bench, "--data", str(folder), "--out", str(out), *extra]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: ") and flag in line and shows in line, line
    assert not out.exists()


@pytest.mark.parametrize("bench, extra, flag, shows", [
    ("magicbrush", ["--limit", "-2"], "--limit -2: must be at least 1", ""),
    ("piebench", ["--categories", "10"], "--categories '10'", "9 (change style)"),
    ("editval", ["--edit-types", "color"], "--edit-types 'color'", "alter_parts"),   # not scored automatically
])
def test_score_selection_errors_name_the_flag_and_write_nothing(tmp_path, capsys, data, bench, extra, flag, shows):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    folder = {"magicbrush": data.mb, "piebench": data.pie, "editval": data.ev}[bench]
    assert lime_cli.main(["score", bench, "--data", str(folder), "--outputs", str(outputs), *extra]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: ") and flag in line and shows in line, line
    assert list(outputs.iterdir()) == []


def test_score_edit_types_all_means_every_scored_type(tmp_path, monkeypatch, data):
    from lime_edit.eval import score

    seen = {}

    def run_score(args):
        seen["types"] = args.edit_types
        return 0

    monkeypatch.setattr(score, "run_score", run_score)
    assert lime_cli.main(["score", "editval", "--data", str(data.ev), "--outputs", str(tmp_path),
                          "--edit-types", "all"]) == 0
    assert seen["types"] is None          # the default: the six scored automatically


def test_eval_categories_with_spaces_select_those_categories(tmp_path, monkeypatch, data):
    from lime_edit.eval import generate

    editor = _Editor()
    monkeypatch.setattr(generate, "_load_pipeline", lambda args, device: editor)
    out = tmp_path / "run"
    assert lime_cli.main(["eval", "piebench", "--data", str(data.pie), "--out", str(out), "-q",
                          "--categories", "0, 1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_done"] == 2 and len(editor.instructions) == 2


def test_eval_help_gives_the_protocol_defaults(capsys):
    from lime_edit.eval.generate import PROTOCOL_SETTINGS

    assert lime_cli.main(["eval", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    steps = text.rsplit("--steps STEPS", 1)[1].split("--guidance SCALE", 1)[0]     # the option list, not usage
    assert "default 30" not in steps
    for bench, name in (("magicbrush", "MagicBrush"), ("piebench", "PIE-Bench"), ("editval", "EditVal")):
        assert name in steps and str(PROTOCOL_SETTINGS[bench]["num_inference_steps"]) in steps, steps
    guidance = text.rsplit("--guidance SCALE", 1)[1].split("--image-guidance SCALE", 1)[0]
    assert str(PROTOCOL_SETTINGS["piebench"]["guidance_scale"]) in guidance and "LIME default 2.0" not in guidance


# ----------------------------------------------------------------------------- train-demo
@pytest.fixture()
def no_training(monkeypatch):
    from lime_edit.demo import train

    def refuse(args):
        raise AssertionError("training started")

    monkeypatch.setattr(train, "main", refuse)


@pytest.mark.parametrize("extra, flag", [
    (["--attn-loss", "nan"], "--attn-loss nan"),
    (["--attn-loss", "-1"], "--attn-loss -1"),
    (["--attn-loss", "inf"], "--attn-loss inf"),
    (["--budget-min", "-1", "0", "0"], "--budget-min -1.0 0.0 0.0"),
    (["--budget-min", "0", "nan", "0"], "--budget-min 0.0 nan 0.0"),
    (["--budget-min", "0", "0", "inf"], "--budget-min 0.0 0.0 inf"),
])
def test_train_demo_bad_floats_are_usage_errors(tmp_path, capsys, no_training, extra, flag):
    out = tmp_path / "o"
    assert lime_cli.main(["train-demo", "--out", str(out), *extra]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: ") and flag in line, line
    assert not out.exists()


def test_train_demo_interrupt_says_how_train_demo_resumes(tmp_path, capsys, monkeypatch):
    from lime_edit.demo import train

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "main", interrupted)
    assert lime_cli.main(["train-demo", "--out", str(tmp_path / "o")]) == lime_cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "finished inputs are skipped" not in err
    assert "rerun the same command" in err and "finished stages are reused" in err and "checkpoint" in err


_TINY = ["--n-train", "12", "--vae-steps", "2", "--t2i-steps", "2", "--edit-steps", "2", "--batch", "2",
         "--recommend-n", "0", "--threads", "1", "--ckpt-every", "1", "--input-pass-from", "0"]


def test_train_demo_resume_with_other_results_changing_settings_is_refused(tmp_path, capsys, monkeypatch):
    import torch

    from lime_edit.demo import train

    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        assert lime_cli.main(["train-demo", "--out", str(out), *_TINY]) == 0     # a real (tiny) run: its train.log
    finally:
        torch.set_num_threads(threads)
    assert (out / "stage_a_vae" / "config.json").is_file()
    capsys.readouterr()

    calls = []
    monkeypatch.setattr(train, "main", lambda args: calls.append(args) or 0)
    for flag, value in (("--attn-loss", "0"), ("--seed", "1"), ("--n-train", "13"), ("--batch", "3")):
        argv = [*_TINY, flag, value]
        assert lime_cli.main(["train-demo", "--out", str(out), *argv]) == 2
        line = _one_error_line(capsys)
        assert line.startswith(f"error: {flag} ") and "new --out" in line, line
    assert calls == []
    log = (out / "train.log").read_text()
    # the same settings resume; so do a longer editor run and the other continuation settings
    assert lime_cli.main(["train-demo", "--out", str(out), *_TINY]) == 0
    assert lime_cli.main(["train-demo", "--out", str(out), *_TINY, "--edit-steps", "4", "--ema-decay", "0.9",
                          "--attn-loss", "0.5", "--threads", "2"]) == 0
    assert len(calls) == 2 and (out / "train.log").read_text() == log
    # a folder that reused nothing yet (no stage saved) may start with any settings
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "train.log").write_text(log)
    assert lime_cli.main(["train-demo", "--out", str(fresh), *_TINY, "--attn-loss", "0"]) == 0


def test_train_demo_shows_no_library_loading_bars_unless_verbose(tmp_path):
    """A resumed run loads its stages with from_pretrained: transformers' "Loading weights" bars
    stay out of the output (and of a nohup log) unless -v. In a fresh process, as a user runs it:
    the libraries are imported only after the command starts."""
    import subprocess
    import sys

    import torch

    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        assert lime_cli.main(["train-demo", "--out", str(out), *_TINY]) == 0
    finally:
        torch.set_num_threads(threads)
    proc = subprocess.run([sys.executable, "-m", "lime_edit.cli", "train-demo", "--out", str(out), *_TINY,
                           "--edit-steps", "3"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from the pipeline checkpoint" in proc.stdout
    assert "Loading" not in proc.stdout + proc.stderr
