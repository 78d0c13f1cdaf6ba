"""LIME on FLUX.1 Kontext (joint attention), on a tiny random FluxKontextPipeline built in code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lime_edit import LimeConfig, LimeEditError, LimePipeline
from lime_edit.joint import regularized_rows, text_probs
from lime_edit.processors import PassState

STEPS = 4
PROMPT = "make the car red"


@pytest.fixture(scope="module")
def kpipe(tmp_path_factory):
    from lime_edit.testing_dit import tiny_kontext_pipeline

    return tiny_kontext_pipeline(tmp_path_factory.mktemp("ktok"))


@pytest.fixture(scope="module")
def klp(kpipe):
    return LimePipeline(kpipe)


def _stock(pipe, images, prompts, seeds, size=(64, 64), steps=STEPS, output_type="np"):
    w, h = size
    return pipe(image=images, prompt=prompts, height=h, width=w, max_area=w * h, _auto_resize=False,
                num_inference_steps=steps, guidance_scale=2.5, max_sequence_length=32, output_type=output_type,
                generator=[torch.Generator().manual_seed(s) for s in seeds]).images


def _dense(q, k, v, n_text, keep, rule, mode):
    """The regularized attention written densely, an independent reading of the rules:
    probabilities over all keys, then the RoI rows' text block rewritten."""
    p = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)          # (H, Nr, Nk)
    text = p[..., :n_text]
    if rule == "literal" and mode == "penalize":
        logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        logits[..., :n_text] = logits[..., :n_text].masked_fill(~keep, float("-inf"))
        return logits.softmax(-1) @ v
    if rule == "literal":                                                      # reward: +inf on rewarded
        w = keep.float() / keep.sum()
        return (w @ v[:, :n_text])[:, None].expand(-1, q.shape[1], -1)
    share = text.sum(-1, keepdim=True)
    if mode == "penalize":
        kept = text * keep
        new_text = kept / kept.sum(-1, keepdim=True) * share
    else:
        new_text = keep.float() / keep.sum() * share
    return torch.cat([new_text, p[..., n_text:]], -1) @ v


@pytest.mark.parametrize("rule", ["text_mass", "literal"])
@pytest.mark.parametrize("mode", ["penalize", "reward"])
def test_split_computation_equals_the_dense_masked_one(rule, mode):
    g = torch.Generator().manual_seed(0)
    h, nr, nk, d, n_text = 3, 7, 40, 16, 12
    q, k, v = (torch.randn(h, n, d, generator=g) for n in (nr, nk, nk))
    keep = torch.zeros(n_text, dtype=torch.bool)
    keep[[2, 3, 5]] = True
    got = regularized_rows(q, k, v, n_text, keep, rule=rule, mode=mode, scale=d ** -0.5)
    want = _dense(q, k, v, n_text, keep, rule, mode)
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


@pytest.mark.parametrize("rule", ["text_mass", "literal"])
def test_unrelated_keys_get_zero_attention_and_image_keys_keep_theirs(rule):
    # the output is linear in the values: with one-hot values it IS the attention matrix
    g = torch.Generator().manual_seed(1)
    h, nr, nk, d, n_text = 2, 5, 30, 8, 10
    q, k = torch.randn(h, nr, d, generator=g), torch.randn(h, nk, d, generator=g)
    eye = torch.eye(nk).expand(h, nk, nk).contiguous()
    keep = torch.zeros(n_text, dtype=torch.bool)
    keep[[1, 4]] = True
    probs = regularized_rows(q, k, eye, n_text, keep, rule=rule, mode="penalize", scale=d ** -0.5)
    stock = (q @ k.transpose(-1, -2) * d ** -0.5).softmax(-1)
    assert probs[..., :n_text][..., ~keep].abs().max() < 1e-7
    assert torch.allclose(probs.sum(-1), torch.ones(h, nr), atol=1e-6)
    if rule == "text_mass":            # text block keeps its mass, image keys their probabilities
        assert torch.allclose(probs[..., :n_text].sum(-1), stock[..., :n_text].sum(-1), atol=1e-6)
        assert torch.allclose(probs[..., n_text:], stock[..., n_text:], atol=1e-6)
        # the kept words gain: each by the same factor
        ratio = probs[..., :n_text][..., keep] / stock[..., :n_text][..., keep]
        assert torch.allclose(ratio[..., 0], ratio[..., 1], atol=1e-5)
    else:                              # the paper's -inf: the freed mass is shared with image keys
        assert (probs[..., n_text:] > stock[..., n_text:]).all()


def test_text_probs_are_the_joint_softmax_of_the_text_keys():
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 6, 16, generator=g), torch.randn(2, 20, 16, generator=g), torch.randn(2, 20, 16)
    want = (q @ k.transpose(-1, -2) * 0.25).softmax(-1)[..., :8]
    assert torch.allclose(text_probs(q, k, v, 8, 0.25), want, atol=1e-6)


