"""Settings that mean the same at every size, and inputs far from a model's native size."""

from __future__ import annotations

import pytest
from PIL import Image

from lime_edit import LimeConfig, LimePipeline
from lime_edit.imageops import downscaled_size

FAST = dict(num_inference_steps=2, capture_at=0.0, num_clusters=3)


# ---------------------------------------------------------------- top_k scaled by grid area
def test_top_k_is_exact_on_the_reference_grid_and_scales_by_area():
    cfg = LimeConfig()
    assert cfg.top_k_for((128, 128)) == 100                 # SD1.5 at 512 px, SDXL at 1024 px
    assert cfg.top_k_for((96, 96)) == 56                    # SD1.5 at 384 px / SDXL at 768 px
    assert cfg.top_k_for((32, 32)) == 6                     # the demo model's 64 px scenes
    assert cfg.top_k_for((256, 256)) == 400                 # SD1.5 at 1024 px: same share of the image
    assert cfg.top_k_for((96, 128)) == 75                   # not square
    assert LimeConfig(top_k=1).top_k_for((32, 32)) == 1     # never fewer than one point
    assert LimeConfig(top_k=10**6).top_k_for((8, 8)) == 64  # never more than the grid
    for k in (1, 7, 100, 333):
        assert LimeConfig(top_k=k).top_k_for((128, 128)) == k


def test_localization_records_the_points_it_used(tiny_pipe, scene):
    lp = LimePipeline(tiny_pipe)
    loc = lp.localize(scene, "make the red square blue", **FAST)    # 64x64 grid
    assert loc.grid_size == (64, 64) and loc.top_k == 25 and loc.points.shape == (25, 2)
    assert loc.with_segments([0]).top_k == 25
    res = lp.edit(scene, "make the red square blue", **FAST)
    assert res.settings["top_k"] == 100 and res.settings["top_k_points"] == 25
    assert res.settings["processed_size"] == [64, 64] and res.warnings == []


# ---------------------------------------------------------------- far from the native size
def test_downscaled_size_rule():
    # more than 4x the native pixel count: about the native count, aspect kept, multiple of 8
    assert downscaled_size((500, 500), 64 * 64, 8, 4.0) == (64, 64)
    assert downscaled_size((1000, 500), 64 * 64, 8, 4.0) == (88, 48)
    assert downscaled_size((4000, 3000), 512 * 512, 64, 4.0) == (576, 448)
    # SD1.5 users' 768 px photos (2.25x) and 1024 px (exactly 4x) stay as they are
    assert downscaled_size((768, 768), 512 * 512, 64, 4.0) is None
    assert downscaled_size((1024, 1024), 512 * 512, 64, 4.0) is None
    # never upscaled; 0 = off
    assert downscaled_size((32, 32), 64 * 64, 8, 4.0) is None
    assert downscaled_size((5000, 5000), 64 * 64, 8, 0.0) is None


def test_native_size_comes_from_the_model_config(tiny_pipe):
    lp = LimePipeline(tiny_pipe)
    # unet.config.sample_size (32) x vae_scale_factor (2), whatever the model is called
    assert lp.native_size == (64, 64)


def test_far_input_is_processed_at_native_size_with_a_notice(tiny_pipe, scene):
    lp = LimePipeline(tiny_pipe)
    big = scene.resize((200, 150), Image.NEAREST)       # 30000 px > 4 x 4096
    res = lp.edit(big, "make the red square blue", **FAST)
    assert res.image.size == (200, 150)                 # returned at the input's size
    assert res.settings["processed_size"] == [80, 48]   # about 64x64 pixels, aspect kept, multiple of 16
    assert res.localization.image_size == (80, 48) and res.localization.grid_size == (48, 80)
    notes = [w for w in res.warnings if "native" in w]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "200x150" in notes[0] and "64x64" in notes[0] and "80x48" in notes[0]
    assert lp.localize(big, "make the red square blue", **FAST).warnings == notes
    plain = lp.edit(big, "make the red square blue", mask=None, **FAST)
    assert plain.warnings == notes and plain.settings["processed_size"] == [80, 48]
    # a batch mixing sizes: only the far one is downscaled
    both = lp.edit([scene, big], "make the red square blue", **FAST)
    assert [r.settings["processed_size"] for r in both] == [[64, 64], [80, 48]]
    assert both[0].warnings == [] and both[1].warnings == notes


def test_downscaling_can_be_turned_off(tiny_pipe, scene):
    lp = LimePipeline(tiny_pipe)
    big = scene.resize((144, 144), Image.NEAREST)       # 20736 px > 4 x 4096
    assert lp.edit(big, "make the red square blue", mask=None, **FAST).settings["processed_size"] == [64, 64]
    res = lp.edit(big, "make the red square blue", mask=None, downscale_above=0, **FAST)
    assert res.settings["processed_size"] == [144, 144] and res.warnings == []
    assert lp.edit(big, "make it blue", mask=None, downscale_above=100, **FAST).warnings == []


def test_bad_downscale_setting_is_one_line():
    with pytest.raises(ValueError, match="downscale_above"):
        LimeConfig(downscale_above=0.5)
    with pytest.raises(ValueError, match="downscale_above"):
        LimeConfig(downscale_above=float("inf"))
