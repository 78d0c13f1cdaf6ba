"""Which prompt positions are *related* to the edit and which are not (offline).

Token positions index the tokenizer's padded ids: 0 is the start token, then the
instruction's tokens, then the end token, then padding up to
``tokenizer.model_max_length`` (77 for CLIP).  CLIP's BPE marks the last piece
of every word with ``</w>``, so tokens are grouped back into words before a word
list is consulted: a word split into several tokens is kept or dropped whole.
CLIP splits contractions into two words ("don't" -> "don", "'t"); NLTK's list
holds both halves ("don", "t"), so, with the apostrophe stripped, both are stop
words.

What the LIME authors' code does (github enisimsar/LIME, ``utils.py``), and what
this module does by default:

* **Stop words** - :data:`STOP_WORDS` is NLTK's English list (198 words,
  shipped in ``lime_edit/data/stopwords_english.txt``; nothing is downloaded).
  The reference compares each decoded *token* with it, so it keeps the "'t" of
  "don't"; here the apostrophe is stripped first ("t" is on the list).
* **Regularization** (the edit pass): *unrelated* = start token + stop words +
  every padding position; punctuation, the end token and verbs are kept, as in
  the reference's ``get_effective_tokens``.  ``penalize_punctuation``,
  ``penalize_end_token`` and ``penalize_padding`` change that (CLIP's causal text
  encoder lets padding positions carry the whole sentence).
* **Localization** (which tokens' attention points at the RoI): content words
  without punctuation and, with ``drop_verbs``, without the instruction's verbs.
  The reference finds verbs with NLTK's part-of-speech tagger over the decoded
  tokens (so it also drops whatever the tagger calls a verb, e.g. "yellow" in
  "change the color of the tulips to yellow", and keeps the end token, which it
  usually tags as a noun; lime-edit's pipeline adds the end token when
  ``LimeConfig.localize_end_token``, the default).  Here a verb is told by
  position and form, offline and deterministically, see :func:`verb_words`.
"""

from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass, field
from importlib import resources

import torch


