"""Streaming n-gram batches (engine/data/loader.py): coverage, determinism, resume, prefetch."""
import threading

import numpy as np
import pytest

from engine.backend.numpy_backend import Backend
from engine.data.errors import DataError
from engine.data.hdf5_schema import open_lm_corpus, write_lm_corpus
from engine.data.loader import NGramLoader

N = 103                       # tokens in the synthetic train split


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    """Every token of the train split is distinct, so y identifies its position."""
    rng = np.random.default_rng(7)
    train = rng.permutation(N).astype(np.int32)
    vocab = [f"w{i}" for i in range(N)] + ["<unk>", "<eos>"]
    path = tmp_path_factory.mktemp("loader") / "c.h5"
    write_lm_corpus(path, vocab, np.ones(N + 2, np.int64),
                    {"train": train, "valid": train[:10], "test": np.zeros(0, np.int32)},
                    {"unk_id": N, "eos_id": N + 1})
    return path


def _expected_windows(tokens, context, eos):
    padded = np.concatenate([np.full(context, eos, np.int32), tokens])
    return {int(tokens[i]): padded[i:i + context].tolist() for i in range(len(tokens))}


def _all(loader, epoch=0, start=0):
    return [(np.asarray(x).copy(), np.asarray(y).copy()) for x, y in loader.iter_from(epoch, start)]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x1, x2) and np.array_equal(y1, y2)
                                    for (x1, y1), (x2, y2) in zip(a, b))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("chunk_tokens, batch_size", [(7, 5), (7, 1), (1 << 20, 16), (3, 4)])
