"""Text-corpus converters (engine/data/prepare.py), on small files, a PTB-layout corpus written
here, and the shipped SOTU data."""
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from engine.data import prepare
from ptb_format import write_ptb_like
from engine.data.errors import DataError
from engine.data.hdf5_schema import open_lm_corpus
from engine.data.prepare import (
    default_corpus_path, ensure_default_corpus, prepare_ptb, prepare_sotu, prepare_text,
)


def _text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _leftovers(folder):
    return sorted(p for p in os.listdir(folder) if p.endswith(".tmp"))


# ------------------------------------------------------------------------- plain text
def test_prepare_text_three_files(tmp_path):
    train = _text(tmp_path / "train.txt", "a b b\n\nc a b\nd\n")
    valid = _text(tmp_path / "valid.txt", "a z\n")
    test = _text(tmp_path / "test.txt", "b\r\nq q\n")
    out = tmp_path / "out.h5"
    summary = prepare_text(train, valid, test, out, min_count=2, tokenizer="whitespace")
    assert summary.split_tokens == {"train": 10, "valid": 3, "test": 5}
    with open_lm_corpus(out) as c:
        # train counts: b 3, <eos> 3, a 2, c 1, d 1 -> <unk> 2
        assert c.vocab == ["<eos>", "b", "<unk>", "a"]
        assert c.counts.tolist() == [3, 3, 2, 2]
        train_ids = c.tokens("train")
        assert [c.vocab[i] for i in train_ids] == \
            "a b b <eos> <unk> a b <eos> <unk> <eos>".split()
        assert [c.vocab[i] for i in c.tokens("test")] == "b <eos> <unk> <unk> <eos>".split()
        np.testing.assert_array_equal(np.bincount(train_ids, minlength=c.vocab_size), c.counts)
        assert c.attrs["tokenizer"] == "whitespace"


def test_prepare_text_list_of_files_and_held_out_fractions(tmp_path):
    one = _text(tmp_path / "1.txt", "".join(f"l{i}\n" for i in range(10)))
    two = _text(tmp_path / "2.txt", "".join(f"l{i}\n" for i in range(10, 20)))
    out = tmp_path / "out.h5"
    summary = prepare_text([one, two], output=out, valid_fraction=0.1, test_fraction=0.2,
                           min_count=1)
    assert summary.split_tokens == {"train": 28, "valid": 4, "test": 8}  # 14+2+4 lines, 2 ids each
    with open_lm_corpus(out) as c:
        words = lambda s: [c.vocab[i] for i in c.tokens(s) if i != c.eos_id]
        assert words("valid") == ["<unk>", "<unk>"]            # l14, l15 unseen in training
        assert len(words("train")) == 14 and "l13" in c.vocab and "l14" not in c.vocab
    prepare_text(one, test=two, output=out, valid_fraction=0)
    with open_lm_corpus(out) as c:
        assert c.splits == ("train", "test")


def test_prepare_text_defaults_suit_raw_text(tmp_path):
    """Words split from punctuation, case folded, words seen fewer than 3 times in training
    read as <unk>: the training split has <unk> to learn from."""
    train = _text(tmp_path / "t.txt", "The cat sat. the CAT ran!\nA dog, the cat.\n")
    out = tmp_path / "o.h5"
    summary = prepare_text(train, test=train, output=out, valid_fraction=0)
    with open_lm_corpus(out) as c:
        assert (c.attrs["tokenizer"], int(c.attrs["lowercase"]), c.min_count) == ("words", 1, 3)
        # the 3, cat 3, <eos> 2; "." (twice) and six words seen once: <unk> 8
        assert c.vocab == ["<unk>", "cat", "the", "<eos>"]
        assert c.counts.tolist() == [8, 3, 3, 2]
    assert summary.unk_rate["train"] > 0 and summary.warnings == []


