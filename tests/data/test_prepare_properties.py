"""Property-based tests of the text and PTB converters (engine/data/prepare.py) on random,
truncated and adversarial text: a conversion either writes a corpus whose token streams are
exactly the tokeniser's output mapped through the training vocabulary, or fails with a one-line
DataError naming the file; never a partial output, a temporary file left behind, or an older
output overwritten."""
import gzip
import os
import tempfile
from collections import Counter

import numpy
from hypothesis import given
from hypothesis import strategies as st

from adversarial import BUDGET, apply_mutations, assert_clean_error, assert_no_debris, mutations
from engine.data.hdf5_schema import open_lm_corpus
from engine.data.prepare import prepare_ptb, prepare_text, unk_warning
from engine.data.text import EOS, UNK, iter_tokens

#: words, punctuation, the special tokens, case, non-ASCII letters, odd whitespace and control
#: characters
PIECES = ["the", "The", "THE", "cat", "cats", "a", "U.S.", "1,000.5", "12%", "don't", "well-known",
          ".", ",", "--", "...", "!", "\"", "\u2019", "<unk>", "<eos>", "<UNK>", "caf\u00e9",
          "\u0130stanbul", "stra\u00dfe", "\u4e2d\u6587", "\U0001f600", "_", "\x1b", "\x7f",
          "\u2028", "\u00a0", "\t", " ", "  ", "\r"]
LINE = st.lists(st.sampled_from(PIECES), max_size=12).map(" ".join)
TEXT = st.lists(LINE, min_size=0, max_size=25).map(lambda lines: "\n".join(lines) + "\n")
OPTIONS = st.fixed_dictionaries({
    "tokenizer": st.sampled_from(["words", "whitespace"]),
    "lowercase": st.booleans(),
    "min_count": st.integers(1, 4),
    "max_vocab": st.one_of(st.none(), st.integers(2, 12)),
})


def _lines(data: bytes):
    """The lines the converter reads: split at \\n (a first-line BOM dropped)."""
    text = data.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def _check_corpus(out, splits_lines, options, summary):
    """The file validates and holds exactly the tokens of each split's lines, mapped through
    the vocabulary of the training lines; counts, unk rates and the warning agree."""
    tok = dict(tokenizer=options["tokenizer"], lowercase=options["lowercase"])
    with open_lm_corpus(out) as c:
        assert c.vocab_size == summary.vocab_size
        index = {w: i for i, w in enumerate(c.vocab)}
        train_counts = Counter(iter_tokens(splits_lines["train"], **tok))
        kept = {w for w, n in train_counts.items() if n >= options["min_count"]} - {UNK, EOS}
        assert set(c.vocab) - {UNK, EOS} <= kept
        if options["max_vocab"] is None:
            assert set(c.vocab) - {UNK, EOS} == kept
        else:
            assert c.vocab_size <= max(options["max_vocab"], 2)
        for split, lines in splits_lines.items():
            expected = [index.get(w, c.unk_id) for w in iter_tokens(lines, **tok)]
            got = c.tokens(split)
            assert got.tolist() == expected
            assert summary.split_tokens[split] == len(expected)
            assert numpy.isclose(summary.unk_rate[split], numpy.mean(got == c.unk_id))
        numpy.testing.assert_array_equal(numpy.bincount(c.tokens("train"), minlength=c.vocab_size),
                                         c.counts)
        assert (c.counts[:-1] >= c.counts[1:]).all()
    assert summary.warnings == ([w] if (w := unk_warning(summary.unk_rate, options["min_count"]))
                                else [])


def _prepare_or_fail_cleanly(tmp, data: bytes, options, gz=False, existing=False):
    name = "c.txt.gz" if gz else "c.txt"
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(gzip.compress(data, mtime=0) if gz else data)
    out = os.path.join(tmp, "out.h5")
    if existing:
        with open(out, "wb") as f:
            f.write(b"older output")
    try:
        summary = prepare_text(path, test=path, output=out, valid_fraction=0.2, **options)
    except Exception as e:                  # noqa: BLE001 (the property: only DataError)
        assert_clean_error(e, path)
        if existing:
            assert open(out, "rb").read() == b"older output"
        else:
            assert not os.path.exists(out)
        summary = None
    assert_no_debris(tmp, [name] + (["out.h5"] if os.path.exists(out) else []))
    return path, out, summary


@BUDGET
@given(TEXT, OPTIONS, st.booleans())
def test_random_text_round_trips(text, options, gz):
    data = text.encode("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        _, out, summary = _prepare_or_fail_cleanly(tmp, data, options, gz=gz)
        if summary is None:
            return                            # too few lines, or no token in a split
        lines = _lines(data)
        n_valid = max(1, int(round(len(lines) * 0.2)))
        _check_corpus(out, {"train": lines[:len(lines) - n_valid],
                            "valid": lines[len(lines) - n_valid:], "test": lines}, options,
                      summary)


@BUDGET
@given(TEXT, OPTIONS, mutations(), st.booleans(), st.booleans())
def test_damaged_text_converts_or_fails_cleanly(text, options, edits, gz, existing):
    """Bad UTF-8, NUL bytes, truncation (of the text or of its gzip stream)."""
    data = text.encode("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        if gz:                                # damage the compressed stream itself
            path = os.path.join(tmp, "c.txt.gz")
            with open(path, "wb") as f:
                f.write(apply_mutations(gzip.compress(data, mtime=0), edits))
            out = os.path.join(tmp, "out.h5")
            try:
                prepare_text(path, output=out, valid_fraction=0.2, **options)
            except Exception as e:            # noqa: BLE001
                assert_clean_error(e, path)
            assert_no_debris(tmp, ["c.txt.gz"] + (["out.h5"] if os.path.exists(out) else []))
        else:
            _prepare_or_fail_cleanly(tmp, apply_mutations(data, edits), options,
                                     existing=existing)


@BUDGET
@given(st.binary(max_size=300), OPTIONS)
def test_random_bytes_convert_or_fail_cleanly(data, options):
    with tempfile.TemporaryDirectory() as tmp:
        _prepare_or_fail_cleanly(tmp, data, options)


@BUDGET
@given(st.lists(TEXT, min_size=3, max_size=3), st.lists(mutations(), min_size=3, max_size=3),
       st.lists(st.booleans(), min_size=3, max_size=3))
def test_ptb_folders_convert_or_fail_cleanly(texts, edits, damaged):
    """prepare_ptb on three files, some damaged: a corpus that round-trips, or a clean error."""
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"ptb.{s}.txt" for s in ("train", "valid", "test")]
        raw = {}
        for name, text, e, bad in zip(names, texts, edits, damaged):
            raw[name] = apply_mutations(text.encode(), e) if bad else text.encode()
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(raw[name])
        out = os.path.join(tmp, "ptb.h5")
        try:
            summary = prepare_ptb(tmp, out)
        except Exception as e:                # noqa: BLE001
            assert_clean_error(e)
            assert any(n in str(e) for n in names), str(e)
            assert_no_debris(tmp, names)
            return
        options = dict(tokenizer="whitespace", lowercase=False, min_count=1, max_vocab=None)
        _check_corpus(out, {s: _lines(raw[f"ptb.{s}.txt"]) for s in ("train", "valid", "test")},
                      options, summary)
        assert_no_debris(tmp, names + ["ptb.h5"])
