"""Which prompt positions are *related* to the edit and which are not (offline).

Token positions index the tokenizer's padded ids: 0 is the start token, then the
instruction's tokens, then the end token, then padding up to
``tokenizer.model_max_length`` (77 for CLIP).  CLIP's BPE marks the last piece
of every word with ``</w>``, so tokens are grouped back into words before a word
list is consulted: a word split into several tokens is kept or dropped whole.

Word lists (ours, fixed, lower-case; nothing is downloaded at run time):

* :data:`STOP_WORDS` - English function words (articles, pronouns, auxiliaries,
  prepositions, conjunctions, quantifiers).  Colour and size words are NOT stop
  words here: "make it *big*" needs them.
* :data:`EDIT_VERBS` - verbs that introduce an edit rather than name its target
  ("make", "turn", "change", ...).  The reference code drops verbs (found by a
  part-of-speech tagger) from the tokens that *localize* the edit; a fixed list
  does the same offline and deterministically.  Verbs are kept during
  regularization, as in the reference code.
* punctuation - any word made only of punctuation/symbol characters.

Regularization, reference behaviour: *unrelated* = start token + stop words +
punctuation + every padding position; the end token and verbs are kept.  Both
the padding and end-token choices are settings (``penalize_padding``,
``penalize_end_token``) because CLIP's causal text encoder lets padding
positions carry the whole sentence.
"""

from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass

import torch

STOP_WORDS: frozenset[str] = frozenset("""
a an the this that these those there here it its it's itself they them their theirs themselves
i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself one ones someone something anything everything
is am are was were be been being do does did doing done have has had having will would shall
should can could may might must let's
of to in on at by for from with without into onto upon over under above below between among
through during before after about against along around across behind beside besides beyond
near toward towards within up down out off again further then once
and or but nor so yet if than as because while until although though whether either neither
not no only just very too also more most less least much many some any all each every both
few other such same own
what which who whom whose where when why how
please now
""".split())

EDIT_VERBS: frozenset[str] = frozenset("""
make makes made making turn turns turned turning change changes changed changing
convert converts converted transform transforms transformed replace replaces replaced
swap swaps swapped switch switches put puts putting place places placed set sets
add adds added adding remove removes removed removing delete deletes deleted erase erases
get gets got give gives gave let lets have become becomes became show shows showing
paint paints painted colour colours coloured color colors colored recolor recolour dye dyes
draw draws drew render renders edit edits modify modifies alter alters
""".split())

_PUNCT = set(string.punctuation)


def is_punctuation(word: str) -> bool:
    return bool(word) and all(ch in _PUNCT or unicodedata.category(ch)[0] in "PS" for ch in word)


def _normalise(word: str) -> str:
    return word.lower().strip("'\"")


@dataclass(frozen=True)
class TokenSelection:
    """Token roles for one prompt.

    ids: the padded input ids (length ``max_length``); position 0 = start token.
    tokens: the token strings (same length).
    end: position of the end token (after truncation).
    related: positions pointing at the RoI (localization): content words,
        without verbs when ``drop_verbs``.
    keep: ``(max_length,)`` bool, True = a token regularization leaves alone
        (content words incl. verbs, and the end token unless penalized).
    truncated: the instruction was longer than the text encoder's limit.
    """

    ids: list[int]
    tokens: list[str]
    end: int
    related: list[int]
    keep: torch.Tensor
    truncated: bool

    @property
    def has_related(self) -> bool:
        return len(self.related) > 0


def select_tokens(tokenizer, prompt: str, *, drop_verbs: bool = True,
                  penalize_padding: bool = True, penalize_end_token: bool = False) -> TokenSelection:
    """Classify every position of ``prompt``'s padded ids (see module docstring)."""
    max_len = tokenizer.model_max_length
    full = tokenizer(prompt, add_special_tokens=False).input_ids
    truncated = len(full) > max_len - 2
    ids = tokenizer(prompt, padding="max_length", max_length=max_len, truncation=True).input_ids
    toks = tokenizer.convert_ids_to_tokens(ids)
    n_words_tokens = min(len(full), max_len - 2)
    end = 1 + n_words_tokens

    # Group positions 1..end-1 into words (a word ends at a token with '</w>').
    words: list[tuple[str, list[int]]] = []
    cur_pos: list[int] = []
    cur_txt = ""
    for pos in range(1, end):
        t = toks[pos]
        cur_pos.append(pos)
        cur_txt += t.replace("</w>", "")
        if t.endswith("</w>") or pos == end - 1:
            words.append((_decode_bytes(tokenizer, cur_txt), cur_pos))
            cur_pos, cur_txt = [], ""

    related: list[int] = []
    keep = torch.zeros(max_len, dtype=torch.bool)
    for word, positions in words:
        w = _normalise(word)
        if not w or w in STOP_WORDS or is_punctuation(w):
            continue
        keep[positions] = True
        if drop_verbs and w in EDIT_VERBS:
            continue
        related.extend(positions)
    if not penalize_end_token:
        keep[end] = True
    if not penalize_padding:
        keep[end + 1:] = True
    return TokenSelection(ids=list(ids), tokens=toks, end=end, related=related, keep=keep,
                          truncated=truncated)


def _decode_bytes(tokenizer, text: str) -> str:
    """Turn CLIP's byte-level stand-in characters back into text when possible."""
    try:
        return tokenizer.convert_tokens_to_string([text]).strip()
    except Exception:  # noqa: BLE001 - fall back to the raw piece for odd tokenizers
        return text
