"""``eval``/``score`` with what a fresh user gives them: a --coco-dir that is not a folder is a
usage error, long EditVal texts get bounded output names, --local-files-only never downloads
the LPIPS backbone, score takes the output the run recorded (not a stale twin of another
extension), and two dataset entries with one output file are reported, not overwritten."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torchmetrics")  # the eval extra

from lime_edit import cli as lime_cli  # noqa: E402
from lime_edit.eval import generate  # noqa: E402
from lime_edit.eval.datasets import read_editval, read_piebench, safe_component  # noqa: E402
from lime_edit.eval.runner import RowStore  # noqa: E402
from lime_edit.eval.testing import (  # noqa: E402
    write_editval_fixture, write_magicbrush_fixture, write_piebench_fixture)


class Editor:
    """Stands in for LimePipeline: adds ``shift`` to every pixel."""

    def __init__(self, shift: int = 10, fail_on: str | None = None):
        self.shift, self.fail_on, self.instructions = shift, fail_on, []

    def edit(self, image, instruction, mask="auto", seed=0, **overrides):
        if self.fail_on and self.fail_on in instruction:
            raise RuntimeError("boom")
        self.instructions.append(instruction)
        out = np.clip(np.asarray(image).astype(np.int16) + self.shift, 0, 255).astype(np.uint8)
        return SimpleNamespace(image=Image.fromarray(out), warnings=[], timings={}, lime_applied=mask == "auto",
                               seed=seed)


def use_editor(monkeypatch, editor):
    monkeypatch.setattr(generate, "_load_pipeline", lambda args, device: editor)
    return editor


def read_json(p):
    return json.loads(Path(p).read_text())


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- 1: --coco-dir
@pytest.mark.parametrize("command", ["eval", "score"])
@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_coco_dir_that_is_not_a_folder_is_a_usage_error(tmp_path, capsys, monkeypatch, command, kind):
    ev = write_editval_fixture(tmp_path / "ev")
    coco = tmp_path / "nonexistent"
    if kind == "file":
        coco.write_text("x")
    monkeypatch.setattr(generate, "_load_pipeline", lambda *a: pytest.fail("a model was loaded"))
    run = tmp_path / "run"
    if command == "score":
        run.mkdir()
    out_flag = "--out" if command == "eval" else "--outputs"
    assert lime_cli.main([command, "editval", "--data", str(ev), out_flag, str(run), "--coco-dir", str(coco)]) == 2
    line = one_error_line(capsys)
    assert "--coco-dir" in line and str(coco) in line, line
    assert ("no such folder" if kind == "missing" else "not a folder") in line
    assert not run.exists() if command == "eval" else list(run.iterdir()) == []


def test_an_existing_coco_dir_is_used(tmp_path, monkeypatch):
    ev = write_editval_fixture(tmp_path / "ev")
    coco = tmp_path / "coco"
    (ev / "images").rename(coco)                 # the COCO images only under --coco-dir
    ed = use_editor(monkeypatch, Editor())
    out = tmp_path / "run"
    assert lime_cli.main(["eval", "editval", "--data", str(ev), "--out", str(out), "-q",
                          "--coco-dir", str(coco)]) == 0
    assert len(ed.instructions) == 6


# --------------------------------------------------------------------------- 2: long EditVal texts
def test_a_long_editval_text_gets_a_bounded_stable_unique_output_name(tmp_path, monkeypatch):
    ev = write_editval_fixture(tmp_path / "ev")
    obj = read_json(ev / "object.json")
    long_a, long_b = "a " + "very " * 60 + "red ball", "a " + "very " * 60 + "blue ball"   # ~310 chars each
    obj["dog"]["1234"]["object_addition"]["to"] += [long_a, long_b]
    (ev / "object.json").write_text(json.dumps(obj))
    out = tmp_path / "run"
    ed = use_editor(monkeypatch, Editor())
    assert lime_cli.main(["eval", "editval", "--data", str(ev), "--out", str(out), "-q"]) == 0
    assert len(ed.instructions) == 8
    man = read_json(out / "manifest.json")
    assert man["n_failed"] == 0
    names = {Path(s["output"]).name for s in man["samples"].values()}
    assert "ball.png" in names and "cup left.png" in names            # short names exactly as before
    long_names = [n for n in names if len(n) > 100]
    assert len(long_names) == 2 and all(len(n.encode()) <= 130 and (out / "object_addition/1234" / n).is_file()
                                        for n in long_names)
    assert safe_component(long_a) == safe_component(long_a) != safe_component(long_b)
    assert safe_component(long_a).startswith("a very very") and safe_component("ball") == "ball"
    # the rerun finds them (resumes without any edit) and so does score's layout
    ed = use_editor(monkeypatch, Editor())
    assert lime_cli.main(["eval", "editval", "--data", str(ev), "--out", str(out), "-q"]) == 0
    assert ed.instructions == []
    edits, _ = read_editval(ev)
    assert all((out / e.output_relpath).is_file() for e in edits)


def test_multibyte_text_is_cut_on_a_character_boundary():
    name = safe_component("ü" * 150)            # 300 bytes
    assert len(name.encode("utf-8")) <= 120 and name.startswith("ü" * 50) and "~" in name


# --------------------------------------------------------------------------- 3: LPIPS offline
@pytest.fixture()
def empty_hub(tmp_path, monkeypatch):
    import torch

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return hub


def test_lpips_local_files_only_without_a_cached_copy_names_lpips_model(empty_hub):
    from lime_edit.errors import ModelLoadError
    from lime_edit.eval.lpips import load_lpips

    with pytest.raises(ModelLoadError, match="--lpips-model") as err:
        load_lpips(None, local_files_only=True)
    assert "--local-files-only" in str(err.value) and "\n" not in str(err.value)


def test_lpips_local_files_only_uses_the_torch_hub_cache(empty_hub):
    import torch

    from lime_edit.eval.lpips import SQUEEZENET_URL, load_lpips, squeezenet_features

    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in squeezenet_features().state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(1)           # torchvision's file has the classifier too
    cached = empty_hub / "checkpoints" / SQUEEZENET_URL.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    model = load_lpips(None, local_files_only=True)
    assert torch.equal(model.features[0].weight, state["features.0.weight"])


def test_score_local_files_only_without_lpips_model_is_one_line(tmp_path, capsys, empty_hub):
    pie = write_piebench_fixture(tmp_path / "pie", n=2, size=32)
    outputs = tmp_path / "outputs"
    for it in read_piebench(pie)[0]:
        (outputs / "annotation_images" / it.image_path).parent.mkdir(parents=True, exist_ok=True)
        Image.open(it.image).save(outputs / "annotation_images" / it.image_path)
    assert lime_cli.main(["score", "piebench", "--data", str(pie), "--outputs", str(outputs), "-q",
                          "--metrics", "lpips", "--local-files-only"]) == 2
    line = one_error_line(capsys)
    assert "--lpips-model" in line and "--local-files-only" in line, line


# --------------------------------------------------------------------------- 4: stale twins
def _stored_row(outputs: Path, key: str) -> dict:
    return RowStore(outputs / "scores" / "piebench" / "rows").get(key)


def test_score_takes_the_recorded_output_not_a_stale_twin(tmp_path, monkeypatch):
    pie = write_piebench_fixture(tmp_path / "pie", n=3, size=32)
    out = tmp_path / "run"
    use_editor(monkeypatch, Editor(shift=60))
    assert lime_cli.main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q"]) == 0
    assert len(list(out.rglob("*.jpg"))) == 3
    use_editor(monkeypatch, Editor(shift=0))                       # the new run: outputs equal the sources
    assert lime_cli.main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q", "--overwrite",
                          "--lossless"]) == 0
    assert len(list(out.rglob("*.png"))) == 3 and len(list(out.rglob("*.jpg"))) == 3   # the old .jpg stay
    assert lime_cli.main(["score", "piebench", "--data", str(pie), "--outputs", str(out), "-q",
                          "--metrics", "mse"]) == 0
    rep = read_json(out / "scores/piebench/report.json")
    assert rep["metrics"]["mse_x1e4"] == 0 and rep["n"] == 3          # the .png (lossless copies of the sources)
    for key in read_json(out / "manifest.json")["samples"]:
        assert _stored_row(out, key)["output"][0].endswith(".png")


def test_score_does_not_score_a_leftover_of_a_sample_the_run_failed(tmp_path, monkeypatch):
    pie = write_piebench_fixture(tmp_path / "pie", n=2, size=32)
    out = tmp_path / "run"
    use_editor(monkeypatch, Editor(shift=60))
    assert lime_cli.main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q"]) == 0
    use_editor(monkeypatch, Editor(shift=0, fail_on="dog"))            # every instruction: "make the dog a cat"
    assert lime_cli.main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q", "--overwrite",
                          "--lossless"]) == 1
    assert len(list(out.rglob("*.jpg"))) == 2                           # the first run's images are still there
    assert lime_cli.main(["score", "piebench", "--data", str(pie), "--outputs", str(out), "-q",
                          "--metrics", "mse"]) == 1
    rep = read_json(out / "scores/piebench/report.json")
    assert rep["n"] == 0 and rep["n_failed"] == 2
    assert all("eval failed on this sample" in f["message"] and "boom" in f["message"] for f in rep["failures"])



def test_a_rerun_redoes_samples_recorded_as_failed_even_beside_an_old_image(tmp_path, monkeypatch):
    """An --overwrite run that fails on a sample leaves the earlier run's image under its name;
    the next rerun (no --overwrite) must redo that sample, not count it done."""
    pie = write_piebench_fixture(tmp_path / "pie", n=2, size=32)
    out = tmp_path / "run"
    use_editor(monkeypatch, Editor(shift=60))
    assert lime_cli.main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q"]) == 0
    use_editor(monkeypatch, Editor(shift=0, fail_on="dog"))
    assert lime_cli.main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q", "--overwrite"]) == 1
    assert len(list(out.rglob("*.jpg"))) == 2                           # the first run's images are still there
    ed = use_editor(monkeypatch, Editor(shift=30))
    assert lime_cli.main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q"]) == 0
    assert len(ed.instructions) == 2
    assert read_json(out / "manifest.json")["n_failed"] == 0

# --------------------------------------------------------------------------- 5: one output, two entries
def test_editval_entries_with_one_output_file_are_reported_and_the_run_goes_on(tmp_path, monkeypatch):
    ev = write_editval_fixture(tmp_path / "ev")
    obj = read_json(ev / "object.json")
    obj["cat"] = {"1234": {"object_addition": {"from": [], "to": ["ball"]}}}     # dog 1234 adds a ball too
    obj["dog"]["1234"]["object_addition"]["to"] += ["a/b", "a_b"]                 # both a_b.png
    (ev / "object.json").write_text(json.dumps(obj))
    edits, problems = read_editval(ev)
    assert len({e.output_relpath for e in edits}) == len(edits) == 7
    shared = {p.sample: p.message for p in problems}
    assert set(shared) == {"object_addition/1234/ball", "object_addition/1234/a_b"}
    msg = shared["object_addition/1234/ball"]
    assert "class 'dog'" in msg and "class 'cat'" in msg and "object_addition/1234/ball.png" in msg
    assert "'a/b'" in shared["object_addition/1234/a_b"] and "'a_b'" in shared["object_addition/1234/a_b"]

    out = tmp_path / "run"
    ed = use_editor(monkeypatch, Editor())
    assert lime_cli.main(["eval", "editval", "--data", str(ev), "--out", str(out), "-q"]) == 1
    man = read_json(out / "manifest.json")
    assert man["n_done"] == 7 and len(ed.instructions) == 7 and man["n_failed"] == 2


def test_piebench_records_with_one_output_file_are_reported(tmp_path, monkeypatch, capsys):
    pie = write_piebench_fixture(tmp_path / "pie", n=3, size=32)
    mapping = read_json(pie / "mapping_file.json")
    k0, k1, k2 = sorted(mapping)
    mapping[k1]["image_path"] = mapping[k0]["image_path"]                # the same image_path twice
    (pie / "mapping_file.json").write_text(json.dumps(mapping))
    items, problems = read_piebench(pie)
    assert [it.key for it in items] == [k0, k2]
    assert [p.sample for p in problems] == [k1] and repr(k0) in problems[0].message

    # --lossless makes <stem>.jpg and <stem>.png one output: reported by eval, the rest is done
    mapping = read_json(pie / "mapping_file.json")
    src = pie / "annotation_images" / mapping[k0]["image_path"]
    Image.open(src).save(src.with_suffix(".png"))
    mapping[k1]["image_path"] = str(Path(mapping[k0]["image_path"]).with_suffix(".png"))
    (pie / "mapping_file.json").write_text(json.dumps(mapping))
    assert len(read_piebench(pie)[0]) == 3                               # two files without --lossless
    out = tmp_path / "run"
    ed = use_editor(monkeypatch, Editor())
    assert lime_cli.main(["eval", "piebench", "--data", str(pie), "--out", str(out), "-q", "--lossless"]) == 1
    man = read_json(out / "manifest.json")
    assert man["n_done"] == 2 and len(ed.instructions) == 2
    (fail,) = man["failures"]
    assert fail["sample"] == k1 and repr(k0) in fail["message"] and fail["file"].endswith(".png")
    assert "Traceback" not in capsys.readouterr().err



def test_overwrite_with_other_settings_drops_the_other_protocols_manifest(tmp_path, monkeypatch, capsys):
    """MagicBrush's single- and multi-turn runs share turn 1: an --overwrite run of one protocol
    with other settings rewrites it, so the other protocol's manifest (which described the old
    turn 1) is removed with a notice, and that protocol is refused until regenerated."""
    mb = write_magicbrush_fixture(tmp_path / "mb")
    out = tmp_path / "run"
    use_editor(monkeypatch, Editor())
    args = ["--data", str(mb), "--out", str(out), "-q"]
    assert lime_cli.main(["eval", "magicbrush", *args]) == 0
    assert lime_cli.main(["eval", "magicbrush", "--protocol", "multi", *args]) == 0
    # the same settings again: both manifests stay
    assert lime_cli.main(["eval", "magicbrush", "--overwrite", *args]) == 0
    assert (out / "manifest-multi.json").is_file()
    capsys.readouterr()
    assert lime_cli.main(["eval", "magicbrush", "--overwrite", "--seed", "7", *args]) == 0
    assert not (out / "manifest-multi.json").exists() and (out / "manifest-single.json").is_file()
    assert "removed" in capsys.readouterr().err
    assert not (out / ".records" / "multi").exists() and (out / ".records" / "single").is_dir()
    assert lime_cli.main(["eval", "magicbrush", "--protocol", "multi", *args]) == 2    # other settings than turn 1's
    ed = use_editor(monkeypatch, Editor())
    assert lime_cli.main(["eval", "magicbrush", "--protocol", "multi", "--seed", "7", *args]) == 0
    assert len(ed.instructions) == 3                   # its own turns (2 and 3) again; turn 1 is the new one
    assert read_json(out / "manifest-multi.json")["signature"]["seed"] == 7


def test_a_resume_in_another_weights_dtype_is_refused(tmp_path, monkeypatch, capsys):
    """--dtype changes every image (float16 vs float32): a folder made in one is not resumed in
    the other; 'auto' is the dtype it resolves to (float32 on the CPU), the device alone may change."""
    pie = write_piebench_fixture(tmp_path / "pie", n=2, size=32)
    out = tmp_path / "run"
    use_editor(monkeypatch, Editor())
    args = ["eval", "piebench", "--data", str(pie), "--out", str(out), "-q", "--device", "cpu"]
    assert lime_cli.main([*args, "--dtype", "float32"]) == 0
    capsys.readouterr()
    assert lime_cli.main([*args, "--dtype", "float16"]) == 2
    line = one_error_line(capsys)
    assert "float32" in line and "--dtype float32" in line, line
    assert lime_cli.main([*args]) == 0                   # auto on the CPU is float32
    assert lime_cli.main([*args, "--dtype", "float16", "--overwrite"]) == 0
