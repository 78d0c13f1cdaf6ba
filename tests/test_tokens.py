"""Related/unrelated token roles, offline."""

from __future__ import annotations

import pytest

from lime_edit.tokens import EDIT_VERBS, STOP_WORDS, select_tokens


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
                        penalize_end_token=True)
    assert sel.related == [1, 3, 4]
    assert not sel.keep[0] and not sel.keep[2]         # start token, "the"
    assert not sel.keep[6]                              # "!" punctuation
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


def test_word_lists_are_disjoint_from_content_words():
    for word in ["red", "blue", "circle", "outfit", "big", "small", "left"]:
        assert word not in STOP_WORDS and word not in EDIT_VERBS
    assert {"make", "turn", "change"} <= EDIT_VERBS and {"the", "a", "of", "it"} <= STOP_WORDS
