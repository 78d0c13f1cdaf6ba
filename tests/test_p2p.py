"""LIME + Prompt-to-Prompt on a tiny random text-to-image model (CPU, offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lime_edit import LimeEditError, LimePipeline
from lime_edit import processors as lime_processors
from lime_edit.p2p_control import P2PController, align_tokens, ddim_invert
from lime_edit.processors import PassState, lime_attention

STEPS = 4
FAST = dict(num_inference_steps=STEPS, capture_at=0.25)
SRC = "a red circle and a blue square"
TGT = "a green circle and a blue square"


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    from lime_edit.testing import tiny_t2i_pipeline

    return tiny_t2i_pipeline(tmp_path_factory.mktemp("tok_t2i"))


@pytest.fixture(scope="module")
def lp(t2i):
    return LimePipeline(t2i, backbone="p2p")


@pytest.fixture()
def small_scene(scene):
    return scene.resize((32, 32), Image.LANCZOS)


def _arr(img):
    return np.asarray(img).astype(np.int16)


# --------------------------------------------------------------------------- token alignment
def test_word_swap_alignment(t2i):
    al = align_tokens(t2i.tokenizer, SRC, TGT)
    assert al.mode == "swap"
    assert al.changed == [2]                                  # "green" replaces "red"
    assert torch.equal(al.mapper, torch.arange(77)) and bool((al.alphas == 1).all())


def test_refinement_alignment_of_captions_of_different_lengths(t2i):
    al = align_tokens(t2i.tokenizer, "a red circle", "a big red circle on the left")
    assert al.mode == "refine"
    # target: <s> a big red circle on the left </s>; source: <s> a red circle </s>
    assert al.changed == [2, 5, 6, 7]
    assert al.mapper[1] == 1 and al.mapper[3] == 2 and al.mapper[4] == 3
    assert al.alphas[[0, 1, 3, 4]].eq(1).all() and al.alphas[[2, 5, 6, 7]].eq(0).all()
    assert al.mapper[8] == 4 and al.alphas[8] == 1               # end tokens aligned with each other
    assert al.mapper[9] == 9                                      # padding: the same position
    # no shared word at all: refinement still works (every word is new, only <s>/</s>/padding aligned)
    none = align_tokens(t2i.tokenizer, "a red circle", "green square on top of blue star")
    assert none.mode == "refine" and none.changed == list(range(1, 8))
    with pytest.raises(LimeEditError, match="word swap needs captions of the same token count"):
        align_tokens(t2i.tokenizer, "a red circle", "a big red circle", mode="swap")


@pytest.mark.parametrize("src, tgt", [("a photo of fingernails", "a photo of glitter fingernails"),
                                      ("a photo of glitter fingernails", "a photo of fingernails"),
                                      ("a red circle", "a big red circle on the left")])
def test_refinement_padding_reads_the_same_source_position(t2i, src, tgt):
    """Google's P2P (seq_aligner.get_mapper) aligns the captions' tokens including <s> and
    </s>, then fills every later position p of the 77 with p itself, alpha 1: the target's
    padding reads the source's column of the same index, whatever the two token counts."""
    tok = t2i.tokenizer
    n_src = len(tok(src).input_ids)                     # with <s> and </s>
    n_tgt = len(tok(tgt).input_ids)
    assert n_src != n_tgt
    al = align_tokens(tok, src, tgt, mode="refine")
    assert al.mapper[n_tgt - 1] == n_src - 1 and al.alphas[n_tgt - 1] == 1      # </s> -> </s>
    pad = torch.arange(n_tgt, tok.model_max_length)
    assert torch.equal(al.mapper[pad], pad) and bool(al.alphas[pad].eq(1).all())


