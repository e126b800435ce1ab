"""The HDF5 loaders' prefetch thread with a device backend: batches prepared and copied to the
device in the background (engine/data/loader.py `_prefetched`; CupyBackend.asarray selects the
backend's device in that thread) equal the host batches, live on the backend's device, leave no
thread behind, and train a model exactly as the CPU does.

Loaders: NGramLoader (x (B, C) int32 context ids, y (B,) next ids) over a language-model corpus,
XMCLoader (x CSR (B, F), y (B, K) labels padded with -1). One body per backend (`backend`
fixture: NumPy always, CuPy marked gpu and skipped without one).
"""
from __future__ import annotations

import threading

import numpy
import pytest
from numpy.testing import assert_array_equal

from backend_compare import REFERENCE, assert_close, host, model_state
from engine import Adam, Engine, MLPLanguageModel
from engine.data.hdf5_schema import write_lm_corpus
from engine.data.loader import NGramLoader
from engine.data.xmc import XMCLoader, prepare_xmc
from engine.data.xmc_synthetic import write_synthetic_xmc

N = 211


@pytest.fixture
def corpus(tmp_path):
    rng = numpy.random.default_rng(0)
    vocab = [f"w{i}" for i in range(40)] + ["<unk>", "<eos>"]
    train = rng.integers(0, 42, N).astype(numpy.int32)
    path = tmp_path / "c.h5"
    write_lm_corpus(path, vocab, numpy.ones(42, numpy.int64),
                    {"train": train, "valid": train[:50], "test": train[50:90]},
                    {"unk_id": 40, "eos_id": 41})
    return path


def on_device(backend, a):
    """The array is the backend's and, on a GPU, on the backend's device."""
    device = getattr(a, "device", None)            # cupy.cuda.Device; "cpu" for NumPy 2
    return backend.is_array(a) and (not hasattr(device, "id") or device.id == backend.device_id)


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "engine-ngram-prefetch" and t.is_alive()]


def test_ngram_prefetch_to_the_device(backend, corpus):
    kw = dict(context=3, batch_size=8, chunk_tokens=23, seed=4)
    dev = NGramLoader(corpus, "train", backend=backend, prefetch=True, **kw)
    ref = NGramLoader(corpus, "train", prefetch=False, **kw)
    for epoch, start in ((0, 0), (1, 0), (1, 5)):
        got, want = list(dev.iter_from(epoch, start)), list(ref.iter_from(epoch, start))
        assert len(got) == len(want) == len(ref) - start
        for (x, y), (xr, yr) in zip(got, want):
            assert on_device(backend, x) and on_device(backend, y)
            assert_array_equal(host(x), xr)
            assert_array_equal(host(y), yr)
    for i, _ in enumerate(dev):                    # stop early: the thread is joined
        if i == 2:
            break
    assert prefetch_threads() == []
    dev.close()
    ref.close()


def test_xmc_prefetch_to_the_device(backend, tmp_path):
    """CSR minibatches converted in the prefetch thread (canonical, no host read) equal the
    host ones."""
    tr, te = str(tmp_path / "tr.txt"), str(tmp_path / "te.txt")
    write_synthetic_xmc(tr, te, 60, 10, num_features=50, num_labels=30, labels_per_point=3,
                        features_per_point=8, seed=2)
    out = str(tmp_path / "x.h5")
    prepare_xmc(tr, te, out, valid_fraction=0.0)
    dev = XMCLoader(out, "train", 7, shuffle=True, seed=1, backend=backend, prefetch=True)
    ref = XMCLoader(out, "train", 7, shuffle=True, seed=1, prefetch=False)
    got, want = list(dev.iter_from(2)), list(ref.iter_from(2))
    assert len(got) == len(want) == len(ref)
    for (x, y), (xr, yr) in zip(got, want):
        assert backend.is_csr(x) and x.has_canonical_format and on_device(backend, y)
        assert_array_equal(host(x.toarray()), xr.toarray())
        assert_array_equal(host(y), yr)


def test_engine_trains_from_a_corpus_file_like_the_cpu(backend, float_dtype, corpus):
    """Engine.train on the corpus path (the NGramLoader with prefetch feeds the backend): the
    epoch losses and the model equal the CPU float64 run's."""
    runs = []
    for be, dtype in ((REFERENCE, numpy.float64), (backend, float_dtype)):
        model = MLPLanguageModel(42, context=3, embed_dim=8, hidden=(16,), output="softmax")
        eng = Engine(model, Adam(lr=1e-2), device=be, seed=5, dtype=dtype, verbose=False)
        hist = eng.train(str(corpus), epochs=2, batch_size=16, progress=False)
        runs.append(([h["train_loss"] for h in hist], model_state(model)))
    (lw, sw), (lg, sg) = runs
    assert_close(numpy.array(lg), numpy.array(lw), float_dtype, err_msg="epoch losses")
    for key in sw:
        assert_close(sg[key], sw[key], float_dtype, factor=5, err_msg=key)
    assert prefetch_threads() == []
