"""The small training runs the distributed tests compare with the single-process run.

Each scenario builds an unbound model and its optimizer and names its data: in-memory arrays
(the engine's ArrayLoader), a classification file (ClassificationLoader) or an XMC file
(XMCLoader, sparse inputs). The same definition serves the single-process reference and the
ranks (_worker.py). Shapes are tiny on purpose: minibatches of B = 13 rows, so 2 and 3 ranks get
uneven shares (6/7 and 4/4/5), and label counts that do not divide evenly either (50 words,
23 labels); two scenarios use 2-row minibatches, so with 3 ranks one rank has no row at all.
Training: one epoch cut to STEPS steps, shuffled by the engine from the seed (the same global
order on every rank count); evaluation on EVAL_ROWS rows (or the file's test split).

`batches(name)` gives the fixed list of global minibatches the DistributedStep-level test runs
(one rank in this process, engine/distributed/step.py without the Engine).
"""
from __future__ import annotations

import os

import numpy

from engine import SGD, Adam, MLPClassifier, MLPLanguageModel

STEPS = 20
BATCH = 13
EVAL_BATCHES = 2
SEED = 3
VOCAB = 50
LABELS = 23
FEATURES = 20
#: the XMC file (tests write it once): train / test points, features, labels
XMC_SHAPE = (300, 40, 30, 17)
CLASSES = 7
#: the corpus file: its text repeated (9 words, <eos> and <unk>)
CORPUS_TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n"
CORPUS_VOCAB = 11


def _lm_batches(rng, count, batch=BATCH):
    out = []
    for _ in range(count):
        x = rng.integers(0, VOCAB, size=(batch, 3))
        y = rng.integers(0, VOCAB, size=(batch,))
        y[rng.random(batch) < 0.15] = -1              # ignored rows
        out.append((x, y))
    return out


def _xmc_batches(rng, count, single=False):
    out = []
    for _ in range(count):
        x = rng.standard_normal((BATCH, FEATURES))
        if single:                                     # one label per row (accuracy)
            out.append((x, rng.integers(0, LABELS, size=BATCH)))
            continue
        k = rng.integers(1, 4, size=BATCH)
        y = numpy.full((BATCH, 3), -1, dtype=numpy.int64)
        for b in range(BATCH):
            y[b, :k[b]] = rng.choice(LABELS, size=k[b], replace=False)
        out.append((x, y))
    return out


def _lm(output="softmax", dropout=0.0, **output_kwargs):
    return MLPLanguageModel(VOCAB, context=3, embed_dim=8, hidden=[16], dropout=dropout,
                            output=output, output_kwargs=output_kwargs)


def _xmc(output, features=FEATURES, labels=LABELS, sparse=False, meprop=None, **output_kwargs):
    counts = numpy.arange(1, labels + 1) * 3
    return MLPClassifier(features, labels, hidden=[16], sparse_input=sparse, output=output,
                         meprop=meprop, output_kwargs={"label_counts": counts, "num_train": 200,
                                                       **output_kwargs})


_XMC_FILE = dict(features=XMC_SHAPE[2], labels=XMC_SHAPE[3], sparse=True)

#: name -> (build: () -> (model, optimizer), data kind: "lm" | "xmc" | "single" | a file name)
SCENARIOS = {
    # exact softmax: whole, chunked with global-norm clipping, chunked with the fused SGD update
    "softmax": (lambda: (_lm("softmax"), Adam(lr=0.01)), "lm"),
    "softmax-chunked": (lambda: (_lm("softmax", chunk_size=7), Adam(lr=0.01, clip_norm=0.5)),
                        "lm"),
    "softmax-fused-sgd": (lambda: (_lm("softmax", chunk_size=7, update="fused-sgd"),
                                   SGD(lr=0.3, momentum=0.9)), "lm"),
    # dropout in the body: each rank draws its rows of the single-process mask
    "softmax-dropout": (lambda: (_lm("softmax", dropout=0.3), Adam(lr=0.01)), "lm"),
    # a language-model corpus file (NGramLoader), chunked softmax with dropout
    "softmax-corpus": (lambda: (MLPLanguageModel(CORPUS_VOCAB, context=2, embed_dim=8,
                                                 hidden=[16], dropout=0.2,
                                                 output_kwargs={"chunk_size": 5}),
                                Adam(lr=0.01)), "corpus.h5"),
    # a classification file (ClassificationLoader), one label per row
    "softmax-classifier": (lambda: (MLPClassifier(FEATURES, CLASSES, hidden=[16]),
                                    Adam(lr=0.01)), "classes.h5"),
    # multi-label over dense and fixed fan-in weights (one FFI behind a sparse input: XMC file)
    "hinge-dense": (lambda: (_xmc("squared-hinge"), Adam(lr=0.01)), "xmc"),
    "hinge-ffi": (lambda: (_xmc("squared-hinge", weights="ffi", fan_in=4, **_XMC_FILE),
                           Adam(lr=0.01)), "xmc.h5"),
    "bce-dense": (lambda: (_xmc("bce"), Adam(lr=0.01, clip_norm=1.0)), "xmc"),
    "bce-ffi": (lambda: (_xmc("bce", weights="ffi", fan_in=4), SGD(lr=0.2)), "xmc"),
    # random meProp in the body: each rank draws its rows' selections of the single process
    "hinge-meprop-random": (lambda: (_xmc("squared-hinge", meprop={"k": 5, "mode": "random",
                                                                   "seed": 4}),
                                     Adam(lr=0.01)), "xmc"),
    # the exact factored layer (its own SGD update; monitors every 5 updates); the spherical one
    # and the multi-label one with an output bias (state of width d + 1), the Taylor one without
    "factored-spherical": (lambda: (_lm("factored-spherical", lr=0.02, check_every=5, bias=True),
                                    SGD(lr=0.1)), "lm"),
    "factored-taylor": (lambda: (_lm("factored-taylor", lr=0.02, check_every=5,
                                     monitor="exact"), Adam(lr=0.01)), "lm"),
    # the factored layer as a multi-label output (K-hot targets; P@k, PSP@k from each rank's rows)
    "factored-squared-xmc": (lambda: (_xmc("factored-squared", lr=0.02, check_every=5, bias=True),
                                      Adam(lr=0.01)), "xmc"),
    # a replicated output, data-parallel
    "adaptive": (lambda: (_lm("adaptive", cutoffs=[10, 30]), Adam(lr=0.01)), "lm"),
    # minibatches of 2 rows: with 3 ranks, rank 0 gets none (sharded and data-parallel)
    "softmax-2rows": (lambda: (_lm("softmax"), Adam(lr=0.01)), "lm"),
    "adaptive-2rows": (lambda: (_lm("adaptive", cutoffs=[10, 30]), Adam(lr=0.01)), "lm"),
}


