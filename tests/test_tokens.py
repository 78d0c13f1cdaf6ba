"""Related/unrelated token roles, offline."""

from __future__ import annotations

import pytest

from lime_edit.tokens import STOP_WORDS, select_tokens, verb_words


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from lime_edit.testing import tiny_tokenizer

    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_roles_of_a_plain_instruction(tok):
    sel = select_tokens(tok, "make the red circle blue")
    assert sel.tokens[:7] == ["<|startoftext|>", "make</w>", "the</w>", "red</w>", "circle</w>", "blue</w>",
                              "<|endoftext|>"]
    assert sel.end == 6
    assert sel.related == [3, 4, 5]                    # verb and stop word dropped
    kept = sel.keep.nonzero().flatten().tolist()
    assert kept == [1, 3, 4, 5, 6]                     # verb and end token kept, start/the/padding not
    assert not sel.truncated and sel.has_related


def test_verbs_kept_when_not_dropped_and_padding_options(tok):
    sel = select_tokens(tok, "Turn the square green!", drop_verbs=False, penalize_padding=False,
                        penalize_end_token=True, penalize_punctuation=True)
    assert sel.related == [1, 3, 4]
    assert not sel.keep[0] and not sel.keep[2]         # start token, "the"
    assert not sel.keep[5]                              # "!" punctuation, penalized on request
    assert not sel.keep[sel.end]                        # end token penalized
    assert sel.keep[sel.end + 1:].all()                 # padding kept


def test_words_split_into_several_tokens_are_kept_whole(tok):
    sel = select_tokens(tok, "make the zebra purple")  # "zebra" is not in the tiny vocabulary
    pieces = [sel.tokens[i] for i in sel.related]
    assert "".join(p.replace("</w>", "") for p in pieces) == "zebrapurple"
    assert pieces[-1] == "purple</w>" and len(pieces) > 2


def test_nothing_related_and_truncation(tok):
    assert not select_tokens(tok, "make it so, please").has_related
    sel = select_tokens(tok, " ".join(["red circle"] * 50))
    assert sel.truncated and sel.end == tok.model_max_length - 1 and len(sel.ids) == tok.model_max_length


def test_punctuation_is_kept_for_regularization_but_never_localizes(tok):
    sel = select_tokens(tok, "Turn the square green!")
    assert sel.tokens[5] == "!</w>"
    assert sel.keep[5] and 5 not in sel.related and 5 not in sel.content   # reference: kept
    assert sel.related == [3, 4] and sel.verbs == [1]


def test_stop_words_are_nltks_english_list():
    assert len(STOP_WORDS) == 198
    assert {"the", "a", "of", "it", "don't", "isn't", "i'm", "they've", "don", "t", "s"} <= STOP_WORDS
    for word in ["red", "blue", "circle", "outfit", "big", "small", "left", "please", "one", "color"]:
        assert word not in STOP_WORDS


@pytest.mark.parametrize("text, verbs", [
    ("color the car red", ["color"]),
    ("change the color of the tulips to yellow", ["change"]),         # "color" later is a noun
    ("the car should be red", []),
    ("a red and blue car", []),                                       # "blue" has no object after it
    ("make the sky blue and add a moon", ["make", "add"]),
    ("make the sky blue , then paint the moon", ["make", "paint"]),
    ("could you please make it red", ["could", "you", "please", "make"]),
    ("make it red , please", ["make", "please"]),
    ("make the circle purple please", ["make", "please"]),
    ('" make the circle purple "', ["make"]),                       # a quoted instruction
    ("give the big purple square a red colour", ["give"]),
])
def test_verbs_are_told_by_position_and_form(text, verbs):
    words = text.split()
    assert [words[i] for i in verb_words(words)] == verbs


def test_a_later_verb_looking_word_is_localized(tok):
    sel = select_tokens(tok, "change the colour of the square to green")
    words = [sel.tokens[i].replace("</w>", "") for i in sel.related]
    assert words == ["colour", "square", "green"] and sel.tokens[sel.verbs[0]] == "change</w>"
