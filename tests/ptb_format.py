"""A small corpus in the Penn Treebank layout of Mikolov's preprocessing, written by the tests
that used to need the real PTB: `ptb.{train,valid,test}.txt`, one sentence per line, each line
opening with a space and ending with " \\n", rare words already `<unk>`, numbers `N`.

Words are drawn from a Zipf distribution over a fixed list whose most frequent entry is "the"
(as in PTB), so the vocabulary order and counts are known in advance:
`write_ptb_like(folder)` returns the expected tokens per split (eos included) and the train
word counts.
"""
from __future__ import annotations

from collections import Counter

import numpy

WORDS = ["the", "<unk>", "N", "of", "to", "a", "in", "and", "'s", "for", "that", "$", "is"] + [
    f"w{i}" for i in range(287)]


def write_ptb_like(folder, lines=(2000, 150, 170), seed=0):
    """Write the three files; -> (tokens per split with one <eos> per line, train Counter)."""
    rng = numpy.random.default_rng(seed)
    p = 1.0 / numpy.arange(1, len(WORDS) + 1)
    p /= p.sum()
    tokens, train_counts = {}, Counter()
    for split, n_lines in zip(("train", "valid", "test"), lines):
        text, n_tokens = [], 0
        for _ in range(n_lines):
            words = [WORDS[i] for i in rng.choice(len(WORDS), size=rng.integers(1, 40), p=p)]
            text.append(" " + " ".join(words) + " \n")
            n_tokens += len(words) + 1
            if split == "train":
                train_counts.update(words)
        (folder / f"ptb.{split}.txt").write_text("".join(text), encoding="utf-8")
        tokens[split] = n_tokens
    return tokens, train_counts
