"""Exact softmax output: finite differences, chunked == whole, log_prob, top-k."""
import numpy
import pytest

from engine.backend import Backend
from engine.outputs import SoftmaxOutput
from gradcheck import check_output_gradients


def make(D=13, d=6, chunk=None, bias=True, seed=0, dtype=numpy.float64):
    out = SoftmaxOutput(d, D, bias=bias, chunk_size=chunk)
    out.bind(Backend(), numpy.random.default_rng(seed), dtype)
    if bias:
        out.params["b"][:] = numpy.random.default_rng(seed + 1).standard_normal(D)
    return out


def reference_loss(out, h, t):
    logits = h @ out.params["W"].T + (out.params["b"] if out.use_bias else 0)
    m = logits.max(1, keepdims=True)
    lse = m[:, 0] + numpy.log(numpy.exp(logits - m).sum(1))
    valid = t >= 0
    return ((lse - logits[numpy.arange(len(t)), numpy.maximum(t, 0)]) * valid).sum() / max(valid.sum(), 1)


@pytest.mark.parametrize("chunk", [None, 1, 4, 13, 100])
@pytest.mark.parametrize("bias", [True, False])
def test_softmax_finite_difference(chunk, bias):
    out = make(chunk=chunk, bias=bias)
    rng = numpy.random.default_rng(2)
    h = rng.standard_normal((5, 6))
    t = numpy.array([0, 12, 3, 3, 7])
    assert abs(float(out.forward(h, t, train=False)) - reference_loss(out, h, t)) < 1e-12
    check_output_gradients(out, h, t)


def test_softmax_ignored_rows_contribute_nothing():
    out = make(chunk=5)
    rng = numpy.random.default_rng(3)
    h = rng.standard_normal((4, 6))
    t = numpy.array([2, -1, 11, -1])
    loss = out.forward(h, t)
    dh = out.backward()
    numpy.testing.assert_allclose(float(loss), reference_loss(out, h, t), rtol=1e-12)
    assert numpy.all(dh[[1, 3]] == 0)
    check_output_gradients(out, h, t)


@pytest.mark.parametrize("dtype,tol", [(numpy.float64, 1e-12), (numpy.float32, 2e-5)])
@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_equals_whole(dtype, tol, chunk):
    D, d, B = 50, 8, 9
    whole, chunked = make(D, d, None, dtype=dtype), make(D, d, chunk, dtype=dtype)
    rng = numpy.random.default_rng(4)
    h = rng.standard_normal((B, d)).astype(dtype)
    t = rng.integers(0, D, B)
    lw, lc = float(whole.forward(h, t)), float(chunked.forward(h, t))
    dhw, dhc = whole.backward(), chunked.backward()
    assert dhw.dtype == dhc.dtype == dtype
    assert abs(lw - lc) <= tol * abs(lw)
    for a, b in [(dhw, dhc), (whole.grads["W"], chunked.grads["W"]), (whole.grads["b"], chunked.grads["b"])]:
        numpy.testing.assert_allclose(b, a, rtol=tol * 10, atol=tol)


def test_log_prob_and_topk():
    out = make(D=20, d=5, chunk=6)
    rng = numpy.random.default_rng(5)
    h = rng.standard_normal((3, 5))
    logits = h @ out.params["W"].T + out.params["b"]
    logp = logits - numpy.log(numpy.exp(logits).sum(1, keepdims=True))
    t = numpy.array([0, 19, 7])
    numpy.testing.assert_allclose(out.log_prob(h, t), logp[numpy.arange(3), t], rtol=1e-12)
    numpy.testing.assert_allclose(numpy.exp(out.log_softmax(h)).sum(1), 1.0, rtol=1e-12)
    ids, vals = out.predict_topk(h, 4, chunk_size=3)
    expect = numpy.argsort(-logp, axis=1)[:, :4]
    numpy.testing.assert_array_equal(ids, expect)
    numpy.testing.assert_allclose(vals, numpy.take_along_axis(logp, expect, 1), rtol=1e-12)


def test_softmax_rejects_bad_shapes():
    out = make()
    with pytest.raises(ValueError, match="expected h"):
        out.forward(numpy.zeros((2, 5)), numpy.zeros(2, int))
    with pytest.raises(ValueError, match="targets must be"):
        out.forward(numpy.zeros((2, 6)), numpy.zeros(3, int))


@pytest.mark.parametrize("chunk", [None, 4, 13])
@pytest.mark.parametrize("block_bytes", [2 ** 24, 3 * 6 * 8])     # default, and 3-row update blocks
def test_fused_sgd_update_equals_plain_sgd_step(chunk, block_bytes, monkeypatch):
    import engine.outputs.softmax as softmax_module
    monkeypatch.setattr(softmax_module, "UPDATE_BLOCK_BYTES", block_bytes)
    """update='fused-sgd' applies exactly W -= lr dW, b -= lr db inside backward, same dh."""
    plain, fused = make(chunk=chunk), SoftmaxOutput(6, 13, chunk_size=chunk, update="fused-sgd")
    fused.bind(Backend(), numpy.random.default_rng(0), numpy.float64)
    fused.params["b"][:] = plain.params["b"]
    assert fused.owns_update and not plain.owns_update
    rng = numpy.random.default_rng(7)
    lr = 0.3
    for step in range(5):
        h = rng.standard_normal((5, 6))
        t = rng.integers(-1, 13, 5)
        lp, lf = float(plain.forward(h, t)), float(fused.forward(h, t))
        dhp = plain.backward()
        fused.prepare_update(lr)
        dhf = fused.backward()
        assert abs(lp - lf) < 1e-12
        numpy.testing.assert_allclose(dhf, dhp, rtol=1e-12, atol=1e-14)
        plain.params["W"] -= lr * plain.grads["W"]
        plain.params["b"] -= lr * plain.grads["b"]
        numpy.testing.assert_allclose(fused.params["W"], plain.params["W"], rtol=1e-12, atol=1e-14)
        numpy.testing.assert_allclose(fused.params["b"], plain.params["b"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk", [None, 4])
def test_float32_layer_returns_float32(chunk):
    # every value of a float32 layer stays float32 (a float64 running max or lse would double the
    # memory and disagree with the GPU kernels, which take the layer's dtype)
    out = make(D=20, d=5, chunk=chunk, dtype=numpy.float32)
    rng = numpy.random.default_rng(8)
    h = rng.standard_normal((3, 5)).astype(numpy.float32)
    t = numpy.array([0, 19, 7])
    assert out.forward(h, t).dtype == numpy.float32
    assert out.backward().dtype == numpy.float32
    assert out.log_prob(h, t).dtype == numpy.float32
    assert out.log_softmax(h).dtype == numpy.float32
    ids, vals = out.predict_topk(h, 4)
    assert ids.dtype == numpy.int64 and vals.dtype == numpy.float32


@pytest.mark.parametrize("chunk", [None, 4])
def test_backward_needs_a_fresh_training_forward(chunk):
    # backward consumes the cache: a second backward (or one after forward(train=False)) must not
    # silently reuse the previous batch
    out = make(chunk=chunk)
    h, t = numpy.random.default_rng(9).standard_normal((4, 6)), numpy.array([1, 2, 3, 4])
    out.forward(h, t)
    out.backward()
    with pytest.raises(RuntimeError, match="without a forward"):
        out.backward()
    out.forward(h, t, train=False)
    with pytest.raises(RuntimeError, match="without a forward"):
        out.backward()
