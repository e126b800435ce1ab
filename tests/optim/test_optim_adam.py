"""Adam(W): dense steps vs a float64 reference formula, the fused primitive, lazy row-sparse."""
import numpy
import pytest

from engine.backend import Backend, get_backend, gpu_available
from engine.row_sparse import RowSparseGrad
from engine.optim import Adam
from optim_reference import adam_reference


@pytest.mark.parametrize("dtype,tol", [(numpy.float64, 1e-12), (numpy.float32, 1e-5)])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_dense_adam_matches_reference(dtype, tol, wd):
    rng = numpy.random.default_rng(0)
    p0 = rng.standard_normal((6, 5)).astype(dtype)
    grads = [rng.standard_normal((6, 5)).astype(dtype) for _ in range(7)]
    opt = Adam(lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=wd).bind(Backend())
    p = p0.copy()
    for g in grads:
        opt.step([("w", p, g.copy())])
    ref_p, ref_m, ref_v = adam_reference(p0, grads, 0.01, 0.8, 0.95, 1e-6, wd)
    numpy.testing.assert_allclose(p, ref_p, rtol=tol, atol=tol)
    numpy.testing.assert_allclose(opt.state["m"]["w"], ref_m, rtol=tol, atol=tol)
    numpy.testing.assert_allclose(opt.state["v"]["w"], ref_v, rtol=tol, atol=tol)
    assert opt.state["m"]["w"].dtype == dtype


def _backends():
    backends = [pytest.param(Backend(), id="numpy")]
    ok, why = gpu_available()
    backends.append(pytest.param("gpu", id="gpu", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not ok, reason=f"no GPU: {why}")]))
    return backends


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype,tol", [(numpy.float64, 1e-12), (numpy.float32, 1e-5)])
def test_fused_adam_step_equals_reference(backend, dtype, tol):
    """backend.adam_step (the fused kernel on a GPU) over several steps == the formula."""
    if backend == "gpu":
        backend = get_backend("gpu")
    rng = numpy.random.default_rng(3)
    shape = (1031, 37)  # odd sizes, more than one grid on a GPU
    p0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(4)]
    p = backend.asarray(p0.copy())
    m, v = backend.zeros(shape, dtype), backend.zeros(shape, dtype)
    for t, g in enumerate(grads, start=1):
        backend.adam_step(p, backend.asarray(g), m, v, 3e-3, 0.9, 0.999, 1e-8, t, 0.01)
    ref_p, ref_m, ref_v = adam_reference(p0, grads, 3e-3, 0.9, 0.999, 1e-8, 0.01)
    numpy.testing.assert_allclose(backend.to_host(p), ref_p, rtol=tol, atol=tol)
    numpy.testing.assert_allclose(backend.to_host(m), ref_m, rtol=tol, atol=tol)
    numpy.testing.assert_allclose(backend.to_host(v), ref_v, rtol=tol, atol=tol)


def test_lazy_adam_leaves_untouched_rows_and_moments():
    backend = Backend()
    rng = numpy.random.default_rng(4)
    p0 = rng.standard_normal((10, 3))
    p = p0.copy()
    opt = Adam(lr=0.05).bind(backend)
    touched = numpy.array([1, 4, 7])
    for _ in range(3):
        opt.step([("e", p, RowSparseGrad(touched, rng.standard_normal((3, 3)), (10, 3)))])
    untouched = numpy.setdiff1d(numpy.arange(10), touched)
    numpy.testing.assert_array_equal(p[untouched], p0[untouched])
    m_before, v_before = opt.state["m"]["e"].copy(), opt.state["v"]["e"].copy()
    assert numpy.all(m_before[touched] != 0)
    # now touch only row 4: rows 1 and 7 and their moments must not move (dense Adam would)
    p_before = p.copy()
    opt.step([("e", p, RowSparseGrad(numpy.array([4]), numpy.ones((1, 3)), (10, 3)))])
    for r in (1, 7):
        numpy.testing.assert_array_equal(p[r], p_before[r])
        numpy.testing.assert_array_equal(opt.state["m"]["e"][r], m_before[r])
        numpy.testing.assert_array_equal(opt.state["v"]["e"][r], v_before[r])
    assert not numpy.allclose(p[4], p_before[4])


