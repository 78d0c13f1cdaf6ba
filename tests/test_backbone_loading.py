"""Loading and recognising every family from the files users have (tiny models, offline).

Each tiny model is written in the release's format (original-LDM single file, or a diffusers
folder) and loaded through ``LimePipeline.from_pretrained``: the real ``from_single_file``
conversion runs, with a local ``config=`` folder instead of the Hub.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lime_edit import LimePipeline, ModelLoadError
from lime_edit.backbones import HIVE_CONDITION
from lime_edit.testing_ldm import write_config_folder, write_ldm_checkpoint

PIPE = {"sd1": "StableDiffusionInstructPix2PixPipeline", "sd2": "StableDiffusionInstructPix2PixPipeline",
        "sdxl": "StableDiffusionXLInstructPix2PixPipeline"}


def _components(layout, tok_dir, **kw):
    if layout == "sd1":
        from lime_edit.testing import tiny_components

        comps = tiny_components(tok_dir)
        for name in ("unet", "vae", "text_encoder"):
            comps[name].eval()
        return comps
    from lime_edit.testing_ldm import tiny_sd2_ip2p_components, tiny_sdxl_ip2p_components

    return tiny_sd2_ip2p_components(tok_dir) if layout == "sd2" else tiny_sdxl_ip2p_components(tok_dir, **kw)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    cache = {}

    def get(layout, name, **kw):
        key = (layout, name, tuple(sorted(kw.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"ld-{layout}")
            comps = _components(layout, root / "tok", **kw)
            folder = write_config_folder(comps, root / "config", PIPE[layout])
            cache[key] = comps, folder, write_ldm_checkpoint(comps, root / name, "sdxl" if layout == "sdxl" else layout)
        return cache[key]
    return get


def _load(path, folder, **kw):
    lp = LimePipeline.from_pretrained(str(path), model_config=str(folder), device="cpu", local_files_only=True, **kw)
    lp.pipe.set_progress_bar_config(disable=True)
    return lp


@pytest.mark.parametrize("layout,name,family", [
    ("sd1", "MagicBrush-epoch-52-step-4999.safetensors", "ip2p"),
    ("sd1", "hive_rw_condition.safetensors", "hive"),
    ("sd1", "v1-5-pruned-emaonly-adaption-task.safetensors", "instructdiffusion"),
    ("sd2", "hive_v2_rw.safetensors", "hive"),
    ("sdxl", "sdxl-ip2p.safetensors", "sdxl-ip2p"),
])
def test_single_files_are_recognised_and_load(written, layout, name, family, scene):
    comps, folder, path = written(layout, name)
    lp = _load(path, folder)
    assert lp.backbone.name == family
    res = lp.edit(scene, "make the red square blue", num_inference_steps=2, capture_at=0.5)
    assert res.lime_applied and res.settings["backbone"] == family
    if family == "hive":                                              # on for "condition" checkpoints only
        assert lp.backbone.prompt_suffix == (HIVE_CONDITION if "condition" in name else "")
    if family in ("hive", "instructdiffusion"):
        assert type(lp.pipe.scheduler).__name__ == "KDiffusionEulerAncestralScheduler"   # k-diffusion's schedule
        assert lp.config.num_inference_steps == 100                   # the family's own sampler


def test_loaded_single_file_edits_like_the_original(written, scene):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    comps, folder, path = written("sd1", "hive_rw.safetensors")
    lp = _load(path, folder)
    assert lp.backbone.name == "hive" and lp.backbone.prompt_suffix == ""   # no "condition": no suffix
    sched = type(lp.pipe.scheduler).from_config(lp.pipe.scheduler.config)   # the family's sampler
    orig = LimePipeline(StableDiffusionInstructPix2PixPipeline(**{**comps, "scheduler": sched}), backbone="hive",
                        config=lp.config)
    orig.pipe.set_progress_bar_config(disable=True)
    a = lp.edit(scene, "make the red square blue", mask=None, num_inference_steps=2, seed=3)
    b = orig.edit(scene, "make the red square blue", mask=None, num_inference_steps=2, seed=3)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_cosxl_is_recognised_with_its_scheduler(written):
    comps, folder, path = written("sdxl", "cosxl_edit.safetensors")
    lp = _load(path, folder)
    assert lp.backbone.name == "sdxl-ip2p"
    assert lp.pipe.is_cosxl_edit is True
    sched = lp.pipe.scheduler
    assert type(sched).__name__ == "EDMEulerScheduler" and sched.config.prediction_type == "v_prediction"


def test_backbone_name_overrides_detection_and_suffix_switch(written):
    comps, folder, path = written("sd1", "hive_rw_condition.safetensors")
    lp = _load(path, folder, backbone="instructdiffusion")
    assert lp.backbone.name == "instructdiffusion"
    lp = _load(path, folder, prompt_suffix="")
    assert lp.backbone.name == "hive" and lp.backbone.prompt_suffix == ""


def test_pickle_checkpoints_need_allow_pickle(written, tmp_path):
    comps, folder, _ = written("sd1", "hive_rw.safetensors")
    ckpt = write_ldm_checkpoint(comps, tmp_path / "hive_rw.ckpt", "sd1")
    with pytest.raises(ModelLoadError, match="pickle checkpoint.*--allow-pickle"):
        _load(ckpt, folder)
    assert _load(ckpt, folder, allow_pickle=True).backbone.name == "hive"


def test_non_editor_checkpoint_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(path))
    with pytest.raises(ModelLoadError) as err:
        LimePipeline.from_pretrained(str(path), device="cpu")
    msg = str(err.value)
    assert "takes 4 input channels" in msg and "ip2p, hive, instructdiffusion, sdxl-ip2p" in msg
    assert "\n" not in msg
    save_file({"foo": torch.zeros(1)}, str(path))
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion U-Net checkpoint"):
        LimePipeline.from_pretrained(str(path), device="cpu")


def test_folder_settings_file_picks_family_and_defaults(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "lime_edit.json").write_text(json.dumps(
        {"backbone": "instructdiffusion", "lime_config": {"num_clusters": 4, "guidance_scale": 3.0}}))
    lp = LimePipeline.from_pretrained(str(folder), device="cpu")
    assert lp.backbone.name == "instructdiffusion"
    assert lp.config.num_clusters == 4 and lp.config.guidance_scale == 3.0
    assert lp.config.num_inference_steps == 100                       # the rest: the family's
    (folder / "lime_edit.json").write_text(json.dumps({"lime_config": {"num_clusterz": 4}}))
    with pytest.raises(ModelLoadError, match="num_clusterz"):
        LimePipeline.from_pretrained(str(folder), device="cpu")
    (folder / "lime_edit.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="lime_edit.json: unreadable"):
        LimePipeline.from_pretrained(str(folder), device="cpu")


def test_diffusers_folder_of_sdxl_is_recognised(tmp_path):
    from lime_edit.testing_ldm import tiny_sdxl_ip2p_pipeline

    pipe = tiny_sdxl_ip2p_pipeline(tmp_path / "tok")
    pipe.save_pretrained(str(tmp_path / "xl"))
    lp = LimePipeline.from_pretrained(str(tmp_path / "xl"), device="cpu")
    assert lp.backbone.name == "sdxl-ip2p" and lp.config.out_scale is None
    assert lp.backbone.resolve(lp.config).out_scale == 1


def test_cli_edits_with_a_single_file_of_another_family(written, tmp_path, scene):
    from lime_edit.cli import main

    comps, folder, path = written("sd1", "v1-5-pruned-emaonly-adaption-task.safetensors")
    scene.save(tmp_path / "x.png")
    code = main(["edit", str(tmp_path / "x.png"), "-i", "make the red square blue", "--model", str(path),
                 "--model-config", str(folder), "--local-files-only", "--device", "cpu", "--steps", "2",
                 "--out", str(tmp_path / "out"), "-q"])
    assert code == 0
    rec = json.loads((tmp_path / "out" / "x.json").read_text())
    assert rec["lime_applied"] and rec["settings"]["backbone"] == "instructdiffusion"
    assert rec["settings"]["guidance_scale"] == 5.0          # the family's default, not IP2P's
    assert (tmp_path / "out" / "x_edited.png").is_file()
    code = main(["edit", str(tmp_path / "x.png"), "-i", "make it red", "--model", str(path),
                 "--model-config", str(folder), "--local-files-only", "--device", "cpu",
                 "--backbone", "nonsense", "--out", str(tmp_path / "out2")])
    assert code == 2


EXPECTED = {"instruct-pix2pix-00-22000.ckpt": "ip2p", "MagicBrush-epoch-52-step-4999.ckpt": "ip2p",
            "hive_rw.ckpt": "hive", "hive_rw_condition.ckpt": "hive", "hive_v2_rw.ckpt": "hive",
            "hive_v2_rw_condition.ckpt": "hive", "v1-5-pruned-emaonly-adaption-task.ckpt": "instructdiffusion",
            "v1-5-pruned-emaonly-adaption-task-humanalign.ckpt": "instructdiffusion",
            "cosxl_edit.safetensors": "sdxl-ip2p"}


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    """Every release as a tiny look-alike in its own format and name, with a config folder per layout."""
    from lime_edit.testing_ldm import RELEASES, tiny_sdxl_ip2p_components, write_release_lookalike

    root = tmp_path_factory.mktemp("releases")
    comps = {"sd1": _components("sd1", root / "tok1"), "sd2": _components("sd2", root / "tok2"),
             "sdxl": tiny_sdxl_ip2p_components(root / "tokxl", cosxl=True)}
    folders = {k: write_config_folder(c, root / f"config-{k}", PIPE[k]) for k, c in comps.items()}
    for name, spec in RELEASES.items():
        write_release_lookalike(name, comps[spec["layout"]], root / "files")
    return root / "files", folders, comps


def test_every_release_name_is_recognised(release_dir):
    from lime_edit.testing_ldm import RELEASES

    files, folders, _ = release_dir
    assert set(RELEASES) == set(EXPECTED)
    for name, family in EXPECTED.items():
        lp = _load(files / name, folders[RELEASES[name]["layout"]], allow_pickle=True)
        assert lp.backbone.name == family, name


def test_training_checkpoints_are_loaded_with_their_ema_weights(release_dir, tmp_path):
    import copy

    from lime_edit.testing_ldm import write_release_lookalike

    _, folders, comps = release_dir
    ema = copy.deepcopy(comps["sd1"]["unet"])
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01)
    path = write_release_lookalike("MagicBrush-epoch-52-step-4999.ckpt", comps["sd1"], tmp_path, ema_unet=ema)
    lp = _load(path, folders["sd1"], allow_pickle=True)
    got = lp.pipe.unet.state_dict()
    assert all(torch.equal(got[k], v) for k, v in ema.state_dict().items())


def test_a_hub_id_with_no_local_copy_and_no_download_says_so(monkeypatch, tmp_path):
    # diffusers 0.42 reports it as "... does not appear to have a file named model_index.json"
    from lime_edit.errors import ModelLoadError
    from lime_edit.loading import load_backbone

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))          # an empty cache
    with pytest.raises(ModelLoadError, match=r"^nobody/no-such-editor: no local copy of this model, and the "
                                             r"Hugging Face Hub did not provide one"):
        load_backbone("nobody/no-such-editor", local_files_only=True)


def test_a_model_config_for_a_model_folder_is_refused(tiny_model_dir):
    from lime_edit.errors import ModelLoadError
    from lime_edit.loading import load_backbone

    with pytest.raises(ModelLoadError, match=r"model_config elsewhere \(--model-config\): only for a single "):
        load_backbone(tiny_model_dir, model_config="elsewhere")
