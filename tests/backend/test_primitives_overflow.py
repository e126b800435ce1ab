"""The softmax primitives on logits whose exp overflows: every row is shifted by SHIFT[dtype]
(+120 in float32, where exp overflows above 88.7; +1000 in float64, where it overflows above
709.8), so a primitive that forgets to subtract the row maximum (or the log-sum-exp) returns inf
or NaN instead of the right answer.

The reference is independent of any stabilisation: softmax is shift-invariant, so it is computed
in float64 from the same (rounded) logits minus the shift, which are small, with the plain
formulas lse = log(sum exp x), loss = lse - x[t], grad = exp(x - lse) - onehot(t). Each body
runs on every backend (`backend` fixture: NumPy, and CuPy with the kernels on a GPU).
"""
from __future__ import annotations

import numpy
import pytest
from numpy.testing import assert_allclose

SHIFT = {numpy.dtype(numpy.float32): 120.0, numpy.dtype(numpy.float64): 1000.0}
# the loss is a difference of two numbers near SHIFT: its absolute error is about
# SHIFT * machine epsilon; the probabilities (from differences of logits) keep full precision
LOSS_ATOL = {numpy.dtype(numpy.float32): 1e-4, numpy.dtype(numpy.float64): 1e-10}
GRAD_TOL = {numpy.dtype(numpy.float32): dict(rtol=1e-4, atol=1e-6),
            numpy.dtype(numpy.float64): dict(rtol=1e-10, atol=1e-13)}


def shifted_logits(rng, n_rows, n_cols, dtype):
    """(logits in dtype, every entry >= SHIFT - 15; the same logits minus SHIFT in float64)."""
    dtype = numpy.dtype(dtype)
    logits = (3.0 * rng.standard_normal((n_rows, n_cols)) + SHIFT[dtype]).astype(dtype)
    assert logits.min() > {numpy.float32: 100, numpy.float64: 980}[dtype.type]
    return logits, logits.astype(numpy.float64) - SHIFT[dtype]      # exact (Sterbenz)


def plain_reference(x64, targets, scale):
    """Loss (B,), gradient (B, C) and lse (B,) from small logits, with no stabilisation."""
    e = numpy.exp(x64)
    lse = numpy.log(e.sum(axis=1))
    grad = e / e.sum(axis=1, keepdims=True)
    loss = numpy.zeros(x64.shape[0])
    for b, t in enumerate(targets):
        if t >= 0:
            loss[b] = lse[b] - x64[b, t]
            grad[b, t] -= 1.0
            grad[b] *= scale
        else:
            grad[b] = 0.0
    return loss, grad, lse


def _targets(rng, n_rows, n_cols):
    t = rng.integers(0, n_cols, size=n_rows).astype(numpy.int64)
    t[::4] = -1
    return t


@pytest.mark.parametrize("n_rows,n_cols", [(1, 1), (6, 7), (9, 777), (3, 5000)])
def test_fused_softmax_xent_overflowing_logits(backend, float_dtype, to_host, n_rows, n_cols):
    rng = numpy.random.default_rng(0)
    logits, x64 = shifted_logits(rng, n_rows, n_cols, float_dtype)
    targets = _targets(rng, n_rows, n_cols)
    scale = 0.5
    loss_ref, grad_ref, _ = plain_reference(x64, targets, scale)
    dev = backend.asarray(logits.copy())
    loss = to_host(backend.softmax_xent_fused(dev, backend.asarray(targets), scale))
    grad = to_host(dev)
    assert numpy.all(numpy.isfinite(loss)) and numpy.all(numpy.isfinite(grad))
    assert_allclose(loss, loss_ref, rtol=0, atol=LOSS_ATOL[float_dtype])
    assert_allclose(grad, grad_ref, **GRAD_TOL[float_dtype])


def test_fused_softmax_xent_one_huge_logit_among_small_ones(backend, float_dtype, to_host):
    """One entry far above the rest (a confident row): p = 1 there, 0 elsewhere, loss 0 when it
    is the target and (big - other) when it is not, with no overflow on the way."""
    big = SHIFT[float_dtype]
    logits = numpy.zeros((3, 5), dtype=float_dtype)
    logits[:, 2] = big
    targets = numpy.array([2, 0, -1])
    dev = backend.asarray(logits.copy())
    loss = to_host(backend.softmax_xent_fused(dev, backend.asarray(targets), 1.0))
    assert_allclose(loss, [0.0, big, 0.0], rtol=1e-6, atol=1e-6)
    expected = numpy.zeros((3, 5))
    expected[1, 2], expected[1, 0] = 1.0, -1.0
    assert_allclose(to_host(dev), expected, atol=1e-6)


