"""SDXL InstructPix2Pix (and the SD2.x layout of HIVE v2) on tiny models of their layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lime_edit import LimeConfig, LimePipeline
from lime_edit.backbones import SDXLIP2PBackbone

from test_backbones import FAST, STEPS, _arr, _check_zero_attention, _square_mask, _Spy


@pytest.fixture(scope="module")
def sdxl_pipe(tmp_path_factory):
    from lime_edit.testing_ldm import tiny_sdxl_ip2p_pipeline

    return tiny_sdxl_ip2p_pipeline(tmp_path_factory.mktemp("tok_xl"))


@pytest.fixture(scope="module")
def sdxl(sdxl_pipe):
    lp = LimePipeline(sdxl_pipe)
    lp.config = lp.config.replace(**FAST)         # the family's sampler values, fewer steps
    return lp


def test_sdxl_is_recognised_with_its_levels(sdxl, sdxl_pipe):
    assert isinstance(sdxl.backbone, SDXLIP2PBackbone)
    assert sdxl.backbone.levels == [2, 4]
    assert sdxl.backbone.default_levels() == ((2, 4), (2, 4))
    assert LimePipeline(sdxl_pipe).config.guidance_scale == 5.0          # the family's sampler values


def test_sdxl_lime_off_equals_stock_pipeline(sdxl, sdxl_pipe, scene):
    off = sdxl.edit(scene, "make the red square blue", mask=None, seed=5)
    assert not off.lime_applied
    stock = sdxl_pipe("make the red square blue", image=scene, num_inference_steps=STEPS, guidance_scale=5.0,
                      image_guidance_scale=1.5, generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(_arr(off.image), _arr(stock))
    on = sdxl.edit(scene, "make the red square blue", seed=5)
    assert on.lime_applied and on.localization.mask.any()
    assert on.localization.grid_size == (32, 32)                         # out_scale 1 x the 32x32 latent
    assert on.settings["feature_levels"] == [2, 4] and on.settings["out_scale"] == 1
    assert np.abs(_arr(on.image) - _arr(off.image)).mean() > 0.1


def test_sdxl_zero_attention_inside_roi(sdxl, scene, monkeypatch):
    sel = sdxl.backbone.select_tokens("make the red square blue", sdxl.config)
    spy = _Spy(monkeypatch)
    res = sdxl.edit(scene, "make the red square blue", mask=_square_mask(), seed=1)
    assert res.lime_applied
    _check_zero_attention(spy.calls, sel.keep, branches=3)


def test_sdxl_both_tokenizers_agree_on_positions(sdxl, sdxl_pipe):
    tok1, tok2 = sdxl_pipe.tokenizer, sdxl_pipe.tokenizer_2
    assert tok1.pad_token != tok2.pad_token
    sel = sdxl.backbone.select_tokens("make the red square blue", sdxl.config)
    ids2 = tok2("make the red square blue", padding="max_length", max_length=77).input_ids
    assert ids2[:sel.end + 1] == sel.ids[:sel.end + 1] and ids2[sel.end + 1] != sel.ids[sel.end + 1]


def test_sdxl_batch_of_two_equals_two_singles(sdxl, scene):
    other = scene.transpose(0)
    batch = sdxl.edit([scene, other], ["make the red square blue", "turn the blue square red"], seed=[1, 2])
    singles = [sdxl.edit(scene, "make the red square blue", seed=1),
               sdxl.edit(other, "turn the blue square red", seed=2)]
    for b, s in zip(batch, singles):
        # the same attention maps (to rounding) and top-k points: a batch that mixed up its items
        # would differ everywhere.  The segments are not compared: batched and single features
        # differ by ~1e-6, and K-means on this random model's poorly separated features can flip
        # whole clusters on such a difference (measured: 2 and 5 of 1024 labels with 2 torch
        # threads, about 16 % of the mask with 1 thread)
        assert torch.allclose(b.localization.attention, s.localization.attention, atol=1e-4)
        assert torch.allclose(b.localization.token_maps, s.localization.token_maps, atol=1e-4, rtol=1e-3)
        assert torch.equal(b.localization.points, s.localization.points)
    # the edit pass, given the same regions, matches to rounding
    same = [sdxl.edit(scene, "make the red square blue", mask=batch[0].localization, seed=1),
            sdxl.edit(other, "turn the blue square red", mask=batch[1].localization, seed=2)]
    for b, s in zip(batch, same):
        assert np.abs(_arr(b.image) - _arr(s.image)).max() <= 1


@pytest.fixture(scope="module")
def sd2_pipe(tmp_path_factory):
    from lime_edit.testing_ldm import tiny_sd2_ip2p_pipeline

    return tiny_sd2_ip2p_pipeline(tmp_path_factory.mktemp("tok_sd2"))


def test_sd2_layout_hive_v2_runs(sd2_pipe, scene, monkeypatch):
    """HIVE v2's layout (SD2.x: linear projections, 64-d heads, OpenCLIP-like text encoder)."""
    lp = LimePipeline(sd2_pipe, config=LimeConfig(**FAST), backbone="hive")
    assert lp.backbone.levels == [1, 2, 4, 8]
    loc = lp.localize(scene, "make the red square blue")
    assert loc.mask.any()
    sel = lp.backbone.select_tokens("make the red square blue", lp.config)
    spy = _Spy(monkeypatch)
    assert lp.edit(scene, "make the red square blue", mask=_square_mask()).lime_applied
    _check_zero_attention(spy.calls, sel.keep, branches=3)
