"""Bad-input probe of model loading (probe 8): odd ``--model`` / ``--model-config`` /
``--t2i-model`` values and broken model folders, files and ``lime_edit.json`` files give
one line naming the file or argument (a ``ModelLoadError``; exit 2 in the CLI), never an
internal error's text, and before any per-input work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lime_edit.errors import ModelLoadError
from lime_edit.loading import checkpoint_shapes, load_backbone

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
INTERNAL = ("TypeError", "KeyError", "AttributeError", "JSONDecodeError", "SafetensorError",
            "RuntimeError", "mmap", "__init__()", "HFValidationError")


def _load_error(model, **kwargs) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_backbone(model, device="cpu", **kwargs)
    text = str(info.value)
    assert "\n" not in text
    for word in INTERNAL:
        assert word not in text, text
    return text


@pytest.fixture()
def model_copy(tmp_path, tiny_model_dir):
    """A writable copy of the tiny diffusers model folder."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


# ------------------------------------------------------------------ model folders
def test_invalid_model_index_json_names_the_file(model_copy):
    (model_copy / "model_index.json").write_text("{not json")
    text = _load_error(model_copy)
    assert text.startswith(f"{model_copy / 'model_index.json'}: not valid JSON")


def test_model_index_that_is_not_an_object(model_copy):
    (model_copy / "model_index.json").write_text("[1, 2]")
    text = _load_error(model_copy)
    assert "model_index.json: expected a JSON object" in text


def test_model_index_class_name_not_a_string(model_copy):
    index = json.loads((model_copy / "model_index.json").read_text())
    index["_class_name"] = 5
    (model_copy / "model_index.json").write_text(json.dumps(index))
    assert "_class_name must be a pipeline class name" in _load_error(model_copy)


def test_missing_component_folder_is_named(model_copy):
    shutil.rmtree(model_copy / "unet")
    text = _load_error(model_copy)
    assert text == f"{model_copy}: no unet/ folder (model_index.json lists a unet: diffusers UNet2DConditionModel)"


