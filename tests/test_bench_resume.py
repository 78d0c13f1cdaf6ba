"""``bench synthetic`` / ``demo``: integer options are validated (usage errors, exit 2,
before any model loads) and a resumed benchmark never mixes rows made with other
results-changing settings."""

from __future__ import annotations

import json
import shutil

import pytest

from lime_edit import cli as lime_cli
from lime_edit.demo import bundled_model_path


@pytest.mark.parametrize("argv, flag", [
    (["bench", "synthetic", "--steps", "0"], "--steps 0"),
    (["bench", "synthetic", "--steps", "-4"], "--steps -4"),
    (["bench", "synthetic", "--batch", "-3"], "--batch -3"),
    (["bench", "synthetic", "--batch", "0"], "--batch 0"),
    (["bench", "synthetic", "--n", "0"], "--n 0"),
    (["bench", "synthetic", "--methods", ","], "--methods ','"),
    (["demo", "--instruction", " "], "--instruction is empty"),
    (["demo", "--scene", str(2 ** 64)], f"--scene {2 ** 64}: must be at most"),
    (["demo", "--steps", "0"], "--steps 0"),
    (["train-demo", "--edit-steps", "0"], "--edit-steps 0"),
    (["train-demo", "--batch", "0"], "--batch 0"),
    (["train-demo", "--recommend-n", "-1"], "--recommend-n -1"),
    (["train-demo", "--input-pass-from", "-5"], "--input-pass-from -5"),
    (["train-demo", "--ema-from", "-1"], "--ema-from -1"),
    (["train-demo", "--ema-decay", "1"], "--ema-decay 1"),
    (["train-demo", "--ema-decay", "nan"], "--ema-decay nan"),
    (["train-demo", "--weak-edits", "1.5"], "--weak-edits 1.5"),
    (["train-demo", "--weak-strength", "nan"], "--weak-strength nan"),
    (["train-demo", "--weak-from", "-1"], "--weak-from -1"),
    (["train-demo", "--n-train", "50001"], "--n-train 50001"),   # would train on the validation scenes
])
def test_bad_counts_are_usage_errors(tmp_path, capsys, no_model_load, argv, flag):
    assert lime_cli.main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and flag in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["bench", "synthetic", "--out", "o"], ["edit", "x.png", "-i", "a b"],
                                  ["localize", "x.png", "-i", "a b"]])
def test_unknown_device_is_a_usage_error_before_any_work(capsys, no_model_load, argv):
    code = lime_cli.main([*argv, "--device", "foo"])
    err = capsys.readouterr().err
    assert code == 2 and "argument --device: 'foo' is not a torch device" in err and "Traceback" not in err


def _bench(out, *extra):
    return lime_cli.main(["bench", "synthetic", "--n", "1", "--out", str(out), "--no-progress", "--examples", "0",
                          "--threads", "0",  # leave torch's global thread count alone
                          *extra])


