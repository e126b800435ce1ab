"""Tokenisation, vocabulary rules and encoding (engine/data/text.py)."""
import numpy as np
import pytest

from engine.data.text import (
    EOS, UNK, Vocabulary, build_vocab, count_tokens, encode, iter_encoded_chunks, iter_tokens,
    tokenize_line, vocab_from_counts,
)


def test_whitespace_tokenizer_keeps_pretokenised_text():
    assert tokenize_line(" the cat 's <unk> N \n") == ["the", "cat", "'s", "<unk>", "N"]
    assert tokenize_line("The Cat", lowercase=True) == ["the", "cat"]
    assert tokenize_line("   \n") == []


def test_word_tokenizer_splits_words_and_punctuation():
    line = "Hello, world! It’s the U.S. economy -- 1,000.50 dollars (12%) at 3:15; well-known."
    assert tokenize_line(line, lowercase=True, tokenizer="words") == [
        "hello", ",", "world", "!", "it's", "the", "u.s.", "economy", "--", "1,000.50",
        "dollars", "(", "12%", ")", "at", "3:15", ";", "well-known", "."]
    assert tokenize_line("President—(applause)—no", tokenizer="words") == [
        "President", "—", "(", "applause", ")", "—", "no"]
    # literal special tokens survive, control characters are dropped
    assert tokenize_line("a <unk> b\x02 <UNK>", lowercase=True, tokenizer="words") == [
        "a", "<unk>", "b", "<unk>"]
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenize_line("x", tokenizer="bpe")


def test_iter_tokens_appends_eos_after_non_empty_lines_only():
    assert list(iter_tokens(["a b", "", "   ", "c"])) == ["a", "b", EOS, "c", EOS]


def test_vocab_sorted_by_count_ties_alphabetical():
    v = build_vocab(iter_tokens(["b a c c", "c b"]))
    # counts: c 3, b 2, <eos> 2, a 1, <unk> 0 -> ties (b, <eos>) alphabetical: "<eos>" < "b"
    assert v.words == ["c", EOS, "b", "a", UNK]
    assert v.counts.tolist() == [3, 2, 2, 1, 0]
    assert (v.unk_id, v.eos_id) == (4, 1)
    assert v.index["b"] == 2 and v.lookup("zzz") == v.unk_id
    assert len(v) == 5 and v[0] == "c" and "a" in v


def test_min_count_folds_rare_words_into_unk():
    v = build_vocab(iter_tokens(["a a a b b c d", "a b"]), min_count=2)
    assert v.words == ["a", "b", EOS, UNK]
    assert dict(zip(v.words, v.counts.tolist())) == {"a": 4, "b": 3, EOS: 2, UNK: 2}
    assert int(v.counts.sum()) == 11     # every training token (9 words, 2 eos) is counted


def test_max_size_keeps_the_most_frequent_words():
    v = build_vocab(iter_tokens(["a a a a b b b c c d"]), max_size=4)
    assert set(v.words) == {"a", "b", UNK, EOS}
    assert dict(zip(v.words, v.counts.tolist()))[UNK] == 3    # c c d
    with pytest.raises(ValueError):
        build_vocab(["a"], max_size=1)
    with pytest.raises(ValueError):
        build_vocab(["a"], min_count=0)


def test_literal_unk_maps_to_the_unk_id_not_a_new_word():
    v = vocab_from_counts(count_tokens(["x <unk> y <unk>", "x"]))
    assert v.words.count(UNK) == 1
    assert dict(zip(v.words, v.counts.tolist()))[UNK] == 2
    ids = encode(["<unk> x q"], v)
    assert ids.tolist() == [v.unk_id, v.index["x"], v.unk_id, v.eos_id]


def test_encode_streams_in_chunks_and_matches_whole():
    lines = [f"w{i % 7} w{i % 3}" for i in range(100)] + ["", "new words"]
    v = build_vocab(iter_tokens(lines[:50]))
    whole = encode(lines, v)
    assert whole.dtype == np.int32
    assert whole.shape == (100 * 3 + 3,)
    chunks = list(iter_encoded_chunks(lines, v, chunk_tokens=10))
    assert all(c.dtype == np.int32 for c in chunks) and max(c.size for c in chunks) <= 12
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    assert whole[-3:].tolist() == [v.unk_id, v.unk_id, v.eos_id]
    assert encode([], v).shape == (0,)


def test_encode_accepts_a_plain_word_list():
    ids = encode(["a b", "c"], [UNK, EOS, "a", "b"])
    assert ids.tolist() == [2, 3, 1, 0, 1]
    with pytest.raises(ValueError):
        Vocabulary(["a", "b"], [1, 1])     # no <unk>/<eos>
