"""Compare lime-edit's P2P token alignment and word lookup with the official code's.

    python benchmarks/p2p_aligner_check.py --seq-aligner PnPInversion/models/p2p/seq_aligner.py [--pairs 3000]

``--seq-aligner``: the official ``seq_aligner.py`` (cure-lab/PnPInversion's ``models/p2p/`` or
google/prompt-to-prompt's), imported from your checkout at run time (it is not part of lime-edit).
Random caption pairs over the tiny test tokenizer's vocabulary (one seed): for each, the official
``get_mapper`` (refinement) against ``align_tokens(..., mode="refine", aligner="p2p")`` and against
the default ``difflib`` aligner (compared where alpha is 1: which target tokens keep a source map,
and which), and the official ``get_word_inds`` against ``split_word_positions`` for every word of
the target.  Prints the counts of pairs that differ.  CPU only, a few seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import tempfile

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-aligner", required=True, help="path of the official seq_aligner.py")
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    spec = importlib.util.spec_from_file_location("official_seq_aligner", args.seq_aligner)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)

    from lime_edit.p2p_control import align_tokens, split_word_positions
    from lime_edit.testing import tiny_tokenizer

    tok = tiny_tokenizer(tempfile.mkdtemp())
    words = ["a", "red", "circle", "and", "blue", "square", "green", "big", "on", "the", "left"]
    rng = random.Random(args.seed)

    def same(m_ref, a_ref, al) -> bool:
        return torch.equal(a_ref, al.alphas) and torch.equal(m_ref[a_ref == 1], al.mapper[al.alphas == 1])

    p2p_diff = difflib_diff = word_diff = 0
    for _ in range(args.pairs):
        src = " ".join(rng.choice(words) for _ in range(rng.randint(1, 7)))
        tgt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 7)))
        m_ref, a_ref = ref.get_mapper(src, tgt, tok)
        p2p_diff += not same(m_ref, a_ref, align_tokens(tok, src, tgt, mode="refine", aligner="p2p"))
        difflib_diff += not same(m_ref, a_ref, align_tokens(tok, src, tgt, mode="refine"))
        word_diff += any(list(ref.get_word_inds(tgt, w, tok)) != split_word_positions(tok, tgt, w)
                         for w in set(tgt.split(" ")))
    print(f"{args.pairs} pairs: aligner='p2p' differs from the official get_mapper in {p2p_diff}, "
          f"aligner='difflib' in {difflib_diff}; split_word_positions differs from get_word_inds in {word_diff}")
    return 0 if p2p_diff == word_diff == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
