"""Host reads of one training step per output layer: the documented numbers of
engine/backend/syncs.py (READS_PER_STEP), on every backend.

NumPy backend: the declared reads (`backend.host_reads`, counted by `to_host`) equal the table.
CuPy backend (marked gpu; skipped without one): the declared reads equal the table, and so do
the device-to-host transfers CuPy really performs (`syncs.count_device_reads`): nothing is read
that the table does not list. One step is counted after two warm-up steps (the first step of a
shape may build caches or measure the FFI paths).
"""
from __future__ import annotations

import numpy
import pytest
import scipy.sparse

from devices import make_backend
from engine import SGD, Adam, Engine, MLPClassifier, MLPLanguageModel
from engine.backend import syncs

F, C, B = 12, 30, 16          # features, classes, batch


def classifier(output="softmax", output_kwargs=None, meprop=None, sparse_input=False):
    return MLPClassifier(F, C, hidden=(16,), output=output, output_kwargs=output_kwargs or {},
                         meprop=meprop, sparse_input=sparse_input)


def single_label(rng):
    return rng.standard_normal((B, F)).astype(numpy.float32), rng.integers(0, C, B).astype(numpy.int32)


def multi_label(rng, K=3):
    y = numpy.stack([rng.choice(C, K, replace=False) for _ in range(B)]).astype(numpy.int32)
    y[0, 1:] = -1                                       # padding
    return rng.standard_normal((B, F)).astype(numpy.float32), y


CASES = {
    "softmax": lambda: (classifier(), Adam(1e-3), single_label),
    "softmax-chunked": lambda: (classifier(output_kwargs={"chunk_size": 7}), Adam(1e-3), single_label),
    "softmax-fused-sgd": lambda: (classifier(output_kwargs={"chunk_size": 7, "update": "fused-sgd"}),
                                  SGD(0.1), single_label),
    "squared": lambda: (classifier("squared"), Adam(1e-3), single_label),
    "spherical-dense": lambda: (classifier("spherical-dense"), Adam(1e-3), single_label),
    "squared-hinge-dense": lambda: (classifier("squared-hinge"), Adam(1e-3), multi_label),
    "squared-hinge-ffi-kernel": lambda: (classifier("squared-hinge", {"weights": "ffi", "fan_in": 4,
                                                                      "method": "kernel"}),
                                         Adam(1e-3), multi_label),
    "squared-hinge-ffi-cusparse": lambda: (classifier("squared-hinge", {"weights": "ffi", "fan_in": 4,
                                                                        "method": "cusparse"}),
                                           Adam(1e-3), multi_label),
    "adaptive": lambda: (classifier("adaptive", {"cutoffs": [5, 15]}), Adam(1e-3), single_label),
    "factored-squared": lambda: (classifier("factored-squared", {"lr": 1e-3}), Adam(1e-3), single_label),
    "factored-squared-no-guard": lambda: (classifier("factored-squared", {"lr": 1e-3, "lr_guard": False}),
                                          Adam(1e-3), single_label),
    "factored-squared-k3": lambda: (classifier("factored-squared", {"lr": 1e-3}), Adam(1e-3), multi_label),
    "meprop-unified": lambda: (classifier(meprop={"k": 4, "mode": "unified", "output": True}),
                               Adam(1e-3), single_label),
    "meprop-per-example": lambda: (classifier(meprop={"k": 4, "mode": "per-example"}), Adam(1e-3),
                                   single_label),
    "meprop-random": lambda: (classifier(meprop={"k": 4, "mode": "random"}), Adam(1e-3), single_label),
    "sparse-input": lambda: (classifier(sparse_input=True), Adam(1e-3), single_label),
}


def test_every_documented_case_is_tested():
    assert set(CASES) | {"embedding-lm"} == set(syncs.READS_PER_STEP)


def _count_one_step(engine, x, y):
    be = engine.backend
    for _ in range(2):
        engine.train_step(x, y, check_finite=False)
    before = be.host_reads
    if be.device == "cpu":
        engine.train_step(x, y, check_finite=False)
        return be.host_reads - before, None
    be.synchronize()
    with syncs.count_device_reads() as reads:
        engine.train_step(x, y, check_finite=False)
    return be.host_reads - before, reads


@pytest.mark.parametrize("case", sorted(CASES))
def test_reads_per_training_step(backend_name, case):
    be = make_backend(backend_name)
    model, optimizer, data = CASES[case]()
    engine = Engine(model, optimizer, device=be, seed=0, dtype="float32", verbose=False)
    x, y = data(numpy.random.default_rng(0))
    if model.sparse_input:
        x[numpy.abs(x) < 1.0] = 0
        x = be.to_device_csr(scipy.sparse.csr_matrix(x))
    else:
        x = be.asarray(x)
    declared, real = _count_one_step(engine, x, be.asarray(y))
    want = syncs.READS_PER_STEP[case]
    assert declared == want, f"{case}: {declared} declared reads, the table says {want}"
    if real is not None:
        assert real.count == want, f"{case}: {real.count} device reads:\n" + "\n".join(real.where)


def test_reads_per_training_step_of_a_language_model(backend_name):
    """The Embedding's row-sparse gradient is coalesced: one read (the distinct ids)."""
    be = make_backend(backend_name)
    model = MLPLanguageModel(40, context=3, embed_dim=8, hidden=(16,))
    engine = Engine(model, Adam(1e-3), device=be, seed=0, dtype="float32", verbose=False)
    rng = numpy.random.default_rng(1)
    x = be.asarray(rng.integers(0, 40, (B, 3)).astype(numpy.int32))
    y = be.asarray(rng.integers(0, 40, B).astype(numpy.int32))
    declared, real = _count_one_step(engine, x, y)
    assert declared == syncs.READS_PER_STEP["embedding-lm"]
    if real is not None:
        assert real.count == syncs.READS_PER_STEP["embedding-lm"], "\n".join(real.where)
