"""meProp (Sun et al., ICML 2017; PAPERS.md section 3): top-k sparsified back-propagation.

For a linear layer y = x W^T + b, the backward pass keeps only k entries of each row of the
output gradient dy and back-propagates with that sparse dy~:

    dW = dy~^T x   touches only the selected rows of W     -> a RowSparseGrad
    dx = dy~ W     reads only the selected rows of W
    db = sum_b dy  the FULL gradient (the paper: element-wise parts stay exact)

Shapes: B batch, I in_features, O out_features (n in the paper), K kept entries (k).

Modes (the `meprop` dict of `Linear`: {"k": int, "mode": str, "seed": int}):
  "per-example"  each row keeps its own k largest |dy[b, :]|            -> idx (B, K)
  "unified"      one pattern S for the minibatch: the k columns with the largest
                 sum_b |dy[b, j]|                                       -> S (K,) ascending
  "random"       k distinct uniform indices per row (the paper's baseline), drawn from
                 counter-based random numbers keyed by (seed, model seed, step, layer, call):
                 reproducible, and the same on the CPU and the GPU.
With k >= O every mode is plain back-propagation (the Linear layer takes its dense path).

Products:
  unified       small dense products through BLAS/cuBLAS: dy[:, S] W[S] and dy[:, S]^T x.
  per-example   CPU: two numba loops (dx row by row; dW over the transposed pattern, one
                output row per thread, no atomics), or, when at most UNION_GAIN x k distinct
                rows can be selected (large k), two BLAS products over their union; GPU: cuSPARSE (cupyx.scipy.sparse) SpMM,
                CSR(dy~) @ W and CSR(dy~ on the compacted rows)^T @ x.
Selection:
  CPU  numpy.partition for each row's K-th largest |a|, then a numba pass that takes the
       entries above it and the lowest-index ties (the GPU kernel's rule); numpy.argpartition
       when numba is missing or for other dtypes.
  GPU  rawkernels/topk_rows.cu: one block per row, radix select on the bits of |a|, then an
       ordered block compaction (indices come out ascending; ties at the threshold are broken
       towards the lowest index). Both devices return ascending indices and break ties the
       same way (exact zeros from ReLU are the common tie), so they select the same entries.

`masked_reference` is the dense specification the tests compare against: dy * mask, then the
plain products.
"""
from __future__ import annotations

import numpy

from .base import RowSparseGrad

try:
    import numba
except Exception:  # pragma: no cover - numba is a declared dependency
    numba = None

MODES = ("per-example", "unified", "random")


def check_config(meprop):
    """None, or a validated copy {"k": int, "mode": str, "seed": int} of a meProp setting.

    Extra key "output" (the model-wide option "also at the output layer") is accepted and
    dropped: it concerns the model, not one layer."""
    if meprop is None or meprop is False:
        return None
    if not isinstance(meprop, dict):
        raise TypeError(f"meprop: expected None or a dict {{'k', 'mode', 'seed'}}, got "
                        f"{type(meprop).__name__}")
    unknown = set(meprop) - {"k", "mode", "seed", "output"}
    if unknown:
        raise ValueError(f"meprop: unknown keys {sorted(unknown)} (known: k, mode, seed, output)")
    if "k" not in meprop:
        raise ValueError("meprop: 'k' (entries kept per row) is required")
    k = meprop["k"]
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"meprop: k must be a positive integer, got {k!r}")
    mode = meprop.get("mode", "per-example")
    if mode not in MODES:
        raise ValueError(f"meprop: mode must be one of {MODES}, got {mode!r}")
    return {"k": int(k), "mode": str(mode), "seed": int(meprop.get("seed", 0))}


# ------------------------------------------------------------------------------- selection
def _sorted_rows(xp, idx):
    return xp.sort(idx, axis=-1)