def build(name):
    """(unbound model, optimizer) of a scenario."""
    return SCENARIOS[name][0]()


def batch_size(name):
    return 2 if name.endswith("-2rows") else BATCH


def batches(name):
    """(train, eval): lists of global (x, y) minibatches of an in-memory scenario."""
    kind = SCENARIOS[name][1]
    rng = numpy.random.default_rng(100 + sorted(SCENARIOS).index(name))
    if kind == "lm":
        out = _lm_batches(rng, STEPS + EVAL_BATCHES, batch=batch_size(name))
    elif kind == "xmc":
        out = _xmc_batches(rng, STEPS + EVAL_BATCHES)
    else:
        raise ValueError(f"{name}: its data is the file {kind}")
    return out[:STEPS], out[STEPS:]


def data(name, data_dir):
    """(train data, eval data) for Engine.train / Engine.evaluate: (x, y) arrays (every
    minibatch of `batches` stacked) or the path of a file written by write_files."""
    kind = SCENARIOS[name][1]
    if kind.endswith(".h5"):
        path = os.path.join(data_dir, kind)
        return path, path
    train, evaluation = batches(name)
    stack = lambda bs: (numpy.concatenate([x for x, _ in bs]),      # noqa: E731
                        numpy.concatenate([y for _, y in bs]))
    return stack(train), stack(evaluation)


def write_files(data_dir):
    """The scenarios' data files (deterministic): classes.h5 (classification, 260 train and 26
    test rows), xmc.h5 (an XMC file of XMC_SHAPE) and corpus.h5 (a language-model corpus of
    CORPUS_VOCAB words)."""
    from engine.data.classification import write_classification
    from engine.data.xmc import prepare_xmc
    from engine.data.xmc_synthetic import write_synthetic_xmc
    os.makedirs(data_dir, exist_ok=True)
    rng = numpy.random.default_rng(7)
    split = lambda n: (rng.standard_normal((n, FEATURES)).astype(numpy.float32),  # noqa: E731
                       rng.integers(0, CLASSES, size=n))
    write_classification(os.path.join(data_dir, "classes.h5"),
                         {"train": split(STEPS * BATCH), "test": split(EVAL_BATCHES * BATCH)},
                         CLASSES)
    tr, te = os.path.join(data_dir, "xmc_train.txt"), os.path.join(data_dir, "xmc_test.txt")
    n_train, n_test, features, labels = XMC_SHAPE
    write_synthetic_xmc(tr, te, n_train, n_test, features, labels, labels_per_point=2,
                        features_per_point=6, seed=5)
    prepare_xmc(tr, te, os.path.join(data_dir, "xmc.h5"), valid_fraction=0.1)
    from engine.data.prepare import prepare_text
    texts = {"train": CORPUS_TEXT * 14, "valid": CORPUS_TEXT, "test": CORPUS_TEXT * 2}
    for split, text in texts.items():
        with open(os.path.join(data_dir, f"corpus_{split}.txt"), "w") as f:
            f.write(text)
    prepare_text([os.path.join(data_dir, "corpus_train.txt")],
                 [os.path.join(data_dir, "corpus_valid.txt")],
                 [os.path.join(data_dir, "corpus_test.txt")], os.path.join(data_dir, "corpus.h5"))
    return data_dir
