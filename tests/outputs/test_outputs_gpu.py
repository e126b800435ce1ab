"""NumPy vs CuPy for output-layer paths no other GPU test covers: the softmax output with meProp,
its predict_topk (chunk merges, exact ties, NaN) and log_softmax / log_prob, the dense
spherical / Taylor / Z-loss references, and squared error with K-hot targets.

Each test body runs on the `backend` fixture (tests/conftest.py) and compares with the NumPy
reference in float64 (tests/backend_compare.py): a float32 run against float64 on the CPU checks
the tolerance, the "cupy" case (marked gpu, skipped without one) the GPU path. Shapes: h (B, d),
D classes, targets (B,) or (B, K) padded with -1.
"""
from __future__ import annotations

import numpy
import pytest
from numpy.testing import assert_array_equal

from backend_compare import REFERENCE, assert_close, grads_of, host
from engine.optim import SGD
from engine.outputs import make_output


def run_steps(backend, name, dtype, batches, d, D, lr=0.1, **kw):
    """A fresh output layer trained by SGD on `batches` [(h, targets)]: returns the layer and one
    record per step {"loss", "dh", "grad_<param>", "rows_<param>" (row-sparse rows)}."""
    layer = make_output(name, d, D, **kw).bind(backend, numpy.random.default_rng(0), dtype)
    opt = SGD(lr=lr).bind(backend)
    records = []
    for step, (h, t) in enumerate(batches):
        layer.set_random_key(11, step)
        loss = layer.forward(backend.asarray(h.astype(dtype)), backend.asarray(t))
        dh = layer.backward()
        rec = {"loss": host(loss), "dh": host(dh)}
        for pname, g in layer.grads.items():
            rec[f"grad_{pname}"] = host(g)
            if hasattr(g, "rows"):
                rec[f"rows_{pname}"] = numpy.unique(host(g.rows))
        records.append(rec)
        opt.step([(pname, layer.params[pname], layer.grads.get(pname)) for pname in layer.params])
        layer.zero_grads()
    return layer, records


def compare_runs(backend, name, dtype, batches, d, D, **kw):
    layer, got = run_steps(backend, name, dtype, batches, d, D, **kw)
    ref_batches = [(h.astype(dtype).astype(numpy.float64), t) for h, t in batches]
    ref, want = run_steps(REFERENCE, name, numpy.float64, ref_batches, d, D, **kw)
    for step, (g, w) in enumerate(zip(got, want)):
        assert set(g) == set(w), (step, sorted(g), sorted(w))
        for key in w:
            if key.startswith("rows_"):
                assert_array_equal(g[key], w[key], err_msg=f"step {step} {key}")
            else:
                assert_close(g[key], w[key], dtype, err_msg=f"step {step} {key}")
    for pname in ref.params:
        assert_close(layer.params[pname], ref.params[pname], dtype, err_msg=f"param {pname}")
    return layer, ref


def batches_of(rng, steps, B, d, D, K=None, ignored=True):
    out = []
    for _ in range(steps):
        h = rng.standard_normal((B, d))
        if K is None:
            t = rng.integers(0, D, B)
            if ignored:
                t[1] = -1
        else:
            t = rng.integers(0, D, (B, K))
            t[0, 1:] = -1                      # padding
            t[2, 1] = t[2, 0]                  # a label named twice
            t[3, :] = -1                       # a row without labels
        out.append((h, t.astype(numpy.int64)))
    return out


# ------------------------------------------------------------------ softmax with meProp
@pytest.mark.parametrize("mode", ["per-example", "unified", "random"])
def test_softmax_meprop_matches_reference(backend, float_dtype, mode):
    """meProp on the output layer (whole mode): loss, dh, the row-sparse dW (the selected rows
    exactly), the full db, and the SGD steps. float32 takes one step: a later selection may
    differ from float64's where two |gradients| are within rounding."""
    rng = numpy.random.default_rng(1)
    steps = 3 if float_dtype == numpy.float64 else 1
    batches = batches_of(rng, steps, B=33, d=16, D=300)
    compare_runs(backend, "softmax", float_dtype, batches, 16, 300,
                 meprop={"k": 10, "mode": mode, "seed": 4})


# ------------------------------------------------------------ softmax predict_topk, log_softmax
def exact_data(rng, B, d, D):
    """h and W in multiples of 1/2 and 1/4 with |entries| <= 1: every logit is exact in float32
    whatever the order of the sums, so ties between columns are exact on every backend."""
    h = rng.integers(-2, 3, (B, d)) * 0.5
    W = rng.integers(-2, 3, (D, d)) * 0.25
    return h, W


def host_log_softmax(h, W, b):
    z = h @ W.T + b
    m = z.max(axis=1, keepdims=True)
    return z - (m + numpy.log(numpy.exp(z - m).sum(axis=1, keepdims=True)))


def stable_topk_ids(scores, k):
    """Best first, NaN above every number, equal scores by ascending id."""
    nan = numpy.isnan(scores)
    key = numpy.where(nan, 0.0, scores)
    ids = numpy.empty((scores.shape[0], k), dtype=numpy.int64)
    for r in range(scores.shape[0]):
        ids[r] = numpy.lexsort((numpy.arange(scores.shape[1]), -key[r], ~nan[r]))[:k]
    return ids


