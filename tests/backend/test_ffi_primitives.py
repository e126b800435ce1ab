"""Fixed fan-in primitives (engine/backend/numpy_ffi.py, cpu_ffi.py, cupy_ffi.py): every path of
every backend against the float64 NumPy reference, the index layouts the GPU paths rely on (CSC,
row-sorted CSR view) and the determinism of the CPU input gradient."""
from __future__ import annotations

import numpy
import pytest

from engine.backend import Backend, cpu_ffi
from engine.backend.numpy_ffi import build_csc, row_sort_permutation
from engine.layers import fixed_fanin_rewire as rewire_ops


def random_problem(rng, L=203, I=61, K=45, B=37, sorted_rows=True, dtype=numpy.float64):
    idx = rewire_ops.draw_distinct(rng, L, I, K)
    if not sorted_rows:
        idx = numpy.stack([rng.permutation(row) for row in idx]).astype(numpy.int32)
    w = rng.standard_normal((L, K)).astype(dtype)
    bias = rng.standard_normal(L).astype(dtype)
    x = rng.standard_normal((B, I)).astype(dtype)
    dy = rng.standard_normal((B, L)).astype(dtype)
    dy[:, rng.random(L) < 0.5] = 0                       # labels whose dy column is all zero
    return idx, w, bias, x, dy


def dense_reference(idx, w, bias, x, dy):
    """(y, dw, dx) in float64 through the dense (L, I) matrix the index and weights represent."""
    L, I = idx.shape[0], x.shape[1]
    W = numpy.zeros((L, I))
    numpy.add.at(W, (numpy.repeat(numpy.arange(L), idx.shape[1]), idx.reshape(-1)),
                 w.reshape(-1).astype(numpy.float64))
    x64, dy64 = x.astype(numpy.float64), dy.astype(numpy.float64)
    y = x64 @ W.T + bias.astype(numpy.float64)
    dW = dy64.T @ x64
    return y, numpy.take_along_axis(dW, idx.astype(numpy.int64), 1), dy64 @ W


@pytest.mark.parametrize("sorted_rows", [True, False])
@pytest.mark.parametrize("deterministic", [False, True])
def test_every_path_matches_the_dense_reference(backend, float_dtype, to_host, sorted_rows,
                                                deterministic, small_grid):
    rng = numpy.random.default_rng(3)
    idx, w, bias, x, dy = random_problem(rng, sorted_rows=sorted_rows, dtype=float_dtype)
    y_r, dw_r, dx_r = dense_reference(idx, w, bias, x, dy)
    index = backend.ffi_index(backend.asarray(idx), x.shape[1], rows_sorted=sorted_rows)
    xt = backend.asarray(numpy.ascontiguousarray(x.T))
    wd, bd, dyd = backend.asarray(w), backend.asarray(bias), backend.asarray(dy)
    tol = (dict(rtol=1e-10, atol=1e-10) if float_dtype == numpy.float64
           else dict(rtol=1e-4, atol=1e-4))
    for method in ("reference",) + tuple(backend.ffi_methods):
        y = backend.ffi_forward(xt, index, wd, bd, method=method)
        numpy.testing.assert_allclose(to_host(y), y_r, err_msg=method, **tol)
        for skip in (True, False):
            dw, dx = backend.ffi_backward(dyd, xt, index, wd, method=method, skip_zero=skip,
                                          deterministic=deterministic)
            numpy.testing.assert_allclose(to_host(dw), dw_r, err_msg=method, **tol)
            numpy.testing.assert_allclose(to_host(dx), dx_r, err_msg=method, **tol)
            assert to_host(dw).dtype == float_dtype and to_host(dx).dtype == float_dtype
        dw, none = backend.ffi_backward(dyd, xt, index, wd, method=method, need_input_grad=False)
        assert none is None
        numpy.testing.assert_allclose(to_host(dw), dw_r, err_msg=method, **tol)
        zero_cols = numpy.flatnonzero(~dy.any(axis=0))
        assert (to_host(dw)[zero_cols] == 0).all()
        if deterministic and method != "reference":
            again = backend.ffi_backward(dyd, xt, index, wd, method=method, deterministic=True)[1]
            numpy.testing.assert_array_equal(to_host(again), to_host(dx))


