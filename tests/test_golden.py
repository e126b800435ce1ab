"""Golden numbers: the float64 CPU result of a few training steps of every model kind and output
layer, pinned to 1e-12 relative.

Every other end-to-end test compares two runs made in one process (same seed, resume, CPU
against GPU) or checks a loose threshold, so a change that shifts every run the same way (the
initialisation, the data order, a constant of a loss, the optimizer's arithmetic) passes them
all. Here each case trains a tiny model (Engine.train, 2 epochs of 6 batches of 16, data drawn
in this file from a fixed seed, nothing read from disk) and compares with the table below: the
mean training loss of the last epoch, the evaluation loss (Engine.evaluate on held-out data) and
one metric (perplexity for a likelihood, else top-1 accuracy from predict_topk, for a
classifier accuracy, for multi-label P@1).

Updating the numbers on purpose (a deliberate change of initialisation, data order, a loss, an
optimizer): run

    ENGINE_UPDATE_GOLDEN=1 python -m pytest -q -s tests/test_golden.py

Every case is then skipped (nothing is compared) and the whole new GOLDEN table is printed at
the end, ready to paste over the one below. Nothing is rewritten automatically. Say in the
commit message why the numbers moved; a change that was not meant to move them is a bug.
"""
from __future__ import annotations

import os
import sys

import numpy
import pytest
import scipy.sparse

from engine import Engine
from engine.data.arrays import batches_per_epoch, epoch_order
from engine.layers.sparse_linear import to_backend_csr
from engine.models import MLPClassifier, MLPLanguageModel
from engine.optim import SGD, Adam

UPDATE = os.environ.get("ENGINE_UPDATE_GOLDEN", "") not in ("", "0")
RTOL = 1e-12
EPOCHS, BATCH, N_TRAIN, N_EVAL = 2, 16, 96, 64

# ------------------------------------------------------------------------------ the cases
V, CONTEXT = 40, 3            # language models: vocabulary, context
F, C = 20, 5                  # dense classifier: features, classes
XF, XL, XK = 50, 30, 3        # XMC: features, labels, labels per example at most

LM_CASES = {
    "lm-softmax-whole": ("softmax", {}, "adam"),
    "lm-softmax-chunked": ("softmax", {"chunk_size": 7}, "sgd"),
    "lm-softmax-fused-sgd": ("softmax", {"chunk_size": 16, "update": "fused-sgd"}, "sgd"),
    "lm-squared": ("squared", {}, "adam"),
    "lm-adaptive": ("adaptive", {"cutoffs": [8, 20], "div_value": 2.0}, "adam"),
    "lm-factored-squared": ("factored-squared", {"lr": 0.02}, "adam"),
    "lm-factored-spherical": ("factored-spherical", {"lr": 0.05}, "adam"),
    "lm-factored-taylor": ("factored-taylor", {"lr": 0.05}, "adam"),
    "lm-factored-zloss": ("factored-zloss", {"lr": 0.5}, "adam"),
    "lm-spherical-dense": ("spherical-dense", {}, "adam"),
    "lm-taylor-dense": ("taylor-dense", {}, "adam"),
    "lm-zloss-dense": ("zloss-dense", {}, "adam"),
}
CLASSIFIER_CASES = {
    "clf-softmax": None,
    "clf-meprop-unified": {"k": 4, "mode": "unified", "seed": 1},
    "clf-meprop-per-example": {"k": 4, "mode": "per-example", "seed": 1},
    "clf-meprop-random": {"k": 4, "mode": "random", "seed": 1},
}
XMC_CASES = {
    "xmc-squared-hinge-dense": ("squared-hinge", {}),
    "xmc-squared-hinge-ffi": ("squared-hinge", {"weights": "ffi", "fan_in": 6, "rewire_every": 4}),
    "xmc-bce-dense": ("bce", {}),
    "xmc-bce-ffi": ("bce", {"weights": "ffi", "fan_in": 6, "rewire_every": 4}),
}