@pytest.mark.parametrize("chunk_size", [None, 64, 7])
def test_softmax_predict_topk_ties_across_chunks(backend, float_dtype, chunk_size):
    """predict_topk over vocabulary chunks with exact ties (duplicated rows of W in different
    chunks, many equal logits): the ids equal a stable sort of the exact logits on the host, the
    log-probabilities their log-softmax."""
    rng = numpy.random.default_rng(2)
    B, d, D, k = 19, 8, 300, 12
    h, W = exact_data(rng, B, d, D)
    W[130] = W[260] = W[5]
    W[299] = W[0]
    out = make_output("softmax", d, D, chunk_size=50).bind(backend, rng, float_dtype)
    out.params["W"][...] = backend.asarray(W.astype(float_dtype))
    b = numpy.zeros(D)
    b[::7] = 0.5                                 # exact too
    out.params["b"][...] = backend.asarray(b.astype(float_dtype))
    hb = backend.asarray(h.astype(float_dtype))
    ids, logp = out.predict_topk(hb, k, chunk_size=chunk_size)
    ref = host_log_softmax(h, W, b)
    want = stable_topk_ids(ref, k)
    assert host(ids).dtype == numpy.int64
    assert_array_equal(host(ids), want)
    assert_close(logp, numpy.take_along_axis(ref, want, 1), float_dtype)
    assert_close(out.log_softmax(hb), ref, float_dtype)
    assert_close(out.log_softmax(hb, 40, 170), ref[:, 40:170], float_dtype)
    t = rng.integers(0, D, B)
    t[3] = -1
    want_lp = numpy.where(t >= 0, ref[numpy.arange(B), t], 0.0)
    assert_close(out.log_prob(hb, backend.asarray(t)), want_lp, float_dtype)
    assert_close(out.log_prob(hb, backend.asarray(t), chunk_size=33), want_lp, float_dtype)


def test_softmax_predict_topk_with_a_nan_logit(backend, float_dtype):
    """A NaN weight row: its id ranks first in every row (NaN above every number), the other
    ids follow the exact order; every log-probability is NaN (the log-sum-exp is)."""
    rng = numpy.random.default_rng(3)
    B, d, D, k = 6, 8, 90, 5
    h, W = exact_data(rng, B, d, D)
    W[70] = numpy.nan
    out = make_output("softmax", d, D).bind(backend, rng, float_dtype)
    out.params["W"][...] = backend.asarray(W.astype(float_dtype))
    ids, logp = out.predict_topk(backend.asarray(h.astype(float_dtype)), k, chunk_size=32)
    assert_array_equal(host(ids), stable_topk_ids(h @ W.T, k))
    assert (host(ids)[:, 0] == 70).all() and numpy.isnan(host(logp)).all()


# ------------------------------------------------------------ dense spherical family, squared
@pytest.mark.parametrize("name", ["spherical-dense", "taylor-dense", "zloss-dense"])
@pytest.mark.parametrize("K", [None, 3])
def test_spherical_dense_family_matches_reference(backend, float_dtype, name, K):
    """Loss, dh, dW over 3 SGD steps, then log_prob (where the loss defines a likelihood) and
    predict_topk, for one target per row and for K-hot targets with padding and repeats."""
    rng = numpy.random.default_rng(4)
    d, D = 12, 80
    batches = batches_of(rng, 3, B=17, d=d, D=D, K=K, ignored=False)
    layer, ref = compare_runs(backend, name, float_dtype, batches, d, D, lr=0.05)
    h = rng.standard_normal((9, d))
    hb = backend.asarray(h.astype(float_dtype))
    if ref.has_likelihood:
        t = rng.integers(0, D, 9)
        assert_close(layer.log_prob(hb, backend.asarray(t)),
                     ref.log_prob(h.astype(float_dtype).astype(numpy.float64), t), float_dtype)
    ids, scores = layer.predict_topk(hb, 4)
    ref_ids, ref_scores = ref.predict_topk(h.astype(float_dtype).astype(numpy.float64), 4)
    assert_array_equal(host(ids), ref_ids)
    assert_close(scores, ref_scores, float_dtype)


@pytest.mark.parametrize("bias", [False, True])
def test_squared_error_k_hot_matches_reference(backend, float_dtype, bias):
    """Dense squared error with K = 3 targets per row (padding, a repeated label, an empty row):
    loss, dh, dW, db over 3 SGD steps, and predict_topk."""
    rng = numpy.random.default_rng(5)
    d, D = 10, 60
    batches = batches_of(rng, 3, B=15, d=d, D=D, K=3)
    layer, ref = compare_runs(backend, "squared", float_dtype, batches, d, D, lr=0.02, bias=bias)
    h = rng.standard_normal((7, d))
    ids, scores = layer.predict_topk(backend.asarray(h.astype(float_dtype)), 5)
    ref_ids, ref_scores = ref.predict_topk(h.astype(float_dtype).astype(numpy.float64), 5)
    assert_array_equal(host(ids), ref_ids)
    assert_close(scores, ref_scores, float_dtype)
