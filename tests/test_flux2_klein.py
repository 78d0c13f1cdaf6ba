"""LIME on FLUX.2 [klein] (joint attention with FLUX.2's fused single-stream blocks, Qwen3
chat-template text stream), on tiny random Flux2KleinPipelines built in code: distilled
(klein 4B/9B: no guidance) and base (classifier-free guidance, a second forward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lime_edit import LimeConfig, LimeEditError, LimePipeline
from lime_edit.processors import PassState

STEPS = 3
PROMPT = "make the car red"


@pytest.fixture(scope="module")
def fpipe():
    from lime_edit.testing_dit import tiny_flux2_klein_pipeline

    return tiny_flux2_klein_pipeline()


@pytest.fixture(scope="module")
def flp(fpipe):
    return LimePipeline(fpipe)


@pytest.fixture(scope="module")
def base_lp():
    from lime_edit.testing_dit import tiny_flux2_klein_pipeline

    return LimePipeline(tiny_flux2_klein_pipeline(seed=1, is_distilled=False))


def _stock(pipe, image, prompt, seed, steps=STEPS, guidance=1.0, output_type="np", **kw):
    return pipe(image=image, prompt=prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=guidance,
                output_type=output_type, generator=torch.Generator().manual_seed(seed), **kw).images


def test_recognised_levels_and_defaults(flp, base_lp):
    bb = flp.backbone
    assert bb.name == "flux2" and bb.levels == [0, 1, 2, 3] and bb.max_batch == 1
    cfg = flp.settings()
    assert cfg.feature_levels == (1, 2) and cfg.regularization_levels == (0, 1, 2, 3)
    assert (cfg.num_inference_steps, cfg.guidance_scale) == (4, 1.0)            # distilled klein
    assert (base_lp.settings().num_inference_steps, base_lp.settings().guidance_scale) == (50, 4.0)
    with pytest.raises(LimeEditError, match="no attention layer at block"):
        flp.settings(feature_levels=(9,))


def test_token_roles_from_the_chat_template_ids(flp, fpipe):
    sel = flp.backbone.select_tokens("make the car red, please", flp.settings())
    toks = sel.tokens
    assert len(sel.ids) == 512 and toks[:3] == ["<|im_start|>", "user", ""]       # "\n" decodes to a blank
    assert toks[3:sel.end] == ["make", "the", "car", "red", ",", "please"] and toks[sel.end] == "<|im_end|>"
    assert [toks[p] for p in sel.related] == ["car", "red"]
    assert not sel.keep[:3].any() and not sel.keep[sel.end + 1:].any() and sel.keep[sel.end]
    # the same ids the pipeline encodes: its embeddings have one position per id
    embeds, _ = fpipe.encode_prompt("make the car red, please", device="cpu")
    assert embeds.shape[1] == len(sel.ids)


def test_lime_off_equals_stock_and_on_differs(flp, fpipe, scene):
    plain = flp.edit(scene, PROMPT, mask=None, seed=3, num_inference_steps=STEPS)
    stock = _stock(fpipe, scene, PROMPT, 3, output_type="pil")[0]
    assert np.array_equal(np.asarray(plain.image), np.asarray(stock))
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    lime = flp.edit(scene, PROMPT, mask=mask, seed=3, num_inference_steps=STEPS)
    assert lime.lime_applied and not np.array_equal(np.asarray(lime.image), np.asarray(plain.image))


def test_installed_but_inert_is_bit_identical_with_cfg(base_lp, scene):
    pipe = base_lp.pipe
    st = PassState(latent_hw=(16, 16), batch=1)          # never captures, never regularizes
    want = _stock(pipe, scene, PROMPT, 0, guidance=4.0)
    with base_lp.backbone.attention(st):
        got = _stock(pipe, scene, PROMPT, 0, guidance=4.0)
    assert np.array_equal(got, want) and st.levels_seen == {0, 1, 2, 3}
    names = {type(p).__name__ for p in pipe.transformer.attn_processors.values()}
    assert names == {"Flux2AttnProcessor", "Flux2ParallelSelfAttnProcessor"}


def test_empty_roi_is_stock(flp, fpipe, scene):
    st = PassState(latent_hw=(16, 16), batch=1, reg_steps=range(STEPS), reg_levels=frozenset({0, 1, 2, 3}))
    st.roi = torch.zeros(1, 32, 32, dtype=torch.bool)
    st.tokens = flp.backbone.select_tokens(PROMPT, flp.settings()).keep[None]
    want = _stock(fpipe, scene, PROMPT, 0)
    with flp.backbone.attention(st):
        got = _stock(fpipe, scene, PROMPT, 0)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("block", ["double", "single"])
def test_regularization_changes_only_roi_rows_of_one_layer(flp, fpipe, block):
    from lime_edit.joint import Flux2JointAttnProcessor, Flux2SingleJointAttnProcessor

    g = torch.Generator().manual_seed(0)
    st = PassState(latent_hw=(16, 16), batch=1, reg_steps=range(1), reg_levels=frozenset({0}), text_len=512)
    st.roi = torch.zeros(1, 16, 16, dtype=torch.bool)
    st.roi[0, :8, :8] = True
    st.tokens = flp.backbone.select_tokens(PROMPT, flp.settings()).keep[None]
    inside = st.roi[0].flatten()
    if block == "double":
        attn = fpipe.transformer.transformer_blocks[0].attn
        hidden = torch.randn(1, 2 * 256, attn.query_dim, generator=g)
        text = torch.randn(1, 512, attn.query_dim, generator=g)
        want, want_txt = attn.processor(attn, hidden, text)
        got, got_txt = Flux2JointAttnProcessor(attn.processor, st, "b0", 0)(attn, hidden, text)
        assert torch.equal(got_txt, want_txt)
        img_want, img_got = want[0], got[0]
    else:
        attn = fpipe.transformer.single_transformer_blocks[0].attn
        hidden = torch.randn(1, 512 + 2 * 256, attn.query_dim, generator=g)
        want = attn.processor(attn, hidden)
        got = Flux2SingleJointAttnProcessor(attn.processor, st, "s0", 0)(attn, hidden)
        assert torch.equal(got[0, :512], want[0, :512])                # text rows
        img_want, img_got = want[0, 512:], got[0, 512:]
    assert torch.equal(img_got[:256][~inside], img_want[:256][~inside])
    assert torch.equal(img_got[256:], img_want[256:])                   # reference image
    assert not torch.allclose(img_got[:256][inside], img_want[:256][inside])


def test_capture_reads_the_conditional_forward_only(base_lp, scene):
    pipe = base_lp.pipe
    st = PassState(latent_hw=(16, 16), batch=1, capture_step=0, capture_levels=frozenset({1, 2}))
    forwards = []
    hook = pipe.transformer.register_forward_hook(lambda *a: forwards.append(1))

    def advance(p, i, t, kw):
        st.step = i + 1
        return {}
    try:
        with base_lp.backbone.attention(st):
            _stock(pipe, scene, PROMPT, 0, steps=2, guidance=4.0, callback_on_step_end=advance)
    finally:
        hook.remove()
    assert len(forwards) == 4                                        # CFG: two forwards per step
    assert len(st.cross_probs) == 2 and len(st.features) == 2        # one per block, cond forward only
    assert all(p.shape == (1, 512, 16, 16) for _, _, p in st.cross_probs)


def test_localization_stops_after_the_capture_step(base_lp, scene):
    calls = []
    pipe = base_lp.pipe
    hook = pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        loc = base_lp.localize(scene, PROMPT, seed=0, num_inference_steps=9, capture_at=0.3)
    finally:
        hook.remove()
    assert len(calls) == 2 * (LimeConfig(num_inference_steps=9, capture_at=0.3).capture_step + 1)
    assert loc.mask.shape == (32, 32) and loc.tokens == ["car", "red", "<|im_end|>"]


def test_batch_of_two_runs_one_by_one_and_equals_two_singles(flp, scene):
    other = scene.transpose(Image.FLIP_LEFT_RIGHT)
    both = flp.edit([scene, other], [PROMPT, "turn the sky blue"], seed=[0, 5], num_inference_steps=STEPS)
    for img, ins, seed, res in zip([scene, other], [PROMPT, "turn the sky blue"], [0, 5], both):
        one = flp.edit(img, ins, seed=seed, num_inference_steps=STEPS)
        assert torch.equal(one.mask, res.mask)
        assert np.array_equal(np.asarray(one.image), np.asarray(res.image))


def test_folder_is_recognised_and_cli_edits(fpipe, scene, tmp_path):
    folder = tmp_path / "tiny-klein"
    fpipe.save_pretrained(str(folder))
    lp = LimePipeline.from_pretrained(str(folder), device="cpu")
    assert lp.backbone.name == "flux2" and type(lp.pipe).__name__ == "Flux2KleinPipeline"
    from conftest import cli_edits

    assert cli_edits(folder, scene, tmp_path, PROMPT)


def test_eval_runs_the_family_sampler_and_its_cuda_dtype(flp, fpipe, tmp_path):
    pytest.importorskip("torchmetrics")
    from types import SimpleNamespace

    from lime_edit.eval import generate

    overrides = dict(generate.PROTOCOL_SETTINGS["piebench"])
    sampler = generate._family_sampler(SimpleNamespace(backbone=flp.backbone), overrides, {}, {})
    assert overrides["num_inference_steps"] == 4 and overrides["guidance_scale"] == 1.0
    assert sampler["num_inference_steps"] == {"value": 4, "from": "flux2 defaults"}
    kept = {**generate.PROTOCOL_SETTINGS["piebench"], "num_inference_steps": 9}     # the user's value stays
    generate._family_sampler(SimpleNamespace(backbone=flp.backbone), kept, {"num_inference_steps": 9}, {})
    assert kept["num_inference_steps"] == 9
    folder = tmp_path / "klein"
    fpipe.save_pretrained(str(folder))
    args = SimpleNamespace(model=str(folder), backbone=None)
    assert generate._family_cuda_dtype(args) == "bfloat16"                       # not float16 on CUDA
    assert generate._effective_dtype("auto", "cuda", generate._family_cuda_dtype(args)) == "bfloat16"
    assert generate._family_cuda_dtype(SimpleNamespace(model="x.ckpt", backbone="ip2p")) == "float16"


def test_web_app_edits_and_names_the_editor(flp, scene_file, tmp_path):
    pytest.importorskip("gradio")
    from lime_edit.web.app import LimeWebApp

    app = LimeWebApp(flp, workdir=tmp_path / "web")
    try:
        assert app.method == "FLUX.2 [klein]" and not app.pool.image_guidance
        out = app.run(str(scene_file), PROMPT, 2, "0", 1.0, 1.5, 4, 50, True, None, None)
        roi, segments, attention, plain, result, info, files, session = out
        assert result is not None and plain is not None and session.result.lime_applied
        page = app.build().config                       # the page: no image guidance, the editor named
        labels = [c.get("props", {}).get("label") for c in page["components"]]
        assert "Image guidance" not in [l for c, l in zip(page["components"], labels)
                                        if c.get("props", {}).get("visible", True)]
        assert any("FLUX.2 [klein]" in str(l) for l in labels)
    finally:
        app.close()


@pytest.mark.parametrize("family", ["flux2", "kontext"])
def test_preserve_latent_ends_on_the_input_latents_outside_the_region(family, flp, scene, tmp_path):
    # the final latents outside the RoI are the input's own latents (the context tokens the
    # transformer is fed), read here by an independent hook; inside, the edit
    if family == "kontext":
        from lime_edit.testing_dit import tiny_kontext_pipeline

        lp = LimePipeline(tiny_kontext_pipeline(tmp_path / "tok"))
    else:
        lp = flp
    pipe, bb = lp.pipe, lp.backbone
    grid = bb.token_grid((64, 64))
    n = grid[0] * grid[1]
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["hidden_states"][:, n:2 * n].clone()) if not seen else None, with_kwargs=True)
    st = PassState(latent_hw=grid, batch=1, reg_steps=range(STEPS), reg_levels=frozenset(bb.levels))
    st.roi = torch.zeros(1, 2 * grid[0], 2 * grid[1], dtype=torch.bool)
    st.roi[0, 4:16, 4:16] = True
    st.tokens = bb.select_tokens(PROMPT, lp.settings()).keep[None]
    try:
        with bb.attention(st):
            out = bb.run(prompts=[PROMPT], images=[scene], size=(64, 64), steps=STEPS, guidance=lp.settings().guidance_scale,
                         image_guidance=1.5, generators=[torch.Generator().manual_seed(0)], output_type="latent",
                         blend_state=st)
    finally:
        hook.remove()
    if family == "kontext":
        lat, tol = out, 0.0                                     # packed, as the transformer sees them
    else:                                                      # FLUX.2 returns them unpacked, de-normalised
        bn = pipe.vae.bn
        lat = pipe._patchify_latents(out)
        lat = (lat - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
            bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
        lat, tol = pipe._pack_latents(lat), 1e-5
    roi = torch.nn.functional.interpolate(st.roi[:, None].float(), size=grid)[0, 0].flatten() > 0.5
    x0 = seen[0][0].to(lat.dtype)
    assert (lat[0][~roi] - x0[~roi]).abs().max() <= tol
    assert (lat[0][roi] - x0[roi]).abs().max() > 1e-3


def test_preserve_latent_end_to_end_and_refused_where_unavailable(flp, scene, tmp_path):
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    blended = flp.edit(scene, PROMPT, mask=mask, seed=0, num_inference_steps=STEPS, preserve="latent")
    composite = flp.edit(scene, PROMPT, mask=mask, seed=0, num_inference_steps=STEPS, preserve="outside")
    assert blended.lime_applied and not np.array_equal(np.asarray(blended.image), np.asarray(composite.image))
    plain = flp.edit(scene, PROMPT, mask=None, seed=0, num_inference_steps=STEPS, preserve="latent")
    assert any("preserve='latent': no region" in w for w in plain.warnings)
    from lime_edit.testing import tiny_pipeline

    with pytest.raises(LimeEditError, match="preserve='latent': not available on ip2p"):
        LimePipeline(tiny_pipeline(tmp_path / "tok")).settings(preserve="latent")
