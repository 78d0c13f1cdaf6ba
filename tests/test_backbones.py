"""The backbone layer: every family on tiny models of its layout (CPU, offline).

SDXL and the original-LDM single files are in test_backbones_sdxl.py / test_ldm_checkpoints.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lime_edit import LimeConfig, LimeEditError, LimePipeline
from lime_edit.backbones import (FAMILIES, HIVE_CONDITION, HiveBackbone, InstructDiffusionBackbone,
                                 attention_levels, instructdiffusion_combine, reference_levels)
from lime_edit.config import BACKBONE_NAMES

STEPS = 3
FAST = dict(num_inference_steps=STEPS, capture_at=0.34)


def _arr(img):
    return np.asarray(img).astype(np.int16)


def test_cli_family_names_match_the_registry():
    assert tuple(FAMILIES) == BACKBONE_NAMES


def test_levels_are_read_from_the_unet(tiny_pipe):
    levels = attention_levels(tiny_pipe.unet)
    assert sorted(levels) == [1, 2, 4, 8]
    assert all(n.startswith("mid_block") for n in levels[8])
    assert reference_levels([1, 2, 4, 8]) == ((2, 4, 8), (1, 2))      # the reference code's choice on SD1.5
    assert reference_levels([2, 4]) == ((2, 4), (2, 4))                # SDXL: both levels
    assert reference_levels([1, 2, 4]) == ((2, 4), (1, 2))


@pytest.fixture(scope="module")
def no_mid_pipe(tmp_path_factory):
    """An IP2P U-Net with attention at latent levels 1, 2, 4 only (no mid-block attention)."""
    from lime_edit.testing import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("tok_nomid"), mid_block_type=None)


def test_defaults_never_name_a_missing_level(no_mid_pipe, scene):
    lp = LimePipeline(no_mid_pipe)
    assert lp.backbone.levels == [1, 2, 4]
    loc = lp.localize(scene, "make the red square blue", **FAST)
    assert loc.mask.any()
    res = lp.edit(scene, "make the red square blue", **FAST)
    assert res.lime_applied
    assert res.settings["feature_levels"] == [2, 4] and res.settings["regularization_levels"] == [1, 2]
    # an explicitly set level that does not exist stays a one-line error, before any work
    with pytest.raises(LimeEditError, match=r"feature_levels: this U-Net has no attention layer at latent "
                                            r"level\(s\) 8 \(levels present: 1, 2, 4\)"):
        lp.edit(scene, "make the red square blue", feature_levels=(2, 8), **FAST)


# --------------------------------------------------------------------------- attention spy
class _Spy:
    """Records every cross-attention call that carries LIME's additive mask."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = torch.nn.functional.scaled_dot_product_attention

        def spy(q, k, v, attn_mask=None, **kw):
            if attn_mask is not None and k.shape[2] == 77:
                probs = (q.float() @ k.float().transpose(-1, -2) * q.shape[-1] ** -0.5
                         + attn_mask.float()).softmax(-1)                       # (rows, heads, Nq, T)
                self.calls.append((attn_mask.detach().clone(), probs))
            return real(q, k, v, attn_mask=attn_mask, **kw)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)


def _check_zero_attention(calls, keep: torch.Tensor, branches: int):
    """Inside the RoI the unrelated tokens get zero attention in every branch; outside nothing is masked."""
    assert calls, "no regularized cross-attention call"
    drop = ~keep                                                                  # (T,)
    for mask, probs in calls:
        inside = torch.isinf(mask).any(-1)[:, 0]                                  # (rows, Nq)
        assert inside.shape[0] == branches
        for r in range(branches):                                                 # the same rows in every branch
            assert torch.equal(inside[r], inside[0])
        assert inside[0].any() and not inside[0].all()
        masked_cols = torch.isinf(mask[0, 0][inside[0]]).all(0)                   # (T,)
        assert torch.equal(masked_cols, drop)
        p_in = probs[:, :, inside[0]]                                             # (rows, heads, n_in, T)
        assert float(p_in[..., drop].max()) == 0.0
        assert torch.isfinite(probs).all()
        assert float(mask[:, :, ~inside[0]].abs().max()) == 0.0


def _square_mask(size=64):
    m = np.zeros((size, size), np.uint8)
    m[8:32, 8:32] = 255
    return Image.fromarray(m)


# --------------------------------------------------------------------------- HIVE
def test_hive_suffix_is_added_and_never_related(tiny_pipe, scene, monkeypatch):
    bb = HiveBackbone(tiny_pipe, prompt_suffix=HIVE_CONDITION)
    lp = LimePipeline(tiny_pipe, config=LimeConfig(**FAST), backbone=bb)
    sel = bb.select_tokens("make the red square blue", lp.config)
    n_instr = len(tiny_pipe.tokenizer("make the red square blue", add_special_tokens=False).input_ids)
    assert sel.end > 1 + n_instr                               # the suffix is encoded
    assert sel.related and max(sel.related) <= n_instr         # ... and never related
    assert not sel.keep[1 + n_instr:sel.end].any()             # ... and penalized inside the RoI
    # LIME off == the stock pipeline given instruction + suffix
    off = lp.edit(scene, "make the red square blue", mask=None, seed=2)
    plain = tiny_pipe("make the red square blue" + HIVE_CONDITION, image=scene, num_inference_steps=STEPS,
                      guidance_scale=2.0, image_guidance_scale=1.5,
                      generator=torch.Generator().manual_seed(2)).images[0]
    assert np.array_equal(_arr(off.image), _arr(plain))
    spy = _Spy(monkeypatch)
    on = lp.edit(scene, "make the red square blue", mask=_square_mask(), seed=2)
    assert on.lime_applied
    _check_zero_attention(spy.calls, sel.keep, branches=3)