# --------------------------------------------------------------------------- inversion
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_inversion_reconstructs_latents(t2i, prediction_type):
    """DDIM inversion then DDIM sampling with the same caption (guidance 1) returns to the
    start latent.  A random U-Net's noise prediction is not smooth in its input, which
    inversion needs, so the test model's output is scaled down (a well-behaved predictor):
    a wrong timestep or alpha pairing between inversion and sampler would still show, and
    so would reading the model output as the wrong prediction type (the demo models are
    v-prediction: reading v at the lower noise level drifted by 24 % over 10 steps)."""
    import copy

    from diffusers import DDIMScheduler

    pipe = copy.deepcopy(t2i)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    torch.manual_seed(0)
    z0 = torch.randn(1, 4, 16, 16) * 0.5
    emb = pipe.encode_prompt([SRC], "cpu", 1, do_classifier_free_guidance=False)[0]
    w, b = pipe.unet.conv_out.weight.detach().clone(), pipe.unet.conv_out.bias.detach().clone()
    for scale, bound in ((0.0, 1e-5), (0.01, 0.02)):     # 0: pure DDIM rescaling, exact if aligned
        with torch.no_grad():
            pipe.unet.conv_out.weight.copy_(w * scale)
            pipe.unet.conv_out.bias.copy_(b * scale)
        traj = ddim_invert(pipe.unet, pipe.scheduler, z0, emb, 10)
        assert len(traj) == 11 and torch.equal(traj[0], z0)
        out = pipe(prompt_embeds=emb, latents=traj[-1], num_inference_steps=10, guidance_scale=1.0,
                   output_type="latent").images
        err = float((out - z0).abs().mean() / z0.abs().mean())
        assert err < bound, (scale, err)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_direct_inversion_source_branch_is_the_vae_round_trip(t2i, small_scene, prediction_type):
    """Identical captions: the result is the source branch, which Direct Inversion keeps
    on the inversion trajectory, so it ends at the encoded latent: the VAE round trip
    (for the v-prediction demo models as for epsilon ones)."""
    from diffusers import DDIMScheduler

    t2i = type(t2i)(**{**t2i.components, "scheduler": DDIMScheduler.from_config(
        t2i.scheduler.config, prediction_type=prediction_type)})
    t2i.set_progress_bar_config(disable=True)
    res = LimePipeline(t2i, backbone="p2p").edit_captions(small_scene, SRC, SRC, **FAST)
    assert any("identical" in w for w in res.warnings) and not res.lime_applied
    with torch.no_grad():
        x = t2i.image_processor.preprocess(small_scene)
        z = t2i.vae.encode(x).latent_dist.mean
        rt = t2i.image_processor.postprocess(t2i.vae.decode(z).sample, output_type="np")[0]
    expect = (np.clip(rt, 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(_arr(res.image) - expect.astype(np.int16)).max() <= 1


# --------------------------------------------------------------------------- controller
def test_controller_replaces_target_maps_at_aligned_tokens():
    B, T = 1, 6
    probs = torch.rand(4 * B, 2, 5, T).softmax(-1)
    mapper = torch.tensor([[0, 1, 1, 2, 3, 4]])
    alphas = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0, 1.0]])
    ctl = P2PController(batch=B, mapper=mapper, alphas=alphas, cross_steps=2, self_steps=1, self_max_tokens=5)
    out = ctl.edit(probs, is_cross=True)
    src, tgt = probs[2], out[3]
    for t in range(T):
        ref = src[..., mapper[0, t]] if alphas[0, t] == 1 else probs[3][..., t]
        assert torch.equal(tgt[..., t], ref)
    assert torch.equal(out[:3], probs[:3])                      # source and unconditional rows untouched
    ctl.step = 2
    assert torch.equal(ctl.edit(probs, is_cross=True), probs)   # after the injection steps: nothing
    ctl.step = 0
    s = ctl.edit(probs[..., :5], is_cross=False)                # self-attention (Nq=5 <= 5): source's
    assert torch.equal(s[3], probs[2, ..., :5])


def _captured(lp, image, src, tgt, branch, capture_at):
    """Head-averaged cross-attention of U-Net row block ``branch`` at one step of a P2P pass."""
    bb, cfg = lp.backbone, lp._config(FAST)
    st = PassState(latent_hw=(16, 16), batch=1, feature_branch=2, attention_branch=branch)
    st.capture_step = round(capture_at * STEPS)
    st.capture_levels = frozenset(bb.levels)

    def step_end(i):
        st.step = i + 1
    with lime_attention(bb.pipe.unet, st):
        bb.run(prompts=[tgt], sources=[src], images=[image], size=(32, 32), steps=STEPS, guidance=7.5,
               image_guidance=1.0, generators=[None], output_type="latent", on_step_end=step_end)
    assert cfg.num_inference_steps == STEPS
    return st.cross_probs