def test_every_position_predicted_once_with_correct_window(corpus_path, shuffle, chunk_tokens,
                                                           batch_size):
    context = 3
    with open_lm_corpus(corpus_path) as c:
        tokens, eos = c.tokens("train"), c.eos_id
        loader = NGramLoader(c, "train", context, batch_size, shuffle=shuffle,
                             chunk_tokens=chunk_tokens, prefetch=False)
        batches = _all(loader)
    assert loader.num_examples == N and len(loader) == -(-N // batch_size) == len(batches)
    assert all(x.shape == (batch_size, context) and x.dtype == np.int32 and y.dtype == np.int32
               for x, y in batches[:-1])
    xs = np.concatenate([x for x, _ in batches])
    ys = np.concatenate([y for _, y in batches])
    assert sorted(ys.tolist()) == list(range(N))      # each token predicted exactly once
    expected = _expected_windows(tokens, context, eos)
    for x, y in zip(xs, ys):
        assert x.tolist() == expected[int(y)]           # windows right across chunk boundaries
    if not shuffle:
        np.testing.assert_array_equal(ys, tokens)       # stream order


def test_first_positions_are_left_padded_with_eos(corpus_path):
    loader = NGramLoader(corpus_path, "train", 4, 3, shuffle=False, prefetch=False)
    x, y = next(iter(loader))
    eos = loader.eos_id
    tokens = loader.corpus.tokens("train")
    assert x.tolist() == [[eos] * 4, [eos] * 3 + [tokens[0]], [eos] * 2 + tokens[:2].tolist()]
    assert y.tolist() == tokens[:3].tolist()
    loader.close()
    assert loader.corpus.file is None


def test_same_seed_same_batches_other_epoch_or_seed_other_order(corpus_path):
    kw = dict(context=3, batch_size=8, chunk_tokens=7, prefetch=False)
    a = NGramLoader(corpus_path, "train", seed=5, **kw)
    b = NGramLoader(corpus_path, "train", seed=5, **kw)
    c = NGramLoader(corpus_path, "train", seed=6, **kw)
    assert _same(_all(a, 0), _all(b, 0)) and _same(_all(a, 3), _all(b, 3))
    assert not _same(_all(a, 0), _all(a, 1))
    assert not _same(_all(a, 0), _all(c, 0))
    a.set_epoch(1)
    assert _same([(x, y) for x, y in a], _all(b, 1))
    assert not np.array_equal(a.chunk_order(0), a.chunk_order(1)) or \
        not np.array_equal(a.chunk_order(1), a.chunk_order(2))
    for loader in (a, b, c):
        loader.close()


@pytest.mark.parametrize("drop_last", [False, True])
def test_iter_from_equals_the_tail_of_the_epoch(corpus_path, drop_last):
    loader = NGramLoader(corpus_path, "train", 3, 5, chunk_tokens=7, seed=1,
                         drop_last=drop_last, prefetch=False)
    full = _all(loader, 2)
    assert len(full) == len(loader) == (N // 5 if drop_last else -(-N // 5))
    if drop_last:
        assert all(len(y) == 5 for _, y in full)
    for start in range(len(loader) + 2):
        assert _same(_all(loader, 2, start), full[start:]), start
    loader.close()


def test_prefetch_gives_identical_batches_through_a_backend(corpus_path):
    kw = dict(context=2, batch_size=6, chunk_tokens=7, seed=3)
    on = NGramLoader(corpus_path, "train", prefetch=True, backend=Backend(), **kw)
    off = NGramLoader(corpus_path, "train", prefetch=False, **kw)
    for epoch in (0, 1):
        assert _same(_all(on, epoch), _all(off, epoch))
    assert _same(_all(on, 1, 4), _all(off, 1, 4))


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "engine-ngram-prefetch" and t.is_alive()]


def test_no_thread_left_after_breaking_out_early(corpus_path):
    loader = NGramLoader(corpus_path, "train", 3, 2, chunk_tokens=7)
    for i, _ in enumerate(loader):
        assert len(_prefetch_threads()) == 1
        if i == 3:
            break
    assert _prefetch_threads() == []
    it = iter(loader)
    next(it)
    it.close()
    assert _prefetch_threads() == []
    it = iter(loader)
    next(it)
    del it
    assert _prefetch_threads() == []
    assert len(list(loader)) == len(loader) and _prefetch_threads() == []
    loader.close()


class _FailingBackend:
    def __init__(self, fail_at):
        self.calls, self.fail_at = 0, fail_at

    def asarray(self, x):
        self.calls += 1
        if self.calls > self.fail_at:
            raise RuntimeError("device full")
        return x


def test_exception_in_prefetch_thread_reaches_the_consumer(corpus_path):
    loader = NGramLoader(corpus_path, "train", 3, 4, backend=_FailingBackend(5))
    got = 0
    with pytest.raises(RuntimeError, match="device full"):
        for _ in loader:
            got += 1
    assert got == 2 and _prefetch_threads() == []     # 2 batches = 4 successful asarray calls


def test_bad_arguments_and_splits(corpus_path):
    with pytest.raises(DataError, match=r"split 'test' is empty"):
        NGramLoader(corpus_path, "test", 3, 4)
    with pytest.raises(DataError, match=r"no split 'dev'"):
        NGramLoader(corpus_path, "dev", 3, 4)
    with pytest.raises(DataError, match="no such file"):
        NGramLoader(corpus_path.parent / "nope.h5", "train", 3, 4)
    for bad in (dict(context=0), dict(batch_size=0), dict(chunk_tokens=0), dict(seed=-1)):
        kw = {"context": 3, "batch_size": 4, "chunk_tokens": 8, **bad}
        with pytest.raises(ValueError):
            NGramLoader(corpus_path, "train", **kw)
    with NGramLoader(corpus_path, "valid", 3, 4) as loader:
        assert loader.num_examples == 10 and len(loader) == 3
        with pytest.raises(ValueError):
            loader.iter_from(-1, 0)
        assert list(loader.iter_from(0, 3)) == []


def test_ptb_epoch(tmp_path):
    """A PTB-layout corpus: one epoch over the valid split, streamed in several chunks, yields
    every token exactly once as a target."""
    from engine.data.prepare import prepare_ptb
    from ptb_format import write_ptb_like
    tokens, _ = write_ptb_like(tmp_path)
    out = tmp_path / "ptb.h5"
    prepare_ptb(tmp_path, out)
    with NGramLoader(out, "valid", 5, 256, chunk_tokens=1 << 10, seed=0) as loader:
        assert loader.num_examples == tokens["valid"] > 3 * (1 << 10)
        assert len(loader) == -(-tokens["valid"] // 256)
        counts = np.zeros(loader.corpus.vocab_size, np.int64)
        for x, y in loader:
            counts += np.bincount(y, minlength=len(counts))
        np.testing.assert_array_equal(
            counts, np.bincount(loader.corpus.tokens("valid"), minlength=len(counts)))