# ------------------------------------------------------------------------------ the numbers
# case: (mean training loss of the last epoch, evaluation loss, metric name, metric value)
GOLDEN = {
    'lm-softmax-whole': (3.627679596356316, 3.6908897472792606, 'perplexity', 40.08049260637345),
    'lm-softmax-chunked': (3.6058205312907767, 3.716443807958237, 'perplexity', 41.1179106147664),
    'lm-softmax-fused-sgd': (3.64343330962241, 3.6915144820016104, 'perplexity', 40.105540104999925),
    'lm-squared': (0.9777605217610512, 1.0119848069212705, 'top1', 0.03125),
    'lm-adaptive': (4.406227520857826, 4.358281601368855, 'perplexity', 78.12277294676572),
    'lm-factored-squared': (0.9956601693746432, 1.024456284617427, 'top1', 0.03125),
    'lm-factored-spherical': (3.414911576431246, 3.9260404190291265, 'perplexity', 50.70580590990832),
    'lm-factored-taylor': (3.660651022556434, 3.6857947191448006, 'perplexity', 39.87680071749484),
    'lm-factored-zloss': (12.475793340308407, 13.132921849033892, 'top1', 0.015625),
    'lm-spherical-dense': (3.293167762529416, 3.910911142471483, 'perplexity', 49.94443774669649),
    'lm-taylor-dense': (3.646295094989643, 3.6872936997779857, 'perplexity', 39.93662009232503),
    'lm-zloss-dense': (12.636236441585517, 13.12009114184332, 'top1', 0.0),
    'clf-softmax': (1.5155680791368187, 1.5639540935377, 'accuracy', 0.296875),
    'clf-meprop-unified': (1.5743123395312766, 1.5981125283108326, 'accuracy', 0.21875),
    'clf-meprop-per-example': (1.5228402537737846, 1.5722067959403683, 'accuracy', 0.296875),
    'clf-meprop-random': (1.5925865799710095, 1.60238670684619, 'accuracy', 0.265625),
    'xmc-squared-hinge-dense': (23.081932249680293, 18.968857002741053, 'p@1', 0.09375),
    'xmc-squared-hinge-ffi': (21.42504544098233, 17.88944704308949, 'p@1', 0.03125),
    'xmc-bce-dense': (7.248951310140267, 7.407864511503211, 'p@1', 0.0625),
    'xmc-bce-ffi': (7.267730896100448, 7.461564519427138, 'p@1', 0.0625),
}


# ------------------------------------------------------------------------------ data
def lm_data(seed):
    """Contexts (N, 3) and next words: a fixed function of the context, a fifth replaced."""
    rng = numpy.random.default_rng(seed)
    n = N_TRAIN + N_EVAL
    x = rng.integers(0, V, size=(n, CONTEXT)).astype(numpy.int32)
    y = ((3 * x[:, 0] + x[:, 1]) % V).astype(numpy.int32)
    noisy = rng.random(n) < 0.2
    y[noisy] = rng.integers(0, V, size=int(noisy.sum()))
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def classifier_data(seed):
    rng = numpy.random.default_rng(seed)
    n = N_TRAIN + N_EVAL
    x = rng.standard_normal((n, F))
    y = numpy.argmax(x @ rng.standard_normal((F, C)) + 0.5 * rng.standard_normal((n, C)), axis=1)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def xmc_data(seed):
    """Sparse bag-of-features rows (CSR) whose labels follow their first features."""
    rng = numpy.random.default_rng(seed)
    n = N_TRAIN + N_EVAL
    rows, cols, vals = [], [], []
    y = numpy.full((n, XK), -1, dtype=numpy.int64)
    for i in range(n):
        feats = rng.choice(XF, size=6, replace=False)
        rows += [i] * 6
        cols += list(feats)
        vals += list(rng.uniform(0.5, 1.5, size=6))
        labels = numpy.unique(feats[:rng.integers(1, XK + 1)] % XL)
        y[i, :labels.size] = labels
    x = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(n, XF))
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