@pytest.mark.parametrize("src,tgt", [(SRC, TGT), ("a red circle", "a big red circle on the left")])
def test_target_maps_equal_source_maps_at_aligned_tokens(lp, small_scene, src, tgt):
    al = align_tokens(lp.backbone.tokenizer, src, tgt)
    aligned = [t for t in range(77) if al.alphas[t] == 1]
    # step 0 is inside the injection steps (cross_replace 0.4 of 4 steps = 2)
    source = _captured(lp, small_scene, src, tgt, branch=2, capture_at=0.0)
    target = _captured(lp, small_scene, src, tgt, branch=3, capture_at=0.0)
    assert source and len(source) == len(target)
    for (_, _, ps), (_, _, pt) in zip(source, target):
        assert torch.allclose(pt[0, aligned], ps[0, al.mapper[aligned]], atol=1e-6)
    # after the injection steps the target has its own maps again
    source = _captured(lp, small_scene, src, tgt, branch=2, capture_at=0.75)
    target = _captured(lp, small_scene, src, tgt, branch=3, capture_at=0.75)
    assert any(not torch.allclose(pt[0, aligned], ps[0, al.mapper[aligned]], atol=1e-4)
               for (_, _, ps), (_, _, pt) in zip(source, target))


# --------------------------------------------------------------------------- LIME on top
def test_lime_off_equals_plain_p2p_and_inert_lime_changes_nothing(lp, small_scene):
    off = lp.edit_captions(small_scene, SRC, TGT, mask=None, **FAST)
    assert not off.lime_applied and off.mask is None
    bb = lp.backbone
    plain = bb.run(prompts=[TGT], sources=[SRC], images=[small_scene], size=(32, 32), steps=STEPS,
                   guidance=7.5, image_guidance=1.0, generators=[None], output_type="pil")[0]
    assert np.array_equal(_arr(off.image), _arr(plain))
    # LIME's processors installed but inert (no RoI, no capture): the same image
    st = PassState(latent_hw=(16, 16), batch=1)
    with lime_attention(bb.pipe.unet, st):
        inert = bb.run(prompts=[TGT], sources=[SRC], images=[small_scene], size=(32, 32), steps=STEPS,
                       guidance=7.5, image_guidance=1.0, generators=[None], output_type="pil")[0]
    assert np.array_equal(_arr(inert), _arr(plain))
    assert off.image.size == small_scene.size
    # processors are restored after every pass
    assert all(type(p).__name__ in ("AttnProcessor2_0", "AttnProcessor")
               for p in bb.pipe.unet.attn_processors.values())


def test_lime_localizes_the_changed_word_and_zeroes_unrelated_tokens_in_the_target_only(
        lp, small_scene, monkeypatch):
    calls = []
    real = lime_processors.penalize_probs

    def spy(probs, bias):
        out = real(probs, bias)
        calls.append((probs.detach().clone(), bias.detach().clone(), out.detach().clone()))
        return out
    monkeypatch.setattr(lime_processors, "penalize_probs", spy)
    res = lp.edit_captions(small_scene, SRC, TGT, **FAST)
    assert res.lime_applied and res.localization.tokens == ["green"]
    assert res.settings["source"] == SRC and res.settings["target"] == TGT and res.settings["backbone"] == "p2p"
    assert calls
    keep = lp.backbone.select_tokens(TGT, lp._config(FAST), source=SRC).keep
    for probs, bias, out in calls:
        rows = probs.shape[0] // 4
        inside = torch.isinf(bias).any(-1)[:, 0]                             # (rows, Nq)
        for blk in (0, 2):                                                   # source rows: untouched
            sl = slice(blk * rows, (blk + 1) * rows)
            assert not inside[sl].any() and torch.equal(out[sl], probs[sl])
        for blk in (1, 3):                                                   # target rows: zero outside keep
            sl = slice(blk * rows, (blk + 1) * rows)
            assert inside[sl].any()
            p_in = out[sl][:, :, inside[sl][0]]
            assert float(p_in[..., ~keep].max()) == 0.0
            assert torch.allclose(p_in.sum(-1), torch.ones(()), atol=1e-5)
    # a user mask works too
    m = np.zeros((32, 32), np.uint8)
    m[4:16, 4:16] = 255
    user = lp.edit_captions(small_scene, SRC, TGT, mask=Image.fromarray(m), **FAST)
    assert user.lime_applied and user.localization is None


