"""CPU hot loops that NumPy does badly, compiled with numba (pure-NumPy fallback if absent).

The loops of one technique live beside its NumPy mixin (cpu_ffi.py for the fixed fan-in layer,
cpu_sparse.py for meProp's per-example products); these are the shared ones.

scatter_add_rows: out[ids[n], :] += rows[n, :] with duplicate ids accumulated. NumPy's
`out[ids] += rows` keeps one contribution per duplicate; `np.add.at` is correct but slow.
select_by_threshold: the per-row top-k selection of `Backend.topk` once each row's k-th largest
key is known (the keys above it, then the lowest-index ties).
adam_step / adam_step_rows: one pass over param, m, v and grad (NumPy's expression makes about
ten passes and several temporaries, a quarter of a PTB training step). Every scalar is rounded to
the array's dtype first and the operations are those of `Backend.adam_step` in the same order, so
the results equal NumPy's bit for bit (no fastmath, no FMA contraction); rows run in parallel.
"""
from __future__ import annotations

import numpy

try:  # numba is a declared dependency; the fallback keeps `import engine` working without it
    import numba
except Exception:  # pragma: no cover - exercised only where numba cannot be imported
    numba = None


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _scatter_add_rows_2d(out_vd, ids_n, rows_nd):
        n_rows = ids_n.shape[0]
        width = rows_nd.shape[1]
        for n in range(n_rows):
            r = ids_n[n]
            for j in range(width):
                out_vd[r, j] += rows_nd[n, j]


if numba is not None:
    @numba.njit(cache=True, nogil=True, parallel=True)
    def _adam_flat(p, m, v, g, b1, one_minus_b1, b2, one_minus_b2, lr_c1, c2, eps, decay):
        for i in numba.prange(p.shape[0]):
            mi = m[i] * b1
            mi += one_minus_b1 * g[i]
            vi = v[i] * b2
            vi += one_minus_b2 * (g[i] * g[i])
            m[i] = mi
            v[i] = vi
            pi = p[i] * decay
            pi -= lr_c1 * mi / (numpy.sqrt(vi / c2) + eps)
            p[i] = pi

    @numba.njit(cache=True, nogil=True, parallel=True)
    def _adam_rows(p, m, v, rows, g, b1, one_minus_b1, b2, one_minus_b2, lr_c1, c2, eps, decay):
        width = p.shape[1]
        for n in numba.prange(rows.shape[0]):
            r = rows[n]
            for j in range(width):
                mi = m[r, j] * b1
                mi += one_minus_b1 * g[n, j]
                vi = v[r, j] * b2
                vi += one_minus_b2 * (g[n, j] * g[n, j])
                m[r, j] = mi
                v[r, j] = vi
                pi = p[r, j] * decay
                pi -= lr_c1 * mi / (numpy.sqrt(vi / c2) + eps)
                p[r, j] = pi


if numba is not None:
    @numba.njit(cache=True, nogil=True, parallel=True)
    def _select_by_threshold(out_bk, key_bo, thr_b):
        """Per row: every key above the row's K-th largest `thr`, then the first keys equal to
        it in index order until K are taken (ties to the lowest index, as the GPU kernel);
        NaN ranks above every number (as numpy.partition and the kernel's key put it) and NaNs
        tie with each other. Indices come out ascending."""
        n_b, n_o = key_bo.shape
        n_k = out_bk.shape[1]
        for b in numba.prange(n_b):
            t = thr_b[b]
            t_nan = t != t
            above = 0
            for j in range(n_o):
                v = key_bo[b, j]
                if not t_nan and (v != v or v > t):
                    above += 1
            take_eq = n_k - above
            pos = 0
            for j in range(n_o):
                v = key_bo[b, j]
                if t_nan:
                    gt, eq = False, v != v
                else:
                    gt, eq = (v != v or v > t), v == t
                if gt or (eq and take_eq > 0):
                    if not gt:
                        take_eq -= 1
                    out_bk[b, pos] = j
                    pos += 1


