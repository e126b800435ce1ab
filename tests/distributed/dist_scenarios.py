"""The small training runs the distributed tests compare with the single-process run.

Each scenario builds an unbound model and its optimizer, and a fixed list of global
minibatches (train) and evaluation batches; the same definition serves the single-process
reference (test_equality.py) and the ranks (_worker.py). Shapes are tiny on purpose:
B = 13 rows, so 2 and 3 ranks get uneven row counts (6/7 and 4/4/5), and label counts that do
not divide evenly either (50 words, 23 labels); two scenarios use 2-row minibatches, so with 3
ranks one rank has no row at all.
"""
from __future__ import annotations

import numpy

from engine import SGD, Adam, MLPClassifier, MLPLanguageModel

STEPS = 20
BATCH = 13
EVAL_BATCHES = 2
SEED = 3
VOCAB = 50
LABELS = 23
FEATURES = 20


def _lm_batches(rng, count, batch=BATCH):
    out = []
    for _ in range(count):
        x = rng.integers(0, VOCAB, size=(batch, 3))
        y = rng.integers(0, VOCAB, size=(batch,))
        y[rng.random(batch) < 0.15] = -1              # ignored rows
        out.append((x, y))
    return out


def _xmc_batches(rng, count, sparse=False, single=False):
    out = []
    for _ in range(count):
        x = rng.standard_normal((BATCH, FEATURES))
        if sparse:
            import scipy.sparse
            x[rng.random(x.shape) < 0.7] = 0.0
            x = scipy.sparse.csr_matrix(x)
        if single:                                     # one label per row (accuracy)
            out.append((x, rng.integers(0, LABELS, size=BATCH)))
            continue
        k = rng.integers(1, 4, size=BATCH)
        y = numpy.full((BATCH, 3), -1, dtype=numpy.int64)
        for b in range(BATCH):
            y[b, :k[b]] = rng.choice(LABELS, size=k[b], replace=False)
        out.append((x, y))
    return out


def _lm(output="softmax", **output_kwargs):
    return MLPLanguageModel(VOCAB, context=3, embed_dim=8, hidden=[16], output=output,
                            output_kwargs=output_kwargs)


def _xmc(output, sparse=False, **output_kwargs):
    counts = numpy.arange(1, LABELS + 1) * 3
    return MLPClassifier(FEATURES, LABELS, hidden=[16], sparse_input=sparse, output=output,
                         output_kwargs={"label_counts": counts, "num_train": 200, **output_kwargs})


SCENARIOS = {
    # exact softmax: whole, chunked with global-norm clipping, chunked with the fused SGD update
    "softmax": lambda: (_lm("softmax"), Adam(lr=0.01)),
    "softmax-chunked": lambda: (_lm("softmax", chunk_size=7), Adam(lr=0.01, clip_norm=0.5)),
    "softmax-fused-sgd": lambda: (_lm("softmax", chunk_size=7, update="fused-sgd"),
                                  SGD(lr=0.3, momentum=0.9)),
    "softmax-classifier": lambda: (MLPClassifier(FEATURES, LABELS, hidden=[16]), Adam(lr=0.01)),
    # multi-label over dense and fixed fan-in weights (the FFI ones behind a sparse input layer)
    "hinge-dense": lambda: (_xmc("squared-hinge"), Adam(lr=0.01)),
    "hinge-ffi": lambda: (_xmc("squared-hinge", sparse=True, weights="ffi", fan_in=4),
                          Adam(lr=0.01)),
    "bce-dense": lambda: (_xmc("bce"), Adam(lr=0.01, clip_norm=1.0)),
    "bce-ffi": lambda: (_xmc("bce", weights="ffi", fan_in=4), SGD(lr=0.2)),
    # the exact factored layer (its own SGD update; monitors every 5 updates)
    "factored-spherical": lambda: (_lm("factored-spherical", lr=0.02, check_every=5),
                                   SGD(lr=0.1)),
    "factored-taylor": lambda: (_lm("factored-taylor", lr=0.02, check_every=5, monitor="exact"),
                                Adam(lr=0.01)),
    # a replicated output, data-parallel
    "adaptive": lambda: (_lm("adaptive", cutoffs=[10, 30]), Adam(lr=0.01)),
    # minibatches of 2 rows: with 3 ranks, rank 0 gets none (sharded and data-parallel)
    "softmax-2rows": lambda: (_lm("softmax"), Adam(lr=0.01)),
    "adaptive-2rows": lambda: (_lm("adaptive", cutoffs=[10, 30]), Adam(lr=0.01)),
}


def data(name):
    """(train batches, eval batches): lists of global (x, y) minibatches."""
    rng = numpy.random.default_rng(100 + sorted(SCENARIOS).index(name))
    if name == "softmax-classifier":
        batches = _xmc_batches(rng, STEPS + EVAL_BATCHES, single=True)
    elif name.endswith("-2rows"):
        batches = _lm_batches(rng, STEPS + EVAL_BATCHES, batch=2)
    elif name.startswith(("softmax", "factored", "adaptive")):
        batches = _lm_batches(rng, STEPS + EVAL_BATCHES)
    else:
        batches = _xmc_batches(rng, STEPS + EVAL_BATCHES, sparse=name == "hinge-ffi")
    return batches[:STEPS], batches[STEPS:]


def build(name):
    """(unbound model, optimizer) of a scenario."""
    return SCENARIOS[name]()


def plain_name(key):
    """A state key with the sharded output's class name mapped to the single-process one."""
    return key.replace(".Sharded", ".")


def sharded_entries(model):
    """State keys (single-process naming) whose arrays hold the output's label rows."""
    from engine.distributed.data_parallel import is_label_sharded
    out = model.output
    if not is_label_sharded(out):
        return []
    index = model.layers.index(out)
    names = list(out.sharded_params)
    if getattr(out, "weights", None) == "ffi":
        names.append("indices")
    prefix = f"{index}.{type(out).__name__}."
    return [plain_name(prefix + n) for n in names]
