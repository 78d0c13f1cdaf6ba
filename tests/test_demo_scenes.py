"""The synthetic scene generator: determinism, exact ground truth, instruction grammar."""

import numpy as np
import pytest

from lime_edit.demo import scenes as S
from lime_edit.demo.metrics import all_metrics, iou, ssim, to_float


def _arr(img):
    return np.asarray(img, dtype=np.int16)


@pytest.mark.parametrize("split", ["train", "test"])
def test_deterministic(split):
    a, b = S.make_edit(11, split), S.make_edit(11, split)
    assert a.instruction == b.instruction and a.caption == b.caption
    assert np.array_equal(_arr(a.image), _arr(b.image))
    assert np.array_equal(_arr(a.target), _arr(b.target))
    assert np.array_equal(a.mask, b.mask)


def test_splits_are_disjoint():
    train = {_arr(S.make_edit(s, "train").image).tobytes() for s in range(40)}
    test = {_arr(S.make_edit(s, "test").image).tobytes() for s in range(40)}
    assert not train & test
    assert len(test) == 40


def test_bad_split_and_seed():
    with pytest.raises(ValueError):
        S.make_edit(0, "val")
    with pytest.raises(ValueError):
        S.make_edit(-1)


@pytest.mark.parametrize("seed", range(25))
def test_clean_target_changes_exactly_the_mask(seed):
    e = S.make_edit(seed, "test")
    assert e.image.size == (64, 64) and e.image.mode == "RGB"
    diff = np.abs(_arr(e.image) - _arr(e.target)).sum(-1) > 0
    assert not (diff & ~e.mask).any(), "pixels outside the GT mask changed"
    # the object is recoloured: most of its footprint changes
    assert diff[e.mask].mean() > 0.9
    assert e.mask.sum() >= 40
    # the mask is the object's visible footprint
    assert np.array_equal(e.mask, e.object_masks[e.object_index])
    # test targets are clean
    assert np.array_equal(_arr(e.target), _arr(e.clean_target)) and not e.off_target


def test_object_masks_match_coverage_and_layering():
    for seed in range(10):
        e = S.make_edit(seed, "test")
        cov = S.coverage(e.scene)
        assert np.all(cov.sum(0) <= 1.0 + 1e-6)      # visible coverages never overlap beyond a pixel
        assert cov.shape == (len(e.scene.objects), 64, 64)
        assert 2 <= len(e.scene.objects) <= 4


def test_instruction_names_the_object_and_new_colour():
    for seed in range(60):
        e = S.make_edit(seed, "test")
        words = e.instruction.split()
        assert all(w in S.VOCAB for w in words), e.instruction
        assert all(w in S.VOCAB for w in e.caption.split()), e.caption
        obj = e.scene.objects[e.object_index]
        focus = [words[i] for i in e.focus_words]
        assert e.target_colour in focus and e.target_colour != e.source_colour
        assert obj.shape in focus
        assert len(e.caption.split()) == len(e.caption_owners)
        # the reference is unambiguous: no other object matches all its attribute words
        ref = set(e.reference.split())
        for j, o in enumerate(e.scene.objects):
            if j == e.object_index:
                continue
            attrs = {o.shape, o.colour, o.size}
            assert not (ref - {"on", "the", "left", "right", "top", "bottom"}) <= attrs or \
                ref & {"left", "right", "top", "bottom"}, (e.instruction, e.scene)


def test_phrasings_and_hard_cases_occur():
    es = [S.make_edit(s, "test") for s in range(200)]
    assert len({e.instruction.split()[0] for e in es}) >= 6              # many phrasings
    assert any(len(e.reference.split()) == 1 for e in es)                 # shape-only references
    distractor = sum(any(o.colour == e.source_colour for j, o in enumerate(e.scene.objects)
                         if j != e.object_index) for e in es)
    assert distractor >= 30                                               # same-colour distractors
    assert len({e.scene.background["kind"] for e in es}) == len(S.BG_KINDS)


def test_train_pairs_are_noisy_at_the_documented_rate():
    es = [S.make_edit(s, "train") for s in range(300)]
    other = np.mean([any("recoloured" in o for o in e.off_target) for e in es])
    tint = np.mean([any("tint" in o for o in e.off_target) for e in es])
    assert abs(other - S.P_OTHER_RECOLOUR) < 0.08
    assert abs(tint - S.P_GLOBAL_TINT) < 0.08
    # a noisy pair changes pixels outside the mask; the clean target does not
    e = next(e for e in es if e.off_target)
    d = np.abs(_arr(e.target) - _arr(e.image)).sum(-1) > 0
    assert (d & ~e.mask).any()
    assert not ((np.abs(_arr(e.clean_target) - _arr(e.image)).sum(-1) > 0) & ~e.mask).any()


def test_nearest_colour_and_metrics():
    for name, rgb in S.COLOURS.items():
        assert S.nearest_colour(rgb) == name
    e = S.make_edit(3, "test")
    inp, tgt = to_float(e.image), to_float(e.clean_target)
    perfect = all_metrics(tgt, inp, tgt, e.mask, e.target_colour)
    assert perfect["l1"] == 0 and perfect["bg_l1"] == 0 and perfect["edit_success"] == 1.0
    assert perfect["bg_psnr"] == pytest.approx(100.0) and perfect["bg_ssim"] == pytest.approx(1.0)
    unchanged = all_metrics(inp, inp, tgt, e.mask, e.target_colour)
    assert unchanged["edit_success"] == 0.0 and unchanged["in_mask_l1"] > 0.05
    assert ssim(inp, inp) == pytest.approx(1.0)
    assert iou(e.mask, e.mask) == 1.0 and iou(e.mask, ~e.mask) == 0.0


def test_caption_pair_swaps_only_the_edited_objects_colour_word():
    article_changes = 0
    for seed in range(200):
        e = S.make_edit(seed, "test")
        src, tgt = S.caption_pair(e)
        assert src == e.caption
        a, b = src.split(), tgt.split()
        assert len(a) == len(b) == len(e.caption_owners)      # a word swap for P2P
        k = [i for i, (w, o) in enumerate(zip(a, e.caption_owners))
             if o == e.object_index and w == e.source_colour]
        assert len(k) == 1 and b[k[0]] == e.target_colour
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        assert diff in ([k[0]], [k[0] - 1, k[0]]), (src, tgt)
        if len(diff) == 2:
            article_changes += 1
        for i, w in enumerate(b[:-1]):                        # articles agree with the next word
            if w in ("a", "an"):
                assert w == ("an" if b[i + 1][0] in "aeiou" else "a"), tgt
    assert article_changes > 0        # "an orange circle" <-> "a green circle" does occur


def test_caption_pair_refuses_a_caption_without_the_colour_word():
    import dataclasses

    e = S.make_edit(0, "test")
    bad = dataclasses.replace(e, source_colour="nonsense")
    with pytest.raises(ValueError, match="does not name object"):
        S.caption_pair(bad)