def topk_rows(backend, a_bo, k):
    """(B, K) int64: per row, the column indices of the k largest |a[b, :]|, ascending."""
    xp = backend.xp
    B, O = a_bo.shape
    k = int(k)
    if not 1 <= k <= O:
        raise ValueError(f"topk_rows: k must be in [1, {O}], got {k}")
    if xp is not numpy:
        return _topk_rows_gpu(backend, a_bo, k)
    if k == O:
        return numpy.broadcast_to(numpy.arange(O, dtype=numpy.int64), (B, O)).copy()
    if numba is not None and a_bo.dtype in (numpy.float32, numpy.float64):
        # numpy.partition finds each row's K-th largest |a| (NaN sorts last = largest); a numba
        # pass then takes the entries above it and the lowest-index ties, in index order
        key = numpy.abs(a_bo)
        thr = numpy.partition(key, O - k, axis=1)[:, O - k]
        out = numpy.empty((B, k), dtype=numpy.int64)
        _select_by_threshold(out, key, numpy.ascontiguousarray(thr))
        return out
    idx = numpy.argpartition(-numpy.abs(a_bo), k - 1, axis=1)[:, :k]
    return _sorted_rows(numpy, idx.astype(numpy.int64, copy=False))


def topk_unified(backend, dy_bo, k):
    """(K,) int64 ascending: the k columns with the largest sum_b |dy[b, j]|."""
    score = backend.xp.abs(dy_bo).sum(axis=0)
    return topk_rows(backend, score.reshape(1, -1), k)[0]


def random_rows(backend, B, O, k, key):
    """(B, K) int64 ascending: k distinct uniform column indices per row, a pure function of
    `key` (the same on every backend: the uniforms are counter-based, see random_hash.py)."""
    u = backend.uniform((int(B), int(O)), tuple(key), numpy.float64)
    return topk_rows(backend, u, k)     # the k largest of iid uniforms: a uniform k-subset


def _topk_rows_gpu(backend, a_bo, k):
    from ..backend import kernels
    xp = backend.xp
    a = xp.ascontiguousarray(a_bo)
    if a.dtype not in (numpy.float32, numpy.float64):
        a = a.astype(numpy.float32)
    B, O = a.shape
    idx = xp.empty((B, k), dtype=xp.int64)
    if B == 0:
        return idx
    grid, block = kernels.launch_rows(B)
    kernels.get_kernel("topk_rows.cu", "topk_rows", a.dtype)(
        grid, block, (idx, a, numpy.int64(B), numpy.int64(O), numpy.int64(k)))
    return idx


def select(backend, dy_bo, cfg, key):
    """The pattern of one backward: ("unified", S (K,)) or ("rows", idx (B, K))."""
    B, O = dy_bo.shape
    k = min(int(cfg["k"]), O)
    mode = cfg["mode"]
    if mode == "unified":
        return "unified", topk_unified(backend, dy_bo, k)
    if mode == "per-example":
        return "rows", topk_rows(backend, dy_bo, k)
    if mode == "random":
        return "rows", random_rows(backend, B, O, k, key)
    raise ValueError(f"meprop: unknown mode {mode!r}")


def selection_mask(backend, shape, kind, pattern):
    """Dense 0/1 mask (B, O) of a pattern from `select` (for references and tests)."""
    xp = backend.xp
    mask = xp.zeros(shape, dtype=numpy.float64)
    if kind == "unified":
        mask[:, pattern] = 1.0
    else:
        mask[xp.arange(shape[0])[:, None], pattern] = 1.0
    return mask


# -------------------------------------------------------------------------------- products
def unified_backward(backend, dy_bo, x_bi, W_oi, S_k, need_dx=True):
    """meProp backward with one pattern S for the batch -> (RowSparseGrad of W, dx (B, I) or
    None when not `need_dx`)."""
    dy_s = dy_bo[:, S_k]                       # (B, K)
    dx = dy_s @ W_oi[S_k] if need_dx else None   # W[S] (K, I): the only rows of W read
    dW_s = dy_s.T @ x_bi                       # (K, I)
    return RowSparseGrad(S_k, dW_s, tuple(W_oi.shape), unique=True), dx


