"""benchmarks/bench_paired.py: per-scene paired differences of a bench folder's rows."""

import json
from pathlib import Path

import pytest
from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def bp():
    return load_benchmark_script("bench_paired")


def _write(folder: Path, rows):
    """Rows as bench synthetic writes them: the metrics a test does not set are 0."""
    from lime_edit.demo.bench import METRIC_KEYS

    folder.mkdir(exist_ok=True)
    rows = [{**{k: 0.0 for k in METRIC_KEYS}, **r} for r in rows]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_paired_differences_and_hit_split(bp, tmp_path, capsys):
    rows = []
    for s, (iou, bg_a, bg_b, ok_a, ok_b) in enumerate([(0.8, 0.04, 0.05, 1, 1), (0.7, 0.02, 0.05, 1, 0),
                                                      (0.0, 0.06, 0.05, 0, 0)]):
        rows.append({"method": "lime", "seed": s, "roi_iou": iou, "bg_l1": bg_a, "in_mask_l1": 0.1,
                     "edit_success": ok_a})
        rows.append({"method": "ip2p", "seed": s, "roi_iou": None, "bg_l1": bg_b, "in_mask_l1": 0.2,
                     "edit_success": ok_b})
    rows.append({"method": "lime", "seed": 3, "roi_iou": 0.9, "bg_l1": 0.0, "in_mask_l1": 0.0, "edit_success": 1})
    _write(tmp_path, rows)                      # seed 3 has no ip2p row: not paired
    out = tmp_path / "r.json"
    assert bp.main([str(tmp_path), "--pairs", "lime:ip2p", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())["pairs"]["lime:ip2p"]
    assert rep["all"]["n"] == 3
    assert rep["all"]["bg_l1"]["diff"] == pytest.approx((-0.01 - 0.03 + 0.01) / 3)
    assert rep["all"]["bg_l1"]["relative"] == pytest.approx(-0.01 / 0.05)
    assert rep["all"]["edit_success"]["diff"] == pytest.approx(1 / 3)
    assert rep["hit"]["n"] == 2 and rep["miss"]["n"] == 1
    assert rep["miss"]["bg_l1"]["diff"] == pytest.approx(0.01)
    assert "lime - ip2p (n=3)" in capsys.readouterr().out

    # every row's means by the RoI IoU of --split-by, on the scenes every row has
    assert bp.main([str(tmp_path), "--pairs", "lime:ip2p", "--by-iou", "0.75,0.5", "--json", str(out)]) == 0
    buckets = json.loads(out.read_text())["by_iou"]
    assert [(b["iou_from"], b["iou_to"], b["n"]) for b in buckets] == [(0.0, 0.5, 1), (0.5, 0.75, 1), (0.75, 1.0, 1)]
    assert buckets[0]["means"]["lime"]["bg_l1"] == pytest.approx(0.06)
    assert buckets[1]["means"]["ip2p"]["edit_success"] == 0
    assert buckets[2]["means"]["lime"]["in_mask_l1"] == pytest.approx(0.1)
    assert "[0.75, 1.00] n=1" in capsys.readouterr().out


def test_bad_folder_and_pairs_are_one_line_errors(bp, tmp_path, capsys):
    assert bp.main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "samples.jsonl: not found" in err[0]
    _write(tmp_path, [{"method": "lime", "seed": 0, "bg_l1": 0.1, "in_mask_l1": 0.1, "edit_success": 1}])
    assert bp.main([str(tmp_path), "--pairs", "lime:ip2p"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --pairs: no rows for ip2p") and len(err.strip().splitlines()) == 1
    assert bp.main([str(tmp_path), "--pairs", "lime"]) == 2
    assert bp.main([str(tmp_path), "--pairs", "lime:lime", "--by-iou", "0.1,high"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --by-iou ")
    for damage, words in [("{not json\n", "samples.jsonl:1: not a bench synthetic row"),
                          ('{"method": "lime", "seed": 0}\n', "samples.jsonl:1: not a bench synthetic row")]:
        (tmp_path / "samples.jsonl").write_text(damage)
        assert bp.main([str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    (tmp_path / "samples.jsonl").write_bytes(b"\xff\xfe\n")
    assert bp.main([str(tmp_path)]) == 2 and "unreadable" in capsys.readouterr().err
    _write(tmp_path, [{"method": "lime", "seed": 0, "bg_l1": None}])
    assert bp.main([str(tmp_path)]) == 2 and "the lime row of scene 0 has no bg_l1" in capsys.readouterr().err
    _write(tmp_path, [{"method": m, "seed": 0} for m in ("lime", "ip2p")])
    assert bp.main([str(tmp_path), "--pairs", "lime:ip2p", "--json", str(tmp_path / "no" / "such" / "x.json")]) == 0
    assert bp.main([str(tmp_path), "--pairs", "lime:ip2p", "--json", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: --json {tmp_path}: cannot write")


def test_a_validation_folder_says_so(bp, tmp_path, capsys):
    rows = [{"method": m, "seed": 50000, "roi_iou": 0.5 if m == "lime" else None, "bg_l1": 0.04,
             "in_mask_l1": 0.1, "edit_success": 1} for m in ("lime", "ip2p")]
    _write(tmp_path, rows)
    out = tmp_path / "r.json"
    assert bp.main([str(tmp_path), "--pairs", "lime:ip2p", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["scenes"] == "test" and "validation" not in capsys.readouterr().out
    (tmp_path / "signature.json").write_text(json.dumps({"split": "validation", "methods": {}}))
    assert bp.main([str(tmp_path), "--pairs", "lime:ip2p", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["scenes"] == "validation"
    assert capsys.readouterr().out.startswith("validation scenes (for choosing models and settings")


def test_bad_hit_and_split_by_are_errors(bp, tmp_path, capsys):
    _write(tmp_path, [{"method": m, "seed": 0, "roi_iou": 0.5 if m == "lime" else None} for m in ("lime", "ip2p")])
    with pytest.raises(SystemExit) as ex:
        bp.main([str(tmp_path), "--hit", "nan"])
    assert ex.value.code == 2 and "--hit nan: must be an IoU in [0, 1]" in capsys.readouterr().err
    assert bp.main([str(tmp_path)]) == 0      # default pairs: those whose rows are there (no ip2p_low_guidance)
    assert "lime - ip2p (n=1)" in capsys.readouterr().out
    assert bp.main([str(tmp_path), "--split-by", "nosuch"]) == 2
    assert "--split-by: no rows for nosuch" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--by-iou", "nan"], "--by-iou 'nan': expected distinct IoU edges"),
    (["--by-iou", "5"], "--by-iou '5': expected distinct IoU edges"),
    (["--by-iou=-1,inf"], "expected distinct IoU edges"),
    (["--by-iou", "0.1,0.1"], "expected distinct IoU edges"),
    (["--split-by", "ip2p"], "--split-by ip2p: its rows have no RoI"),
])
def test_bad_buckets_and_a_split_without_rois_are_usage_errors(bp, tmp_path, capsys, argv, words):
    _write(tmp_path, [{"method": "lime", "seed": 0, "roi_iou": 0.5}, {"method": "ip2p", "seed": 0, "roi_iou": None}])
    assert bp.main([str(tmp_path), *argv]) == 2
    assert words in capsys.readouterr().err


def test_rows_from_another_folder_of_the_same_model_and_split(bp, tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _write(a, [{"method": "lime", "seed": s, "roi_iou": 0.9, "bg_l1": 0.03, "edit_success": 1} for s in (0, 1)])
    _write(b, [{"method": m, "seed": s, "bg_l1": bg, "edit_success": 0}
               for s in (0, 1) for m, bg in (("ip2p", 0.05), ("lime", 0.5), ("ip2p_low_guidance", 0.04))])
    _write(c, [{"method": "ip2p", "seed": s, "bg_l1": 0.05, "edit_success": 0} for s in (0, 1)])
    sig = {"model": {"sha256": "x"}, "split": "validation", "device": "cpu"}
    for d, s in ((a, sig), (b, sig), (c, {**sig, "split": "test"})):
        (d / "signature.json").write_text(json.dumps(s))
    out = tmp_path / "r.json"
    assert bp.main([str(a), "--rows-from", str(b), "--json", str(out)]) == 0
    rep = json.loads(out.read_text())["pairs"]
    assert list(rep) == ["lime:ip2p"]         # b's lime rows: a has its own; ip2p_low_guidance: not borrowed
    assert rep["lime:ip2p"]["all"]["bg_l1"]["diff"] == pytest.approx(-0.02)
    assert "rows of ip2p from" in capsys.readouterr().out
    assert bp.main([str(a), "--rows-from", str(b), "--borrow", "ip2p,ip2p_low_guidance", "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())["pairs"]) == ["lime:ip2p", "lime:ip2p_low_guidance"]
    assert bp.main([str(a), "--rows-from", str(c)]) == 2   # other scene split: refused
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rows-from" in err[0] and "split" in err[0]