def test_recognised_levels_and_defaults(klp):
    bb = klp.backbone
    assert bb.name == "kontext" and bb.levels == [0, 1, 2, 3]
    cfg = klp.settings()
    assert cfg.feature_levels == (1, 2) and cfg.regularization_levels == (0, 1, 2, 3)
    assert (cfg.num_inference_steps, cfg.guidance_scale) == (28, 2.5)
    with pytest.raises(LimeEditError, match="no attention layer at block"):
        klp.settings(feature_levels=(7,))


def test_token_roles_t5_padding_and_end(klp):
    sel = klp.backbone.select_tokens("make the car red, please", klp.settings())
    assert len(sel.keep) == 32 and sel.end == 6 and sel.tokens[sel.end] == "</s>"
    assert [sel.tokens[p] for p in sel.related] == ["car", "red"]        # verb, stop word, comma, courtesy out
    assert not sel.keep[sel.end + 1:].any() and sel.keep[sel.end]        # padding unrelated, end kept
    assert not sel.keep[1]                                                # "the"


def test_lime_off_equals_stock_and_on_differs(klp, kpipe, scene):
    plain = klp.edit(scene, PROMPT, mask=None, seed=3, num_inference_steps=STEPS)
    stock = _stock(kpipe, [scene], [PROMPT], [3], output_type="pil")[0]
    assert np.array_equal(np.asarray(plain.image), np.asarray(stock))
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    lime = klp.edit(scene, PROMPT, mask=mask, seed=3, num_inference_steps=STEPS)
    assert lime.lime_applied and not np.array_equal(np.asarray(lime.image), np.asarray(plain.image))


def test_installed_but_inert_processors_are_bit_identical(klp, kpipe, scene):
    st = PassState(latent_hw=(16, 16), batch=2)          # never captures, never regularizes
    prompts, seeds = [PROMPT, "add a dog"], [0, 1]
    want = _stock(kpipe, [scene, scene], prompts, seeds)
    with klp.backbone.attention(st):
        got = _stock(kpipe, [scene, scene], prompts, seeds)
    assert np.array_equal(got, want) and st.levels_seen == {0, 1, 2, 3}
    assert all(type(p).__name__ == "FluxAttnProcessor" for p in kpipe.transformer.attn_processors.values())


def test_empty_roi_item_of_a_batch_is_stock(klp, kpipe, scene):
    # item 0 has an empty RoI, item 1 a region: item 0 must be the stock batch's item 0, bit for bit
    st = PassState(latent_hw=(16, 16), batch=2, reg_steps=range(STEPS), reg_levels=frozenset({0, 1, 2, 3}))
    roi = torch.zeros(2, 32, 32, dtype=torch.bool)
    roi[1, 4:20, 4:20] = True
    st.roi = roi
    st.tokens = torch.stack([klp.backbone.select_tokens(p, klp.settings()).keep for p in (PROMPT, PROMPT)])
    want = _stock(kpipe, [scene, scene], [PROMPT, PROMPT], [0, 0])
    with klp.backbone.attention(st):
        got = _stock(kpipe, [scene, scene], [PROMPT, PROMPT], [0, 0])
    assert np.array_equal(got[0], want[0]) and not np.array_equal(got[1], want[1])


def test_regularization_changes_only_roi_rows_of_one_layer(klp, kpipe, scene):
    # one joint-attention call: rows outside the RoI (text, target outside, context) are the stock ones
    from lime_edit.joint import JointAttnProcessor

    attn = kpipe.transformer.transformer_blocks[0].attn
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 2 * 256, attn.query_dim, generator=g)
    text = torch.randn(1, 32, attn.query_dim, generator=g)
    stock_proc = attn.processor
    want_img, want_txt = stock_proc(attn, hidden, text)
    st = PassState(latent_hw=(16, 16), batch=1, reg_steps=range(1), reg_levels=frozenset({0}))
    st.roi = torch.zeros(1, 16, 16, dtype=torch.bool)
    st.roi[0, :8, :8] = True
    st.tokens = klp.backbone.select_tokens(PROMPT, klp.settings()).keep[None]
    got_img, got_txt = JointAttnProcessor(stock_proc, st, "b0", 0)(attn, hidden, text)
    inside = st.roi[0].flatten()
    assert torch.equal(got_txt, want_txt)
    assert torch.equal(got_img[0, :256][~inside], want_img[0, :256][~inside])
    assert torch.equal(got_img[0, 256:], want_img[0, 256:])     # context image
    assert not torch.allclose(got_img[0, :256][inside], want_img[0, :256][inside])


def test_localization_stops_after_the_capture_step(klp, kpipe, scene):
    calls = []
    hook = kpipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        loc = klp.localize(scene, PROMPT, seed=0, num_inference_steps=9, capture_at=0.3)
    finally:
        hook.remove()
    assert len(calls) == LimeConfig(num_inference_steps=9, capture_at=0.3).capture_step + 1
    assert loc.mask.shape == (32, 32) and loc.mask.any() and loc.tokens == ["car", "red", "</s>"]