def test_hive_defaults_and_suffix_switch():
    assert HiveBackbone.default_options("/x/hive_rw_condition.ckpt")["prompt_suffix"] == HIVE_CONDITION
    assert HiveBackbone.default_options("/x/hive_rw.ckpt")["prompt_suffix"] == ""
    assert HiveBackbone.sampler_defaults["num_inference_steps"] == 100


def test_hive_instruction_with_no_content_word_falls_back(tiny_pipe, scene):
    """The suffix's content words never make a content-free instruction "related"."""
    lp = LimePipeline(tiny_pipe, config=LimeConfig(**FAST), backbone=HiveBackbone(tiny_pipe,
                                                                                  prompt_suffix=HIVE_CONDITION))
    res = lp.edit(scene, "make it so")
    assert not res.lime_applied and "no related token" in res.warnings[0]


# --------------------------------------------------------------------------- InstructDiffusion
def _instructdiffusion_reference(pipe, image, prompt, steps, s_t, s_i, seed):
    """InstructDiffusion's sampler written out explicitly: rows (c, i, t), its formula."""
    from diffusers.utils.torch_utils import randn_tensor

    tok, te = pipe.tokenizer, pipe.text_encoder

    def enc(text):
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        return te(ids)[0]
    c, e = enc(prompt), enc("")
    gens = [torch.Generator().manual_seed(seed)]
    img = pipe.image_processor.preprocess(image)
    z_img = pipe.vae.encode(img).latent_dist.mode()
    sched = pipe.scheduler
    sched.set_timesteps(steps)
    latents = randn_tensor((1, 4, *z_img.shape[-2:]), generator=gens, dtype=torch.float32) * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([latents] * 3), t)
        x = torch.cat([x, torch.cat([z_img, z_img, torch.zeros_like(z_img)])], 1)
        e_c, e_i, e_t = pipe.unet(x, t, encoder_hidden_states=torch.cat([c, e, c])).sample.chunk(3)
        eps = 0.5 * (e_i + e_t) + s_t * (e_c - e_i) + s_i * (e_c - e_t)
        latents = sched.step(eps, t, latents, generator=gens).prev_sample
    out = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(out, output_type="np")[0]


@torch.no_grad()
def test_instructdiffusion_off_equals_its_formula(tiny_pipe, scene):
    lp = LimePipeline(tiny_pipe, backbone="instructdiffusion")
    assert lp.config.guidance_scale == 5.0 and lp.config.image_guidance_scale == 1.25
    res = lp.edit(scene, "make the red square blue", mask=None, seed=4, num_inference_steps=STEPS)
    ref = _instructdiffusion_reference(tiny_pipe, scene, "make the red square blue", STEPS, 5.0, 1.25, 4)
    ref_img = Image.fromarray(np.clip(ref * 255.0 + 0.5, 0, 255).astype(np.uint8))
    assert np.abs(_arr(res.image) - _arr(ref_img)).max() <= 1
    # and it differs from IP2P's formula with the same scales
    ip2p = LimePipeline(tiny_pipe).edit(scene, "make the red square blue", mask=None, seed=4,
                                        num_inference_steps=STEPS, guidance_scale=5.0, image_guidance_scale=1.25)
    assert np.abs(_arr(res.image) - _arr(ip2p.image)).mean() > 0.5
    # the hooks are removed afterwards
    assert not tiny_pipe.unet._forward_pre_hooks and not tiny_pipe.unet._forward_hooks


def test_instructdiffusion_formula():
    e_c, e_i, e_t = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([4.0])
    assert float(instructdiffusion_combine(e_c, e_i, e_t, 5.0, 1.25)) == pytest.approx(
        3.0 + 5.0 * -1.0 + 1.25 * -3.0)


def test_instructdiffusion_lime_localizes_and_regularizes(tiny_pipe, scene, monkeypatch):
    lp = LimePipeline(tiny_pipe, config=LimeConfig(**FAST), backbone=InstructDiffusionBackbone(tiny_pipe))
    loc = lp.localize(scene, "make the red square blue")
    assert loc.mask.any() and not loc.mask.all()
    sel = lp.backbone.select_tokens("make the red square blue", lp.config)
    spy = _Spy(monkeypatch)
    res = lp.edit(scene, "make the red square blue", mask=_square_mask())
    assert res.lime_applied and res.settings["backbone"] == "instructdiffusion"
    _check_zero_attention(spy.calls, sel.keep, branches=3)


def test_ip2p_zero_attention_inside_roi(tiny_pipe, scene, monkeypatch):
    lp = LimePipeline(tiny_pipe, config=LimeConfig(**FAST))
    sel = lp.backbone.select_tokens("make the red square blue", lp.config)
    spy = _Spy(monkeypatch)
    lp.edit(scene, "make the red square blue", mask=_square_mask())
    _check_zero_attention(spy.calls, sel.keep, branches=3)


def test_unknown_family_is_a_one_line_error(tiny_pipe):
    with pytest.raises(LimeEditError, match="unknown family 'dalle'.*known: ip2p, hive"):
        LimePipeline(tiny_pipe, backbone="dalle")