def per_example_backward(backend, dy_bo, x_bi, W_oi, idx_bk, need_dx=True):
    """meProp backward with a pattern per row -> (RowSparseGrad of W over the union of the
    selected rows, ascending and unique; dx (B, I) or None when not `need_dx`)."""
    vals = backend.xp.take_along_axis(dy_bo, idx_bk, axis=1)       # (B, K)
    if backend.xp is numpy:
        rows_u, dW_u, dx = _per_example_cpu(idx_bk, vals, x_bi, W_oi, need_dx)
    else:
        rows_u, dW_u, dx = _per_example_gpu(backend, idx_bk, vals, x_bi, W_oi, need_dx)
    return RowSparseGrad(rows_u, dW_u, tuple(W_oi.shape), unique=True), dx


def meprop_backward(backend, dy_bo, x_bi, W_oi, cfg, key=(0, 0, 0), need_dx=True):
    """The weight gradient (RowSparseGrad) and dx (None unless `need_dx`) of a linear layer
    under meProp `cfg`.

    Callers handle k >= O themselves (plain backprop) and compute the bias gradient from the
    full dy. Usable by any layer of the form y = x W^T (+ b), output layers included."""
    kind, pattern = select(backend, dy_bo, cfg, key)
    if kind == "unified":
        return unified_backward(backend, dy_bo, x_bi, W_oi, pattern, need_dx)
    return per_example_backward(backend, dy_bo, x_bi, W_oi, pattern, need_dx)


def masked_reference(backend, dy_bo, x_bi, W_oi, kind, pattern):
    """Dense specification: dy~ = dy * mask, dW = dy~^T x (dense), dx = dy~ W."""
    mask = selection_mask(backend, tuple(dy_bo.shape), kind, pattern).astype(dy_bo.dtype)
    dyt = dy_bo * mask
    return dyt.T @ x_bi, dyt @ W_oi


# ------------------------------------------------------------------------- CPU (numba)
if numba is not None:
    @numba.njit(cache=True, nogil=True, parallel=True)
    def _select_by_threshold(out_bk, key_bo, thr_b):
        """Per row: every key above the row's K-th largest `thr`, then the first keys equal to
        it in index order until K are taken (ties to the lowest index, as the GPU kernel);
        NaN ranks above every number (as numpy.partition and the kernel's bit order put it).
        Indices come out ascending."""
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


#: CPU per-example products: the numba gathers cost about this many times more per multiply-add
#: than BLAS (measured, one thread, h = 2048, B = 1024: 0.34 vs 0.02 ns), so when the selected
#: rows can number at most UNION_GAIN x k, one dense product over them is faster.
UNION_GAIN = 12


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


def _per_example_cpu(idx_bk, vals_bk, x_bi, W_oi, need_dx=True):
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


# ------------------------------------------------------------------------- GPU (cuSPARSE)
def _per_example_gpu(backend, idx_bk, vals_bk, x_bi, W_oi, need_dx=True):
    import cupyx.scipy.sparse as cpsparse
    xp = backend.xp
    B, K = idx_bk.shape
    O, I = W_oi.shape
    flat = idx_bk.reshape(-1)
    data = xp.ascontiguousarray(vals_bk.reshape(-1))
    indptr = xp.arange(0, B * K + 1, K, dtype=xp.int32)
    # dx = CSR(dy~) (B, O) @ W (O, I): cuSPARSE SpMM reads only the selected rows of W
    dx = None
    if need_dx:
        A = cpsparse.csr_matrix((data, flat.astype(xp.int32), indptr), shape=(B, O))
        dx = A @ xp.ascontiguousarray(W_oi)
    # dW rows: the same CSR with its columns renumbered to the U distinct selected rows,
    # transposed in the SpMM (op(A) = A^T): (U, B) @ x (B, I)
    rows_u, inverse = xp.unique(flat, return_inverse=True)
    Ac = cpsparse.csr_matrix((data, inverse.reshape(-1).astype(xp.int32), indptr),
                             shape=(B, int(rows_u.shape[0])))
    dW_u = Ac.T @ xp.ascontiguousarray(x_bi)
    return rows_u.astype(xp.int64, copy=False), xp.ascontiguousarray(dW_u), dx


__all__ = ["MODES", "check_config", "topk_rows", "topk_unified", "random_rows", "select",
           "selection_mask", "unified_backward", "per_example_backward", "meprop_backward",
           "masked_reference"]