def test_the_view_stays_current_after_in_place_updates(backend, to_host):
    """The cuSPARSE CSR view is cached per index; it must follow in-place weight updates (the
    optimizer's) and be rebuilt for a new weight array."""
    rng = numpy.random.default_rng(4)
    for sorted_rows in (True, False):
        idx, w, bias, x, dy = random_problem(rng, L=40, I=17, K=5, B=6, sorted_rows=sorted_rows)
        index = backend.ffi_index(backend.asarray(idx), 17, rows_sorted=sorted_rows)
        xt = backend.asarray(numpy.ascontiguousarray(x.T))
        wd = backend.asarray(w.copy())
        for method in backend.ffi_methods:
            backend.ffi_forward(xt, index, wd, None, method=method)
            wd *= 2.0                                    # in place, as the optimizer does
            y = backend.ffi_forward(xt, index, wd, None, method=method)
            numpy.testing.assert_allclose(to_host(y), dense_reference(idx, 2 * w, 0 * bias, x, dy)[0],
                                          rtol=1e-12, atol=1e-12)
            other = backend.asarray(3.0 * w)
            y = backend.ffi_forward(xt, index, other, None, method=method)
            numpy.testing.assert_allclose(to_host(y), dense_reference(idx, 3 * w, 0 * bias, x, dy)[0],
                                          rtol=1e-12, atol=1e-12)
            wd[...] = backend.asarray(w)


def test_unknown_method_is_refused():
    be = Backend()
    index = be.ffi_index(numpy.zeros((2, 1), numpy.int32), 3)
    with pytest.raises(ValueError, match="not one of this backend's"):
        be.ffi_forward(numpy.zeros((3, 1)), index, numpy.zeros((2, 1)), method="kernel")
    with pytest.raises(ValueError, match="not one of this backend's"):
        be.ffi_backward(numpy.zeros((1, 2)), numpy.zeros((3, 1)), index, numpy.zeros((2, 1)),
                        method="cusparse")
    with pytest.raises(ValueError, match="int32"):
        be.ffi_index(numpy.zeros((2, 1), numpy.int64), 3)


def test_index_layouts_of_the_gpu_paths():
    """build_csc and row_sort_permutation are written against `xp`: run them with NumPy to check
    the layouts the GPU paths rely on (CSC order; the sorted CSR view of unsorted rows)."""
    import scipy.sparse
    rng = numpy.random.default_rng(8)
    L, K, I, B = 120, 9, 37, 5
    idx, w, bias, x, dy = random_problem(rng, L, I, K, B, sorted_rows=False)
    colptr, slots = build_csc(numpy, idx, I)
    assert colptr.dtype == numpy.int64 and slots.dtype == numpy.int32 and colptr[-1] == L * K
    dxt = numpy.zeros((I, B))
    for i in range(I):
        s = slots[colptr[i]:colptr[i + 1]]
        assert (numpy.diff(s) > 0).all() and (idx.reshape(-1)[s] == i).all()
        for slot in s:
            dxt[i] += w.reshape(-1)[slot] * dy[:, slot // K]
    numpy.testing.assert_allclose(dxt.T, dense_reference(idx, w, bias, x, dy)[2], rtol=1e-12)
    perm = row_sort_permutation(numpy, idx)
    indptr = numpy.arange(0, L * K + 1, K)
    W = scipy.sparse.csr_matrix((w.reshape(-1)[perm], idx.reshape(-1)[perm], indptr), shape=(L, I))
    assert W.has_sorted_indices and W.has_canonical_format
    dense = numpy.zeros((L, I))
    numpy.add.at(dense, (numpy.repeat(numpy.arange(L), K), idx.reshape(-1)), w.reshape(-1))
    numpy.testing.assert_allclose(W.toarray(), dense, rtol=1e-15)


def test_cpu_input_grad_parts_are_deterministic_across_thread_counts(monkeypatch):
    """The numba input gradient splits the labels into a fixed number of ranges with private
    buffers summed in order: bit-identical for 1 and 2 numba threads, equal to the reference."""
    numba = pytest.importorskip("numba")
    monkeypatch.setattr(cpu_ffi, "CHUNK", 4)            # several parts at a small size
    rng = numpy.random.default_rng(3)
    L, I, K, B = 97, 40, 5, 6
    idx = numpy.stack([rng.choice(I, K, replace=False) for _ in range(L)]).astype(numpy.int32)
    w = rng.standard_normal((L, K)).astype(numpy.float32)
    x = rng.standard_normal((B, I)).astype(numpy.float32)
    dy = rng.standard_normal((B, L)).astype(numpy.float32)
    dy[:, ::3] = 0                                   # skipped labels
    assert cpu_ffi.input_grad_parts((I, B), numpy.float32, L) > 1
    xt = numpy.ascontiguousarray(x.T)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            results.append(cpu_ffi.backward(dy, xt, idx, w)[1])
    finally:
        numba.set_num_threads(before)
    numpy.testing.assert_array_equal(results[0], results[1])
    ref = dense_reference(idx, w, numpy.zeros(L), x, dy)[2]
    numpy.testing.assert_allclose(results[0], ref, rtol=1e-5, atol=1e-5)