def test_regularization_changes_the_p2p_result(lp, small_scene):
    m = np.zeros((32, 32), np.uint8)
    m[:16, :16] = 255
    off = lp.edit_captions(small_scene, SRC, TGT, mask=None, **FAST)
    on = lp.edit_captions(small_scene, SRC, TGT, mask=Image.fromarray(m), **FAST)
    assert not np.array_equal(_arr(on.image), _arr(off.image))


# --------------------------------------------------------------------------- bad input
def test_bad_input(lp, t2i, tiny_pipe, small_scene):
    with pytest.raises(LimeEditError, match="use edit_captions"):
        lp.edit(small_scene, "make the circle green", **FAST)
    with pytest.raises(LimeEditError, match="source: empty caption"):
        lp.edit_captions(small_scene, " ", TGT, **FAST)
    long = " ".join(["red circle"] * 60)
    res = lp.edit_captions(small_scene, long, long + " green", mask=None, **FAST)
    assert any(w.startswith("target caption is longer") for w in res.warnings)    # target's own warning
    assert any(w.startswith("source caption is longer") for w in res.warnings)
    # an instruction editor (8-channel U-Net) given to the p2p backbone
    with pytest.raises(LimeEditError, match="needs a text-to-image Stable Diffusion model.*8 input channels"):
        LimePipeline(tiny_pipe, backbone="p2p")
    with pytest.raises(LimeEditError, match="edit_captions needs a caption-editing backbone"):
        LimePipeline(tiny_pipe).edit_captions(small_scene, SRC, TGT)
    with pytest.raises(LimeEditError, match="guidance_scale: P2P runs with classifier-free guidance"):
        lp.edit_captions(small_scene, SRC, TGT, mask=None, guidance_scale=1.0, **FAST)


# --------------------------------------------------------------------------- CLI
def test_cli_p2p_end_to_end(t2i, tiny_model_dir, small_scene, tmp_path, capsys):
    from lime_edit.cli import main

    model = tmp_path / "tiny-t2i"
    t2i.save_pretrained(str(model))
    small_scene.save(tmp_path / "a.png")
    small_scene.resize((40, 24)).save(tmp_path / "b.png")              # not a multiple of 16
    out = tmp_path / "out"
    fast = ["--steps", "4", "--capture-at", "0.25", "--seed", "1"]
    code = main(["p2p", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--source", SRC, "--target", TGT,
                 "--model", str(model), "-o", str(out), "--cross-replace", "0.5", "--local-blend", *fast])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert len(cap.out.split()) == 2
    rec = json.loads((out / "a.json").read_text())
    assert rec["command"] == "p2p" and rec["lime_applied"] is True
    assert rec["source_caption"] == SRC and rec["target_caption"] == TGT
    assert rec["settings"]["backbone"] == "p2p" and rec["settings"]["p2p"]["cross_replace"] == 0.5
    assert rec["settings"]["p2p"]["local_blend"] is True
    assert rec["localization"]["tokens"] == ["green"]
    for name in ("a_edited.png", "a_mask.png", "a_overlay.png", "a_segments.png"):
        assert Image.open(out / name).size == (32, 32)
    assert Image.open(out / "b_edited.png").size == (40, 24)
    # --no-lime: plain P2P, identical captions: the reconstruction and a warning
    code = main(["p2p", str(tmp_path / "a.png"), "--source", SRC, "--target", SRC, "--no-lime",
                 "--model", str(model), "-o", str(tmp_path / "o2"), *fast])
    cap = capsys.readouterr()
    assert code == 0 and "identical" in cap.err
    rec = json.loads((tmp_path / "o2" / "a.json").read_text())
    assert rec["lime_applied"] is False and (tmp_path / "o2" / "a_edited.png").is_file()
    assert not (tmp_path / "o2" / "a_mask.png").exists()
    # an instruction editor given to p2p: one line, exit 2, naming what it needs
    code = main(["p2p", str(tmp_path / "a.png"), "--source", SRC, "--target", TGT,
                 "--model", str(tiny_model_dir), "-o", str(tmp_path / "o3"), *fast])
    cap = capsys.readouterr()
    assert code == 2 and "needs a text-to-image Stable Diffusion model" in cap.err
    assert len(cap.err.strip().splitlines()) == 1 and "Traceback" not in cap.err
    # usage errors
    assert main(["p2p", str(tmp_path / "a.png"), "--source", " ", "--target", TGT, "--model", str(model)]) == 2
    assert main(["p2p", str(tmp_path / "a.png"), "--source", SRC, "--target", TGT, "--reweight", "green",
                 "--model", str(model)]) == 2
    assert "--reweight" in capsys.readouterr().err


