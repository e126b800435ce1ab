"""Fixed fan-in (FFI) layer on the GPU: the RawKernel path, the cuSPARSE path, and the choice.

Shapes: B batch, L labels, K fan-in, I inputs; idx (L, K) int32, w (L, K), bias (L,); the
input is kept transposed, xt (I, B) (see rawkernels/ffi.cu for why).

Path "kernel" (rawkernels/ffi.cu):
    forward    ffi_forward: a block per tile of 32 labels, lane = example, y written coalesced
    backward   ffi_backward: dw as warp sums; dx by atomicAdd into dxt (I, B) in the same pass,
               or, with deterministic=True, ffi_grad_input_csc over the transposed index (CSC:
               for each input the slots reading it, in slot order), so every dx[b, i] is summed
               in one fixed order.
Path "cusparse" (cuSPARSE through cupyx): a CSR view of the same storage, W (L, I) with
indptr = arange(0, L K + 1, K), indices = idx.ravel(), data = w.ravel() (no copy while the rows
are sorted; after rewiring a row-sorting permutation is cached per index version and the data
gathered through it on each call):
    forward    y^T = W x^T            cusparse SpMM (x.T is already the F-ordered operand)
    dx         dx^T = W^T dy^T        SpMM with op(A) = A^T (cuSPARSE documents the transposed
               product as not bit-reproducible; with deterministic=True dx uses the CSC kernel)
    dw         gathered: dw[l, :] = x[:, idx[l]]^T dy[:, l], batched GEMV over label chunks
               (a (chunk, K, B) gather bounded to ~64 MiB).
    Zero rows of dy are not skipped on this path.

`method="auto"` runs each path's forward + backward once untimed and three times timed on the
first batch of a new shape (L, I, K, B rounded up to a power of two, dtype, deterministic,
device), on random data of that shape, and keeps the faster in a per-process cache (`CHOICES`);
the measurement costs eight passes once per shape.
CuPy is imported inside the functions: importing this module needs no GPU.
"""
from __future__ import annotations

import time

import numpy

from ..backend import kernels

METHODS = ("kernel", "cusparse")
#: (device, L, I, K, B, dtype, deterministic) -> the method measured fastest
CHOICES: dict = {}
_GATHER_BYTES = 64 << 20


# ------------------------------------------------------------------ index structures
def build_csc(xp, idx_lk, in_features):
    """(colptr (I + 1,) int64, slots (L K,) int32): the slots reading input i, ascending, are
    slots[colptr[i]:colptr[i + 1]] (slot = l * K + k)."""
    n = int(idx_lk.size)
    if n >= 2 ** 31:
        raise ValueError(f"FixedFanInLinear: deterministic mode needs L * K < 2^31, got {n}")
    flat = idx_lk.reshape(-1).astype(xp.int64)
    order = xp.argsort(flat * n + xp.arange(n, dtype=xp.int64))   # unique keys: any sort agrees
    colptr = xp.searchsorted(flat[order], xp.arange(in_features + 1, dtype=xp.int64))
    return colptr.astype(xp.int64), order.astype(xp.int32)


def row_sort_permutation(xp, idx_lk):
    """Flat permutation that sorts every row of idx (for a CSR with sorted column indices)."""
    L, K = idx_lk.shape
    order = xp.argsort(idx_lk, axis=1)
    return (order + (xp.arange(L, dtype=order.dtype) * K)[:, None]).reshape(-1)


# ------------------------------------------------------------------ kernel path
def _i64(v):
    return numpy.int64(v)