def test_warning_when_training_has_no_unk_but_held_out_has(tmp_path, capsys):
    train = _text(tmp_path / "t.txt", "a b c\n" * 5)
    test = _text(tmp_path / "u.txt", "a b zebra\n")
    out = tmp_path / "o.h5"
    summary = prepare_text(train, test=test, output=out, valid_fraction=0)
    assert summary.unk_rate == {"train": 0.0, "test": 0.25}
    assert len(summary.warnings) == 1 and "\n" not in summary.warnings[0]
    assert "no <unk>" in summary.warnings[0] and "25.00% of the test" in summary.warnings[0]
    assert "warning: the training split has no <unk>" in str(summary)
    assert summary.as_dict()["warnings"] == summary.warnings
    # none when the training split has <unk> too, or the held-out splits have none
    assert prepare_text(train, test=train, output=out, valid_fraction=0).warnings == []
    both = _text(tmp_path / "w.txt", "a b c\n" * 5 + "rare\n")
    assert prepare_text(both, test=test, output=out, valid_fraction=0).warnings == []
    # the command line: the summary line on stdout carries it, and one line on stderr
    from engine.cli import main
    assert main(["prepare", "text", str(train), "--test", str(test), "--valid-fraction", "0",
                 "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "; warning: the training split has no <unk>" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("engine prepare: warning: the training split")


def test_prepare_text_words_tokenizer_lowercase(tmp_path):
    train = _text(tmp_path / "t.txt", "The cat, the DOG.\n")
    out = tmp_path / "o.h5"
    prepare_text(train, output=out, tokenizer="words", lowercase=True, valid_fraction=0,
                 test_fraction=0, min_count=1)
    with open_lm_corpus(out) as c:
        assert c.vocab[0] == "the" and set(c.vocab) == {"the", "cat", ",", "dog", ".",
                                                        "<eos>", "<unk>"}


def test_missing_and_empty_inputs(tmp_path):
    out = tmp_path / "o.h5"
    with pytest.raises(DataError, match=r"missing\.txt: no such file"):
        prepare_text(tmp_path / "missing.txt", output=out)
    empty = _text(tmp_path / "empty.txt", "\n   \n\n")
    with pytest.raises(DataError, match=r"empty\.txt.*empty corpus"):
        prepare_text(empty, output=out, valid_fraction=0, test_fraction=0)
    train = _text(tmp_path / "train.txt", "a b\n")
    with pytest.raises(DataError, match=r"empty\.txt.*empty corpus.*valid"):
        prepare_text(train, empty, output=out, test_fraction=0)
    with pytest.raises(DataError, match="too few"):
        prepare_text(train, output=out)          # 1 line cannot give train, valid and test
    assert not out.exists() and _leftovers(tmp_path) == []


def test_bad_utf8_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good line\nalso fine\ncaf\xe9 latin-1\n")
    with pytest.raises(DataError, match=r"bad\.txt, line 3: not UTF-8"):
        prepare_text(bad, output=tmp_path / "o.h5", valid_fraction=0, test_fraction=0)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"ok\n\x00\x01\x02")
    with pytest.raises(DataError, match=r"bin\.txt, line 2: NUL byte"):
        prepare_text(binary, output=tmp_path / "o.h5", valid_fraction=0, test_fraction=0)


def test_failed_prepare_is_atomic(tmp_path):
    good = _text(tmp_path / "good.txt", "a b c\n" * 50)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a b\n" * 10 + b"\xff\xfe oops\n")
    out = tmp_path / "out.h5"
    # no previous file: nothing appears
    with pytest.raises(DataError, match=r"bad\.txt, line 11"):
        prepare_text([good], test=[good, bad], output=out, valid_fraction=0)
    assert not out.exists() and _leftovers(tmp_path) == []
    # a previous file is left untouched (the bad file is met while encoding, after the
    # training pass: the output was half written)
    prepare_text(good, output=out, valid_fraction=0, test_fraction=0)
    before = out.read_bytes()
    with pytest.raises(DataError, match=r"bad\.txt, line 11"):
        prepare_text(good, test=[good, bad], output=out, valid_fraction=0)
    assert out.read_bytes() == before and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- archives
def _tar(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, text in members.items():
            data = text.encode("utf-8") if isinstance(text, str) else text
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_prepare_sotu_small_archive(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", {
        "sotu/1999_a_b.txt": "The Union is strong. The people, the land!",
        "sotu/2001_c_d.txt": "The land is strong.\nOld words.",
        "sotu/2005_c_d.txt": "Strong people",
        "sotu/2015_e_f.txt": "The end.",
        "sotu/README": "not an address",
    })
    out = tmp_path / "s.h5"
    s = prepare_sotu(archive, out, train_until=2000, valid_until=2010, min_count=1)
    assert set(s.split_tokens) == {"train", "valid", "test"}
    with open_lm_corpus(out) as c:
        assert c.vocab[0] == "the" and "union" in c.vocab and "The" not in c.vocab
        valid = [c.vocab[i] for i in c.tokens("valid")]
        assert valid == ("the land is strong . <eos> <unk> <unk> . <eos> "
                         "strong people <eos>").split()
        assert int(c.attrs["train_until"]) == 2000
    s = prepare_sotu(archive, out, train_until=2000, valid_until=2030, min_count=1)
    assert set(s.split_tokens) == {"train", "valid"}


def test_sotu_archive_errors(tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(DataError, match=r"no\.tar\.gz: no such file"):
        prepare_sotu(tmp_path / "no.tar.gz", out)
    nomatch = _tar(tmp_path / "n.tar.gz", {"x/readme.txt": "hello"})
    with pytest.raises(DataError, match=r"n\.tar\.gz: no member named YEAR_president_x\.txt"):
        prepare_sotu(nomatch, out)
    junk = tmp_path / "j.tar.gz"
    junk.write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match=r"j\.tar\.gz: not a readable tar archive"):
        prepare_sotu(junk, out)
    late = _tar(tmp_path / "l.tar.gz", {"2015_a_b.txt": "words"})
    with pytest.raises(DataError, match="training split would be empty"):
        prepare_sotu(late, out)
    badutf = _tar(tmp_path / "b.tar.gz", {"1990_a_b.txt": "fine\n", "2005_a_b.txt": b"ok\n\xff\n"})
    with pytest.raises(DataError, match=r"b\.tar\.gz: 2005_a_b\.txt, line 2: not UTF-8"):
        prepare_sotu(badutf, out, min_count=1)
    assert not out.exists() and _leftovers(tmp_path) == []


# -------------------------------------------------------------------------- real data
def test_ptb_exact_counts(tmp_path):
    """PTB layout (Mikolov's files: leading space, <unk> already in the text): every training
    word kept, one <eos> per line, counts exact (real PTB: 929,589 / 73,760 / 82,430 tokens,
    10,000 words)."""
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    tokens, train_counts = write_ptb_like(ptb)
    out = tmp_path / "ptb.h5"
    summary = prepare_ptb(ptb, out)
    assert summary.split_tokens == tokens
    assert summary.vocab_size == len(train_counts) + 1            # the words and <eos>
    with open_lm_corpus(out) as c:
        assert c.vocab_size == len(train_counts) + 1 and c.vocab.count("<unk>") == 1
        assert c.vocab[0] == "the" and c.vocab[c.unk_id] == "<unk>"
        train = c.tokens("train")
        np.testing.assert_array_equal(np.bincount(train, minlength=c.vocab_size), c.counts)
        assert int(np.count_nonzero(train == c.eos_id)) == 2000       # one per line
        assert all(c.counts > 0)          # no word of the vocabulary is unseen in training
        assert {w: int(n) for w, n in zip(c.vocab, c.counts) if w != "<eos>"} == dict(train_counts)


def test_prepare_ptb_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"ptb\.train\.txt: no such file"):
        prepare_ptb(tmp_path, tmp_path / "p.h5")


