"""LimePipeline behaviour on a tiny IP2P model (heads 2 and 4, not 8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lime_edit import LimeConfig, LimeEditError, LimePipeline, Localization
from lime_edit.processors import LimeAttnProcessor, PassState, lime_attention

STEPS = 3
FAST = dict(num_inference_steps=STEPS, capture_at=0.34)  # capture at step 1 of 3


@pytest.fixture(scope="module")
def lp(tiny_pipe):
    return LimePipeline(tiny_pipe)


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


def _plain(pipe, image, prompt, seed=0, guidance=2.0):
    return pipe(prompt, image=image, num_inference_steps=STEPS, guidance_scale=guidance,
                image_guidance_scale=1.5, generator=torch.Generator().manual_seed(seed)).images[0]


def test_lime_off_equals_plain_ip2p_and_lime_on_differs(lp, tiny_pipe, scene):
    off = lp.edit(scene, "make the red square blue", mask=None, seed=3, **FAST)
    assert not off.lime_applied and off.mask is None
    assert np.array_equal(_arr(off.image), _arr(_plain(tiny_pipe, scene, "make the red square blue", 3)))
    on = lp.edit(scene, "make the red square blue", seed=3, **FAST)
    assert on.lime_applied and on.localization is not None
    assert np.abs(_arr(on.image) - _arr(off.image)).mean() > 0.5


def test_inert_processors_change_nothing(tiny_pipe, scene):
    ref = _arr(_plain(tiny_pipe, scene, "turn the circle green", 1))
    st = PassState(latent_hw=(32, 32), batch=1)
    with lime_attention(tiny_pipe.unet, st):
        assert all(isinstance(p, LimeAttnProcessor) for p in tiny_pipe.unet.attn_processors.values())
        got = _arr(_plain(tiny_pipe, scene, "turn the circle green", 1))
    assert np.array_equal(ref, got)
    assert st.levels_seen == {1, 2, 4, 8}


def test_processors_restored_after_exception(tiny_pipe, lp, scene):
    before = dict(tiny_pipe.unet.attn_processors)
    with pytest.raises(RuntimeError):
        with lime_attention(tiny_pipe.unet, PassState(latent_hw=(32, 32), batch=1)):
            raise RuntimeError("boom")
    assert tiny_pipe.unet.attn_processors == before
    # a LimeEditError raised mid-pass (level that does not exist) also restores them
    with pytest.raises(LimeEditError, match="level"):
        lp.localize(scene, "make the red square blue", feature_levels=(16,), **FAST)
    assert tiny_pipe.unet.attn_processors == before


def test_other_processors_kept_outside_selected_layers(tiny_pipe):
    class Marker:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, *a, **k):
            return self.inner(*a, **k)

    names = list(tiny_pipe.unet.attn_processors)
    original = dict(tiny_pipe.unet.attn_processors)
    custom = {n: (Marker(p) if n.startswith("down_blocks.0") else p) for n, p in original.items()}
    tiny_pipe.unet.set_attn_processor(dict(custom))  # diffusers pops from the dict it is given
    try:
        with lime_attention(tiny_pipe.unet, PassState(latent_hw=(32, 32), batch=1), layers=("up_blocks.*",)):
            now = tiny_pipe.unet.attn_processors
            assert isinstance(now[names[0]], Marker)
            assert all(isinstance(p, LimeAttnProcessor) for n, p in now.items() if n.startswith("up_blocks"))
        assert all(tiny_pipe.unet.attn_processors[n] is custom[n] for n in names)
    finally:
        tiny_pipe.unet.set_attn_processor(dict(original))


def test_layer_selection_raises_on_unknown_name(lp, scene):
    with pytest.raises(LimeEditError, match="no attention layer matches"):
        lp.edit(scene, "make the red square blue", layers=("middle_block.*",), **FAST)


# ---------------------------------------------------------------------------------------------
# The regularization against an explicit softmax reference, on one real Attention module.

def _cross_attention(tiny_pipe):
    for name, module in tiny_pipe.unet.named_modules():
        if name.endswith("attn2") and module.heads != 8:
            return name, module
    raise AssertionError("no cross-attention")


@pytest.mark.parametrize("mode", ["penalize", "reward"])
def test_regularization_matches_explicit_softmax(tiny_pipe, mode):
    name, attn = _cross_attention(tiny_pipe)
    torch.manual_seed(0)
    b, h, w, t = 2, 16, 16, 77                      # latent 16x16 at level 1
    rows = 3 * b
    x = torch.randn(rows, h * w, attn.to_q.in_features)
    ctx = torch.randn(rows, t, attn.to_k.in_features)
    roi = torch.zeros(b, h, w, dtype=torch.bool)
    roi[0, 2:9, 3:12] = True
    roi[1, 10:, :5] = True
    keep = torch.zeros(b, t, dtype=torch.bool)
    keep[0, [2, 3, 5]] = True
    keep[1, [1, 4]] = True
    st = PassState(latent_hw=(h, w), batch=b, reg_steps=range(0, 10), reg_levels=frozenset({1}),
                   mode=mode, roi=roi, tokens=keep)
    proc = LimeAttnProcessor(attn.processor, st, name)
    with torch.no_grad():
        got = proc(attn, x, encoder_hidden_states=ctx)
        stock = attn.processor(attn, x, encoder_hidden_states=ctx)
        heads, d = attn.heads, attn.to_q.out_features // attn.heads
        q = attn.to_q(x).view(rows, -1, heads, d).transpose(1, 2)
        k = attn.to_k(ctx).view(rows, -1, heads, d).transpose(1, 2)
        v = attn.to_v(ctx).view(rows, -1, heads, d).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) * attn.scale                   # (rows, heads, Nq, T)
        inside = roi.flatten(1).repeat(3, 1)[:, None, :, None]          # (rows, 1, Nq, 1)
        kept = keep.repeat(3, 1)[:, None, None, :]                      # (rows, 1, 1, T)
        if mode == "penalize":
            logits = logits.masked_fill(inside & ~kept, float("-inf"))
        else:
            logits = torch.where(inside & kept, torch.full_like(logits, 1e9), logits)
        probs = logits.softmax(-1)
        ref = attn.to_out[0]((probs @ v).transpose(1, 2).reshape(rows, -1, heads * d))
    # inside the RoI the unrelated tokens get no attention at all
    assert float(probs.masked_select(inside & ~kept).abs().max()) < 1e-6
    assert torch.allclose(got, ref, atol=1e-5)
    # outside the RoI nothing changes
    outside = ~roi.flatten(1).repeat(3, 1)
    assert torch.allclose(got[outside], stock[outside], atol=1e-6)
    assert not torch.allclose(got, stock, atol=1e-4)


def test_regularization_only_in_configured_steps_and_levels(tiny_pipe):
    name, attn = _cross_attention(tiny_pipe)
    x = torch.randn(3, 16 * 16, attn.to_q.in_features)
    ctx = torch.randn(3, 77, attn.to_k.in_features)
    roi = torch.ones(1, 16, 16, dtype=torch.bool)
    keep = torch.zeros(1, 77, dtype=torch.bool)
    keep[0, 1] = True
    with torch.no_grad():
        stock = attn.processor(attn, x, encoder_hidden_states=ctx)
        for steps, levels, step in [(range(2, 5), {1}, 0), (range(0, 5), {2}, 0), (range(0, 5), {1}, 5)]:
            st = PassState(latent_hw=(16, 16), batch=1, reg_steps=steps, reg_levels=frozenset(levels),
                           roi=roi, tokens=keep, step=step)
            assert torch.equal(LimeAttnProcessor(attn.processor, st, name)(attn, x, encoder_hidden_states=ctx),
                               stock)


# ---------------------------------------------------------------------------------------------

def test_batch_of_two_equals_two_singles(lp, scene):
    """Same seeds -> same results. Batched convolutions round differently in the last
    bits (~1e-7 here), which can flip K-means labels of a few boundary pixels on this
    random model; with given masks the edit is equal to one grey level."""
    other = scene.transpose(Image.FLIP_LEFT_RIGHT)
    prompts = ["make the red square blue", "turn the blue square yellow"]
    masks = [np.pad(np.ones((20, 20)), ((10, 34), (8, 36))), np.pad(np.ones((22, 26)), ((36, 6), (4, 34)))]
    batch = lp.edit([scene, other], prompts, mask=masks, seed=[5, 9], **FAST)
    singles = [lp.edit(scene, prompts[0], mask=masks[0], seed=5, **FAST),
               lp.edit(other, prompts[1], mask=masks[1], seed=9, **FAST)]
    for b, s in zip(batch, singles):
        assert b.timings["batch_size"] == 2 and b.lime_applied
        assert torch.equal(b.mask, s.mask)
        assert np.abs(_arr(b.image) - _arr(s.image)).max() <= 1



def test_batched_localization_captures_what_singles_capture(lp, scene, monkeypatch):
    """The localization pass of a batch reads the same features and attention as
    single calls (to float rounding); on this random model K-means itself is too
    ill-conditioned to compare label maps, so the captured inputs are compared."""
    captured = []
    real = LimePipeline._localizations

    def spy(self, items, st, cfg):
        captured.append(st)
        return real(self, items, st, cfg)

    monkeypatch.setattr(LimePipeline, "_localizations", spy)
    other = scene.transpose(Image.FLIP_LEFT_RIGHT)
    prompts = ["make the red square blue", "turn the blue square yellow"]
    batch = lp.localize([scene, other], prompts, seed=[5, 9], **FAST)
    singles = [lp.localize(scene, prompts[0], seed=5, **FAST), lp.localize(other, prompts[1], seed=9, **FAST)]
    both, one, two = captured
    for j, single in enumerate((one, two)):
        assert len(both.features) == len(single.features) > 0
        for (n1, l1, f1), (n2, l2, f2) in zip(both.features + both.cross_probs,
                                              single.features + single.cross_probs):
            assert (n1, l1) == (n2, l2)
            assert torch.allclose(f1[j], f2[0], atol=1e-5, rtol=1e-4)
        assert batch[j].tokens == singles[j].tokens and batch[j].token_indices == singles[j].token_indices


def test_batch_with_mixed_masks(lp, scene):
    user = np.zeros((10, 10), bool)
    user[2:6, 2:6] = True
    res = lp.edit([scene, scene, scene], "make the red square blue", mask=[None, user, "auto"], **FAST)
    assert [r.lime_applied for r in res] == [True, True, True][:0] + [False, True, True]
    assert res[1].mask.shape == (64, 64) and res[1].mask[20, 20] and not res[1].mask[40, 40]


def test_non_square_and_odd_sizes_keep_input_size(lp):
    for size in [(96, 64), (70, 50)]:
        img = Image.new("RGB", size, (200, 20, 20))
        res = lp.edit(img, "make the red square blue", **FAST)
        assert res.image.size == size
        assert res.localization.mask.shape[0] != res.localization.mask.shape[1] or size[0] == size[1]


def test_localization_contents(lp, scene):
    loc = lp.localize(scene, "Make the red square blue, please!", top_k=20, **FAST)
    assert isinstance(loc, Localization)
    # "please" and the punctuation never localize; the end token does (localize_end_token, default)
    assert loc.tokens == ["red", "square", "blue", "<|endoftext|>"]
    assert loc.token_indices == [3, 4, 5, 9]
    assert loc.mask.shape == loc.segments.shape == loc.attention.shape == (64, 64)  # 2x the 32 latent
    assert loc.token_maps.shape == (4, 64, 64)
    words_only = lp.localize(scene, "Make the red square blue, please!", top_k=20, localize_end_token=False, **FAST)
    assert words_only.token_indices == [3, 4, 5] and words_only.token_maps.shape == (3, 64, 64)
    assert torch.equal(words_only.token_maps, loc.token_maps[:3])
    assert loc.points.shape == (5, 2) and loc.top_k == 5   # 20 on the 128x128 reference grid = 5 on 64x64
    assert set(loc.selected_segments) == {int(loc.segments[r, c]) for r, c in loc.points.tolist()}
    assert torch.equal(loc.mask, torch.isin(loc.segments, torch.tensor(loc.selected_segments)))
    assert 0 <= float(loc.attention.min()) and float(loc.attention.max()) == pytest.approx(1.0)
    refined = loc.with_segments([0])
    assert torch.equal(refined.mask, loc.segments == 0) and refined.segments is loc.segments


def test_same_seed_is_deterministic(lp, scene):
    a = lp.localize(scene, "make the red square blue", seed=4, **FAST)
    b = lp.localize(scene, "make the red square blue", seed=4, **FAST)
    assert torch.equal(a.segments, b.segments) and torch.equal(a.mask, b.mask)


def test_fallbacks_and_warnings(lp, tiny_pipe, scene):
    res = lp.edit(scene, "make it so", **FAST)
    assert not res.lime_applied and "no related token" in res.warnings[0]
    assert np.array_equal(_arr(res.image), _arr(_plain(tiny_pipe, scene, "make it so")))
    empty = lp.edit(scene, "make the red square blue", mask=np.zeros((5, 7)), **FAST)
    assert not empty.lime_applied and "empty" in empty.warnings[0]
    full = lp.edit(scene, "make the red square blue", mask=Image.new("L", (13, 9), 255), **FAST)
    assert full.lime_applied and "whole image" in full.warnings[0]
    long = lp.edit(scene, " ".join(["red square"] * 60), mask=None, **FAST)
    assert any("truncated" in w for w in long.warnings)


@pytest.mark.parametrize("bad", ["", "   \n"])
def test_empty_instruction_is_an_error(lp, scene, bad):
    with pytest.raises(LimeEditError, match="empty instruction"):
        lp.edit(scene, bad, **FAST)


def test_mismatched_lists_are_an_error(lp, scene):
    with pytest.raises(LimeEditError, match="instruction: 1 values for 2 images"):
        lp.edit([scene, scene], ["a"], **FAST)
    with pytest.raises(ValueError, match="unknown LIME setting"):
        lp.edit(scene, "make it red", num_clusterz=3)


def test_rgba_and_greyscale_inputs(lp, scene):
    rgba = scene.convert("RGBA")
    a = lp.edit(rgba, "make the red square blue", **FAST)
    b = lp.edit(scene, "make the red square blue", **FAST)
    assert np.array_equal(_arr(a.image), _arr(b.image))
    assert lp.edit(scene.convert("L"), "make the red square blue", **FAST).image.mode == "RGB"


@pytest.mark.parametrize("overrides", [
    dict(mode="reward"),
    dict(clustering="agglomerative", distance_threshold=0.5),
    dict(schedule="single_pass"),
    dict(num_clusters=4, top_k=1, penalize_padding=False),
])
def test_variants_run_and_apply(lp, scene, overrides):
    res = lp.edit(scene, "make the red square blue", **{**FAST, **overrides})
    assert res.lime_applied and res.mask is not None and res.mask.any()
    resolved = LimeConfig(**{**FAST, **overrides}).replace(
        feature_levels=(2, 4, 8), regularization_levels=(1, 2), out_scale=2)   # the reference's, on SD1.x
    assert res.settings == {**resolved.to_dict(), "backbone": "ip2p", "processed_size": list(scene.size),
                            "top_k_points": resolved.top_k_for(res.mask.shape)}


def test_fast_preset_uses_a_short_localization_schedule():
    cfg = LimeConfig.fast()
    assert cfg.loc_steps == 10 and cfg.capture_step == 3
    assert LimeConfig().capture_step == 10 and LimeConfig().regularized_steps() == range(0, 27)
    assert LimeConfig(schedule="single_pass").regularized_steps() == range(11, 27)


def test_progress_bars_count_the_steps_each_pass_runs(lp, tiny_pipe, scene):
    """The localization pass stops after the capture step: its bar ends there
    ("localize", capture_step + 1 steps), then the edit bar runs the whole schedule."""
    import io

    buf = io.StringIO()
    tiny_pipe.set_progress_bar_config(file=buf, disable=False, ncols=80, mininterval=0)
    try:
        lp.edit(scene, "make the red square blue", num_inference_steps=6, capture_at=0.34, seed=0)
        lp.edit(scene, "make the red square blue", mask=None, num_inference_steps=4, seed=0)
    finally:
        tiny_pipe.set_progress_bar_config()
    states = [s.strip() for s in buf.getvalue().replace("\r", "\n").splitlines() if s.strip()]
    finals = []  # each bar's last state (tqdm may print it twice when it closes)
    for s in states:
        if "100%" in s and (not finals or finals[-1] != s.split("[")[0]):
            finals.append(s.split("[")[0])
    assert [f.split(":")[0] for f in finals] == ["localize", "edit", "edit"]
    assert "3/3" in finals[0] and "6/6" in finals[1] and "4/4" in finals[2]  # capture step 2 of 6
    assert not any("/6" in s for s in states if s.startswith("localize"))
    assert "progress_bar" not in vars(tiny_pipe)  # the pipeline's own method is back


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask=np.zeros((0, 64))), r"^mask: the mask has no pixels"),
    (dict(mask=Image.new("L", (0, 0))), r"^mask: the mask has no pixels"),
    (dict(seed=2**70), r"^seed: 1180591620717411303424 is out of range; .*0\.\.2\*\*64-1"),
    (dict(seed=-1), r"^seed: -1 is out of range"),
    (dict(seed=True), r"^seed: expected an int"),
    (dict(num_inference_steps="3"), r"num_inference_steps must be an int, got str '3'"),
    (dict(num_inference_steps=2.5), r"num_inference_steps must be an int, got float 2.5"),
    (dict(num_inference_steps=10**20), r"num_inference_steps must be in 1\.\.10000"),
    (dict(out_scale=1000), r"out_scale must be in 1\.\.16 or None"),
    (dict(guidance_scale=float("inf")), r"guidance_scale must be a finite number"),
    (dict(image_guidance_scale=float("nan")), r"image_guidance_scale must be a finite number"),
    (dict(mask="everything"), r"^mask: expected 'auto'"),
])
def test_bad_arguments_are_one_line_errors_naming_them(lp, scene, kwargs, match):
    with pytest.raises(LimeEditError, match=match) as err:
        lp.edit(scene, "make the red square blue", **kwargs)
    assert "\n" not in str(err.value)


def test_seed_range_is_checked_per_item_and_its_ends_work(lp, scene):
    with pytest.raises(LimeEditError, match=r"^seed\[1\]: 18446744073709551616 is out of range"):
        lp.localize([scene, scene], "make the red square blue", seed=[0, 2**64], **FAST)
    loc = lp.localize(scene, "make the red square blue", seed=2**64 - 1, **FAST)
    assert loc.mask.shape == loc.segments.shape


@pytest.mark.parametrize("field, value, match", [
    ("guidance_scale", float("inf"), "finite"), ("localization_guidance_scale", float("-inf"), "finite"),
    ("capture_at", float("nan"), "finite"), ("distance_threshold", float("nan"), "finite"),
    ("regularize_until", float("nan"), "finite"), ("regularize_from", float("inf"), "finite"),
    ("num_inference_steps", True, "must be an int"), ("top_k", 2.0, "must be an int"),
    ("localization_steps", "10", "must be an int or None"), ("num_clusters", "8", "must be an int"),
    ("kmeans_iters", 0, ">= 1"), ("agglomerative_max_points", 0, ">= 1"),
    ("drop_verbs", 1, "True or False"), ("feature_levels", (True, 2), "tuple of ints"),
    ("guidance_scale", "7.5", "must be a number"), ("layers", ("",), "fnmatch patterns"),
])
def test_config_checks_types_and_finiteness(field, value, match):
    with pytest.raises(ValueError, match=rf"LimeConfig\.{field} .*{match}"):
        LimeConfig(**{field: value})


def test_config_normalises_numpy_numbers():
    cfg = LimeConfig(top_k=np.int64(5), guidance_scale=np.float32(1.5), drop_verbs=np.bool_(False),
                     layers="up_blocks.*")
    assert type(cfg.top_k) is int and type(cfg.guidance_scale) is float and cfg.drop_verbs is False
    assert cfg.layers == ("up_blocks.*",)


def test_localize_variants_equal_one_localize_call_per_setting(lp, scene):
    """One localization pass serves settings that act after the capture step: each
    variant's result is what localize gives with those settings (same seed, same image);
    a list input gives a list per variant."""
    finest = min(lp.backbone.levels)
    variants = [{}, {"feature_levels": (finest,)}, {"num_clusters": 3, "top_k": 400},
                {"localize_end_token": False}]
    prompts = ["make the red square blue", "turn the red square green"]
    got = lp.localize_variants([scene, scene], prompts, variants, seed=[3, 4], **FAST)
    assert len(got) == len(variants)
    for v, locs in zip(variants, got):
        assert isinstance(locs, list) and len(locs) == 2
        ref = lp.localize([scene, scene], prompts, seed=[3, 4], **FAST, **v)
        for a, b in zip(locs, ref):
            assert torch.equal(a.mask, b.mask) and torch.equal(a.segments, b.segments)
            assert torch.equal(a.attention, b.attention) and a.tokens == b.tokens and a.top_k == b.top_k
    single = lp.localize_variants(scene, prompts[0], [{"num_clusters": 2}], seed=3, **FAST)
    assert isinstance(single[0], Localization)


@pytest.mark.parametrize("variants, match", [
    ([{"capture_at": 0.5}], r"variants\[0\]: capture_at act\(s\) before the capture step"),
    ([{}, {"guidance_scale": 3.0, "num_clusters": 2}], r"variants\[1\]: guidance_scale"),
    ([], "non-empty list"),
    ({"num_clusters": 3}, "non-empty list"),
    ([{"num_clusters": 0}], "num_clusters"),
    ([{"feature_levels": (64,)}], "feature_levels"),
])
def test_localize_variants_bad_settings_are_one_line_errors(lp, scene, variants, match):
    with pytest.raises(LimeEditError, match=match) as ei:
        lp.localize_variants(scene, "make the red square blue", variants, **FAST)
    assert "\n" not in str(ei.value)


def test_settings_are_what_a_call_runs_with(lp):
    cfg = lp.settings(num_clusters=3)
    assert isinstance(cfg, LimeConfig) and cfg.num_clusters == 3
    assert cfg.feature_levels == tuple(lp.backbone.default_levels()[0])   # resolved by the backbone
    with pytest.raises(LimeEditError, match="num_clusters"):
        lp.settings(num_clusters=0)


def test_localize_warns_of_a_truncated_instruction_as_edit_does(lp, scene):
    long = "make the red square blue " + " ".join(["and very shiny"] * 30)
    loc = lp.localize(scene, long)
    assert any("was truncated" in w for w in loc.warnings)
    assert not any("was truncated" in w for w in lp.localize(scene, "make the red square blue").warnings)