def forward_kernel(xp, xt_ib, idx_lk, w_lk, bias_l):
    I, B = xt_ib.shape
    L, K = idx_lk.shape
    y = xp.empty((B, L), dtype=w_lk.dtype)
    if B == 0 or L == 0:
        return y
    has_bias = bias_l is not None
    bias = bias_l if has_bias else xp.zeros(1, dtype=w_lk.dtype)
    grid, block = kernels.launch_rows(-(-L // 32))
    kernels.get_kernel("ffi.cu", "ffi_forward", w_lk.dtype)(
        grid, block, (y, xt_ib, idx_lk, w_lk, bias, _i64(B), _i64(L), _i64(K), _i64(I),
                      numpy.int32(has_bias)))
    return y


def grad_input_csc(xp, dy_bl, idx_lk, w_lk, in_features, csc):
    """dx (B, I), summed in slot order per input (deterministic)."""
    B = dy_bl.shape[0]
    K = idx_lk.shape[1]
    colptr, slots = csc
    dyt = xp.ascontiguousarray(dy_bl.T)
    dxt = xp.empty((in_features, B), dtype=w_lk.dtype)
    warps = in_features * (-(-B // 32))
    if warps:
        grid, block = kernels.launch_1d(warps * 32)
        kernels.get_kernel("ffi.cu", "ffi_grad_input_csc", w_lk.dtype)(
            grid, block, (dxt, colptr, slots, w_lk, dyt, _i64(B), _i64(in_features), _i64(K)))
    return xp.ascontiguousarray(dxt.T)


def backward_kernel(xp, dy_bl, xt_ib, idx_lk, w_lk, skip_zero=True, csc=None,
                    need_input_grad=True):
    """(dw (L, K), dx (B, I) or None). csc given: dx deterministic through the CSC kernel."""
    I, B = xt_ib.shape
    L, K = idx_lk.shape
    dy = xp.ascontiguousarray(dy_bl, dtype=w_lk.dtype)
    dw = xp.empty((L, K), dtype=w_lk.dtype)
    atomic = need_input_grad and csc is None
    dxt = xp.zeros((I, B), dtype=w_lk.dtype) if atomic else xp.empty((1, 1), dtype=w_lk.dtype)
    if B == 0:
        dw.fill(0)
    elif L:
        grid, block = kernels.launch_rows(-(-L // 32))
        kernels.get_kernel("ffi.cu", "ffi_backward", w_lk.dtype)(
            grid, block, (dw, dxt, dy, xt_ib, idx_lk, w_lk, _i64(B), _i64(L), _i64(K), _i64(I),
                          numpy.int32(bool(skip_zero)), numpy.int32(atomic)))
    if not need_input_grad:
        return dw, None
    if atomic:
        return dw, xp.ascontiguousarray(dxt.T)
    return dw, grad_input_csc(xp, dy, idx_lk, w_lk, I, csc)


# ------------------------------------------------------------------ cuSPARSE path
def csr_view(xp, idx_lk, w_lk, in_features, perm=None):
    """W (L, I) as a cupyx CSR over the layer's storage (data gathered through perm if given)."""
    from cupyx.scipy import sparse
    L, K = idx_lk.shape
    it = xp.int32 if L * K < 2 ** 31 else xp.int64
    indptr = xp.arange(0, L * K + 1, K, dtype=it)
    data, indices = w_lk.reshape(-1), idx_lk.reshape(-1).astype(it, copy=False)
    if perm is not None:
        data, indices = data[perm], indices[perm]
    W = sparse.csr_matrix((data, indices, indptr), shape=(L, int(in_features)))
    # the rows are sorted and duplicate-free: tell cupyx, so that it never re-sorts in place
    W.has_canonical_format = True
    return W


def forward_cusparse(xp, x_bi, W, bias_l):
    from cupyx import cusparse
    yt = cusparse.spmm(W, x_bi.T)               # (L, B) F-ordered == y (B, L) C-ordered
    y = yt.T
    if bias_l is not None:
        y += bias_l
    return y


def grad_weights_gathered(xp, dy_bl, xt_ib, idx_lk):
    """dw[l, :] = xt[idx[l]] @ dy[:, l], a batched GEMV over chunks of labels."""
    L, K = idx_lk.shape
    B = xt_ib.shape[1]
    dw = xp.empty((L, K), dtype=dy_bl.dtype)
    chunk = max(1, _GATHER_BYTES // max(1, K * B * dy_bl.dtype.itemsize))
    dyt = dy_bl.T
    for s in range(0, L, chunk):
        e = min(L, s + chunk)
        g = xt_ib[idx_lk[s:e]]                                   # (c, K, B)
        d = xp.ascontiguousarray(dyt[s:e])[:, :, None]           # (c, B, 1)
        dw[s:e] = xp.matmul(g, d)[:, :, 0]
    return dw


def backward_cusparse(xp, dy_bl, xt_ib, idx_lk, W, csc=None, w_lk=None, need_input_grad=True):
    from cupyx import cusparse
    dy = xp.ascontiguousarray(dy_bl, dtype=W.dtype)
    dw = grad_weights_gathered(xp, dy, xt_ib, idx_lk)
    if not need_input_grad:
        return dw, None
    if csc is not None:
        return dw, grad_input_csc(xp, dy, idx_lk, w_lk, xt_ib.shape[0], csc)
    dxt = cusparse.spmm(W, dy.T, transa=True)    # (I, B) F-ordered == dx (B, I) C-ordered
    return dw, dxt.T


# ------------------------------------------------------------------ the choice
def batch_bucket(B):
    """Batch sizes share a measurement per power of two (the last, short batch of an epoch or
    of an evaluation pass does not trigger a new one)."""
    return 1 << max(0, int(B) - 1).bit_length()


def choice_key(xp, L, I, K, B, dtype, deterministic):
    return (xp.cuda.Device().id, int(L), int(I), int(K), batch_bucket(B),
            numpy.dtype(dtype).name, bool(deterministic))


def measure(xp, runners, repeats=3):
    """{name: best seconds of runner()} with a device sync around each call."""
    sync = xp.cuda.Device().synchronize
    best = {}
    for name, run in runners.items():
        run()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t0)
        best[name] = min(times)
    return best