def _load_words(name: str) -> frozenset[str]:
    text = resources.files("lime_edit").joinpath("data", name).read_text(encoding="utf-8")
    return frozenset(w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#"))


STOP_WORDS: frozenset[str] = _load_words("stopwords_english.txt")

#: Words that may come before an instruction's verb at the start of a clause
#: ("please make ...", "could you turn ...", "let's add ...", "don't change ...");
#: they are dropped from the localization tokens with the verb.
LEAD_IN_WORDS: frozenset[str] = frozenset("""
please kindly now then also just so and can could would will you let us s do not don t
""".split())

#: Politeness words, never the target of an edit, wherever they stand ("make it red please").
COURTESY_WORDS: frozenset[str] = frozenset({"please", "kindly"})

#: Words that show an object follows: a clause-starting word followed by one of
#: these is taken for a verb ("... and *add* a moon"), otherwise for a noun or
#: adjective ("a red and *blue* car").
OBJECT_STARTS: frozenset[str] = frozenset("""
a an the this that these those my your his her its our their it them him me us some every each all both
""".split())

_CLAUSE_PUNCT = set(",;:.!?")
_CLAUSE_WORDS = frozenset({"and", "then"})
_PUNCT = set(string.punctuation)


def text_problem(text: object) -> str | None:
    """Why ``text`` cannot be a prompt, or None: not a string, blank (``"empty"``), or not valid Unicode
    (lone surrogates: bytes that were not UTF-8, as a shell passes a Latin-1 argument or
    JSON carries a ``\\ud800`` escape; the tokenizers would fail on them with a TypeError)."""
    if not isinstance(text, str):
        return f"expected a string, got {type(text).__name__}"
    if not text.strip():
        return "empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"not valid text (character {err.start + 1} is an undecodable byte or a lone surrogate; "
                f"check the encoding of the terminal or file it came from)")
    return None


def is_punctuation(word: str) -> bool:
    return bool(word) and all(ch in _PUNCT or unicodedata.category(ch)[0] in "PS" for ch in word)


def _normalise(word: str) -> str:
    return word.lower().strip("'\"\u2019")


def verb_words(words: list[str]) -> list[int]:
    """Indices of the words (normalised, in order) that are taken for verbs.

    An imperative instruction starts with its verb: the first word of the
    instruction, after lead-in words (:data:`LEAD_IN_WORDS`: "please", "could
    you", "let's"), is its verb unless it is a stop word ("the car should be
    red" has none).  A later clause - after "," ";" ":" "." "!" "?" or "and" /
    "then" - starts with a verb only when the next word starts an object
    (:data:`OBJECT_STARTS`: "... and add *a* moon"), so "a red and blue car"
    keeps "blue".  Lead-in words at the start of a clause are returned too,
    with or without a verb after them, and :data:`COURTESY_WORDS` anywhere
    ("make it red please").  Everywhere else a word is not a verb, so the same word is a
    noun later on: "color the car red" drops "color", "change the color of the
    tulips" keeps it.
    """
    verbs: list[int] = []
    n = len(words)
    i, first = 0, True
    while i < n:
        prev = words[i - 1] if i else ""
        if not (first or prev in _CLAUSE_WORDS or (prev and set(prev) <= _CLAUSE_PUNCT)):
            i += 1
            continue
        j = i
        while j < n and (words[j] in LEAD_IN_WORDS or is_punctuation(words[j]) or not words[j]):
            j += 1                                  # lead-ins, opening quotes or brackets
        lead = [k for k in range(i, j) if words[k] in LEAD_IN_WORDS and words[k] not in _CLAUSE_WORDS]
        if j < n and words[j] and words[j] not in STOP_WORDS and not is_punctuation(words[j]):
            if first or (j + 1 < n and words[j + 1] in OBJECT_STARTS):
                lead.append(j)
                j += 1
        verbs.extend(lead)
        first = False
        i = max(j, i + 1)
    verbs.extend(k for k, w in enumerate(words) if w in COURTESY_WORDS)
    return sorted(set(verbs))


@dataclass(frozen=True)
class TokenSelection:
    """Token roles for one prompt.

    ids: the padded input ids (length ``max_length``); position 0 = start token.
    tokens: the token strings (same length).
    end: position of the end token (after truncation).
    related: positions pointing at the RoI (localization): content words,
        without verbs when ``drop_verbs``.
    keep: ``(max_length,)`` bool, True = a token regularization leaves alone
        (content words incl. verbs, punctuation unless penalized, the end token
        unless penalized).
    truncated: the instruction was longer than the text encoder's limit.
    content: positions of the instruction's content words, verbs included
        (no stop word, no punctuation, no special token).
    verbs: the positions of ``content`` taken for verbs (see :func:`verb_words`),
        whether or not they were dropped from ``related``.
    words: the content words as ``(text, positions)``, in order (``content`` grouped
        by word): a word the tokenizer spells with several tokens has several positions.
    """

    ids: list[int]
    tokens: list[str]
    end: int
    related: list[int]
    keep: torch.Tensor
    truncated: bool
    content: list[int] = field(default_factory=list)
    verbs: list[int] = field(default_factory=list)
    words: list[tuple[str, list[int]]] = field(default_factory=list)

    @property
    def has_related(self) -> bool:
        return len(self.related) > 0


def unknown_words(sel: TokenSelection, unk_token_id: int | None = None) -> list[tuple[str, list[str]]]:
    """The content words of ``sel`` (verbs included: the words LIME keeps) that the
    tokenizer's vocabulary does not hold as one token: spelled by several tokens (a
    word the model never saw whole, e.g. "outfit" -> ``o u t f i t`` in the demo
    model's 671-token vocabulary) or by ``unk_token_id``.  Each word once (case
    ignored), in order, with its token pieces (CLIP's ``</w>`` and SentencePiece's
    word mark removed).  A real CLIP vocabulary splits rare words too ("xylophonist" ->
    ``xy lo ph onist``): the model may still know such a word from its pieces, which
    is why this is a warning, never a refusal."""
    out: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for text, positions in sel.words:
        split = len(positions) > 1
        unk = unk_token_id is not None and any(sel.ids[p] == unk_token_id for p in positions)
        key = _normalise(text)
        if (split or unk) and key not in seen:
            seen.add(key)
            out.append((text, [sel.tokens[p].replace("</w>", "").replace("\u2581", "") for p in positions]))
    return out


def select_tokens(tokenizer, prompt: str, *, drop_verbs: bool = True, penalize_padding: bool = True,
                  penalize_end_token: bool = False, penalize_punctuation: bool = False) -> TokenSelection:
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

    return _classify(words, list(ids), toks, end, max_len, truncated, drop_verbs=drop_verbs,
                     penalize_padding=penalize_padding, penalize_end_token=penalize_end_token,
                     penalize_punctuation=penalize_punctuation)


def _classify(words: list[tuple[str, list[int]]], ids: list[int], toks: list[str], end: int, max_len: int,
              truncated: bool, *, drop_verbs: bool, penalize_padding: bool, penalize_end_token: bool,
              penalize_punctuation: bool) -> TokenSelection:
    """Token roles from the prompt's words (``(text, positions)``, in order) and the end
    token's position (padding follows it); shared by every tokenizer layout."""
    norm = [_normalise(w) for w, _ in words]
    verb_idx = set(verb_words(norm))
    related: list[int] = []
    content: list[int] = []
    verbs: list[int] = []
    content_words: list[tuple[str, list[int]]] = []
    keep = torch.zeros(max_len, dtype=torch.bool)
    for k, ((raw, positions), w) in enumerate(zip(words, norm)):
        if is_punctuation(raw):
            keep[positions] = not penalize_punctuation
            continue
        if not w or w in STOP_WORDS:
            continue
        keep[positions] = True
        content.extend(positions)
        content_words.append((raw, list(positions)))
        if k in verb_idx:
            verbs.extend(positions)
            if drop_verbs:
                continue
        related.extend(positions)
    if not penalize_end_token:
        keep[end] = True
    if not penalize_padding:
        keep[end + 1:] = True
    return TokenSelection(ids=ids, tokens=toks, end=end, related=related, keep=keep,
                          truncated=truncated, content=content, verbs=verbs, words=content_words)


def _marked_words(pieces: list[str], texts: list[str], positions, mark: str) -> list[tuple[str, list[int]]]:
    """Group ``positions`` into words for a tokenizer that marks a word's first piece with
    ``mark`` (SentencePiece's ``▁``, byte-level BPE's ``Ġ``); ``texts`` are the pieces'
    texts without it.  A piece that is punctuation only is a word of its own, as CLIP's
    pre-tokenizer splits it ("red," -> "red", ",")."""
    words: list[tuple[str, list[int]]] = []
    for pos in positions:
        piece = texts[pos]
        if pieces[pos].startswith(mark) or not words or is_punctuation(piece) or is_punctuation(words[-1][0]):
            words.append((piece, [pos]))
        else:
            words[-1] = (words[-1][0] + piece, words[-1][1] + [pos])
    return words


def select_tokens_by_words(tokenizer, prompt: str, max_length: int, *, drop_verbs: bool = True,
                           penalize_padding: bool = True, penalize_end_token: bool = False,
                           penalize_punctuation: bool = False) -> TokenSelection:
    """Token roles for a tokenizer without a start token that pads to ``max_length``
    after its end token (T5's SentencePiece, as FLUX encodes prompts): the words come
    from SentencePiece's word-start mark, and a piece that is punctuation only is a
    word of its own ("red," -> "red", ","), as CLIP's pre-tokenizer splits it.
    Positions: the instruction's pieces from 0, then the end token, then padding;
    ``tokens`` are the pieces without SentencePiece's word-start mark."""
    enc = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True)
    ids = list(enc.input_ids)
    full = tokenizer(prompt, add_special_tokens=False).input_ids
    n = min(len(full), max_length - 1)
    truncated = len(full) > max_length - 1
    end = n
    pieces = tokenizer.convert_ids_to_tokens(ids)
    toks = [t.replace("\u2581", "") for t in pieces]
    words = _marked_words(pieces, toks, range(end), "\u2581")
    return _classify(words, ids, toks, end, max_length, truncated, drop_verbs=drop_verbs,
                     penalize_padding=penalize_padding, penalize_end_token=penalize_end_token,
                     penalize_punctuation=penalize_punctuation)


