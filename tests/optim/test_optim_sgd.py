"""SGD: dense plain/momentum/Nesterov/weight decay vs a float64 reference; row-sparse steps."""
import numpy
import pytest

from engine.backend import Backend
from engine.row_sparse import RowSparseGrad
from engine.optim import SGD
from optim_reference import sgd_reference


def _grads(rng, shape, n, dtype):
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n)]


@pytest.mark.parametrize("dtype,tol", [(numpy.float64, 1e-13), (numpy.float32, 2e-6)])
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                                  (0.9, True, 0.0), (0.5, True, 0.01),
                                                  (0.0, False, 0.1)])
def test_dense_sgd_matches_reference(dtype, tol, momentum, nesterov, wd):
    rng = numpy.random.default_rng(0)
    p0 = rng.standard_normal((7, 5)).astype(dtype)
    b0 = rng.standard_normal((5,)).astype(dtype)
    gw, gb = _grads(rng, (7, 5), 6, dtype), _grads(rng, (5,), 6, dtype)
    opt = SGD(lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd).bind(Backend())
    w, b = p0.copy(), b0.copy()
    w_ref, b_ref = w, b
    for t in range(6):
        lr = opt.step([("w", w, gw[t].copy()), ("b", b, gb[t].copy()), ("skip", w, None)])
        assert lr == 0.05
    assert w is w_ref and b is b_ref and w.dtype == dtype  # updated in place
    assert opt.step_count == 6
    numpy.testing.assert_allclose(w, sgd_reference(p0, gw, 0.05, momentum, nesterov, wd),
                                  rtol=tol, atol=tol)
    numpy.testing.assert_allclose(b, sgd_reference(b0, gb, 0.05, momentum, nesterov, wd),
                                  rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_row_sparse_sgd_equals_dense_on_densified_grad_exactly(dtype):
    rng = numpy.random.default_rng(1)
    backend = Backend()
    p0 = rng.standard_normal((20, 4)).astype(dtype)
    dense_p, sparse_p = p0.copy(), p0.copy()
    dense_opt = SGD(lr=0.3).bind(backend)
    sparse_opt = SGD(lr=0.3).bind(backend)
    for _ in range(5):
        rows = rng.integers(0, 20, size=9)  # duplicates on purpose
        values = rng.standard_normal((9, 4)).astype(dtype)
        grad = RowSparseGrad(rows, values, (20, 4))
        dense_opt.step([("e", dense_p, grad.to_dense(backend))])
        sparse_opt.step([("e", sparse_p, RowSparseGrad(rows, values.copy(), (20, 4)))])
    numpy.testing.assert_array_equal(sparse_p, dense_p)


def test_row_sparse_duplicates_are_summed():
    backend = Backend()
    p = numpy.zeros((4, 2))
    grad = RowSparseGrad(numpy.array([1, 3, 1, 1]),
                         numpy.array([[1.0, 2.0], [5.0, 5.0], [10.0, 20.0], [100.0, 200.0]]),
                         (4, 2))
    SGD(lr=1.0).bind(backend).step([("e", p, grad)])
    numpy.testing.assert_array_equal(p, [[0, 0], [-111, -222], [0, 0], [-5, -5]])


@pytest.mark.parametrize("nesterov", [False, True])
def test_row_sparse_lazy_momentum(nesterov):
    """Touched rows follow the dense momentum formula on their own history; untouched rows and
    their buffers stay put (dense momentum would keep moving them)."""
    backend = Backend()
    rng = numpy.random.default_rng(2)
    p0 = rng.standard_normal((6, 3))
    p = p0.copy()
    opt = SGD(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01).bind(backend)
    schedule = [[0, 2], [2], [0, 2, 4], [2]]
    grads = {r: [] for r in range(6)}
    for rows in schedule:
        values = rng.standard_normal((len(rows), 3))
        for r, val in zip(rows, values):
            grads[r].append(val)
        opt.step([("e", p, RowSparseGrad(numpy.array(rows), values, (6, 3)))])
    buf = opt.state["momentum"]["e"]
    for r in range(6):
        expect = sgd_reference(p0[r], grads[r], 0.1, 0.9, nesterov, 0.01)
        numpy.testing.assert_allclose(p[r], expect, rtol=1e-13, atol=1e-13)
    for r in (1, 3, 5):
        numpy.testing.assert_array_equal(p[r], p0[r])
        numpy.testing.assert_array_equal(buf[r], 0)
    # row 2 touched every step: identical to dense momentum on the densified gradient
    dense_p = p0.copy()
    dense = SGD(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01,
                sparse_mode="dense").bind(backend)
    rng = numpy.random.default_rng(2)
    rng.standard_normal((6, 3))
    for rows in schedule:
        values = rng.standard_normal((len(rows), 3))
        dense.step([("e", dense_p, RowSparseGrad(numpy.array(rows), values, (6, 3)))])
    numpy.testing.assert_allclose(dense_p[2], p[2], rtol=1e-13, atol=1e-13)
    assert not numpy.allclose(dense_p[0], p[0])  # row 0 skipped a step: dense keeps moving it


def test_row_sparse_weight_decay_touches_only_rows():
    backend = Backend()
    p = numpy.ones((3, 2))
    SGD(lr=0.5, weight_decay=0.2).bind(backend).step(
        [("e", p, RowSparseGrad(numpy.array([1]), numpy.zeros((1, 2)), (3, 2)))])
    numpy.testing.assert_allclose(p, [[1, 1], [0.9, 0.9], [1, 1]])


def test_errors():
    backend = Backend()
    with pytest.raises(RuntimeError, match="bind"):
        SGD().step([("w", numpy.zeros(2), numpy.zeros(2))])
    opt = SGD().bind(backend)
    with pytest.raises(ValueError, match="shape"):
        opt.step([("w", numpy.zeros(2), numpy.zeros(3))])
    with pytest.raises(ValueError, match="twice"):
        opt.step([("w", numpy.zeros(2), numpy.zeros(2)), ("w", numpy.zeros(2), numpy.zeros(2))])
    with pytest.raises(ValueError):
        SGD(nesterov=True)
