"""The p2p backbone's ``piebench`` preset: PnPInversion's "DirectInversion + P2P" row of PIE-Bench
(tiny random text-to-image model, CPU, offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lime_edit import LimeEditError, LimePipeline
from lime_edit.p2p_control import P2PController, align_tokens, split_word_positions

STEPS = 4
SRC = "a red circle and a blue square"
TGT = "a green circle and a blue square"

# PnPInversion's P2P row, read from cure-lab/PnPInversion (values only):
# - run_editing_p2p.py, __main__: P2PEditor(..., num_ddim_steps=50); per record
#   ``blended_word.split(" ")`` -> w, then p2p_editor("directinversion+p2p", guidance_scale=7.5,
#   cross_replace_steps=0.4, self_replace_steps=0.6, blend_word=((w[0],), (w[1],)),
#   eq_params={"words": (w[1],), "values": (2,)}; both None when blended_word is ""); setup_seed() = 1234.
# - models/p2p_editor.py, P2PEditor.__init__: "CompVis/stable-diffusion-v1-4" in float32 with
#   DDIMSchedulerDev(beta_start=0.00085, beta_end=0.012, "scaled_linear", clip_sample=False,
#   set_alpha_to_one=False) (diffusers' default steps_offset 0); edit_image_directinversion:
#   is_replace_controller=False (refinement), load_512 (512 x 512).
# - models/p2p/attention_control.py: AttentionControlEdit.replace_self_attention replaces where
#   att_replace.shape[2] <= 32 ** 2; LocalBlend(start_blend=0.2, th=(.3, .3)) on the 16x16 maps
#   (of a 64 latent); make_controller wraps the refinement in AttentionReweight with the equalizer;
#   AttentionStore.forward keeps the map that AttentionControlEdit.forward then edits in place.
# - models/p2p/seq_aligner.py: get_mapper aligns with global_align(ScoreParams(0, 1, -1)) and
#   get_word_inds finds words by text.split(" "); utils/utils.py latent2image: astype(np.uint8).
PNPINVERSION_ROW = {
    "controller": "refine",
    "aligner": "global_align",
    "cross_replace_steps": 0.4,
    "self_replace_steps": 0.6,
    "self_attention_max_query_tokens": 32 ** 2,
    "blend_words_of_dog_cat": (("dog",), ("cat",)),
    "blend_start": 0.2,
    "blend_threshold": 0.3,
    "blend_grid_at_512px": 16,
    "blend_maps": "edited",
    "word_lookup": "split",
    "equalizer_of_dog_cat": (("cat",), (2,)),
    "guidance_scale": 7.5,
    "num_ddim_steps": 50,
    "model": "CompVis/stable-diffusion-v1-4",
    "dtype": "float32",
    "steps_offset": 0,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "to_uint8": "floor",
    "seed": 1234,
    "size": 512,
}


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    from lime_edit.testing import tiny_t2i_pipeline

    return tiny_t2i_pipeline(tmp_path_factory.mktemp("tok_t2i_preset"))


@pytest.fixture()
def small_scene(scene):
    return scene.resize((32, 32), Image.LANCZOS)


# --------------------------------------------------------------------------- the preset's settings
def test_piebench_preset_equals_pnpinversions_row():
    from lime_edit.backbones.p2p import (DDIM_CONFIGS, PIEBENCH_MODEL, PIEBENCH_SAMPLER, P2PBackbone, P2PSettings,
                                         _settings, parse_blend_words)
    from lime_edit.eval.cli import P2P_MODEL
    from lime_edit.eval.generate import DEFAULT_SEED, PROTOCOL_SETTINGS

    row = PNPINVERSION_ROW
    s = _settings(P2PSettings(), {"preset": "piebench", "blend_words": parse_blend_words("dog cat")})
    assert s.preset == "piebench"
    assert s.mode == row["controller"] and s.aligner == "p2p"
    assert (s.cross_replace, s.self_replace) == (row["cross_replace_steps"], row["self_replace_steps"])
    assert s.self_replace_max_tokens == row["self_attention_max_query_tokens"]
    assert s.local_blend is True and s.blend_words == row["blend_words_of_dog_cat"]
    assert (s.blend_start, s.blend_threshold) == (row["blend_start"], row["blend_threshold"])
    assert 512 // 8 // s.blend_level == row["blend_grid_at_512px"]           # SD's VAE: latent = size / 8
    assert s.blend_maps == row["blend_maps"] and s.word_match == row["word_lookup"]
    words, values = row["equalizer_of_dog_cat"]
    assert s.reweight == tuple(zip(words, map(float, values)))
    assert {k: DDIM_CONFIGS[s.ddim][k] for k in ("steps_offset", "clip_sample", "set_alpha_to_one")} == {
        k: row[k] for k in ("steps_offset", "clip_sample", "set_alpha_to_one")}
    assert s.quantize == row["to_uint8"]
    assert PIEBENCH_SAMPLER == {"num_inference_steps": row["num_ddim_steps"], "guidance_scale": row["guidance_scale"]}
    assert {k: P2PBackbone.sampler_defaults[k] for k in PIEBENCH_SAMPLER} == PIEBENCH_SAMPLER
    assert {k: PROTOCOL_SETTINGS["piebench"][k] for k in PIEBENCH_SAMPLER} == PIEBENCH_SAMPLER
    assert PIEBENCH_MODEL == P2P_MODEL == row["model"] and DEFAULT_SEED["piebench"] == row["seed"]
    # a record without blended words: neither blend nor reweighting, as their script passes None for both
    none = _settings(P2PSettings(), {"preset": "piebench", "blend_words": parse_blend_words("")})
    assert none.local_blend is False and none.blend_words is None and none.reweight == ()
    assert none.self_replace_max_tokens == row["self_attention_max_query_tokens"]
    # lime-edit's own defaults are not that row (what the docs say they differ in)
    d = P2PSettings()
    assert (d.preset, d.mode, d.aligner, d.self_replace_max_tokens, d.self_replace_min_level) == (
        "default", "auto", "difflib", None, 4)
    assert (d.local_blend, d.reweight, d.ddim, d.quantize) == (False, (), "model", "round")


def test_preset_options_and_overrides(t2i):
    from lime_edit.backbones import P2PBackbone
    from lime_edit.backbones.p2p import parse_blend_words

    bb = P2PBackbone(t2i, preset="piebench", blend_words=("red", "green"), cross_replace=0.5)
    s = bb.settings
    assert s.preset == "piebench" and s.cross_replace == 0.5 and s.self_replace == 0.6     # an option wins
    assert s.blend_words == (("red",), ("green",)) and s.reweight == (("green", 2.0),)
    with bb.using(preset="default"):
        assert bb.settings.mode == "auto" and bb.settings.local_blend is False
    assert bb.settings is s
    assert parse_blend_words("cat dog extra") == (("cat",), ("dog",))       # their script reads two words
    with pytest.raises(LimeEditError, match="preset: unknown preset 'pie'"):
        P2PBackbone(t2i, preset="pie")
    with pytest.raises(LimeEditError, match="blended words 'cat': expected 'SOURCE_WORD TARGET_WORD'"):
        parse_blend_words("cat")
    with pytest.raises(LimeEditError, match="blend_words: .*turn local_blend on"):
        P2PBackbone(t2i, blend_words=("red", "green"))


# --------------------------------------------------------------------------- the absolute self-attention rule
def _self_layers_edited(t2i, image, monkeypatch, **options):
    """{query tokens: layer calls at step 0} of the self-attention layers the controller edited,
    and of all self-attention layers, in one P2P pass of ``image``."""
    from lime_edit import p2p_control
    from lime_edit.backbones import P2PBackbone

    edited, seen = {}, {}
    real_call, real_edit = p2p_control.P2PAttnProcessor.__call__, p2p_control.P2PController.edit

    def call(self, attn, hidden_states, encoder_hidden_states=None, *a, **k):
        if encoder_hidden_states is None and self.controller.step == 0:
            n = hidden_states.shape[1]
            seen[n] = seen.get(n, 0) + 1
        return real_call(self, attn, hidden_states, encoder_hidden_states, *a, **k)

    def edit(self, probs, is_cross):
        before = self.calls.get(False, 0)           # the controller counts the layers it edits
        out = real_edit(self, probs, is_cross)
        if not is_cross and self.step == 0 and self.calls.get(False, 0) > before:
            edited[probs.shape[2]] = edited.get(probs.shape[2], 0) + 1
            # (the first layers may see equal source and target rows at step 0: then out == probs)
            assert torch.equal(out[3], probs[2])
        return out

    with monkeypatch.context() as mp:
        mp.setattr(p2p_control.P2PAttnProcessor, "__call__", call)
        mp.setattr(p2p_control.P2PController, "edit", edit)
        bb = P2PBackbone(t2i, **options)
        bb.run(prompts=[TGT], sources=[SRC], images=[image], size=image.size, steps=2, guidance=7.5,
               image_guidance=1.0, generators=[None], output_type="latent")
    return edited, seen


def test_the_32x32_rule_replaces_exactly_the_layers_of_at_most_1024_query_tokens(t2i, scene, monkeypatch):
    """At 128 px the tiny model's latent is 64 (its VAE halves), like SD's at 512 px: self-attention
    layers of 64x64, 32x32, 16x16 and 8x8 query tokens.  The preset's absolute rule takes the three
    with at most 32 * 32 = 1024 (PnPInversion's); lime-edit's relative rule (level >= 4) only 16x16
    and 8x8."""
    image = scene.resize((128, 128), Image.LANCZOS)
    edited, seen = _self_layers_edited(t2i, image, monkeypatch, preset="piebench")
    assert set(seen) == {64 * 64, 32 * 32, 16 * 16, 8 * 8}
    assert edited == {n: c for n, c in seen.items() if n <= 32 * 32}
    relative, _ = _self_layers_edited(t2i, image, monkeypatch)
    assert relative == {n: c for n, c in seen.items() if n <= 16 * 16}
    # the count does not scale with the image: at 64 px (latent 32) every layer has <= 1024 queries
    small = scene.resize((64, 64), Image.LANCZOS)
    edited, seen = _self_layers_edited(t2i, small, monkeypatch, preset="piebench")
    assert edited == seen and max(seen) == 32 * 32
    relative, _ = _self_layers_edited(t2i, small, monkeypatch)
    assert relative == {n: c for n, c in seen.items() if n <= 8 * 8}


# --------------------------------------------------------------------------- the pieces the row needs
def test_p2p_aligner_keeps_the_alignment_the_official_code_keeps(t2i):
    """Source "red circle", target "circle red": either word can stay aligned. The official
    global_align traces back from the end preferring to leave the target token unaligned, so
    "circle" keeps the source's map and "red" is new; difflib keeps "red" instead."""
    tok = t2i.tokenizer
    p2p = align_tokens(tok, "red circle", "circle red", mode="refine", aligner="p2p")
    assert p2p.changed == [2] and p2p.mapper[1] == 2 and p2p.alphas[1] == 1 and p2p.alphas[2] == 0
    assert p2p.changed_source == [1]
    assert p2p.mapper[3] == 3 and bool(p2p.alphas[3:].eq(1).all())           # end token, padding
    diff = align_tokens(tok, "red circle", "circle red", mode="refine")
    assert diff.changed == [1] and diff.mapper[2] == 1
    # where the alignment is unique the two agree
    a = align_tokens(tok, "a red circle", "a big red circle on the left", mode="refine", aligner="p2p")
    b = align_tokens(tok, "a red circle", "a big red circle on the left", mode="refine")
    assert a.changed == b.changed and torch.equal(a.alphas, b.alphas)
    assert torch.equal(a.mapper[a.alphas == 1], b.mapper[b.alphas == 1])


def test_split_word_lookup_is_the_official_rule(t2i):
    tok = t2i.tokenizer
    assert split_word_positions(tok, "a dog on the grass", "dog") == [2]
    assert split_word_positions(tok, "a doghouse and a dog", "doghouse") == [2, 3, 4]    # three tokens
    assert split_word_positions(tok, "a dog and a dog", "dog") == [2, 5]
    assert split_word_positions(tok, "a Dog", "dog") == []              # case matters (tokens: "dog")
    assert split_word_positions(tok, "on the dog.", "dog") == []        # "dog." is the piece


def test_split_rule_misses_are_warnings_not_errors(t2i, small_scene):
    lp = LimePipeline(t2i, backbone="p2p")
    fast = dict(num_inference_steps=STEPS, mask=None)
    res = lp.edit_captions(small_scene, SRC, TGT, p2p={"preset": "piebench", "blend_words": ("red", "green.")},
                           **fast)
    assert any("'green.' is not a space-separated word of the target caption" in w for w in res.warnings)
    with pytest.raises(LimeEditError, match="reweight: 'purple' is not a word of the target caption"):
        lp.edit_captions(small_scene, SRC, TGT, p2p={"reweight": {"purple": 2.0}}, **fast)


def test_edited_blend_maps_accumulate_the_target_after_replacement_and_reweighting():
    B, T = 1, 6
    probs = torch.rand(4 * B, 2, 4, T).softmax(-1)
    eq = torch.ones(1, T)
    eq[0, 2] = 2.0
    words = torch.zeros(1, T, dtype=torch.bool)
    words[0, 2] = True
    for edited in (False, True):
        ctl = P2PController(batch=B, mapper=torch.arange(T)[None], alphas=torch.ones(1, T), cross_steps=1,
                            self_steps=0, self_max_tokens=0, equalizer=eq, blend_src=words, blend_tgt=words,
                            blend_tokens=4, blend_edited=edited)
        out = ctl.edit(probs, is_cross=True)
        tgt = out[3] if edited else probs[3]
        assert torch.allclose(ctl.blend_sum[1, 0], tgt[..., 2].mean(0))
        assert torch.allclose(ctl.blend_sum[0, 0], probs[2][..., 2].mean(0))
    assert torch.allclose(out[3][..., 2], 2 * probs[2][..., 2])               # edited = source map x 2
    ctl.step = 1                                                              # after the replacement steps:
    before = ctl.blend_sum.clone()                                            # the own maps, both ways
    ctl.edit(probs, is_cross=True)
    assert torch.allclose(ctl.blend_sum[1, 0] - before[1, 0], probs[3][..., 2].mean(0))


def test_pnpinversion_ddim_and_floor_quantization(t2i, small_scene):
    from lime_edit.backbones import P2PBackbone

    assert t2i.scheduler.config.steps_offset == 1                             # the model's own config
    seen = {}
    for ddim in ("model", "pnpinversion"):
        bb = P2PBackbone(t2i, ddim=ddim)
        bb.run(prompts=[TGT], sources=[SRC], images=[small_scene], size=(32, 32), steps=STEPS, guidance=7.5,
               image_guidance=1.0, generators=[None], output_type="latent",
               on_step_end=lambda i, bb=bb, ddim=ddim: seen.setdefault(ddim, bb.pipe.scheduler.timesteps.tolist()))
    assert seen == {"model": [751, 501, 251, 1], "pnpinversion": [750, 500, 250, 0]}
    assert t2i.scheduler.config.steps_offset == 1                             # restored after the pass
    assert P2PBackbone(t2i, ddim="pnpinversion").describe()["p2p"]["ddim_config"]["steps_offset"] == 0
    kw = dict(prompts=[TGT], sources=[SRC], images=[small_scene], size=(32, 32), steps=STEPS, guidance=7.5,
              image_guidance=1.0, generators=[None])
    x = P2PBackbone(t2i).run(output_type="np", **kw)[0]
    floor = np.asarray(P2PBackbone(t2i, quantize="floor").run(output_type="pil", **kw)[0])
    rnd = np.asarray(P2PBackbone(t2i).run(output_type="pil", **kw)[0])
    assert np.array_equal(floor, (np.clip(x, 0, 1) * 255).astype(np.uint8))
    assert (floor <= rnd).all() and (floor < rnd).any()


# --------------------------------------------------------------------------- CLI
def test_cli_p2p_preset_piebench(t2i, small_scene, tmp_path, capsys):
    from lime_edit.cli import main

    model = tmp_path / "tiny-t2i"
    t2i.save_pretrained(str(model))
    small_scene.save(tmp_path / "a.png")
    base = ["p2p", str(tmp_path / "a.png"), "--source", SRC, "--target", TGT, "--model", str(model),
            "--steps", "4", "--capture-at", "0.25"]
    assert main(base + ["-o", str(tmp_path / "o"), "--preset", "piebench", "--blend-words", "red green",
                        "--cross-replace", "0.5"]) == 0, capsys.readouterr().err
    rec = json.loads((tmp_path / "o" / "a.json").read_text())["settings"]["p2p"]
    assert rec["preset"] == "piebench" and rec["cross_replace"] == 0.5            # the flag overrides the preset
    assert rec["self_replace"] == 0.6 and rec["self_replace_max_tokens"] == 1024 and rec["mode"] == "refine"
    assert rec["local_blend"] is True and rec["blend_words"] == [["red"], ["green"]]
    assert rec["reweight"] == {"green": 2.0} and rec["aligner"] == "p2p" and rec["quantize"] == "floor"
    assert (tmp_path / "o" / "a_edited.png").is_file()
    # --blend-words without a preset: local blend on those words, nothing reweighted
    assert main(base + ["-o", str(tmp_path / "o2"), "--blend-words", "red green", "--no-lime"]) == 0
    rec = json.loads((tmp_path / "o2" / "a.json").read_text())["settings"]["p2p"]
    assert rec["preset"] == "default" and rec["local_blend"] is True and rec["reweight"] == {}
    capsys.readouterr()
    for bad, flag in ((["--preset", "pie-bench"], "--preset 'pie-bench': no such preset"),
                      (["--blend-words", "red"], "--blend-words 'red': expected two words")):
        assert main(base + ["-o", str(tmp_path / "o3"), *bad]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and flag in err and "Traceback" not in err
    assert not (tmp_path / "o3").exists()                                    # refused before any work


# --------------------------------------------------------------------------- eval
def test_eval_piebench_p2p_runs_and_records_the_preset(t2i, tmp_path, capsys):
    from lime_edit.cli import main
    from lime_edit.eval.testing import write_piebench_fixture

    model = tmp_path / "tiny-t2i"
    t2i.save_pretrained(str(model))
    pie = write_piebench_fixture(tmp_path / "pie", n=2, size=32)
    mapping = json.loads((pie / "mapping_file.json").read_text())
    keys = sorted(mapping)
    mapping[keys[1]]["blended_word"] = ""                                     # a record without words
    (pie / "mapping_file.json").write_text(json.dumps(mapping))
    runs = {}
    for name, extra in (("preset", []), ("default", ["--preset", "default"])):
        out = tmp_path / name
        argv = ["eval", "piebench", "--data", str(pie), "--out", str(out), "--model", str(model), "--backbone", "p2p",
                "--steps", "4", "--device", "cpu", "-q", "--no-lime", "--lossless", *extra]
        assert main(argv) == 0, capsys.readouterr().err
        runs[name] = json.loads((out / "manifest.json").read_text())
    man = runs["preset"]
    assert man["signature"]["p2p_preset"] == "piebench" and man["dtype"] == "float32"
    assert man["sampler"]["p2p_preset"] == {"value": "piebench", "from": "eval piebench default"}
    first, second = (man["samples"][k]["p2p"] for k in keys)
    assert first["preset"] == "piebench" and first["blend_words"] == [["dog"], ["cat"]]
    assert first["reweight"] == {"cat": 2.0} and first["local_blend"] is True
    assert first["self_replace_max_tokens"] == 1024 and first["mode"] == "refine"
    assert second["preset"] == "piebench" and second["local_blend"] is False and second["reweight"] == {}
    d = runs["default"]
    assert d["signature"]["p2p_preset"] == "default" and d["sampler"]["p2p_preset"]["from"] == "user"
    assert all(r["p2p"]["preset"] == "default" and r["p2p"]["mode"] == "auto" for r in d["samples"].values())
    # the preset is what ran: the image equals a direct call with the preset and the record's words
    it = mapping[keys[0]]
    image = Image.open(pie / "annotation_images" / it["image_path"]).convert("RGB")
    lp = LimePipeline(t2i, backbone="p2p")
    src, tgt = "a dog on the grass", "a cat on the grass"
    direct = lp.edit_captions(image, src, tgt, mask=None, num_inference_steps=4, guidance_scale=7.5,
                              p2p={"preset": "piebench", "blend_words": ("dog", "cat")})
    rel = it["image_path"].rsplit(".", 1)[0] + ".png"
    got = np.asarray(Image.open(tmp_path / "preset" / "annotation_images" / rel))
    assert np.array_equal(got, np.asarray(direct.image))
    other = np.asarray(Image.open(tmp_path / "default" / "annotation_images" / rel))
    assert not np.array_equal(got, other)
    # score's report says what made the outputs, the preset included
    assert main(["score", "piebench", "--data", str(pie), "--outputs", str(tmp_path / "preset"), "--metrics", "psnr",
                 "--device", "cpu", "-q"]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "preset" / "scores" / "piebench" / "report.json").read_text())
    assert report["generated_with"]["p2p_preset"] == "piebench" and report["generated_with"]["backbone"] == "p2p"
    # a rerun with the other preset into the same folder is refused (signature)
    argv = ["eval", "piebench", "--data", str(pie), "--out", str(tmp_path / "preset"), "--model", str(model),
            "--backbone", "p2p", "--steps", "4", "--device", "cpu", "-q", "--no-lime", "--lossless",
            "--preset", "default"]
    capsys.readouterr()
    assert main(argv) == 2 and "p2p_preset" in capsys.readouterr().err
    # bad names and places: one usage line each, before any work
    for extra, msg in ((["--preset", "nope"], "--preset 'nope': no such preset"),
                       (["--preset", "piebench", "--backbone", "ip2p"], "--backbone ip2p has none")):
        assert main(["eval", "piebench", "--data", str(pie), "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and msg in err
    assert main(["eval", "editval", "--data", str(pie), "--out", str(tmp_path / "x"), "--preset", "piebench"]) == 2
    assert "--preset piebench: Prompt-to-Prompt settings for `eval piebench" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("options, why", [
    ({"self_replace_max_tokens": 0}, "self_replace_max_tokens: must be a whole number >= 1 or None, got 0"),
    ({"self_replace_max_tokens": 1.5}, "self_replace_max_tokens: must be a whole number"),
    ({"self_replace_max_tokens": "1024"}, "self_replace_max_tokens: must be a whole number"),
    ({"word_match": "words"}, "word_match: expected 'tokens' or 'split', got 'words'"),
    ({"blend_maps": "target"}, "blend_maps: expected 'own' or 'edited'"),
    ({"aligner": "nw"}, "aligner: expected 'difflib' or 'p2p'"),
    ({"ddim": "pnp"}, "ddim: expected 'model' or 'pnpinversion'"),
    ({"quantize": "trunc"}, "quantize: expected 'round' or 'floor'"),
    ({"preset": "PIE-Bench"}, "preset: unknown preset 'PIE-Bench' \\(known: default, piebench\\)"),
    ({"blend_words": "cat dog", "local_blend": True}, "blend_words: expected \\(source words, target words\\)"),
    ({"blend_words": ("cat", ""), "local_blend": True}, "blend_words: expected"),
])
def test_new_p2p_settings_of_the_wrong_value_are_named(options, why):
    from lime_edit.backbones.p2p import P2PSettings

    with pytest.raises(LimeEditError, match="^" + why):
        P2PSettings(**options)