def select_tokens_in_span(tokenizer, ids: list[int], start: int, end: int, *, drop_verbs: bool = True,
                          penalize_padding: bool = True, penalize_end_token: bool = False,
                          penalize_punctuation: bool = False) -> TokenSelection:
    """Token roles for a chat-template text stream (a multimodal LLM as text encoder:
    Qwen2.5-VL for Qwen-Image-Edit) in which the instruction is ``ids[start:end]`` and
    ``ids[end]`` is its end-of-turn token.  Everything before ``start`` (the template,
    the input image's vision tokens) is neither related nor kept; what follows ``end``
    (the chat scaffolding, then a padded batch's padding) counts as padding.  Words come
    from byte-level BPE's leading-space mark (``Ġ``); a piece that is punctuation only
    is a word of its own, as for CLIP.  ``tokens`` are the decoded pieces."""
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    toks = [tokenizer.convert_tokens_to_string([p]) for p in pieces]
    words = _marked_words(pieces, [t.strip() for t in toks], range(start, end), "\u0120")
    return _classify(words, list(ids), [t.strip() for t in toks], end, len(ids), False,
                     drop_verbs=drop_verbs, penalize_padding=penalize_padding,
                     penalize_end_token=penalize_end_token, penalize_punctuation=penalize_punctuation)


def _decode_bytes(tokenizer, text: str) -> str:
    """Turn CLIP's byte-level stand-in characters back into text when possible."""
    try:
        return tokenizer.convert_tokens_to_string([text]).strip()
    except Exception:  # noqa: BLE001 - fall back to the raw piece for odd tokenizers
        return text