def test_local_blend_keeps_the_source_latent_outside_its_mask(t2i, small_scene):
    from lime_edit.backbones import P2PBackbone

    # a random model's attention is nearly uniform: a high threshold keeps the mask partial
    bb = P2PBackbone(t2i, local_blend=True, blend_start=0.0, blend_level=2, blend_threshold=0.99)
    assert align_tokens(t2i.tokenizer, SRC, TGT).changed_source == [2]      # "red" in the source
    lat = bb.run(prompts=[TGT], sources=[SRC], images=[small_scene], size=(32, 32), steps=STEPS, guidance=7.5,
                 image_guidance=1.0, generators=[None], output_type="latent")[0]
    mask = bb.last_blend_mask[0, 0]                                          # (16, 16) latent grid
    assert mask.any() and not mask.all()
    z0 = bb._inversion[1][0][0]
    assert torch.equal(lat[:, ~mask], z0[:, ~mask])                          # outside: the source (input)
    assert not torch.allclose(lat[:, mask], z0[:, mask])                     # inside: edited
    assert bb.describe()["p2p"]["local_blend"] is True
    with pytest.raises(LimeEditError, match="blend_level: this U-Net has no attention at latent level 16"):
        P2PBackbone(t2i, local_blend=True, blend_level=16).run(
            prompts=[TGT], sources=[SRC], images=[small_scene], size=(32, 32), steps=STEPS, guidance=7.5,
            image_guidance=1.0, generators=[None], output_type="latent")


# --------------------------------------------------------------------------- eval
def test_eval_piebench_with_p2p_and_p2p_lime(t2i, tmp_path, capsys):
    from lime_edit.cli import main
    from lime_edit.eval.testing import write_magicbrush_fixture, write_piebench_fixture

    model = tmp_path / "tiny-t2i"
    t2i.save_pretrained(str(model))
    pie = write_piebench_fixture(tmp_path / "pie", n=2, size=32)
    for lime, out in ((True, tmp_path / "lime"), (False, tmp_path / "plain")):
        argv = ["eval", "piebench", "--data", str(pie), "--out", str(out), "--model", str(model),
                "--backbone", "p2p", "--steps", "4", "--capture-at", "0.25", "--device", "cpu", "-q"]
        assert main(argv + ([] if lime else ["--no-lime"])) == 0, capsys.readouterr().err
        man = json.loads((out / "manifest.json").read_text())
        assert man["n_done"] == 2 and man["sampler"]["backbone"]["value"] == "p2p"
        rec = next(iter(man["samples"].values()))
        assert rec["source_caption"] == "a dog on the grass" and rec["target_caption"] == "a cat on the grass"
        assert rec["lime_applied"] is lime
        assert len(list((out / "annotation_images").rglob("*.jpg"))) == 2
    mb = write_magicbrush_fixture(tmp_path / "mb")
    assert main(["eval", "magicbrush", "--data", str(mb), "--out", str(tmp_path / "mbout"), "--model", str(model),
                 "--backbone", "p2p", "--device", "cpu", "-q"]) == 2
    assert "gives instructions only" in capsys.readouterr().err


def test_reweighting_scales_the_target_word_during_the_replacement_steps(t2i):
    from lime_edit.backbones import P2PBackbone

    bb = P2PBackbone(t2i, reweight={"green": 2.0})
    eq = bb._equalizer([TGT])
    assert eq[0, 2] == 2.0 and float(eq[0, [0, 1, 3, 4, 5, 6, 7]].sub(1).abs().max()) == 0.0
    with pytest.raises(LimeEditError, match="reweight: 'purple' is not a word of the target caption"):
        P2PBackbone(t2i, reweight={"purple": 2.0})._equalizer([TGT])
    probs = torch.rand(4, 2, 5, 77).softmax(-1)
    ctl = P2PController(batch=1, mapper=torch.arange(77)[None], alphas=torch.ones(1, 77), cross_steps=1,
                        self_steps=0, self_max_tokens=0, equalizer=eq)
    out = ctl.edit(probs, is_cross=True)
    assert torch.allclose(out[3, ..., 2], 2 * probs[2, ..., 2]) and torch.equal(out[3, ..., 3], probs[2, ..., 3])
    with pytest.raises(LimeEditError, match="unknown option"):
        P2PBackbone(t2i, cross_replce=0.5)