def select_by_threshold(key_bo, thr_b, k):
    """(B, k) int64 ascending column indices: per row the keys above thr[b] and the first keys
    equal to it (NaN above every number). numba; None when numba cannot take these arrays."""
    if numba is None or key_bo.dtype not in (numpy.float32, numpy.float64):
        return None
    out = numpy.empty((key_bo.shape[0], int(k)), dtype=numpy.int64)
    _select_by_threshold(out, key_bo, numpy.ascontiguousarray(thr_b, dtype=key_bo.dtype))
    return out


def adam_scalars(dtype, lr, beta1, beta2, eps, step, weight_decay):
    """The step's scalars, each rounded to `dtype` as NumPy rounds a Python float operand."""
    t = numpy.dtype(dtype).type
    c1 = 1 - beta1 ** step
    c2 = 1 - beta2 ** step
    return (t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(lr / c1), t(c2), t(eps),
            t(1 - lr * weight_decay))


def adam_fast_path(*arrays):
    """True when numba can take these arrays: one float dtype, one shape (no broadcasting),
    C-contiguous NumPy arrays."""
    dt, shape = arrays[0].dtype, arrays[0].shape
    return (numba is not None and dt in (numpy.float32, numpy.float64)
            and all(isinstance(a, numpy.ndarray) and a.dtype == dt and a.shape == shape
                    and a.flags.c_contiguous for a in arrays))


def adam_step(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay):
    """Fused dense Adam step in place (see `Backend.adam_step`); arrays of one shape."""
    s = adam_scalars(param.dtype, lr, beta1, beta2, eps, step, weight_decay)
    _adam_flat(param.reshape(-1), m.reshape(-1), v.reshape(-1), grad.reshape(-1), *s)


def adam_step_rows(param, rows_n, grad_nd, m, v, lr, beta1, beta2, eps, step, weight_decay):
    """Lazy Adam on unique `rows_n` in place (see `Backend.adam_step_rows`)."""
    s = adam_scalars(param.dtype, lr, beta1, beta2, eps, step, weight_decay)
    width = int(numpy.prod(param.shape[1:], dtype=numpy.int64))
    _adam_rows(param.reshape(param.shape[0], width), m.reshape(m.shape[0], width),
               v.reshape(v.shape[0], width), numpy.asarray(rows_n, dtype=numpy.int64).reshape(-1),
               numpy.ascontiguousarray(grad_nd).reshape(-1, width), *s)


def scatter_add_rows(out_vd, ids_n, rows_nd):
    """In place: out[ids[n]] += rows[n] (duplicates accumulate). Checks ids are in range."""
    ids_n = numpy.asarray(ids_n).reshape(-1)
    if ids_n.size == 0:
        return out_vd
    lo, hi = ids_n.min(), ids_n.max()
    if lo < 0 or hi >= out_vd.shape[0]:
        raise IndexError(f"scatter_add_rows: ids span [{lo}, {hi}] but the table has "
                         f"{out_vd.shape[0]} rows")
    rows2 = rows_nd.reshape(ids_n.shape[0], -1)
    out2 = out_vd.reshape(out_vd.shape[0], -1)
    if (numba is not None and out2.flags.c_contiguous and rows2.dtype == out2.dtype
            and out2.dtype in (numpy.float32, numpy.float64)):
        _scatter_add_rows_2d(out2, ids_n.astype(numpy.int64, copy=False),
                             numpy.ascontiguousarray(rows2))
        if out2 is not out_vd and not numpy.shares_memory(out2, out_vd):
            out_vd[...] = out2.reshape(out_vd.shape)
    else:
        numpy.add.at(out2, ids_n, rows2)
        if not numpy.shares_memory(out2, out_vd):
            out_vd[...] = out2.reshape(out_vd.shape)
    return out_vd
