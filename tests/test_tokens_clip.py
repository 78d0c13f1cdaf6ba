"""Token roles under CLIP's real BPE vocabulary (OpenAI's merges file, tests/data/README.md).

The tiny test vocabulary spells every word as one token; real prompts meet CLIP's
49,408-token BPE: words split into several pieces, contractions split at the
apostrophe, punctuation as separate tokens, and the 77-token limit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lime_edit.tokens import select_tokens

BPE = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from lime_edit.testing import clip_tokenizer_from_bpe

    return clip_tokenizer_from_bpe(tmp_path_factory.mktemp("clip"), BPE)


def _words(sel, positions):
    return [sel.tokens[i] for i in positions]


def test_the_vocabulary_is_clips(clip):
    assert len(clip) == 49408
    # CLIP's ids for a well-known prompt (start 49406, end 49407)
    assert clip("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip.pad_token_id == 49407          # SD's tokenizer pads with the end token


def test_plain_instruction(clip):
    sel = select_tokens(clip, "make her outfit black")
    assert sel.tokens[:6] == ["<|startoftext|>", "make</w>", "her</w>", "outfit</w>", "black</w>",
                              "<|endoftext|>"]
    assert sel.end == 5 and _words(sel, sel.related) == ["outfit</w>", "black</w>"]
    assert sel.verbs == [1]
    assert sel.keep.nonzero().flatten().tolist() == [1, 3, 4, 5]   # reference's effective tokens
    assert len(sel.ids) == 77 and sel.ids[6:] == [49407] * 71


def test_multi_token_words_are_kept_whole(clip):
    sel = select_tokens(clip, "make the xylophonist bluish")
    assert sel.tokens[3:9] == ["xy", "lo", "ph", "onist</w>", "blu", "ish</w>"]
    assert sel.related == [3, 4, 5, 6, 7, 8]
    sel = select_tokens(clip, "put a snorkelmask on the otter")
    assert _words(sel, sel.related) == ["snorkel", "mask</w>", "otter</w>"] and sel.verbs == [1]


def test_punctuation_kept_by_default_penalized_on_request(clip):
    sel = select_tokens(clip, "turn the lamp-post into a giraffe!")
    toks = sel.tokens
    dash, bang = toks.index("-</w>"), toks.index("!</w>")
    assert _words(sel, sel.related) == ["lamp</w>", "post</w>", "giraffe</w>"]
    assert sel.keep[dash] and sel.keep[bang] and dash not in sel.related
    pen = select_tokens(clip, "turn the lamp-post into a giraffe!", penalize_punctuation=True)
    assert not pen.keep[dash] and not pen.keep[bang]
    assert pen.related == sel.related and pen.keep[sel.end]


def test_contractions_split_by_clip_are_stop_words(clip):
    sel = select_tokens(clip, "don't change the cat's hat; it's too small, isn't it?")
    toks = sel.tokens
    assert toks[1:3] == ["don</w>", "'t</w>"] and "'s</w>" in toks and "isn</w>" in toks
    for piece in ("don</w>", "'t</w>", "'s</w>", "isn</w>"):
        assert not any(sel.keep[i] for i, t in enumerate(toks) if t == piece), piece
    assert _words(sel, sel.related) == ["cat</w>", "hat</w>", "small</w>"]
    assert _words(sel, sel.verbs) == ["change</w>"]          # "don't" leads into the verb


def test_a_later_verb_looking_word_is_a_noun(clip):
    sel = select_tokens(clip, "change the color of the tulips to yellow")
    assert _words(sel, sel.related) == ["color</w>", "tulips</w>", "yellow</w>"]
    sel = select_tokens(clip, "color the car red")
    assert _words(sel, sel.related) == ["car</w>", "red</w>"] and _words(sel, sel.verbs) == ["color</w>"]


def test_end_token_roles(clip):
    sel = select_tokens(clip, "make the sky blue and add a moon.")
    assert sel.tokens[sel.end] == "<|endoftext|>" and sel.end not in sel.related
    assert sel.keep[sel.end] and not sel.keep[sel.end + 1]
    assert _words(sel, sel.related) == ["sky</w>", "blue</w>", "moon</w>"]
    pen = select_tokens(clip, "make the sky blue", penalize_end_token=True)
    assert pen.tokens[pen.end] == "<|endoftext|>" and pen.end == 5 and not pen.keep[pen.end]


def test_near_the_77_token_limit(clip):
    base = "make the red car blue"                          # 5 tokens
    fits = base + " and the sky green" * 17 + " at night"  # 5 + 68 + 2 = 75 tokens: fits exactly
    sel = select_tokens(clip, fits)
    assert not sel.truncated and sel.end == 76 and sel.tokens[76] == "<|endoftext|>"
    assert sel.tokens[75] == "night</w>" and 75 in sel.related and sel.keep[76]
    sel = select_tokens(clip, fits + " then")
    assert sel.truncated and sel.end == 76 and sel.tokens[76] == "<|endoftext|>" and sel.keep[76]
    assert sel.tokens[75] == "night</w>" and len(sel.ids) == 77
    # a multi-token word cut by the limit keeps the pieces that fit, grouped as one word
    cut = select_tokens(clip, base + " and the sky green" * 17 + " xylophonist")
    assert cut.truncated and cut.tokens[74:76] == ["xy", "lo"] and cut.related[-2:] == [74, 75]


def test_words_split_by_the_vocabulary_are_named_once_with_their_pieces(clip):
    from lime_edit.tokens import unknown_words

    assert unknown_words(select_tokens(clip, "make her outfit black")) == []        # CLIP knows them whole
    sel = select_tokens(clip, "make the xylophonist bluish, and the Xylophonist too")
    assert unknown_words(sel) == [("xylophonist", ["xy", "lo", "ph", "onist"]), ("bluish", ["blu", "ish"])]
    # the words LIME keeps, verbs included (a verb the model does not know matters to the edit too)
    sel = select_tokens(clip, "xylophonize the car")
    assert sel.verbs and [w for w, _ in unknown_words(sel)] == ["xylophonize"]
    # stop words and punctuation are never named, whatever their spelling
    assert unknown_words(select_tokens(clip, "make the car red!!!")) == []


def test_a_word_read_as_the_unknown_token_is_named(clip):
    from lime_edit.tokens import unknown_words

    sel = select_tokens(clip, "make the car red")
    car = sel.tokens.index("car</w>")
    assert unknown_words(sel, unk_token_id=sel.ids[car]) == [("car", ["car"])]


def test_the_demo_models_vocabulary_spells_unknown_words_in_letters():
    """The bundled demo editor's tokenizer knows only its scenes' words: "outfit" is six letters."""
    pytest.importorskip("lime_edit.demo")
    from transformers import AutoTokenizer

    from lime_edit.demo import bundled_model_path
    from lime_edit.tokens import unknown_words

    tok = AutoTokenizer.from_pretrained(str(bundled_model_path() / "tokenizer"))
    sel = select_tokens(tok, "make her outfit black")
    assert unknown_words(sel, tok.unk_token_id) == [("outfit", ["o", "u", "t", "f", "i", "t"])]
    assert unknown_words(select_tokens(tok, "the blue diamond should be orange"), tok.unk_token_id) == []
