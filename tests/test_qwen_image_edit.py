"""LIME on Qwen-Image-Edit (joint attention, Qwen2.5-VL text stream with vision tokens,
true CFG as a second forward, key-masked batch padding), on a tiny random
QwenImageEditPipeline built in code (context image encoded at 64x64, not 1024x1024)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lime_edit import LimeConfig, LimeEditError, LimePipeline
from lime_edit.processors import PassState

STEPS = 3
PROMPT = "make the car red"
LONG = "turn the big dog into a small yellow cat, please"


@pytest.fixture(scope="module", autouse=True)
def small_context():
    from lime_edit.testing_dit import small_qwen_context

    with small_qwen_context(64 * 64):
        yield


@pytest.fixture(scope="module")
def qpipe(small_context):
    from lime_edit.testing_dit import tiny_qwen_edit_pipeline

    return tiny_qwen_edit_pipeline()


@pytest.fixture(scope="module")
def qlp(qpipe):
    return LimePipeline(qpipe)


def _stock(pipe, images, prompts, seeds, size=(64, 64), steps=STEPS, cfg=4.0, output_type="np"):
    w, h = size
    return pipe(image=images, prompt=prompts, height=h, width=w, num_inference_steps=steps,
                negative_prompt=[" "] * len(prompts) if cfg > 1 else None, true_cfg_scale=cfg,
                output_type=output_type, generator=[torch.Generator().manual_seed(s) for s in seeds]).images


def _roles(qlp, prompt, image, size=(64, 64)):
    return qlp.backbone.select_tokens(prompt, qlp.settings(), image=image, size=size)


def test_recognised_levels_and_defaults(qlp):
    bb = qlp.backbone
    assert bb.name == "qwen-image-edit" and bb.levels == [0, 1]
    cfg = qlp.settings()
    assert cfg.feature_levels == (0,) and cfg.regularization_levels == (0, 1)
    assert (cfg.num_inference_steps, cfg.guidance_scale) == (50, 4.0)
    with pytest.raises(LimeEditError, match="no attention layer at block"):
        qlp.settings(regularization_levels=(5,))


def test_token_roles_come_from_the_ids_around_the_instruction(qlp, qpipe, scene):
    sel = _roles(qlp, "make the car red, please", scene)
    toks = sel.tokens
    start = toks.index("<|vision_end|>") + 1
    assert toks[0] == "<|vision_start|>" and toks[start - 2] == "<|image_pad|>"
    assert toks[sel.end] == "<|im_end|>" and toks[start:sel.end] == ["make", "the", "car", "red", ",", "please"]
    assert [toks[p] for p in sel.related] == ["car", "red"]
    assert sel.keep[sel.end] and not sel.keep[:start].any()            # vision tokens, template: unrelated
    assert not sel.keep[sel.end + 1:].any()                              # chat scaffolding: unrelated
    # exactly the stream the pipeline encodes: its prompt embeddings have this many positions
    embeds, mask = qpipe.encode_prompt(prompt="make the car red, please",
                                       image=qlp.backbone._prompt_image(scene, (64, 64)), device="cpu")
    assert embeds.shape[1] == len(sel.ids) and mask is None
    # a word outside the vocabulary is split into byte pieces and still one word
    odd = _roles(qlp, "make the zebra red", scene)
    assert "".join(odd.tokens[p] for p in odd.related[:-1]) == "zebra"


def test_lime_off_equals_stock_and_on_differs(qlp, qpipe, scene):
    plain = qlp.edit(scene, PROMPT, mask=None, seed=3, num_inference_steps=STEPS)
    stock = _stock(qpipe, [scene], [PROMPT], [3], output_type="pil")[0]
    assert np.array_equal(np.asarray(plain.image), np.asarray(stock))
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    lime = qlp.edit(scene, PROMPT, mask=mask, seed=3, num_inference_steps=STEPS)
    assert lime.lime_applied and not np.array_equal(np.asarray(lime.image), np.asarray(plain.image))
    # a non-square input: equal to the stock call with one PIL image, as users call it
    img = scene.resize((96, 48))
    plain = qlp.edit(img, PROMPT, mask=None, seed=1, num_inference_steps=2)
    stock = qpipe(image=img, prompt=PROMPT, height=48, width=96, num_inference_steps=2, negative_prompt=" ",
                  true_cfg_scale=4.0, generator=torch.Generator().manual_seed(1)).images[0]
    assert np.array_equal(np.asarray(plain.image), np.asarray(stock))


def test_installed_but_inert_is_bit_identical_on_a_padded_batch_with_true_cfg(qlp, qpipe, scene):
    st = PassState(latent_hw=(8, 8), batch=2)           # never captures, never regularizes
    prompts, seeds = [PROMPT, LONG], [0, 1]               # different lengths: a key mask pads one
    want = _stock(qpipe, [scene, scene], prompts, seeds)
    with qlp.backbone.attention(st):
        got = _stock(qpipe, [scene, scene], prompts, seeds)
    assert np.array_equal(got, want) and st.levels_seen == {0, 1}
    names = {type(p).__name__ for p in qpipe.transformer.attn_processors.values()}
    assert names == {"QwenDoubleStreamAttnProcessor2_0"}
    assert not hasattr(qpipe.transformer, "cache_context") or "cache_context" not in vars(qpipe.transformer)


def _reg_state(qlp, scene, prompts, roi):
    from lime_edit.pipeline import _stack_roles

    st = PassState(latent_hw=(8, 8), batch=len(prompts), reg_steps=range(STEPS), reg_levels=frozenset({0, 1}))
    st.roi = roi
    st.tokens = _stack_roles([_roles(qlp, p, scene).keep for p in prompts])
    return st


def test_empty_roi_item_of_a_padded_batch_is_stock(qlp, qpipe, scene):
    roi = torch.zeros(2, 16, 16, dtype=torch.bool)
    roi[1, 2:10, 2:10] = True
    st = _reg_state(qlp, scene, [LONG, PROMPT], roi)
    want = _stock(qpipe, [scene, scene], [LONG, PROMPT], [0, 0])
    with qlp.backbone.attention(st):
        got = _stock(qpipe, [scene, scene], [LONG, PROMPT], [0, 0])
    assert np.array_equal(got[0], want[0]) and not np.array_equal(got[1], want[1])


def _layer_inputs(qpipe, n_text=(20, 14), seed=0):
    attn = qpipe.transformer.transformer_blocks[0].attn
    g = torch.Generator().manual_seed(seed)
    dim = attn.query_dim
    hidden = torch.randn(2, 2 * 64, dim, generator=g)
    text = torch.randn(2, max(n_text), dim, generator=g)
    mask = torch.zeros(2, max(n_text), dtype=torch.bool)   # as the transformer passes it
    for i, n in enumerate(n_text):
        mask[i, :n] = True
        text[i, n:] = 0
    return attn, hidden, text, mask


def test_regularization_changes_only_roi_rows_and_padding_keys_stay_hidden(qlp, qpipe):
    from lime_edit.joint import QwenJointAttnProcessor

    attn, hidden, text, mask = _layer_inputs(qpipe)
    stock = attn.processor
    want_img, want_txt = stock(attn, hidden, text, mask)
    st = PassState(latent_hw=(8, 8), batch=2, reg_steps=range(1), reg_levels=frozenset({0}))
    st.roi = torch.zeros(2, 8, 8, dtype=torch.bool)
    st.roi[:, :4, :4] = True
    keep = torch.zeros(2, 20, dtype=torch.bool)
    keep[:, [3, 5, 9]] = True
    st.tokens = keep
    got_img, got_txt = QwenJointAttnProcessor(stock, st, "b0", 0)(attn, hidden, text, mask)
    inside = st.roi[0].flatten()
    assert torch.equal(got_txt, want_txt)
    for i in range(2):
        assert torch.equal(got_img[i, :64][~inside], want_img[i, :64][~inside])
        assert torch.equal(got_img[i, 64:], want_img[i, 64:])          # context image
        assert not torch.allclose(got_img[i, :64][inside], want_img[i, :64][inside])
    # item 1 (14 text tokens, 6 padded) regularized alone, without padding: the same rows
    st1 = PassState(latent_hw=(8, 8), batch=1, reg_steps=range(1), reg_levels=frozenset({0}))
    st1.roi, st1.tokens = st.roi[1:], keep[1:, :14]
    alone, _ = QwenJointAttnProcessor(stock, st1, "b0", 0)(attn, hidden[1:], text[1:, :14], None)
    assert torch.allclose(alone[0], got_img[1], atol=1e-6)


def test_unrelated_and_padding_keys_get_no_attention_inside_the_roi(qlp, qpipe, monkeypatch):
    # the regularized rows' probabilities, read through the value-linear trick: one-hot values
    import lime_edit.joint as joint

    seen = {}
    real = joint.regularized_rows

    def spy(q, k, v, n_text, tokens, **kw):
        eye = torch.eye(k.shape[1]).expand(k.shape[0], -1, -1).to(v.dtype)
        seen["probs"], seen["n_text"], seen["tokens"] = real(q, k, eye, n_text, tokens, **kw), n_text, tokens
        return real(q, k, v, n_text, tokens, **kw)

    monkeypatch.setattr(joint, "regularized_rows", spy)
    attn, hidden, text, mask = _layer_inputs(qpipe, n_text=(14, 20))
    st = PassState(latent_hw=(8, 8), batch=2, reg_steps=range(1), reg_levels=frozenset({0}))
    st.roi = torch.zeros(2, 8, 8, dtype=torch.bool)
    st.roi[0, 2:6, 2:6] = True                          # item 0 only: the padded one
    keep = torch.zeros(2, 20, dtype=torch.bool)
    keep[:, [2, 7, 16]] = True                          # 16 is a padding position of item 0
    st.tokens = keep
    joint.QwenJointAttnProcessor(attn.processor, st, "b0", 0)(attn, hidden, text, mask)
    p, n = seen["probs"], seen["n_text"]
    assert n == 14 and seen["tokens"].tolist() == keep[0, :14].tolist()     # padding keys dropped
    assert p[..., :n][..., ~seen["tokens"]].abs().max() < 1e-7
    assert torch.allclose(p.sum(-1), torch.ones_like(p.sum(-1)), atol=1e-5)


def test_capture_reads_the_conditional_forward_only(qlp, qpipe, scene):
    st = PassState(latent_hw=(8, 8), batch=1, capture_step=0, capture_levels=frozenset({0, 1}))
    forwards = []
    hook = qpipe.transformer.register_forward_hook(lambda *a: forwards.append(1))
    try:
        with qlp.backbone.attention(st):
            def advance(pipe, i, t, kw):
                st.step = i + 1
                return {}
            qpipe(image=[scene], prompt=[PROMPT], height=64, width=64, num_inference_steps=2,
                  negative_prompt=[" "], true_cfg_scale=4.0, output_type="latent",
                  callback_on_step_end=advance, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    n_stream = len(_roles(qlp, PROMPT, scene).ids)
    neg = len(_roles(qlp, " ", scene).ids)
    assert len(forwards) == 4 and n_stream != neg                    # true CFG: two forwards per step
    assert len(st.cross_probs) == 2 and len(st.features) == 2        # one per block, cond forward only
    assert all(p.shape == (1, n_stream, 8, 8) for _, _, p in st.cross_probs)
    assert all(f.shape[-2:] == (8, 8) for _, _, f in st.features)


def test_localization_stops_after_the_capture_step(qlp, qpipe, scene):
    calls = []
    hook = qpipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        loc = qlp.localize(scene, PROMPT, seed=0, num_inference_steps=9, capture_at=0.3)
    finally:
        hook.remove()
    assert len(calls) == 2 * (LimeConfig(num_inference_steps=9, capture_at=0.3).capture_step + 1)
    assert loc.mask.shape == (16, 16) and loc.tokens == ["car", "red", "<|im_end|>"]


def test_context_grid_differs_from_the_target_grid(qlp, qpipe, scene):
    # the stock pipeline encodes the context at its own size (here ~64x64 px: 8x8 tokens)
    # whatever the target's; a 96x48 target (12x6 tokens) is localized on its own grid
    img = scene.resize((96, 48))
    assert qlp.backbone.context_grid((96, 48)) != qlp.backbone.token_grid((96, 48))
    res = qlp.edit(img, PROMPT, seed=0, num_inference_steps=2)
    assert res.image.size == (96, 48) and res.localization.mask.shape == (12, 24)


def test_batch_of_two_equals_two_singles(qlp, scene):
    other = scene.transpose(Image.FLIP_LEFT_RIGHT)
    both = qlp.edit([scene, other], [PROMPT, LONG], seed=[0, 5], num_inference_steps=STEPS)
    for img, ins, seed, res in zip([scene, other], [PROMPT, LONG], [0, 5], both):
        one = qlp.edit(img, ins, seed=seed, num_inference_steps=STEPS)
        assert torch.equal(one.mask, res.mask)
        diff = np.abs(np.asarray(one.image, dtype=int) - np.asarray(res.image, dtype=int)).max()
        assert diff <= 1, diff


def test_folder_is_recognised_and_cli_edits(qpipe, scene, tmp_path, monkeypatch):
    import json

    from diffusers import QwenImageEditPipeline

    from lime_edit.loading import _family_of_index, read_model_index

    folder = tmp_path / "tiny-qwen-edit"
    qpipe.save_pretrained(str(folder))
    # the released layout names transformers' Qwen2VLProcessor; loading that one needs
    # torchvision (its video processor), absent here, so the test processor is passed in
    index = json.loads((folder / "model_index.json").read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert _family_of_index(read_model_index(folder), str(folder)) == "qwen-image-edit"
    stock_load = QwenImageEditPipeline.from_pretrained.__func__
    monkeypatch.setattr(QwenImageEditPipeline, "from_pretrained", classmethod(
        lambda cls, *a, **kw: stock_load(cls, *a, processor=qpipe.processor, **kw)))
    lp = LimePipeline.from_pretrained(str(folder), device="cpu")
    assert lp.backbone.name == "qwen-image-edit" and type(lp.pipe).__name__ == "QwenImageEditPipeline"
    from conftest import cli_edits

    assert cli_edits(folder, scene, tmp_path, PROMPT)


# ------------------------------------------------------------------ Plus (2509 / 2511)
@pytest.fixture(scope="module")
def plus_lp(small_context):
    from lime_edit.testing_dit import tiny_qwen_edit_pipeline

    return LimePipeline(tiny_qwen_edit_pipeline(plus=True))


def test_plus_token_roles_skip_the_picture_tokens(plus_lp, scene):
    bb = plus_lp.backbone
    assert bb.name == "qwen-image-edit" and bb.plus and bb.max_batch == 1
    sel = bb.select_tokens("make the car red", plus_lp.settings(), image=scene, size=(64, 64))
    toks = sel.tokens
    start = toks.index("<|vision_end|>") + 1
    assert toks[:3] == ["Picture", "1", ":"] and toks[start:sel.end] == ["make", "the", "car", "red"]
    assert [toks[p] for p in sel.related] == ["car", "red"] and not sel.keep[:start].any()
    embeds, _ = plus_lp.pipe.encode_prompt(prompt="make the car red", image=[bb._prompt_image(scene, (64, 64))],
                                           device="cpu")
    assert embeds.shape[1] == len(sel.ids)


def test_plus_off_equals_stock_and_a_batch_runs_one_by_one(plus_lp, scene):
    pipe = plus_lp.pipe
    plain = plus_lp.edit(scene, PROMPT, mask=None, seed=2, num_inference_steps=2)
    stock = pipe(image=scene, prompt=PROMPT, height=64, width=64, num_inference_steps=2, negative_prompt=" ",
                 true_cfg_scale=4.0, generator=torch.Generator().manual_seed(2)).images[0]
    assert np.array_equal(np.asarray(plain.image), np.asarray(stock))
    other = scene.transpose(Image.FLIP_LEFT_RIGHT)
    both = plus_lp.edit([scene, other], [PROMPT, LONG], seed=[0, 5], num_inference_steps=2)
    one = plus_lp.edit(other, LONG, seed=5, num_inference_steps=2)
    assert both[1].lime_applied and torch.equal(both[1].mask, one.mask)
    assert np.array_equal(np.asarray(both[1].image), np.asarray(one.image))


def test_preserve_latent_where_the_context_grid_is_the_targets(qlp, scene):
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    res = qlp.edit(scene, PROMPT, mask=mask, seed=0, num_inference_steps=2, preserve="latent")
    free = qlp.edit(scene, PROMPT, mask=mask, seed=0, num_inference_steps=2)
    assert res.lime_applied and not np.array_equal(np.asarray(res.image), np.asarray(free.image))
    with pytest.raises(LimeEditError, match="preserve='latent': Qwen-Image-Edit encodes the input at"):
        qlp.edit(scene.resize((96, 48)), PROMPT, mask=np.ones((48, 96), bool), num_inference_steps=2,
                 preserve="latent")
