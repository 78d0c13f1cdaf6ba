"""Fixes from the seventh bad-input probe: bench --set, p2p --set of a setting p2p has no use
for, --reweight of a truncated word, --device meta / a device torch has no module for, and the
NaN message of a caption editor."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lime_edit import LimeEditError, LimePipeline
from lime_edit import cli as lime_cli
from lime_edit.errors import ModelLoadError


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


# --------------------------------------------------------------------------- bench synthetic --set
@pytest.mark.parametrize("sets, why", [
    # --steps / --p2p-steps are what every row passes: this one was recorded in results.json but
    # never used (the rows ran LimeConfig's 30 steps, or --steps)
    (["num_inference_steps=3"], "--set num_inference_steps: the steps are set by --steps"),
    # the last one silently won; lime-edit edit refuses this
    (["top_k=3", "top_k=4"], "--set top_k is given twice, as 3 and 4"),
])
def test_bench_set_that_would_be_ignored_or_conflicts_is_a_usage_error(tmp_path, capsys, no_model_load,
                                                                        sets, why):
    argv = ["bench", "synthetic", "--n", "1", "--out", str(tmp_path / "b"), "--no-progress", "--threads", "0"]
    for s in sets:
        argv += ["--set", s]
    assert lime_cli.main(argv) == 2
    assert why in _one_error_line(capsys)
    assert not (tmp_path / "b").exists()


def test_bench_set_given_twice_alike_is_fine():
    from types import SimpleNamespace

    from lime_edit.demo.bench import _settings

    assert _settings(SimpleNamespace(cfg_set=["top_k=3", "top_k=3"])) == {"top_k": 3}


# --------------------------------------------------------------------------- p2p --set
def test_p2p_refuses_a_set_of_the_image_guidance_it_has_no_use_for(tmp_path, capsys, no_model_load):
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32), "red").save(img)
    code = lime_cli.main(["p2p", str(img), "--model", "demo-t2i", "--source", "a red square", "--target",
                          "a blue square", "--set", "image_guidance_scale=3", "-o", str(tmp_path / "o")])
    assert code == 2
    assert "--set image_guidance_scale: not a setting of `lime-edit p2p`" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()
    # edit has image guidance: the same --set is a setting there
    args = lime_cli.build_parser().parse_args(["edit", str(img), "-i", "make it red", "--set",
                                               "image_guidance_scale=3"])
    assert lime_cli.collect_overrides(args) == {"image_guidance_scale": 3.0}


# --------------------------------------------------------------------------- --reweight
def test_reweight_of_a_word_cut_off_by_truncation_says_so(tmp_path_factory):
    from lime_edit.backbones import P2PBackbone
    from lime_edit.testing import tiny_t2i_pipeline

    t2i = tiny_t2i_pipeline(tmp_path_factory.mktemp("tok_t2i"))
    bb = P2PBackbone(t2i, reweight={"green": 2.0})
    long = " ".join(["red"] * (bb.max_tokens + 5)) + " green"
    with pytest.raises(LimeEditError, match=r"'green' comes after the text encoder's \d+-token limit"):
        bb._equalizer([long])
    with pytest.raises(LimeEditError, match="'purple' is not a word of the target caption"):
        P2PBackbone(t2i, reweight={"purple": 2.0})._equalizer([long])


# --------------------------------------------------------------------------- --device
def test_meta_device_is_refused_before_loading():
    from lime_edit.loading import load_backbone

    # the model does not exist: the device is refused first, without any loading
    with pytest.raises(ModelLoadError, match="--device meta: cannot run the model there"):
        load_backbone("/nonexistent/model", device="meta")


def test_meta_device_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32), "red").save(img)
    code = lime_cli.main(["localize", str(img), "--model", "demo", "--device", "meta", "-i", "make it red",
                          "--steps", "1", "-o", str(tmp_path / "o")])
    assert code == 2
    line = _one_error_line(capsys)
    assert "--device meta: cannot run the model there" in line and "NotImplementedError" not in line


def test_a_device_torch_has_no_module_for_is_a_model_load_error(monkeypatch):
    """``--device hpu`` on a torch without it: ``ModuleNotFoundError: No module named 'torch.hpu'``."""
    import diffusers

    from lime_edit.loading import load_backbone

    def to(self, *a, **k):
        raise ModuleNotFoundError("No module named 'torch.hpu'")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "to", to)
    with pytest.raises(ModelLoadError, match=r"--device cpu: cannot move the model there \(No module named"):
        load_backbone("demo", device="cpu")


# --------------------------------------------------------------------------- NaN message
def test_nan_message_of_a_caption_editor_names_no_image_guidance(monkeypatch):
    lp = LimePipeline.from_pretrained("demo-t2i", backbone="p2p", device="cpu")

    def nan_run(self, items, cfg, **kw):
        w, h = items[0].size
        return [np.full((h, w, 3), np.nan, np.float32) for _ in items]

    monkeypatch.setattr(LimePipeline, "_run", nan_run)
    img = Image.new("RGB", (64, 64), "red")
    with pytest.raises(LimeEditError, match="NaN/inf") as err:
        lp.edit_captions(img, "a red square", "a blue square", mask=None, num_inference_steps=2)
    assert "image guidance" not in str(err.value)


def test_api_warns_when_a_mask_or_localization_is_stretched_to_another_aspect_ratio():
    """The CLI said so for mask files; the API stretched silently (a Localization of another image too)."""
    import numpy as np
    from PIL import Image

    from lime_edit import LimePipeline
    from lime_edit.demo import bundled_model_path

    lp = LimePipeline.from_pretrained(str(bundled_model_path()), device="cpu")
    lp.pipe.set_progress_bar_config(disable=True)
    img = Image.new("RGB", (64, 64), (200, 40, 40))
    wide = Image.new("RGB", (128, 64), (200, 40, 40))
    mask = np.zeros((40, 20), bool)
    mask[:, :10] = True
    res = lp.edit(img, "make the red square blue", mask=mask, num_inference_steps=2)
    assert any("the mask is 20x40 but the image is 64x64: it was stretched to fit" in w for w in res.warnings)
    same = lp.localize(img, "make the red square blue", num_inference_steps=2)
    other = lp.localize(wide, "make the red square blue", num_inference_steps=2)
    assert not any("stretched" in w for w in lp.edit(img, "make the red square blue", mask=same,
                                                     num_inference_steps=2).warnings)
    res = lp.edit(img, "make the red square blue", mask=other, num_inference_steps=2)
    assert any("Localization's image is 128x64 but the image is 64x64" in w for w in res.warnings), res.warnings