class CSRLoader:
    """In-memory CSR minibatches with the loader protocol (epoch order as ArrayLoader's)."""

    def __init__(self, x, y, batch_size, shuffle, seed, backend):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.seed, self.backend = shuffle, seed, backend

    @property
    def num_examples(self):
        return self.x.shape[0]

    def __len__(self):
        return batches_per_epoch(self.num_examples, self.batch_size)

    def iter_from(self, epoch=0, start_batch=0):
        order = epoch_order(self.num_examples, self.shuffle, self.seed, epoch)
        for i in range(start_batch, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield to_backend_csr(self.backend, self.x[idx]), self.backend.asarray(self.y[idx])


# ------------------------------------------------------------------------------ runs
def _engine(model, optimizer):
    return Engine(model, optimizer, device="cpu", seed=3, dtype="float64", verbose=False)


def _top1(engine, x, y):
    ids, _ = engine.predict_topk(x, 1)
    return float(numpy.mean(numpy.asarray(ids)[:, 0] == y))


def run_lm(case):
    output, kwargs, opt = LM_CASES[case]
    model = MLPLanguageModel(V, context=CONTEXT, embed_dim=6, hidden=(12,), dropout=0.1,
                             output=output, output_kwargs=dict(kwargs))
    optimizer = Adam(lr=1e-2, clip_norm=5.0) if opt == "adam" else SGD(lr=0.2, momentum=0.9)
    engine = _engine(model, optimizer)
    train, held_out = lm_data(seed=11)
    history = engine.train(train, epochs=EPOCHS, batch_size=BATCH, progress=False)
    result = engine.evaluate(held_out, batch_size=32)
    if model.output.has_likelihood:
        metric = ("perplexity", result["perplexity"])
    else:
        metric = ("top1", _top1(engine, *held_out))
    return (history[-1]["train_loss"], result["loss"]) + metric


def run_classifier(case):
    meprop = CLASSIFIER_CASES[case]
    model = MLPClassifier(F, C, hidden=[16, 16], meprop=meprop)
    engine = _engine(model, Adam(lr=1e-2))
    train, held_out = classifier_data(seed=12)
    history = engine.train(train, epochs=EPOCHS, batch_size=BATCH, progress=False)
    result = engine.evaluate(held_out, batch_size=32)
    return history[-1]["train_loss"], result["loss"], "accuracy", result["accuracy"]


def run_xmc(case):
    output, kwargs = XMC_CASES[case]
    model = MLPClassifier(XF, XL, hidden=[16], sparse_input=True, intermediate=12, output=output,
                          output_kwargs=dict(kwargs))
    engine = _engine(model, Adam(lr=1e-2))
    (x, y), (xe, ye) = xmc_data(seed=13)
    be = engine.backend
    history = engine.train(CSRLoader(x, y, BATCH, True, engine.seed, be), epochs=EPOCHS,
                           batch_size=BATCH, progress=False)
    result = engine.evaluate(CSRLoader(xe, ye, 32, False, engine.seed, be))
    return history[-1]["train_loss"], result["loss"], "p@1", result["p@1"]


RUNNERS = {**{c: run_lm for c in LM_CASES}, **{c: run_classifier for c in CLASSIFIER_CASES},
           **{c: run_xmc for c in XMC_CASES}}
_new_table = {}


@pytest.fixture(scope="module", autouse=True)
def print_table_when_updating():
    yield
    if UPDATE and _new_table:
        lines = ["GOLDEN = {"]
        for case in RUNNERS:
            if case in _new_table:
                a, b, name, m = _new_table[case]
                lines.append(f"    {case!r}: ({a!r}, {b!r}, {name!r}, {m!r}),")
        lines.append("}")
        print("\n" + "\n".join(lines), file=sys.__stdout__, flush=True)


@pytest.mark.parametrize("case", list(RUNNERS))
def test_golden(case):
    got = RUNNERS[case](case)
    train_loss, eval_loss, metric, value = got
    assert all(numpy.isfinite(v) for v in (train_loss, eval_loss, value)), got
    if UPDATE:
        _new_table[case] = (float(train_loss), float(eval_loss), metric, float(value))
        pytest.skip("ENGINE_UPDATE_GOLDEN=1: new numbers printed at the end, nothing compared")
    assert case in GOLDEN, f"{case}: no golden numbers yet (ENGINE_UPDATE_GOLDEN=1, see the top)"
    want = GOLDEN[case]
    assert metric == want[2], (metric, want)
    for what, g, w in (("train loss", train_loss, want[0]), ("eval loss", eval_loss, want[1]),
                       (metric, value, want[3])):
        assert g == pytest.approx(w, rel=RTOL, abs=0), f"{case}: {what} {g!r} != golden {w!r}"


def test_golden_table_covers_every_case_and_nothing_else():
    if UPDATE:
        pytest.skip("ENGINE_UPDATE_GOLDEN=1")
    assert set(GOLDEN) == set(RUNNERS)
