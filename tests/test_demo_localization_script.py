"""benchmarks/demo_localization.py's miss counts (pure helpers; the full run needs the model)."""

from types import SimpleNamespace

import pytest
from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def dl():
    return load_benchmark_script("demo_localization")


@pytest.mark.parametrize("reference, kind", [("circle", "shape"), ("circle on the left", "position"),
                                             ("big red circle", "size"), ("small circle", "size"),
                                             ("red circle", "colour")])
def test_reference_kind(dl, reference, kind):
    assert dl.reference_kind(SimpleNamespace(reference=reference)) == kind


def test_misses_count_scenes_whose_points_all_miss(dl):
    rows = [{"points_in_mask": 0.0, "roi_iou": 0.0}, {"points_in_mask": 0.0, "roi_iou": 0.3},
            {"points_in_mask": 0.5, "roi_iou": 0.8}, {"points_in_mask": 1.0, "roi_iou": 0.6}]
    m = dl.misses(rows, ["shape", "colour", "shape", "size"])
    assert m["all_points_miss"] == 2 and m["all_points_miss_but_overlap"] == 1
    assert m["roi_iou_where_points_hit"] == pytest.approx(0.7)
    assert m["by_reference"] == {"colour": {"scenes": 1, "all_points_miss": 1},
                                 "shape": {"scenes": 2, "all_points_miss": 1},
                                 "size": {"scenes": 1, "all_points_miss": 0}}
    assert dl.misses([{"points_in_mask": 0.0, "roi_iou": 0.0}], ["shape"])["roi_iou_where_points_hit"] is None


def test_validation_split_scores_the_scenes_recommend_settings_uses(dl, tmp_path, capsys):
    """--split validation reads the validation scenes (train split, clean targets, their own
    seed as sampler seed), the ones train-demo's recommend_settings chooses on, not the test ones."""
    from lime_edit import LimePipeline
    from lime_edit.demo.metrics import roi_iou
    from lime_edit.demo.scenes import make_edit
    from lime_edit.demo.train import VALIDATION_SEED0

    f = tmp_path / "v.json"
    assert dl.main(["--split", "validation", "--n", "2", "--set", "num_clusters=3", "--json", str(f)]) == 0
    import json

    out = json.loads(f.read_text())
    assert out["split"] == "validation" and "validation scenes, n=2" in capsys.readouterr().out
    lp = LimePipeline.from_pretrained("demo")
    lp.pipe.set_progress_bar_config(disable=True)
    for i, row in enumerate(out["per_scene"]):
        e = make_edit(VALIDATION_SEED0 + i, "train", noisy=False)
        loc = lp.localize(e.image, e.instruction, seed=e.seed, num_clusters=3)
        assert row["roi_iou"] == pytest.approx(roi_iou(loc.mask, e.mask))


def test_bad_scene_count_is_a_usage_error(dl, capsys):
    with pytest.raises(SystemExit) as ex:
        dl.main(["--n", "0"])
    assert ex.value.code == 2 and "--n must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("setting, words", [("foo", "expected NAME=VALUE"), ("top_k=0", "top_k"),
                                            ("nonsense=1", "unknown setting")])
def test_bad_settings_are_usage_errors_before_the_model_loads(dl, capsys, monkeypatch, setting, words):
    from lime_edit import pipeline

    monkeypatch.setattr(pipeline.LimePipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: (_ for _ in ()).throw(AssertionError("model loaded"))))
    with pytest.raises(SystemExit) as ex:
        dl.main(["--set", setting])
    err = capsys.readouterr().err.strip().splitlines()
    assert ex.value.code == 2 and ": error: --set" in err[-1] and words in err[-1], err


def test_threads_model_and_json_errors_are_one_line(dl, tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        dl.main(["--threads", "-1"])
    assert ex.value.code == 2 and "--threads must be at least 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ex:
        dl.main(["--json", str(tmp_path)])
    assert ex.value.code == 2 and "not a file in an existing folder" in capsys.readouterr().err
    assert dl.main(["--model", str(tmp_path / "nonexistent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --model {tmp_path / 'nonexistent'}"), err


def test_a_setting_the_model_lacks_is_one_line_before_any_scene(capsys):
    mod = load_benchmark_script("demo_localization")
    assert mod.main(["--n", "1", "--set", "feature_levels=64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --set feature_levels: this U-Net has no attention layer") and "Traceback" \
        not in "\n".join(err)