@pytest.mark.parametrize("dtype,tol", [(numpy.float64, 1e-13), (numpy.float32, 1e-6)])
def test_lazy_adam_equals_dense_adam_when_same_rows_always_touched(dtype, tol):
    backend = Backend()
    rng = numpy.random.default_rng(5)
    p0 = rng.standard_normal((12, 4)).astype(dtype)
    lazy_p, dense_p, mode_p = p0.copy(), p0.copy(), p0.copy()
    lazy = Adam(lr=0.02, weight_decay=0.0).bind(backend)
    dense = Adam(lr=0.02).bind(backend)
    dense_mode = Adam(lr=0.02, sparse_mode="dense").bind(backend)
    for _ in range(6):
        rows = numpy.array([2, 5, 9, 5, 2])  # duplicates, always the same row set
        values = rng.standard_normal((5, 4)).astype(dtype)
        grad = RowSparseGrad(rows, values, (12, 4))
        dense.step([("e", dense_p, grad.to_dense(backend))])
        lazy.step([("e", lazy_p, RowSparseGrad(rows, values.copy(), (12, 4)))])
        dense_mode.step([("e", mode_p, RowSparseGrad(rows, values.copy(), (12, 4)))])
    numpy.testing.assert_allclose(lazy_p, dense_p, rtol=tol, atol=tol)
    numpy.testing.assert_array_equal(mode_p, dense_p)


def test_dense_mode_keeps_moving_skipped_rows():
    backend = Backend()
    p_lazy, p_dense = numpy.zeros((3, 2)), numpy.zeros((3, 2))
    lazy, dense = Adam(lr=0.1).bind(backend), Adam(lr=0.1, sparse_mode="dense").bind(backend)
    for rows in ([0, 1], [1]):
        grad = RowSparseGrad(numpy.array(rows), numpy.ones((len(rows), 2)), (3, 2))
        lazy.step([("e", p_lazy, grad)])
        dense.step([("e", p_dense, RowSparseGrad(grad.rows, grad.values.copy(), grad.shape))])
    assert p_dense[0, 0] < p_lazy[0, 0]  # dense momentum moved row 0 again at step 2
    numpy.testing.assert_array_equal(p_dense[1], p_lazy[1])
    numpy.testing.assert_array_equal(p_dense[2], 0)


def test_adam_duplicate_rows_summed():
    backend = Backend()
    a, b = numpy.zeros((5, 2)), numpy.zeros((5, 2))
    opt_a, opt_b = Adam(lr=0.1).bind(backend), Adam(lr=0.1).bind(backend)
    rows = numpy.array([3, 0, 3])
    values = numpy.array([[1.0, -2.0], [0.5, 0.5], [3.0, 1.0]])
    opt_a.step([("e", a, RowSparseGrad(rows, values, (5, 2)))])
    opt_b.step([("e", b, RowSparseGrad(numpy.array([0, 3]),
                                       numpy.array([[0.5, 0.5], [4.0, -1.0]]), (5, 2),
                                       unique=True))])
    numpy.testing.assert_array_equal(a, b)
    numpy.testing.assert_array_equal(opt_a.state["m"]["e"], opt_b.state["m"]["e"])


def test_bias_correction_uses_global_step():
    """A row first touched at step 3 gets the step-3 bias correction (not a per-row count)."""
    backend = Backend()
    p = numpy.zeros((2, 1))
    opt = Adam(lr=0.1, beta1=0.9, beta2=0.999, eps=0.0).bind(backend)
    opt.step([("e", p, RowSparseGrad(numpy.array([0]), numpy.ones((1, 1)), (2, 1)))])
    opt.step([("e", p, RowSparseGrad(numpy.array([0]), numpy.ones((1, 1)), (2, 1)))])
    opt.step([("e", p, RowSparseGrad(numpy.array([1]), numpy.ones((1, 1)), (2, 1)))])
    m_hat = 0.1 / (1 - 0.9 ** 3)
    v_hat = 0.001 / (1 - 0.999 ** 3)
    numpy.testing.assert_allclose(p[1, 0], -0.1 * m_hat / numpy.sqrt(v_hat), rtol=1e-12)


def test_empty_row_sparse_grad_is_a_no_op():
    backend = Backend()
    p = numpy.ones((3, 2))
    opt = Adam().bind(backend)
    opt.step([("e", p, RowSparseGrad(numpy.zeros(0, numpy.int64), numpy.zeros((0, 2)), (3, 2)))])
    numpy.testing.assert_array_equal(p, 1)
    assert opt.step_count == 1
