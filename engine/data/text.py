"""Tokenisation, vocabulary and encoding of plain-text language-model corpora.

Conventions (Mikolov's, as for the Penn Treebank files):

- One line of text is one sentence/paragraph. Each non-empty line (one with at least one token)
  is followed by the end-of-sentence token `<eos>`; blank lines add nothing.
- Two tokenisers: ``"whitespace"`` (split on whitespace: for pre-tokenised corpora such as PTB)
  and ``"words"`` (a regex that splits words, numbers and punctuation: for raw text). Both can
  lowercase.
- The vocabulary is built from the training text only. Words are sorted by decreasing count, ties
  broken alphabetically (code point order), so id 0 is the most frequent word and the order is
  deterministic. `<unk>` and `<eos>` are always present and placed by their counts like any other
  word; `<unk>` collects the occurrences of words below `min_count` (or beyond `max_size`), plus
  any literal `<unk>` already in the text (PTB writes rare words as `<unk>`: those map to the unk
  id, they do not become a separate word).
- Encoding maps every out-of-vocabulary word to the unk id.

Streaming: `iter_encoded_chunks` turns lines into int32 NumPy arrays of bounded size, so a corpus
is never held as one Python list of tokens.
"""
from __future__ import annotations

import re
from array import array
from collections import Counter
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

UNK = "<unk>"
EOS = "<eos>"

# "words" tokeniser: literal <unk>/<eos>, abbreviations with inner dots (U.S., a.m.), numbers
# with separators (1,000.50, 3:15, 12%), words with inner hyphens/apostrophes (well-known, don't),
# and a run of one punctuation character ("--", "...") as one token; control characters are dropped.
_WORDS_RE = re.compile(
    r"""
    <unk>|<eos>                        # the special tokens, when the text already has them
  | (?:[^\W\d_]\.){2,}                 # abbreviations: U.S.  a.m.  e.g.
  | \d+(?:[.,:/]\d+)+%?                # numbers with separators: 1,000.50  3:15  1/2
  | \d+%                               # percentages: 12%
  | [^\W_]+(?:['\-][^\W_]+)*           # words (1790s, 2nd too), inner apostrophes or hyphens
  | ([^\w\s\x00-\x1f\x7f])\1*          # a run of one punctuation character (not control)
  | _+                                 # underscores (not punctuation in \\w terms)
    """,
    re.VERBOSE,
)
# Typographic apostrophes and quotes are folded to ASCII by the "words" tokeniser, so that
# "it’s" and "it's" are one word.
_FOLD = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


def whitespace_tokens(line: str) -> List[str]:
    """Split a pre-tokenised line on whitespace."""
    return line.split()


def word_tokens(line: str) -> List[str]:
    """Split raw text into words, numbers and punctuation (see `_WORDS_RE`)."""
    return [m.group(0) for m in _WORDS_RE.finditer(line.translate(_FOLD))]


TOKENIZERS: Dict[str, Callable[[str], List[str]]] = {
    "whitespace": whitespace_tokens,
    "words": word_tokens,
}


def get_tokenizer(tokenizer: str) -> Callable[[str], List[str]]:
    """The tokeniser function for a name in `TOKENIZERS` (ValueError for an unknown name)."""
    try:
        return TOKENIZERS[tokenizer]
    except KeyError:
        raise ValueError(
            f"unknown tokenizer {tokenizer!r}: expected one of {sorted(TOKENIZERS)}"
        ) from None


def tokenize_line(line: str, lowercase: bool = False, tokenizer: str = "whitespace") -> List[str]:
    """The tokens of one line (without the `<eos>` that ends a non-empty line).

    ``tokenizer="whitespace"`` splits on whitespace (pre-tokenised corpora such as PTB);
    ``tokenizer="words"`` splits words and punctuation with a regex (raw text).
    """
    if lowercase:
        line = line.lower()
    return get_tokenizer(tokenizer)(line)


def iter_tokens(lines: Iterable[str], lowercase: bool = False,
                tokenizer: str = "whitespace") -> Iterator[str]:
    """Every token of `lines`, with `<eos>` after each non-empty line."""
    split = get_tokenizer(tokenizer)
    for line in lines:
        tokens = split(line.lower() if lowercase else line)
        if tokens:
            yield from tokens
            yield EOS


def count_tokens(lines: Iterable[str], lowercase: bool = False, tokenizer: str = "whitespace",
                 counter: Optional[Counter] = None) -> Counter:
    """Token counts of `lines` (one `<eos>` per non-empty line), added into `counter`.

    Faster than `Counter(iter_tokens(...))`: counts a line's token list at once.
    """
    counter = Counter() if counter is None else counter
    split = get_tokenizer(tokenizer)
    eos = 0
    for line in lines:
        tokens = split(line.lower() if lowercase else line)
        if tokens:
            counter.update(tokens)
            eos += 1
    if eos:
        counter[EOS] += eos
    return counter