@pytest.mark.parametrize("n_rows,n_cols,chunk", [(5, 300, 64), (2, 9, 4), (7, 1000, 1000)])
def test_chunked_logsumexp_and_grad_overflowing_logits(backend, float_dtype, to_host,
                                                       n_rows, n_cols, chunk):
    """logsumexp_chunk_update over chunks, then softmax_xent_grad_chunk with that lse: the loss
    and the gradient of the whole row, though exp(logit) overflows everywhere."""
    rng = numpy.random.default_rng(1)
    logits, x64 = shifted_logits(rng, n_rows, n_cols, float_dtype)
    # a later chunk holds a larger maximum than the first one (the running max must rescale)
    logits[:, -1] += float_dtype.type(10)
    x64[:, -1] = logits[:, -1].astype(numpy.float64) - SHIFT[float_dtype]
    targets = _targets(rng, n_rows, n_cols)
    targets[-1] = n_cols - 1
    scale = 1.0 / n_rows
    loss_ref, grad_ref, lse_ref = plain_reference(x64, targets, scale)

    dev_t = backend.asarray(targets)
    run_max = backend.asarray(numpy.full(n_rows, -numpy.inf, dtype=float_dtype))
    run_sum = backend.zeros((n_rows,), float_dtype)
    target_logit = backend.zeros((n_rows,), float_dtype)
    for a in range(0, n_cols, chunk):
        b = min(a + chunk, n_cols)
        backend.logsumexp_chunk_update(backend.asarray(logits[:, a:b].copy()), a, dev_t,
                                       run_max, run_sum, target_logit)
    lse_dev = run_max + backend.xp.log(run_sum)
    lse = to_host(lse_dev).astype(numpy.float64)
    assert numpy.all(numpy.isfinite(lse))
    assert_allclose(lse - SHIFT[float_dtype], lse_ref, rtol=0, atol=LOSS_ATOL[float_dtype])
    valid = targets >= 0
    loss = (lse - to_host(target_logit).astype(numpy.float64)) * valid
    assert_allclose(loss, loss_ref, rtol=0, atol=LOSS_ATOL[float_dtype])

    grads = []
    for a in range(0, n_cols, chunk):
        b = min(a + chunk, n_cols)
        g = backend.asarray(logits[:, a:b].copy())
        backend.softmax_xent_grad_chunk(g, a, dev_t, lse_dev, scale)
        grads.append(to_host(g))
    grad = numpy.concatenate(grads, axis=1)
    assert numpy.all(numpy.isfinite(grad))
    assert_allclose(grad, grad_ref, **GRAD_TOL[float_dtype])


def test_grad_chunk_with_a_given_overflowing_lse(backend, float_dtype, to_host):
    """softmax_xent_grad_chunk alone: exp(logit - lse), never exp(logit) / exp(lse)."""
    rng = numpy.random.default_rng(2)
    logits, x64 = shifted_logits(rng, 4, 6, float_dtype)
    lse64 = numpy.log(numpy.exp(x64).sum(axis=1))
    lse = (lse64 + SHIFT[float_dtype]).astype(float_dtype)
    targets = numpy.array([9, 2, -1, 5])  # columns [4, 10): 9 and 5 inside, 2 outside, -1 ignored
    dev = backend.asarray(logits.copy())
    backend.softmax_xent_grad_chunk(dev, 4, backend.asarray(targets), backend.asarray(lse), 1.0)
    lse_used = lse.astype(numpy.float64) - SHIFT[float_dtype]
    expected = numpy.exp(x64 - lse_used[:, None])
    expected[3, 5 - 4] -= 1.0
    expected[0, 9 - 4] -= 1.0
    expected[2] = 0.0
    got = to_host(dev)
    assert numpy.all(numpy.isfinite(got))
    assert_allclose(got, expected, **GRAD_TOL[float_dtype])