def test_p2p_settings_per_call_equal_a_backbone_loaded_with_them(lp, t2i, small_scene):
    opts = dict(cross_replace=0.0, self_replace=1.0, local_blend=True, blend_start=0.0, blend_level=2,
                blend_threshold=0.99)
    before = lp.backbone.settings
    per_call = lp.edit_captions(small_scene, SRC, TGT, mask=None, p2p=opts, **FAST)
    assert lp.backbone.settings is before                                   # restored after the call
    loaded = LimePipeline(t2i, backbone="p2p", **opts).edit_captions(small_scene, SRC, TGT, mask=None, **FAST)
    assert np.array_equal(np.asarray(per_call.image), np.asarray(loaded.image))
    assert per_call.settings["p2p"]["local_blend"] is True and per_call.settings["p2p"]["cross_replace"] == 0.0
    default = lp.edit_captions(small_scene, SRC, TGT, mask=None, **FAST)
    assert not np.array_equal(np.asarray(default.image), np.asarray(per_call.image))
    assert default.settings["p2p"]["cross_replace"] == before.cross_replace
    with pytest.raises(LimeEditError, match="unknown option.*crossreplace"):
        lp.edit_captions(small_scene, SRC, TGT, p2p={"crossreplace": 0.5}, **FAST)
    with pytest.raises(LimeEditError, match="cross_replace: must be in"):
        lp.edit_captions(small_scene, SRC, TGT, p2p={"cross_replace": 1.5}, **FAST)
    with pytest.raises(LimeEditError, match="reweight"):                      # an error inside the call ...
        lp.edit_captions(small_scene, SRC, TGT, p2p={"reweight": {"purple": 2.0}}, **FAST)
    assert lp.backbone.settings is before                                   # ... restores them too


# --------------------------------------------------------------------------- step counts
def _official_counts(cross, self_, blend, n):
    """Our reading of the official code: cross-attention alphas are a table of n + 1 rows
    (``get_time_words_attention_alpha``), rows [0, int(cross * (n + 1))) set to 1; self-attention
    is replaced while ``step < int(n * self_)``; LocalBlend counts calls from 1 and blends when
    ``counter > int(blend * n)``, i.e. from 0-based step int(blend * n)."""
    rows = torch.zeros(n + 1)
    rows[: int(cross * rows.shape[0])] = 1
    cross_steps = int(rows[:n].sum())
    self_steps = sum(1 for step in range(n) if step < int(n * self_))
    blend_from = next((i for i in range(n) if i + 1 > int(blend * n)), n)
    return cross_steps, self_steps, blend_from


@pytest.mark.parametrize("frac", [(0.4, 0.6, 0.2), (0.5, 0.5, 0.5), (0.8, 0.3, 0.1)])
def test_step_counts_are_truncated_like_the_official_code(frac):
    from lime_edit.backbones.p2p import P2PSettings, step_counts

    s = P2PSettings(cross_replace=frac[0], self_replace=frac[1], blend_start=frac[2])
    got = {n: step_counts(s, n) for n in range(1, 61)}
    want = {n: _official_counts(*frac, n) for n in range(1, 61)}
    assert got == want


def test_a_pass_uses_those_step_counts(t2i, small_scene, monkeypatch):
    from lime_edit.backbones import P2PBackbone
    from lime_edit.backbones import p2p as p2p_mod

    made = []

    def spy(**kw):
        made.append(kw)
        return P2PController(**kw)

    monkeypatch.setattr(p2p_mod, "P2PController", spy)
    n = 8                                                # official: 3 cross, 4 self, blend from step 1
    bb = P2PBackbone(t2i, local_blend=True, blend_level=2)
    seen = []
    bb.run(prompts=[TGT], sources=[SRC], images=[small_scene], size=(32, 32), steps=n, guidance=7.5,
           image_guidance=1.0, generators=[None], output_type="latent",
           on_step_end=lambda i: seen.append(bb.last_blend_mask is not None))
    assert (made[0]["cross_steps"], made[0]["self_steps"]) == _official_counts(0.4, 0.6, 0.2, n)[:2] == (3, 4)
    assert seen.index(True) == _official_counts(0.4, 0.6, 0.2, n)[2] == 1
