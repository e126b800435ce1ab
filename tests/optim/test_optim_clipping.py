"""Global-norm clipping over dense and row-sparse grads, and weight decay variants."""
import numpy
import pytest

from engine.backend import Backend
from engine.row_sparse import RowSparseGrad
from engine.optim import SGD, Adam
from engine.optim import clipping


def _problem(rng, dtype):
    w = rng.standard_normal((5, 4)).astype(dtype)
    e = rng.standard_normal((9, 4)).astype(dtype)
    gw = rng.standard_normal((5, 4)).astype(dtype)
    rows = numpy.array([3, 1, 3, 8])
    vals = rng.standard_normal((4, 4)).astype(dtype)
    return w, e, gw, rows, vals


def _reference_norm(gw, rows, vals, shape):
    dense = numpy.zeros(shape)
    numpy.add.at(dense, rows, vals.astype(numpy.float64))
    return numpy.sqrt(numpy.sum(gw.astype(numpy.float64) ** 2) + numpy.sum(dense ** 2))


@pytest.mark.parametrize("dtype,tol", [(numpy.float64, 1e-13), (numpy.float32, 1e-6)])
@pytest.mark.parametrize("clip", [0.5, 1e6])
def test_clipped_sgd_matches_reference(dtype, tol, clip):
    rng = numpy.random.default_rng(0)
    w, e, gw, rows, vals = _problem(rng, dtype)
    norm = _reference_norm(gw, rows, vals, e.shape)
    scale = min(1.0, clip / (norm + 1e-6))
    dense_ge = numpy.zeros(e.shape)
    numpy.add.at(dense_ge, rows, vals.astype(numpy.float64))
    w_ref = w - 0.1 * scale * gw.astype(numpy.float64)
    e_ref = e - 0.1 * scale * dense_ge
    opt = SGD(lr=0.1, clip_norm=clip).bind(Backend())
    opt.step([("w", w, gw.copy()), ("e", e, RowSparseGrad(rows, vals.copy(), e.shape)),
              ("none", w, None)])
    numpy.testing.assert_allclose(opt.grad_norm(), norm, rtol=tol)
    numpy.testing.assert_allclose(w, w_ref, rtol=tol, atol=tol)
    numpy.testing.assert_allclose(e, e_ref, rtol=tol, atol=tol)


def test_clipped_gradient_has_norm_clip_and_norm_is_device_scalar():
    backend = Backend()
    rng = numpy.random.default_rng(1)
    _, e, gw, rows, vals = _problem(rng, numpy.float64)
    grads = [gw.copy(), RowSparseGrad(rows, vals.copy(), e.shape).coalesced(backend)]
    norm = clipping.clip_grads_(backend, grads, 0.25)
    assert numpy.ndim(norm) == 0
    after = clipping.global_grad_norm(backend, grads)
    numpy.testing.assert_allclose(after, 0.25, rtol=1e-5)
    numpy.testing.assert_allclose(norm, _reference_norm(gw, rows, vals, e.shape), rtol=1e-13)


def test_sum_of_squares_chunks(monkeypatch):
    monkeypatch.setattr(clipping, "CHUNK", 7)
    x = numpy.arange(50, dtype=numpy.float32).reshape(5, 10)
    numpy.testing.assert_allclose(clipping.sum_of_squares(numpy, x),
                                  numpy.sum(x.astype(numpy.float64) ** 2), rtol=1e-15)


def test_clipped_adam_matches_reference():
    from optim_reference import adam_reference
    rng = numpy.random.default_rng(2)
    p0 = rng.standard_normal((4, 3))
    grads = [3 * rng.standard_normal((4, 3)) for _ in range(3)]
    clipped = [g * min(1.0, 1.0 / (numpy.linalg.norm(g) + 1e-6)) for g in grads]
    p = p0.copy()
    opt = Adam(lr=0.01, clip_norm=1.0).bind(Backend())
    norms = []
    for g in grads:
        opt.step([("w", p, g.copy())])
        norms.append(opt.grad_norm())
    numpy.testing.assert_allclose(norms, [numpy.linalg.norm(g) for g in grads], rtol=1e-13)
    numpy.testing.assert_allclose(p, adam_reference(p0, clipped, 0.01)[0], rtol=1e-12)


def test_no_clipping_records_no_norm():
    opt = SGD(lr=0.1).bind(Backend())
    opt.step([("w", numpy.zeros(3), numpy.ones(3))])
    assert opt.last_grad_norm is None and opt.grad_norm() is None


def test_adam_weight_decay_is_decoupled():
    """With a zero gradient, AdamW only shrinks the param by (1 - lr * wd)."""
    p = numpy.full((2, 2), 2.0)
    Adam(lr=0.1, weight_decay=0.5).bind(Backend()).step([("w", p, numpy.zeros((2, 2)))])
    numpy.testing.assert_allclose(p, 2.0 * (1 - 0.05), rtol=1e-15)


def test_sgd_weight_decay_is_l2_in_the_gradient():
    p = numpy.full(3, 2.0)
    SGD(lr=0.1, weight_decay=0.5).bind(Backend()).step([("w", p, numpy.ones(3))])
    numpy.testing.assert_allclose(p, 2.0 - 0.1 * (1.0 + 0.5 * 2.0), rtol=1e-15)
