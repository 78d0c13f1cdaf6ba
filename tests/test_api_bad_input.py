"""The Python API's bad-input contract (a probe of 2026-12-06): every bad argument is a
``LimeEditError`` naming it, never a raw TypeError/ValueError/RuntimeError from numpy, torch,
PIL or a tokenizer, and never a silently misread mask."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lime_edit import LimePipeline
from lime_edit.backbones.p2p import P2PSettings
from lime_edit.errors import LimeEditError
from lime_edit.imageops import mask_to_tensor

FAST = dict(num_inference_steps=2, localization_steps=2)


@pytest.fixture(scope="module")
def lp(tiny_pipe):
    return LimePipeline(tiny_pipe)


def _left_quarter() -> np.ndarray:
    m = np.zeros((64, 64), np.float32)
    m[:, :16] = 1
    return m


@pytest.mark.parametrize("mask, why", [
    (np.stack([_left_quarter()] * 2), r"expected a 2-D mask .* got shape \(2, 64, 64\)"),   # was read as (2, 64)
    (_left_quarter()[None, None].repeat(2, 1), r"expected a 2-D mask .* got shape \(1, 2, 64, 64\)"),
    (np.array([[1, None], [0, 1]], dtype=object), "expected a bool or numeric array, got dtype object"),
    (np.array([["a"]]), "expected a bool or numeric array"),
    (torch.ones(8, 8).to_sparse(), "expected a dense tensor"),
    (torch.ones(8, 8, device="meta"), "expected a dense tensor"),
])
def test_a_mask_that_cannot_be_read_unambiguously_is_refused(mask, why):
    with pytest.raises(LimeEditError, match="^mask: " + why):
        mask_to_tensor(mask)


def test_masks_with_a_channel_or_batch_axis_keep_their_meaning():
    m = _left_quarter()
    for variant in (m, m[..., None].repeat(3, -1), m[None], m[None, None], torch.from_numpy(m)[None]):
        t = mask_to_tensor(variant)
        assert t.shape == (64, 64) and t[:, :16].all() and not t[:, 16:].any()
    assert mask_to_tensor(np.ones((1, 64))).shape == (1, 64)          # a 2-D 1xN mask stays 2-D


def test_images_and_masks_that_cannot_be_read(lp):
    closed = Image.new("RGB", (64, 64))
    closed.close()
    with pytest.raises(LimeEditError, match=r"^image: cannot read the image"):
        lp.edit(closed, "make the circle red", **FAST)
    with pytest.raises(LimeEditError, match=r"^image: 0x0 has no pixels$"):
        lp.localize(Image.new("RGB", (0, 0)), "make the circle red", **FAST)
    with pytest.raises(LimeEditError, match=r"^mask: cannot read the image"):
        lp.edit(Image.new("RGB", (64, 64)), "make the circle red", mask=closed, **FAST)


@pytest.mark.parametrize("text, why", [(5, "expected a string, got int"), (b"make it red", "expected a string, got bytes"),
                                       ("   ", "empty instruction"), ("a \ud800 b", "not valid text")])
def test_bad_instructions_are_named(lp, text, why):
    with pytest.raises(LimeEditError, match=f"^instruction: {why}"):
        lp.edit(Image.new("RGB", (64, 64)), text, **FAST)


def test_non_finite_capture_features_are_an_error_not_a_clustering_crash(lp):
    img = Image.new("RGB", (64, 64), (120, 40, 200))
    for kw in (dict(image_guidance_scale=1e38), dict(image_guidance_scale=1e38, clustering="agglomerative")):
        with pytest.raises(LimeEditError, match=r"^image: the model produced NaN/inf values in its features"):
            lp.localize(img, "make the circle red", **FAST, **kw)


def test_layers_of_the_wrong_type_name_the_field(lp):
    with pytest.raises(LimeEditError, match=r"layers must be None or a non-empty tuple of fnmatch patterns, got 5"):
        lp.check_settings(layers=5)


@pytest.mark.parametrize("variants, why", [
    (None, "variants: expected a non-empty list"), (5, "variants: expected a non-empty list"),
    ((dict(num_clusters=k) for k in (2, 3)), "variants: expected a non-empty list"),      # a generator
    ([{"bogus": 1}], r"variants\[0\]: unknown setting\(s\) bogus"),
])
def test_localize_variants_checks_its_variants(lp, variants, why):
    with pytest.raises(LimeEditError, match=why):
        lp.localize_variants(Image.new("RGB", (64, 64)), "make the circle red", variants, **FAST)


def test_with_segments_takes_only_the_localizations_labels(lp):
    loc = lp.localize(Image.new("RGB", (64, 64), (10, 200, 30)), "make the circle red", **FAST)
    present = sorted(set(loc.segments.unique().tolist()))
    assert loc.with_segments([present[0]]).mask.equal(loc.segments == present[0])
    for bad in (["a"], [99], [-1], [1.5], [2 ** 70], [True]):
        with pytest.raises(LimeEditError, match=r"^labels: .* is not a segment label of this localization"):
            loc.with_segments(bad)
    with pytest.raises(LimeEditError, match=r"^labels: expected a list of segment labels, got NoneType"):
        loc.with_segments(None)


@pytest.mark.parametrize("options, why", [
    ({"cross_replace": "0.5"}, r"cross_replace: must be in \[0, 1\], got '0.5'"),
    ({"reweight": "orange=2"}, "reweight: expected"), ({"reweight": 5}, "reweight: expected"),
    ({"reweight": {5: 2}}, "reweight: a word must be a non-empty string"),
    ({"reweight": {"a": float("nan")}}, r"reweight: a=nan: the scale must be a number in \[-100, 100\]"),
    ({"local_blend": "yes"}, "local_blend: must be True or False"),
    ({"blend_level": float("inf")}, "blend_level: must be a latent level"),
])
def test_p2p_settings_of_the_wrong_type_are_named(options, why):
    with pytest.raises(LimeEditError, match="^" + why):
        P2PSettings(**options)


def test_edit_captions_names_its_own_arguments(tiny_pipe, tmp_path_factory):
    from lime_edit.testing import tiny_t2i_pipeline

    lp2 = LimePipeline(tiny_t2i_pipeline(tmp_path_factory.mktemp("tok")), backbone="p2p")
    img = Image.new("RGB", (32, 32))
    with pytest.raises(LimeEditError, match=r"^p2p: expected a dict of Prompt-to-Prompt settings, got list"):
        lp2.edit_captions(img, "a red circle", "a blue circle", p2p=[("cross_replace", 0.5)])
    with pytest.raises(LimeEditError, match=r"^target: expected a string, got NoneType"):
        lp2.edit_captions(img, "a red circle", None)
    with pytest.raises(LimeEditError, match=r"^target: empty caption"):
        lp2.edit_captions(img, "a red circle", "  ")
    with pytest.raises(LimeEditError, match=r"^target: 1 values for 2 images"):
        lp2.edit_captions([img, img], "a red circle", ["a blue circle"])
