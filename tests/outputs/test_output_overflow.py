"""Softmax-based output layers on logits whose exp overflows: the exact softmax (whole, chunked,
fused SGD update: loss, gradients, log_prob, log_softmax, predict_topk) and the adaptive softmax
(loss, gradients, log_prob, log_softmax, predict_topk), with every logit shifted by a bias of
SHIFT[dtype] (+120 in float32, where exp overflows above 88.7; +1000 in float64, above 709.8).

Softmax is invariant to adding one constant to every logit of a row, so the right answer is that
of the unshifted layer. The references are written here in float64 with the plain formulas
(lse = log sum exp x, no stabilisation) on the small logits (the layer's rounded parameters with
the shift taken back off, exactly). A layer path that forgets the max subtraction returns inf or
NaN. Each body runs on every backend (`backend` fixture).
"""
from __future__ import annotations

import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from engine.outputs import make_output

SHIFT = {numpy.dtype(numpy.float32): 120.0, numpy.dtype(numpy.float64): 1000.0}
# losses and log-probabilities are differences of numbers near SHIFT (absolute error about
# SHIFT x machine epsilon); probabilities and gradients keep their relative precision
VALUE_ATOL = {numpy.dtype(numpy.float32): 2e-4, numpy.dtype(numpy.float64): 1e-10}
GRAD_TOL = {numpy.dtype(numpy.float32): dict(rtol=2e-4, atol=2e-6),
            numpy.dtype(numpy.float64): dict(rtol=1e-9, atol=1e-12)}

D, d, B = 23, 5, 9


def _inputs(rng, dtype, n_classes=D):
    h = (0.7 * rng.standard_normal((B, d))).astype(dtype)
    t = rng.integers(0, n_classes, size=B).astype(numpy.int64)
    t[3] = -1
    t[0], t[1] = 0, n_classes - 1
    return h, t


def _host64(backend, a):
    return backend.to_host(a).astype(numpy.float64)


def _shift_bias(layer, name, shift):
    """Add `shift` to bias `name`; return the float64 bias without it (exact: Sterbenz)."""
    layer.params[name] += layer.dtype.type(shift)
    return _host64(layer.backend, layer.params[name]) - shift


def _softmax_reference(h64, W64, b64, t):
    """Plain float64 softmax cross-entropy on small logits: loss, dh, dW, db, lse, logits."""
    x = h64 @ W64.T + b64
    lse = numpy.log(numpy.exp(x).sum(axis=1))
    valid = t >= 0
    n = max(int(valid.sum()), 1)
    rows = numpy.arange(len(t))
    loss = ((lse - x[rows, numpy.maximum(t, 0)]) * valid).sum() / n
    G = numpy.exp(x - lse[:, None])
    G[rows[valid], t[valid]] -= 1.0
    G[~valid] = 0.0
    G /= n
    return loss, G @ W64, G.T @ h64, G.sum(axis=0), lse, x


SOFTMAX_MODES = {"whole": {}, "chunked": {"chunk_size": 4}, "chunked-one-column": {"chunk_size": 1}}


@pytest.mark.parametrize("mode", sorted(SOFTMAX_MODES))
def test_softmax_output_overflowing_logits(backend, float_dtype, to_host, mode):
    rng = numpy.random.default_rng(0)
    layer = make_output("softmax", d, D, **SOFTMAX_MODES[mode]).bind(
        backend, numpy.random.default_rng(1), float_dtype)
    b64 = _shift_bias(layer, "b", SHIFT[float_dtype])
    h, t = _inputs(rng, float_dtype)
    h64, W64 = h.astype(numpy.float64), _host64(backend, layer.params["W"])
    loss_ref, dh_ref, dW_ref, db_ref, lse_ref, x_ref = _softmax_reference(h64, W64, b64, t)
    hd, td = backend.asarray(h), backend.asarray(t)

    loss = float(to_host(layer.forward(hd, td)))
    assert numpy.isfinite(loss)
    assert abs(loss - loss_ref) <= VALUE_ATOL[float_dtype], (loss, loss_ref)
    dh = to_host(layer.backward())
    assert_allclose(dh, dh_ref, **GRAD_TOL[float_dtype])
    assert_allclose(to_host(layer.grads["W"]), dW_ref, **GRAD_TOL[float_dtype])
    assert_allclose(to_host(layer.grads["b"]), db_ref, **GRAD_TOL[float_dtype])

    valid = t >= 0
    logp_ref = (x_ref[numpy.arange(B), numpy.maximum(t, 0)] - lse_ref) * valid
    for chunk in (None, 3):
        logp = to_host(layer.log_prob(hd, td, chunk_size=chunk))
        assert_allclose(logp, logp_ref, rtol=0, atol=VALUE_ATOL[float_dtype])
    lsm = to_host(layer.log_softmax(hd, 2, 19))
    assert_allclose(lsm, (x_ref - lse_ref[:, None])[:, 2:19], rtol=0, atol=VALUE_ATOL[float_dtype])
    ids, vals = layer.predict_topk(hd, 4, chunk_size=5)
    ids, vals = to_host(ids), to_host(vals)
    assert_array_equal(ids, numpy.argsort(-x_ref, axis=1, kind="stable")[:, :4])
    assert_allclose(vals, numpy.take_along_axis(x_ref - lse_ref[:, None], ids, 1), rtol=0,
                    atol=VALUE_ATOL[float_dtype])


