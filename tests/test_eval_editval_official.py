"""EditVal's ``--protocol official``: auto_eval.py's decisions bug for bug, beside the fixed
default. Each expected official value is worked out by hand from deep-ml-research/editval_code
``auto_eval.py`` (cited per case); the fixed value of the same fixture is asserted too, so every
case is one where the two modes disagree."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("torchmetrics")  # the eval extra

from lime_edit import cli as lime_cli  # noqa: E402
from lime_edit.eval import editval as R  # noqa: E402
from lime_edit.eval import score  # noqa: E402
from lime_edit.eval.datasets import read_editval  # noqa: E402
from lime_edit.eval.testing import write_editval_fixture, write_magicbrush_fixture  # noqa: E402

D = R.Detection


# --------------------------------------------------------------------------- each bug, rule level
def test_box_format_alter_parts_boxes_read_as_centre_and_size():
    part, car = D(0, 0.5, (10, 10, 30, 30)), D(1, 0.5, (100, 100, 200, 200))
    # fixed: the part's centre (20, 20) is outside the car's corners (100..200) -> 0
    assert R.decide("alter_parts", "add wheels", [part, car]) == 0
    # official: cx_addition, cy_addition = 10, 10 (its x0, y0); the car read as cx=100, cy=100,
    # w=200, h=200 spans 100 -/+ 100 = 0..200 on both axes; 0 < 10 < 200 -> 1
    assert R.decide("alter_parts", "add wheels", [part, car], protocol="official") == 1


def test_last_box_over_threshold_not_the_best():
    before = [D(0, 0.9, (300, 100, 400, 200))]
    edited = [D(0, 0.9, (0, 50, 50, 100)), D(0, 0.15, (350, 50, 450, 100)), D(0, 0.05, (0, 0, 1, 1))]
    # fixed: best box (score 0.9) centre x 25 < 350 - 200 -> moved left -> 1
    assert R.decide("position_replacement", "left", edited, before) == 1
    # official: the loop keeps the LAST box with score >= 0.1 (the 0.15 one; the 0.05 one is skipped):
    # cx_edited = 350, cx_old = 300; 350 < 300 - 200 is false -> 0
    assert R.decide("position_replacement", "left", edited, before, protocol="official") == 0
    # the same boxes in the other output order: last = (0, 50, 50, 100), 0 < 100 -> 1
    assert R.decide("position_replacement", "left", edited[1::-1], before, protocol="official") == 1


def test_above_below_inverted():
    dog, cup_under = D(1, 0.5, (100, 100, 200, 200)), D(0, 0.5, (120, 250, 180, 300))
    # fixed: the cup's centre y 275 > the dog's 150 (y grows downwards): below -> 1, top -> 0
    assert R.decide("positional_addition", "cup below", [cup_under, dog]) == 1
    assert R.decide("positional_addition", "cup top", [cup_under, dog]) == 0
    # official: mean_y = mean of [cy-h/2, cy-h/2, cy+h/2, cy+h/2] = cy = y0: 250 vs 100.
    # 'below' needs mean_y_addition < mean_y_original: 250 < 100 false -> 0;
    # 'top' needs mean_y_addition > mean_y_original: 250 > 100 -> 1
    assert R.decide("positional_addition", "cup below", [cup_under, dog], protocol="official") == 0
    assert R.decide("positional_addition", "cup top", [cup_under, dog], protocol="official") == 1
    # official knows only below/top/left/right as the LAST word: 'above' falls through to 0
    cup_over = D(0, 0.5, (120, 0, 180, 50))
    assert R.decide("positional_addition", "cup above", [cup_over, dog]) == 1
    assert R.decide("positional_addition", "cup above", [cup_over, dog], protocol="official") == 0


def test_size_crashes_in_official_mode():
    before, bigger = [D(0, 0.5, (300, 100, 400, 200))], [D(0, 0.5, (100, 20, 220, 140))]
    assert R.decide("size", "large", bigger, before) == 1          # fixed: area 14400 > 10000
    # official: evaluate_size calls Image.open(img_) with img_ defined nowhere: NameError, always
    with pytest.raises(R.OfficialCrash, match="img_"):
        R.decide("size", "large", bigger, before, protocol="official")


def test_frames_compared_raw():
    # a 640x480 original and a 512x512 edit: edited pixels x 1.25 = original pixels.
    # zero-width boxes, so x0 == centre and only the frame differs between the modes
    before, after = [D(0, 0.5, (100, 0, 100, 50))], [D(0, 0.5, (300, 0, 300, 50))]
    scale = (640 / 512, 480 / 512)
    # fixed: 300 * 1.25 = 375 > 100 + 200 -> moved right -> 1
    assert R.decide("position_replacement", "right", after, before, scale) == 1
    # official: raw pixels of each image: cx_edited 300 > cx_old + 200 = 300 is false -> 0
    assert R.decide("position_replacement", "right", after, before, scale, protocol="official") == 0


def test_query_text_and_to_words_as_written():
    # alter parts: official asks "a photo of a " + to verbatim
    assert R.queries("alter_parts", "add sweater", "dog", "official") == (
        ["a photo of a add sweater", "a photo of a dog"], None)
    assert R.queries("alter_parts", "add sweater", "dog")[0][0] == "a photo of a sweater"
    # positional addition: official's object is to.split(' ')[0], here the article
    assert R.queries("positional_addition", "a cup left", "dog", "official")[0][0] == "a photo of a a"
    assert R.queries("positional_addition", "a cup left", "dog")[0][0] == "a photo of a cup"
    # position replacement: official compares args.to == 'left' verbatim
    before, moved = [D(0, 0.5, (300, 100, 400, 200))], [D(0, 0.5, (0, 50, 50, 100))]
    assert R.decide("position_replacement", "to the left", moved, before) == 1
    assert R.decide("position_replacement", "to the left", moved, before, protocol="official") == 0


# --------------------------------------------------------------------------- end to end
class FakeOwl:
    """Fixed detections per query text: the wheels box lies outside the car's corners but
    inside the car box as auto_eval.py misreads it (see test_box_format_...)."""

    BOXES = {"wheels": (1.0, 1.0, 3.0, 3.0), "car": (20.0, 20.0, 60.0, 60.0)}

    def __init__(self):
        self.queries: list[list[str]] = []

    def detect(self, image, queries):
        self.queries.append(list(queries))
        return [D(i, 0.5, box) for i, q in enumerate(queries) for word, box in self.BOXES.items() if word in q]


@pytest.fixture
def ev_run(tmp_path, monkeypatch):
    ev = write_editval_fixture(tmp_path / "ev")
    out = tmp_path / "run"
    for e in read_editval(ev)[0]:
        (out / e.output_relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.open(e.image).save(out / e.output_relpath)
    owl = FakeOwl()
    monkeypatch.setattr(score.Backbones, "get", lambda self, name: owl if name == "owlvit" else pytest.fail(name))
    return ev, out, owl


def _score(ev, out, *extra) -> int:
    return lime_cli.main(["score", "editval", "--data", str(ev), "--outputs", str(out), *extra])


def test_official_mode_scores_a_crash_as_a_failed_row_and_names_the_protocol(ev_run, capsys):
    ev, out, owl = ev_run
    assert _score(ev, out) == 0
    fixed = json.loads((out / "scores/editval/report.json").read_text())
    table_fixed = capsys.readouterr().out
    assert fixed["protocol"] == "fixed" and "protocol fixed" in table_fixed
    assert fixed["metrics"]["alter_parts"] == 0.0 and fixed["metrics"]["size"] == 0.0 and fixed["n_failed"] == 0
    assert ["a photo of a wheels", "a photo of a car"] in owl.queries

    owl.queries.clear()
    assert _score(ev, out, "--protocol", "official") == 1      # the size sample failed; the run went on
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    rep = json.loads((out / "scores/editval-official/report.json").read_text())
    assert rep["protocol"] == "official" and "protocol official" in captured.out
    assert rep["metrics"]["alter_parts"] == 1.0                 # the misread box (FakeOwl)
    assert ["a photo of a add wheels", "a photo of a car"] in owl.queries
    assert rep["n"] == 5 and rep["n_failed"] == 1 and rep["metrics"]["size"] == "nan"
    # the average leaves size out, and the table says it is not the quoted six-type average
    assert "size" not in rep["average_over"] and len(rep["average_over"]) == 5
    assert rep["metrics"]["average"] == pytest.approx(1 / 5) and "over 5 of 6 edit types" in captured.out
    (failure,) = rep["failures"]
    assert failure["sample"] == "size/1234/large" and "img_" in failure["message"]
    with open(out / "scores/editval-official/rows.csv") as f:
        status = {r["key"]: r["status"] for r in csv.DictReader(f)}
    assert status[failure["sample"]] == "failed" and list(status.values()).count("ok") == 5
    # the fixed run's rows and report are untouched
    assert json.loads((out / "scores/editval/report.json").read_text()) == fixed


def test_rows_of_one_mode_are_not_reused_in_the_other(ev_run, tmp_path):
    ev, out, owl = ev_run
    shared = tmp_path / "shared-scores"
    for protocol, expected in (("fixed", 0.0), ("official", 1.0), ("fixed", 0.0)):
        _score(ev, out, "-q", "--protocol", protocol, "--scores-dir", str(shared))
        rep = json.loads((shared / "report.json").read_text())
        assert rep["protocol"] == protocol and rep["metrics"]["alter_parts"] == expected, protocol
    n_calls = len(owl.queries)
    _score(ev, out, "-q", "--scores-dir", str(shared))          # same rules again: rows reused
    assert len(owl.queries) == n_calls


# --------------------------------------------------------------------------- --protocol per benchmark
def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if "error" in ln]
    assert len(lines) == 1, err
    return lines[0]


def test_protocol_of_another_benchmark_is_a_usage_error(tmp_path, capsys):
    mb, ev = write_magicbrush_fixture(tmp_path / "mb"), write_editval_fixture(tmp_path / "ev")
    run = tmp_path / "run"
    run.mkdir()
    assert lime_cli.main(["score", "magicbrush", "--data", str(mb), "--outputs", str(run),
                          "--protocol", "official"]) == 2
    line = _one_error_line(capsys)
    assert "--protocol official" in line and "magicbrush" in line and "single" in line, line
    assert lime_cli.main(["score", "editval", "--data", str(ev), "--outputs", str(run), "--protocol", "multi"]) == 2
    line = _one_error_line(capsys)
    assert "--protocol multi" in line and "editval" in line and "official" in line, line
    # generation is the same under both EditVal protocols: eval points to score
    assert lime_cli.main(["eval", "editval", "--data", str(ev), "--out", str(tmp_path / "gen"),
                          "--protocol", "official"]) == 2
    line = _one_error_line(capsys)
    assert "--protocol official" in line and "lime-edit score editval" in line, line
    assert not (tmp_path / "gen").exists() and list(run.iterdir()) == []