def _rows(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_results_record_the_steps_and_batch_used(tmp_path, capsys):
    out = tmp_path / "b"
    assert _bench(out, "--methods", "ip2p") == 0
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 30 and res["batch"] == 8  # the defaults actually used, never null
    assert res["signature"]["methods"]["ip2p"]["settings"]["num_inference_steps"] == 30


def test_resume_refuses_other_settings_and_overwrite_starts_afresh(tmp_path, capsys):
    out = tmp_path / "b"
    assert _bench(out, "--methods", "ip2p", "--steps", "2") == 0
    first = _rows(out)
    capsys.readouterr()
    # other steps: refused with one line naming what changed; nothing recomputed or relabelled
    assert _bench(out, "--methods", "ip2p,lime", "--steps", "3", "--n", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_inference_steps" in err[0] and "--overwrite" in err[0], err
    assert _rows(out) == first
    assert json.loads((out / "results.json").read_text())["steps"] == 2
    # another model (a copy with one file changed) is refused; an identical copy elsewhere is not
    copy = tmp_path / "model"
    shutil.copytree(bundled_model_path(), copy)
    assert _bench(out, "--methods", "ip2p", "--steps", "2", "--model", str(copy)) == 0
    assert _rows(out) == first
    cfg = copy / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text() + " ")
    assert _bench(out, "--methods", "ip2p", "--steps", "2", "--model", str(copy)) == 2
    assert "model" in capsys.readouterr().err
    # other device or batch size: refused too
    assert _bench(out, "--methods", "ip2p", "--steps", "2", "--batch", "4") == 2
    assert "batch" in capsys.readouterr().err
    # the same settings resume: new methods and scenes are added, old rows kept
    assert _bench(out, "--methods", "ip2p,lime_k4", "--steps", "2", "--n", "2") == 0
    rows = _rows(out)
    assert rows[0] == first[0] and len(rows) == 4
    assert {(r["method"], r["seed"]) for r in rows} == {("ip2p", 0), ("ip2p", 1), ("lime_k4", 0), ("lime_k4", 1)}
    sig = json.loads((out / "signature.json").read_text())
    assert set(sig["methods"]) == {"ip2p", "lime_k4"}
    # --overwrite: a fresh folder at the new settings
    assert _bench(out, "--methods", "ip2p", "--steps", "3", "--overwrite") == 0
    assert [(r["method"], r["seed"]) for r in _rows(out)] == [("ip2p", 0)]
    sig = json.loads((out / "signature.json").read_text())
    assert set(sig["methods"]) == {"ip2p"} and sig["methods"]["ip2p"]["settings"]["num_inference_steps"] == 3
    assert json.loads((out / "results.json").read_text())["steps"] == 3


def test_results_without_a_signature_are_not_resumed(tmp_path, capsys, no_model_load):
    out = tmp_path / "old"
    out.mkdir()
    (out / "samples.jsonl").write_text(json.dumps({"method": "ip2p", "seed": 0}) + "\n")
    assert _bench(out, "--methods", "ip2p") == 2
    assert "signature.json" in capsys.readouterr().err


def test_signature_starts_from_the_models_recommended_settings(tmp_path):
    """A model folder's lime_edit.json changes the defaults every row starts from (as
    LimePipeline.from_pretrained builds them), so the signature records them; an explicit
    per-method K (lime_k8) still wins."""
    import json

    from lime_edit.demo.bench import make_signature

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    plain = make_signature(str(folder), "cpu", 1, ["lime", "lime_k8"], 30)
    assert plain["methods"]["lime"]["settings"]["num_clusters"] == 8
    (folder / "lime_edit.json").write_text(json.dumps({"lime_config": {"num_clusters": 5}}))
    sig = make_signature(str(folder), "cpu", 1, ["lime", "lime_k8", "ip2p_low_guidance"], 30)
    assert sig["methods"]["lime"]["settings"]["num_clusters"] == 5
    assert sig["methods"]["lime_k8"]["settings"]["num_clusters"] == 8
    assert sig["methods"]["ip2p_low_guidance"]["settings"]["guidance_scale"] == 2.0
    assert sig["model"] != plain["model"]          # the settings file is part of the model's identity


def test_reference_row_ignores_the_models_recommended_settings(tmp_path):
    """lime_reference runs LimeConfig's defaults whatever lime_edit.json recommends (what the
    recommendation buys), while lime starts from the recommendation; a --set still applies
    to settings the model does not recommend."""
    import json

    from lime_edit.demo.bench import make_signature, method_overrides

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    (folder / "lime_edit.json").write_text(json.dumps({"lime_config": {"num_clusters": 4, "feature_levels": [1]}}))
    sig = make_signature(str(folder), "cpu", 1, ["lime", "lime_reference"], 30, {"top_k": 50})
    lime, ref = sig["methods"]["lime"]["settings"], sig["methods"]["lime_reference"]["settings"]
    assert (lime["num_clusters"], list(lime["feature_levels"])) == (4, [1])
    assert (ref["num_clusters"], ref["feature_levels"]) == (8, None)     # None: the backbone's levels
    assert lime["top_k"] == ref["top_k"] == 50
    assert method_overrides("lime_reference", str(folder)) == {"num_clusters": 8, "feature_levels": None}
    assert method_overrides("lime_k8", str(folder)) == {"num_clusters": 8}


def test_validation_split_scores_the_validation_scenes_and_is_never_mixed_with_test_rows(tmp_path, capsys):
    """--split validation: the scenes train-demo chooses settings on (their own seeds as sampler
    seeds), recorded in the signature and results; a test-split rerun of that folder is refused."""
    from lime_edit import LimePipeline
    from lime_edit.demo.metrics import all_metrics, to_float
    from lime_edit.demo.scenes import VALIDATION_SEED0, make_edit

    out = tmp_path / "v"
    assert _bench(out, "--methods", "ip2p", "--steps", "2", "--n", "2", "--split", "validation",
                  "--examples", "1") == 0
    rows = _rows(out)
    assert [r["seed"] for r in rows] == [VALIDATION_SEED0, VALIDATION_SEED0 + 1]
    e = make_edit(VALIDATION_SEED0 + 1, "train", noisy=False)
    lp = LimePipeline.from_pretrained("demo")
    lp.pipe.set_progress_bar_config(disable=True)
    r = lp.edit(e.image, e.instruction, mask=None, seed=e.seed, guidance_scale=7.5, num_inference_steps=2)
    assert rows[1]["bg_l1"] == pytest.approx(all_metrics(to_float(r.image), to_float(e.image),
                                                         to_float(e.clean_target), e.mask, e.target_colour)["bg_l1"],
                                          abs=1e-4)  # the bench runs both scenes in one batch: 8-bit rounding
    res = json.loads((out / "results.json").read_text())
    assert res["split"] == "validation" and res["signature"]["split"] == "validation"
    assert res["rows"][0]["n_done"] == 2 and "validation scenes" in (out / "results.md").read_text()
    assert (out / "images" / f"{VALIDATION_SEED0:05d}_ip2p.png").is_file()
    assert not (out / "images" / f"{VALIDATION_SEED0 + 1:05d}_ip2p.png").exists()
    capsys.readouterr()
    assert _bench(out, "--methods", "ip2p", "--steps", "2", "--n", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other split;" in err[0], err
    assert len(_rows(out)) == 2
    # the same command resumes (nothing recomputed); a larger --n adds the next validation scenes
    assert _bench(out, "--methods", "ip2p", "--steps", "2", "--n", "2", "--split", "validation") == 0
    assert _rows(out) == rows
    assert _bench(out, "--methods", "ip2p", "--steps", "2", "--n", "3", "--split", "validation") == 0
    assert [r["seed"] for r in _rows(out)] == [VALIDATION_SEED0 + i for i in range(3)]
    assert _rows(out)[:2] == rows
    assert json.loads((out / "results.json").read_text())["rows"][0]["n_done"] == 3
    # a test-split folder's signature is what it always was (no split key), so old folders resume
    t = tmp_path / "t"
    assert _bench(t, "--methods", "ip2p", "--steps", "2") == 0
    assert "split" not in json.loads((t / "signature.json").read_text())
    assert json.loads((t / "results.json").read_text())["split"] == "test"


def test_damaged_folder_is_a_one_line_error_before_the_model_loads(tmp_path, capsys, monkeypatch):
    out = tmp_path / "b"
    assert _bench(out, "--methods", "ip2p", "--steps", "2") == 0
    good = (out / "samples.jsonl").read_bytes()
    sig = (out / "signature.json").read_text()
    from lime_edit import pipeline

    monkeypatch.setattr(pipeline.LimePipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: (_ for _ in ()).throw(AssertionError("model loaded"))))
    capsys.readouterr()
    for damage, words in [(b"[1,2]\n", "samples.jsonl:2: not a bench synthetic row"),
                          (b'{"method": "ip2p", "seed": null}\n', "samples.jsonl:2: not a bench synthetic row"),
                          (b"\xff\xfe\n", "samples.jsonl: unreadable")]:
        (out / "samples.jsonl").write_bytes(good + damage)
        assert _bench(out, "--methods", "ip2p", "--steps", "2") != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "--overwrite" in err[0], err
    (out / "samples.jsonl").write_bytes(good)
    (out / "signature.json").write_text(json.dumps({**json.loads(sig), "methods": 5}))
    assert _bench(out, "--methods", "ip2p", "--steps", "2") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "signature.json: unreadable" in err[0], err


def test_torn_last_row_is_cut_and_a_signature_without_rows_binds_nothing(tmp_path, capsys):
    """A folder with published results but no rows is still refused (at the end)."""
    out = tmp_path / "b"
    assert _bench(out, "--methods", "ip2p", "--steps", "2", "--n", "2") == 0
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text(lines[0] + lines[1][:25])       # killed while writing row 2
    assert _bench(out, "--methods", "ip2p", "--steps", "2", "--n", "2") == 0
    rows = _rows(out)
    assert [r["seed"] for r in rows] == [0, 1] and rows[0] == json.loads(lines[0])
    # an older version's resume wrote its first row onto the torn one; a blank line; a complete last
    # row without its line end: all read, nothing recomputed
    a, b = (json.loads(x) for x in lines[:2])
    (out / "samples.jsonl").write_text('{"method": "ip2p", "se' + json.dumps(a) + "\n\n" + json.dumps(b))
    assert _bench(out, "--methods", "ip2p", "--steps", "2", "--n", "2") == 0
    text = (out / "samples.jsonl").read_text()
    assert text.endswith(json.dumps(b) + "\n") and text.count('"method"') == 3   # b kept, not recomputed
    # a run that failed before its first row left only its signature: another command may use the folder
    (out / "samples.jsonl").unlink()
    (out / "results.json").unlink()
    assert _bench(out, "--methods", "ip2p", "--steps", "3") == 0
    assert json.loads((out / "signature.json").read_text())["methods"]["ip2p"]["settings"]["num_inference_steps"] == 3
    (out / "samples.jsonl").unlink()             # results.json is there: its settings still bind
    assert _bench(out, "--methods", "ip2p", "--steps", "4") == 2


@pytest.mark.parametrize("cmd", [["bench", "synthetic"], ["demo"], ["train-demo"]])
def test_out_that_is_a_file_is_one_line(tmp_path, capsys, no_model_load, cmd):
    f = tmp_path / "afile"
    f.write_text("keep")
    assert lime_cli.main([*cmd, "--out", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {f}: output path exists and is not a folder"] and f.read_text() == "keep"


@pytest.mark.parametrize("cmd", [["bench", "synthetic"], ["demo"], ["train-demo"], ["edit", "x.png", "-i", "a b"],
                                 ["localize", "x.png", "-i", "a b"]])
def test_empty_out_is_a_usage_error_not_the_current_folder(capsys, no_model_load, cmd):
    assert lime_cli.main([*cmd, "--out", ""]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: -o/--out is empty; name a folder ('.' for the current one)"]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_folder_named_like_a_result_file_is_one_line_and_kept(tmp_path, capsys, no_model_load, overwrite):
    out = tmp_path / "b"
    (out / "signature.json").mkdir(parents=True)
    (out / "signature.json" / "keep.txt").write_text("keep")
    assert _bench(out, "--methods", "ip2p", *overwrite) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out / 'signature.json'}: exists and is not a file; move it away or use a new --out"]
    assert (out / "signature.json" / "keep.txt").read_text() == "keep"


def test_autoencoder_row_is_the_input_through_the_vae_alone(tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image

    from lime_edit.demo import metrics, scenes
    from lime_edit.loading import resolve_model

    out = tmp_path / "b"
    assert _bench(out, "--methods", "vae_roundtrip,ip2p", "--steps", "2", "--examples", "1") == 0
    rows = {r["method"]: r for r in _rows(out)}
    row = rows["vae_roundtrip"]
    sig = json.loads((out / "signature.json").read_text())
    assert sig["methods"]["vae_roundtrip"] == {"mask": "none", "autoencoder_only": True}
    assert row["roi_iou"] is None and row["lime_applied"] is None and row["warnings"] == []

    # the same round trip by hand, with the model's own VAE
    from diffusers import AutoencoderKL
    e = scenes.split_edits("test", 1)[0]
    vae = AutoencoderKL.from_pretrained(resolve_model("demo") + "/vae")
    x = torch.from_numpy(np.asarray(e.image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample[0].clamp(-1, 1)
    img = Image.fromarray(((y + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    bg = metrics.masked_l1(metrics.to_float(img), metrics.to_float(e.image), ~e.mask)
    assert 0 < row["bg_l1"] < rows["ip2p"]["bg_l1"]
    assert abs(row["bg_l1"] - bg) < 2e-3            # uint8 rounding only
    # it is a floor, not an edit: not a column of the examples grid
    assert Image.open(out / "examples.png").width == 128 * 4     # input, target, GT mask, ip2p


def test_autoencode_upcasts_a_half_precision_vae_that_asks_for_it_and_restores_it(tiny_pipe):
    import copy
    from types import SimpleNamespace

    import numpy as np
    import torch
    from PIL import Image

    from lime_edit.demo.bench import autoencode

    pipe = copy.copy(tiny_pipe)
    pipe.vae = copy.deepcopy(tiny_pipe.vae).to(torch.float16)
    pipe.vae.register_to_config(force_upcast=True)
    seen = []
    pipe.vae.encoder.register_forward_pre_hook(lambda mod, args: seen.append(next(mod.parameters()).dtype))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    (out,) = autoencode(SimpleNamespace(pipe=pipe), [img])
    assert seen == [torch.float32]                   # ran upcast, as the pipelines decode such a VAE
    assert out.size == img.size and pipe.vae.dtype == torch.float16
    assert np.isfinite(np.asarray(out, np.float32)).all()


def test_a_method_named_twice_is_one_row(tmp_path, capsys):
    out = tmp_path / "b"
    assert _bench(out, "--methods", "vae_roundtrip,vae_roundtrip") == 0
    assert [r["method"] for r in _rows(out)] == ["vae_roundtrip"]
    assert [r["method"] for r in json.loads((out / "results.json").read_text())["rows"]] == ["vae_roundtrip"]


def test_no_examples_grid_is_not_announced(tmp_path, capsys):
    out = tmp_path / "b"
    assert _bench(out, "--methods", "vae_roundtrip") == 0            # _bench passes --examples 0
    assert not (out / "examples.png").exists() and "examples.png" not in capsys.readouterr().out