def test_batch_of_two_equals_two_singles(klp, scene):
    other = scene.transpose(Image.FLIP_LEFT_RIGHT)
    both = klp.edit([scene, other], [PROMPT, "turn the sky blue"], seed=[0, 5], num_inference_steps=STEPS)
    for img, ins, seed, res in zip([scene, other], [PROMPT, "turn the sky blue"], [0, 5], both):
        one = klp.edit(img, ins, seed=seed, num_inference_steps=STEPS)
        assert torch.equal(one.mask, res.mask)
        diff = np.abs(np.asarray(one.image, dtype=int) - np.asarray(res.image, dtype=int)).max()
        assert diff <= 1, diff


def test_non_square_input_keeps_its_size(klp):
    img = Image.new("RGB", (80, 48), (120, 30, 30))
    res = klp.edit(img, PROMPT, seed=0, num_inference_steps=2)
    assert res.image.size == (80, 48) and res.settings["processed_size"] == [80, 48]


def test_folder_is_recognised_and_cli_edits(kpipe, scene, tmp_path):
    folder = tmp_path / "tiny-kontext"
    kpipe.save_pretrained(str(folder))
    lp = LimePipeline.from_pretrained(str(folder), device="cpu")
    assert lp.backbone.name == "kontext" and type(lp.pipe).__name__ == "FluxKontextPipeline"
    from conftest import cli_edits

    assert cli_edits(folder, scene, tmp_path, PROMPT)


def test_preserve_outside_keeps_the_input_pixels_outside_the_region(klp, scene):
    mask = np.zeros((64, 64), bool)
    mask[16:48, 8:40] = True
    res = klp.edit(scene, PROMPT, mask=mask, seed=0, num_inference_steps=STEPS, preserve="outside")
    free = klp.edit(scene, PROMPT, mask=mask, seed=0, num_inference_steps=STEPS)
    out, src = np.asarray(res.image), np.asarray(scene)
    assert np.array_equal(out[~mask], src[~mask])                      # outside: the input, exactly
    assert np.array_equal(out[mask], np.asarray(free.image)[mask])     # inside: the edit
    assert not np.array_equal(np.asarray(free.image)[~mask], src[~mask])
    plain = klp.edit(scene, PROMPT, mask=None, seed=0, num_inference_steps=STEPS, preserve="outside")
    assert any("nothing is kept" in w for w in plain.warnings)
    with pytest.raises(LimeEditError, match="preserve"):
        klp.settings(preserve="inside")


def test_dit_check_script_writes_rois_heatmaps_and_report(kpipe, tmp_path):
    import json

    from conftest import load_benchmark_script

    folder = tmp_path / "k"
    kpipe.save_pretrained(str(folder))
    out = tmp_path / "check"
    script = load_benchmark_script("dit_check")
    assert script.main(["--model", str(folder), "--size", "64", "--steps", "2", "--device", "cpu",
                        "--prompt", PROMPT, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    row = report["rows"][0]
    assert row["tokens"] == ["car", "red", "</s>"] and set(row["seconds"]) == {"plain", "lime", "lime_preserve"}
    names = {p.name for p in out.iterdir()}
    assert {"00-plain.png", "00-lime.png", "00-lime-preserve.png", "00-roi.png"} <= names
    assert any(n.startswith("00-heat-") for n in names)
    assert script.main(["--model", str(folder), "--feature-levels", "9", "--device", "cpu",
                        "--out", str(out)]) == 2


def test_single_file_transformer_with_model_config(kpipe, scene, tmp_path):
    # the release is the transformer alone in one .safetensors; its other components and the
    # configs come from --model-config (here a tiny folder; default the official Hub id)
    from safetensors.torch import save_file

    folder = tmp_path / "tiny-kontext"
    kpipe.save_pretrained(str(folder))
    path = tmp_path / "flux1-kontext-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in kpipe.transformer.state_dict().items()}, str(path))
    lp = LimePipeline.from_pretrained(str(path), model_config=str(folder), device="cpu")
    assert lp.backbone.name == "kontext"
    for a, b in zip(lp.pipe.transformer.state_dict().values(), kpipe.transformer.state_dict().values()):
        assert torch.equal(a, b)
    got = lp.edit(scene, PROMPT, mask=None, seed=1, num_inference_steps=2)
    want = LimePipeline(kpipe).edit(scene, PROMPT, mask=None, seed=1, num_inference_steps=2)
    assert np.array_equal(np.asarray(got.image), np.asarray(want.image))
    # a FLUX.1 transformer whose name does not say Kontext is refused in one line (FLUX.1 [dev] is no editor)
    other = tmp_path / "flux1-dev.safetensors"
    path.rename(other)
    with pytest.raises(LimeEditError, match="does not say Kontext.*--backbone kontext"):
        LimePipeline.from_pretrained(str(other), model_config=str(folder), device="cpu")
    lp = LimePipeline.from_pretrained(str(other), model_config=str(folder), device="cpu", backbone="kontext")
    assert lp.backbone.name == "kontext"