class Vocabulary(Sequence):
    """A frequency-sorted vocabulary: a sequence of words (id -> word) with their counts.

    `words[i]` is the word of id i, `counts[i]` its count in the training text (the `<unk>`
    count includes every word folded into it), `index[word]` its id, `unk_id`/`eos_id` the ids of
    `<unk>`/`<eos>`.
    """

    def __init__(self, words: Sequence[str], counts, unk: str = UNK, eos: str = EOS):
        self.words = list(words)
        self.counts = np.asarray(counts, dtype=np.int64)
        if self.counts.shape != (len(self.words),):
            raise ValueError(f"{len(self.words)} words but counts of shape {self.counts.shape}")
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("vocabulary words are not unique")
        for special in (unk, eos):
            if special not in self.index:
                raise ValueError(f"vocabulary lacks the special token {special!r}")
        self.unk_id = self.index[unk]
        self.eos_id = self.index[eos]

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, i):
        return self.words[i]

    def __contains__(self, word) -> bool:
        return word in self.index

    def __iter__(self):
        return iter(self.words)

    def __repr__(self):
        head = ", ".join(repr(w) for w in self.words[:5])
        return f"Vocabulary({len(self)} words: {head}{', ...' if len(self) > 5 else ''})"

    def lookup(self, word: str) -> int:
        """The id of `word`, or the unk id."""
        return self.index.get(word, self.unk_id)


def vocab_from_counts(counts: Dict[str, int], min_count: int = 1,
                      max_size: Optional[int] = None) -> Vocabulary:
    """The vocabulary of a word -> count mapping (see the module docstring for the rules).

    Words with a count below `min_count` are folded into `<unk>`; with `max_size`, only the
    `max_size - 2` most frequent other words are kept beside `<unk>` and `<eos>`, the rest are
    folded into `<unk>` too.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_size is not None and max_size < 2:
        raise ValueError(f"max_size must be >= 2 (room for {UNK} and {EOS}), got {max_size}")
    unk_count = int(counts.get(UNK, 0))
    eos_count = int(counts.get(EOS, 0))
    regular = [(w, int(c)) for w, c in counts.items() if w not in (UNK, EOS)]
    kept = [(w, c) for w, c in regular if c >= min_count]
    unk_count += sum(c for w, c in regular if c < min_count)
    kept.sort(key=lambda wc: (-wc[1], wc[0]))
    if max_size is not None and len(kept) > max_size - 2:
        unk_count += sum(c for _, c in kept[max_size - 2:])
        kept = kept[:max_size - 2]
    kept += [(UNK, unk_count), (EOS, eos_count)]
    kept.sort(key=lambda wc: (-wc[1], wc[0]))
    return Vocabulary([w for w, _ in kept], [c for _, c in kept])


def build_vocab(token_iter: Iterable[str], min_count: int = 1,
                max_size: Optional[int] = None) -> Vocabulary:
    """The vocabulary of a stream of tokens (include the `<eos>` tokens: see `iter_tokens`).

    Returns a `Vocabulary`: the words sorted by decreasing count, ties alphabetically, with
    `<unk>` and `<eos>` always present.
    """
    return vocab_from_counts(Counter(token_iter), min_count=min_count, max_size=max_size)


def iter_encoded_chunks(lines: Iterable[str], vocab: Vocabulary, lowercase: bool = False,
                        tokenizer: str = "whitespace",
                        chunk_tokens: int = 1 << 20) -> Iterator[np.ndarray]:
    """Encode `lines` into int32 arrays of about `chunk_tokens` ids each (the last may be shorter).

    The concatenation of the chunks is the token stream: each non-empty line's ids then the eos
    id; unknown words get the unk id.
    """
    split = get_tokenizer(tokenizer)
    get = vocab.index.get
    unk, eos = vocab.unk_id, vocab.eos_id
    buf = array("i")
    for line in lines:
        tokens = split(line.lower() if lowercase else line)
        if tokens:
            buf.extend([get(t, unk) for t in tokens])
            buf.append(eos)
            if len(buf) >= chunk_tokens:
                yield np.frombuffer(buf, dtype=np.intc).astype(np.int32)
                buf = array("i")
    if len(buf):
        yield np.frombuffer(buf, dtype=np.intc).astype(np.int32)


def encode(lines: Iterable[str], vocab: Vocabulary, lowercase: bool = False,
           tokenizer: str = "whitespace") -> np.ndarray:
    """The int32 token stream of `lines`: word ids, the eos id after each non-empty line."""
    if not isinstance(vocab, Vocabulary):  # a plain list of words (with <unk> and <eos>)
        vocab = Vocabulary(list(vocab), np.zeros(len(vocab), dtype=np.int64))
    chunks = list(iter_encoded_chunks(lines, vocab, lowercase=lowercase, tokenizer=tokenizer))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
