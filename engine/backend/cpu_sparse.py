"""CPU loops (numba) of meProp's per-example products: what `Backend.meprop_products` runs.

Given a row-sparse output gradient in ELL form, idx (B, K) ascending column ids per row and
vals (B, K) their values (dy~ = the dense (B, O) matrix with vals at idx, zero elsewhere):

    dx         = dy~ W           (B, I)      reads only the selected rows of W (O, I)
    dW[rows_u] = dy~[:, rows_u]^T x  (U, I)  over the U distinct selected columns, ascending

Two ways, chosen by size: two numba loops (dx row by row; dW over the transposed pattern, one
output row per thread, no atomics), or, when at most UNION_GAIN x k distinct rows can be
selected (large k), two BLAS products over their union. Without numba (or for other dtypes) a
plain NumPy expression.
"""
from __future__ import annotations

import numpy

try:
    import numba
except Exception:  # pragma: no cover - numba is a declared dependency
    numba = None

#: CPU per-example products: the numba gathers cost about this many times more per multiply-add
#: than BLAS (measured, one thread, h = 2048, B = 1024: 0.34 vs 0.02 ns), so when the selected
#: rows can number at most UNION_GAIN x k, one dense product over them is faster.
UNION_GAIN = 12


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _transpose_pattern(flat_e, n_out):
        """Counting sort of the selected columns: rows_u (U,) ascending, indptr (U+1,), and
        order (E,): the flat positions grouped by column (ascending positions within one)."""
        counts = numpy.zeros(n_out, dtype=numpy.int64)
        for e in range(flat_e.shape[0]):
            counts[flat_e[e]] += 1
        n_u = 0
        for j in range(n_out):
            if counts[j] > 0:
                n_u += 1
        rows_u = numpy.empty(n_u, dtype=numpy.int64)
        indptr = numpy.zeros(n_u + 1, dtype=numpy.int64)
        slot = numpy.full(n_out, -1, dtype=numpy.int64)
        u = 0
        for j in range(n_out):
            if counts[j] > 0:
                rows_u[u] = j
                slot[j] = u
                indptr[u + 1] = indptr[u] + counts[j]
                u += 1
        fill = indptr[:-1].copy()
        order = numpy.empty(flat_e.shape[0], dtype=numpy.int64)
        for e in range(flat_e.shape[0]):
            s = slot[flat_e[e]]
            order[fill[s]] = e
            fill[s] += 1
        return rows_u, indptr, order

    @numba.njit(cache=True, nogil=True, parallel=True)
    def _dx_gather(dx_bi, idx_bk, val_bk, W_oi):
        n_b, n_k = idx_bk.shape
        n_i = W_oi.shape[1]
        for b in numba.prange(n_b):
            for j in range(n_k):
                r = idx_bk[b, j]
                v = val_bk[b, j]
                for i in range(n_i):
                    dx_bi[b, i] += v * W_oi[r, i]

    @numba.njit(cache=True, nogil=True, parallel=True)
    def _dw_rows(out_ui, indptr, order, val_e, x_bi, n_k):
        n_u = out_ui.shape[0]
        n_i = x_bi.shape[1]
        for u in numba.prange(n_u):         # one output row per thread: no atomics
            for e in range(indptr[u], indptr[u + 1]):
                f = order[e]
                b = f // n_k
                v = val_e[f]
                for i in range(n_i):
                    out_ui[u, i] += v * x_bi[b, i]



def _per_example_union(idx, vals, x, W, need_dx):
    """The same products as dense BLAS ones over the union U of the selected rows:
    dy~[:, U] (B, U) scattered from vals, dW[U] = dy~[:, U]^T x, dx = dy~[:, U] W[U]."""
    B = idx.shape[0]
    present = numpy.zeros(W.shape[0], dtype=bool)
    present[idx.reshape(-1)] = True
    rows_u = numpy.flatnonzero(present)
    column = numpy.cumsum(present) - 1                  # row id -> its column in dy~[:, U]
    dy_u = numpy.zeros((B, rows_u.size), dtype=vals.dtype)
    numpy.put_along_axis(dy_u, column[idx], vals, axis=1)   # a row's k indices are distinct
    dx = dy_u @ W[rows_u] if need_dx else None
    return rows_u.astype(numpy.int64), dy_u.T @ x, dx


def products(idx_bk, vals_bk, x_bi, W_oi, need_dx=True):
    """(rows_u (U,) int64 ascending, dW_u (U, I), dx (B, I) or None)."""
    B, K = idx_bk.shape
    O, I = W_oi.shape
    dt = numpy.result_type(vals_bk.dtype, x_bi.dtype, W_oi.dtype)
    idx = numpy.ascontiguousarray(idx_bk, dtype=numpy.int64)
    vals = numpy.ascontiguousarray(vals_bk, dtype=dt)
    x = numpy.ascontiguousarray(x_bi, dtype=dt)
    W = numpy.ascontiguousarray(W_oi, dtype=dt)
    if min(O, B * K) < UNION_GAIN * K:       # few distinct rows possible: BLAS over their union
        return _per_example_union(idx, vals, x, W, need_dx)
    if numba is None or dt not in (numpy.float32, numpy.float64):
        rows_u, inverse = numpy.unique(idx.reshape(-1), return_inverse=True)
        dW_u = numpy.zeros((rows_u.size, I), dtype=dt)
        numpy.add.at(dW_u, inverse.reshape(-1), (vals[:, :, None] * x[:, None, :]).reshape(-1, I))
        dx = numpy.einsum("bk,bki->bi", vals, W[idx]) if need_dx else None
        return rows_u, dW_u, dx
    rows_u, indptr, order = _transpose_pattern(idx.reshape(-1), O)
    dW_u = numpy.zeros((rows_u.shape[0], I), dtype=dt)
    _dw_rows(dW_u, indptr, order, vals.reshape(-1), x, K)
    dx = None
    if need_dx:
        dx = numpy.zeros((B, I), dtype=dt)
        _dx_gather(dx, idx, vals, W)
    return rows_u, dW_u, dx