def test_softmax_fused_sgd_overflowing_logits(backend, float_dtype, to_host):
    """The fused SGD update applies W -= lr dW, b -= lr db chunk by chunk: with overflowing
    logits the step must still be the plain one."""
    rng = numpy.random.default_rng(2)
    lr = 0.3
    layer = make_output("softmax", d, D, chunk_size=6, update="fused-sgd").bind(
        backend, numpy.random.default_rng(3), float_dtype)
    b64 = _shift_bias(layer, "b", SHIFT[float_dtype])
    h, t = _inputs(rng, float_dtype)
    h64, W64 = h.astype(numpy.float64), _host64(backend, layer.params["W"])
    loss_ref, dh_ref, dW_ref, db_ref, _, _ = _softmax_reference(h64, W64, b64, t)
    layer.prepare_update(lr)
    loss = float(to_host(layer.forward(backend.asarray(h), backend.asarray(t))))
    assert abs(loss - loss_ref) <= VALUE_ATOL[float_dtype], (loss, loss_ref)
    dh = to_host(layer.backward())
    assert_allclose(dh, dh_ref, **GRAD_TOL[float_dtype])
    assert_allclose(_host64(backend, layer.params["W"]), W64 - lr * dW_ref, **GRAD_TOL[float_dtype])
    b_after = _host64(backend, layer.params["b"]) - SHIFT[float_dtype]
    assert_allclose(b_after, b64 - lr * db_ref, rtol=0,
                    atol=VALUE_ATOL[float_dtype] + GRAD_TOL[float_dtype]["atol"])


# ------------------------------------------------------------------------ adaptive softmax
CUTOFFS = [6, 14]          # head: words 0..5 + 2 cluster tokens; tails [6, 14) and [14, 23)


def _adaptive_reference(layer, shift):
    """Full float64 log-distribution (B, D) as a function of h, from the layer's parameters with
    the shift taken off every bias (plain formulas, small logits)."""
    be = layer.backend
    p = {k: _host64(be, v) for k, v in layer.params.items()}
    head_b = p["head_b"] - shift
    tail_b = [p[f"out{i}_b"] - shift for i in range(len(CUTOFFS))]
    bounds = CUTOFFS + [D]

    def log_softmax(x):
        return x - numpy.log(numpy.exp(x).sum(axis=1, keepdims=True))

    def full(h64):
        head = log_softmax(h64 @ p["head_W"].T + head_b)
        out = numpy.empty((h64.shape[0], D))
        out[:, :CUTOFFS[0]] = head[:, :CUTOFFS[0]]
        for i in range(len(CUTOFFS)):
            z = (h64 @ p[f"proj{i}_W"].T) @ p[f"out{i}_W"].T + tail_b[i]
            out[:, bounds[i]:bounds[i + 1]] = head[:, CUTOFFS[0] + i, None] + log_softmax(z)
        return out
    return full


def _adaptive_pair(backend, dtype):
    def build():
        return make_output("adaptive", d, D, cutoffs=CUTOFFS, div_value=2.0, head_bias=True,
                           tail_bias=True).bind(backend, numpy.random.default_rng(4), dtype)
    plain, shifted = build(), build()
    rng = numpy.random.default_rng(5)
    for name in shifted.params:                  # non-zero biases, then the shift on top
        if name.endswith("_b"):
            noise = backend.asarray(rng.standard_normal(shifted.params[name].shape).astype(dtype))
            plain.params[name] += noise
            shifted.params[name] += noise
            shifted.params[name] += dtype.type(SHIFT[dtype])
    return plain, shifted


def test_adaptive_overflowing_logits(backend, float_dtype, to_host):
    plain, layer = _adaptive_pair(backend, float_dtype)
    rng = numpy.random.default_rng(6)
    h, t = _inputs(rng, float_dtype)
    t[2], t[4], t[5] = 7, 15, 22                 # rows in both tails
    full = _adaptive_reference(layer, SHIFT[float_dtype])(h.astype(numpy.float64))
    valid = t >= 0
    logp_ref = full[numpy.arange(B), numpy.maximum(t, 0)] * valid
    atol = VALUE_ATOL[float_dtype]
    hd, td = backend.asarray(h), backend.asarray(t)

    loss = float(to_host(layer.forward(hd, td)))
    assert abs(loss - (-logp_ref.sum() / valid.sum())) <= atol, loss
    dh = to_host(layer.backward())
    plain.forward(hd, td)
    dh_plain = to_host(plain.backward())
    assert numpy.all(numpy.isfinite(dh))
    assert_allclose(dh, dh_plain, **GRAD_TOL[float_dtype])
    assert set(layer.grads) == set(plain.grads)
    for name, g in layer.grads.items():
        assert_allclose(to_host(g), to_host(plain.grads[name]), err_msg=name,
                        **GRAD_TOL[float_dtype])

    assert_allclose(to_host(layer.log_prob(hd, td)), logp_ref, rtol=0, atol=atol)
    for chunk in (None, 2):
        lsm = to_host(layer.log_softmax(hd, 3, 20, chunk_size=chunk))
        assert_allclose(lsm, full[:, 3:20], rtol=0, atol=atol)
    ids, vals = layer.predict_topk(hd, 3)
    ids, vals = to_host(ids), to_host(vals)
    assert_array_equal(ids, numpy.argsort(-full, axis=1, kind="stable")[:, :3])
    assert_allclose(vals, numpy.take_along_axis(full, ids, 1), rtol=0, atol=atol)