@pytest.mark.parametrize("content, why", [("garbage!!", "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_component_config_that_is_not_a_json_object(model_copy, content, why):
    (model_copy / "unet" / "config.json").write_text(content)
    text = _load_error(model_copy)
    assert text.startswith(f"{model_copy / 'unet' / 'config.json'}: {why}")


def test_t2i_model_folder_with_broken_index_through_p2p(model_copy):
    (model_copy / "model_index.json").write_text("[1, 2]")
    assert "model_index.json: expected a JSON object" in _load_error(model_copy, backbone="p2p")


# ------------------------------------------------------------------ single files
@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(200), b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a"])
def test_broken_safetensors_file(tmp_path, content):
    f = tmp_path / "model.safetensors"
    f.write_bytes(content)
    assert _load_error(f).startswith(f"{f}: not a readable .safetensors file (")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
@pytest.mark.parametrize("content", ["empty", "png", "truncated"])
def test_broken_pickle_file(tmp_path, suffix, content):
    f = tmp_path / f"model{suffix}"
    if content == "empty":
        f.write_bytes(b"")
    elif content == "png":
        f.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    else:
        torch.save({"state_dict": {UNET_IN: torch.zeros(4, 8, 3, 3), "x": torch.zeros(2000)}}, f)
        f.write_bytes(f.read_bytes()[:3000])
    assert _load_error(f, allow_pickle=True).startswith(f"{f}: not a readable PyTorch checkpoint")


def test_legacy_pickle_format_is_read(tmp_path):
    """A checkpoint saved before PyTorch 1.6's zip format cannot be memory-mapped; it is read whole."""
    f = tmp_path / "old.ckpt"
    torch.save({"state_dict": {UNET_IN: torch.zeros(4, 8, 3, 3)}}, f, _use_new_zipfile_serialization=False)
    assert checkpoint_shapes(f, allow_pickle=True) == {UNET_IN: (4, 8, 3, 3)}


def test_pickle_with_python_objects_says_so(tmp_path):
    import argparse

    f = tmp_path / "model.ckpt"
    torch.save({"state_dict": {UNET_IN: torch.zeros(4, 8, 3, 3)}, "hparams": argparse.Namespace(a=1)}, f)
    text = _load_error(f, allow_pickle=True)
    assert "holds Python objects besides tensors (argparse.Namespace)" in text


def test_unet_weight_of_wrong_rank(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "model.safetensors"
    save_file({UNET_IN: torch.zeros(3)}, str(f))
    text = _load_error(f)
    assert "has shape (3,)" in text and "None" not in text


def test_upper_case_safetensors_suffix(tmp_path):
    """diffusers would unpickle a .SAFETENSORS file (its format test is case-sensitive)."""
    from safetensors.torch import save_file

    f = tmp_path / "MODEL.SAFETENSORS"
    save_file({UNET_IN: torch.zeros(4, 8, 3, 3)}, str(f))
    assert "rename it to MODEL.safetensors" in _load_error(f)


def test_single_file_offline_points_at_model_config():
    from lime_edit.loading import _explain

    err = OSError("Cannot find an appropriate cached snapshot folder for the specified revision on the local "
                  "disk and outgoing traffic has been disabled.")
    text = _explain("m.safetensors", err, False, single_file=True)
    assert "--model-config FOLDER" in text and "pass a local folder" not in text


# ------------------------------------------------------------------ --model-config
@pytest.mark.parametrize("config, expected", [
    ("{tmp}/nonexistent", "--model-config {tmp}/nonexistent: no such folder"),
    ("~/lime-probe8-no-such-folder", "--model-config ~/lime-probe8-no-such-folder: no such folder"),
    ("{tmp}/model.safetensors", "a file, not a diffusers config folder"),
    ("{tmp}/empty", "--model-config: {tmp}/empty: not a diffusers model folder (no model_index.json)"),
])
def test_model_config_checked_and_named(tmp_path, config, expected):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"not looked at")
    (tmp_path / "empty").mkdir()
    assert expected.format(tmp=tmp_path) in _load_error(f, model_config=config.format(tmp=tmp_path))


def test_model_config_of_wrong_type(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"not looked at")
    assert "expected a diffusers folder or Hub id, got int" in _load_error(f, model_config=5)


# ------------------------------------------------------------------ lime_edit.json
def test_lime_edit_json_unknown_backbone_names_the_file(model_copy):
    (model_copy / "lime_edit.json").write_text(json.dumps({"backbone": "nope"}))
    text = _load_error(model_copy)
    assert text.startswith(f"{model_copy / 'lime_edit.json'}: backbone: unknown family 'nope'")
    assert "--backbone" not in text


def test_lime_edit_json_unknown_setting(model_copy):
    (model_copy / "lime_edit.json").write_text(json.dumps({"lime_config": {"num_clustres": 4}}))
    text = _load_error(model_copy)
    assert "lime_config: unknown setting(s) 'num_clustres' (did you mean 'num_clusters'?)" in text


def test_lime_edit_json_misspelt_top_level_key(model_copy):
    # "lime_confg" was ignored silently: the model loaded without its recommended settings
    (model_copy / "lime_edit.json").write_text(json.dumps({"lime_confg": {"num_clusters": 4}, "note": "x"}))
    assert "'lime_confg' is not a key of this file; did you mean 'lime_config'?" in _load_error(model_copy)


def test_lime_edit_json_can_edit_is_read_and_checked(model_copy):
    """``can_edit``: one sentence that becomes ``backbone.can_edit`` (added to the warnings of an
    input outside it); anything but a non-empty string, or a misspelt key, is one line."""
    from lime_edit import LimePipeline

    f = model_copy / "lime_edit.json"
    f.write_text(json.dumps({"can_edit": "  recolouring   shapes "}))
    assert LimePipeline.from_pretrained(str(model_copy), device="cpu").backbone.can_edit == "recolouring shapes"
    f.write_text(json.dumps({"can_edit": ["shapes"]}))
    assert "lime_edit.json: can_edit: expected one sentence saying what the model can edit" in _load_error(model_copy)
    f.write_text(json.dumps({"can_edt": "shapes"}))
    assert "'can_edt' is not a key of this file; did you mean 'can_edit'?" in _load_error(model_copy)
    f.unlink()
    assert LimePipeline.from_pretrained(str(model_copy), device="cpu").backbone.can_edit is None


# ------------------------------------------------------------------ empty names
def test_empty_model_name_is_not_the_current_folder(model_copy, monkeypatch):
    monkeypatch.chdir(model_copy)          # "" would have loaded the current folder
    assert "got ''" in _load_error("")


@pytest.mark.parametrize("argv, flag", [
    (["bench", "synthetic", "--n", "1", "--model", ""], "--model"),
    (["bench", "synthetic", "--n", "1", "--methods", "p2p", "--t2i-model", ""], "--t2i-model"),
    (["edit", "IMG", "-i", "make it red", "--model", "x.safetensors", "--model-config", " "], "--model-config"),
    (["demo", "--model", ""], "--model"),
])
def test_cli_empty_model_flags_are_usage_errors(tmp_path, capsys, no_model_load, argv, flag):
    from lime_edit.cli import main

    argv = [a.replace("IMG", str(tmp_path / "img.png")) for a in argv] + ["-o", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {flag} is empty; leave it out for the default, or name one"


def test_cli_broken_folder_is_one_error_for_all_inputs(tmp_path, model_copy, scene, capsys):
    from lime_edit.cli import main

    (model_copy / "model_index.json").write_text("[1, 2]")
    inputs = []
    for name in ("a.png", "b.png"):
        scene.save(tmp_path / name)
        inputs.append(str(tmp_path / name))
    code = main(["edit", *inputs, "-i", "make it red", "--model", str(model_copy), "-o", str(tmp_path / "out")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert "model_index.json: expected a JSON object" in lines[0] and "AttributeError" not in lines[0]


def test_p2p_takes_model_config_for_a_single_file(tmp_path, scene, capsys):
    # a single text-to-image file offline needs --model-config; p2p lacked the flag (the API had it)
    from lime_edit.cli import build_parser, main, p2p_load_kwargs

    args = build_parser().parse_args(["p2p", "x.png", "--source", "a", "--target", "b",
                                      "--model", "t2i.safetensors", "--model-config", "cfg"])
    assert p2p_load_kwargs(args)["model_config"] == "cfg"
    scene.save(tmp_path / "in.png")
    (tmp_path / "t2i.safetensors").write_bytes(b"not looked at")
    code = main(["p2p", str(tmp_path / "in.png"), "--source", "a", "--target", "b", "--model",
                 str(tmp_path / "t2i.safetensors"), "--model-config", str(tmp_path / "nowhere"),
                 "-o", str(tmp_path / "out")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and f"--model-config {tmp_path / 'nowhere'}: no such folder" in lines[0]


def test_bench_refuses_a_level_the_model_lacks_before_any_row(tmp_path, model_copy, capsys):
    # a lime_edit.json level the U-Net lacks: one line before the progress bar and any row
    from lime_edit.cli import main

    (model_copy / "lime_edit.json").write_text(json.dumps({"lime_config": {"feature_levels": [64]}}))
    out = tmp_path / "bench"
    code = main(["bench", "synthetic", "--n", "1", "--methods", "ip2p,lime", "--model", str(model_copy),
                 "--steps", "2", "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "feature_levels" in err[0], err
    assert not (out / "samples.jsonl").exists() or not (out / "samples.jsonl").read_text().strip()