def test_default_corpus_is_shipped():
    path = default_corpus_path()
    assert path.is_file() and path.name == "addresses.tar.gz"


@pytest.fixture(scope="module")
def sotu_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    messages = []
    path = ensure_default_corpus(folder, log=messages.append)
    return path, messages


def test_sotu_default_split_by_year(sotu_cache):
    path, messages = sotu_cache
    assert path.name == "sotu-v1.h5" and any("preparing" in m for m in messages)
    with open_lm_corpus(path) as c:
        lengths = {s: c.split_length(s) for s in ("train", "valid", "test")}
        assert c.splits == ("train", "valid", "test")
        assert lengths["train"] > 1_500_000 and 40_000 < lengths["valid"] < 100_000
        assert 40_000 < lengths["test"] < 120_000
        assert 10_000 <= c.vocab_size <= 15_000
        assert c.vocab[0] == "the" and "union" in c.vocab and "Union" not in c.vocab
        assert c.min_count == prepare.SOTU_MIN_COUNT


def test_default_corpus_cached_and_repaired(sotu_cache, tmp_path):
    path, _ = sotu_cache
    messages = []
    assert ensure_default_corpus(path.parent, log=messages.append) == path
    assert len(messages) == 1 and "using the cached" in messages[0]
    broken = tmp_path / "sotu-v1.h5"
    broken.write_bytes(path.read_bytes()[:5000])
    messages = []
    assert ensure_default_corpus(tmp_path, log=messages.append) == broken
    assert "unusable" in messages[0]
    with open_lm_corpus(broken) as repaired, open_lm_corpus(path) as original:
        assert repaired.vocab_hash() == original.vocab_hash()


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "c"))
    assert prepare.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ENGINE_CACHE")
    assert prepare.default_cache_dir() == Path.home() / ".cache" / "engine"
