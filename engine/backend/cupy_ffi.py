"""GPU launchers of the fixed fan-in (FFI) layer (numpy_ffi.py has the shapes and the reference).

Shapes: B batch, L labels, K fan-in, I inputs; idx (L, K) int32, w (L, K), bias (L,); the
input transposed, xt (I, B) (see rawkernels/ffi.cu for why).

Path "kernel" (rawkernels/ffi.cu):
    forward    ffi_forward: a block per tile of 32 labels, lane = example, y written coalesced
    backward   ffi_backward: dw as warp sums; dx by atomicAdd into dxt (I, B) in the same pass,
               or, with deterministic=True, ffi_grad_input_csc over the transposed index (CSC:
               for each input the slots reading it, in slot order), so every dx[b, i] is summed
               in one fixed order.
Path "cusparse": a cupyx CSR view W (L, I) of the same storage, indptr = arange(0, L K + 1, K),
indices = idx.ravel(), data = w.ravel() (int32 indices, int64 past 2^31 - 1 entries:
cupy_sparse._index_dtype), built once per index version and kept in
`index.cache` (no host read: flagged canonical, rows hold distinct indices). While every row is
sorted the view shares w's memory (the optimizer updates w in place, so the view stays current);
after rewiring (rows no longer sorted) a row-sorting permutation and the permuted indices are
cached per index version and each call gathers w through it into a cached buffer (L K values,
no allocation).
    forward    y^T = W x^T            cuSPARSE SpMM, x^T given as xt with op(B) = transpose
    dx         dx^T = W^T dy^T        SpMM with op(A) = A^T (cuSPARSE documents the transposed
               product as not bit-reproducible; with deterministic=True dx uses the CSC kernel)
    dw         the ffi_backward kernel without its dx part (one launch; zero dy columns skipped
               with skip_zero)
Host reads: none on either path (the CSC and the CSR view are built on the device).
Other dtypes than float32/float64 take the reference.
"""
from __future__ import annotations

import numpy

from . import kernels
from .cupy_sparse import _index_dtype
from .numpy_ffi import build_csc, csc_bytes, row_sort_permutation

_KERNEL_DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
_i64 = numpy.int64


class CupyFFI:
    """Mixin of `CupyBackend`: the fixed fan-in layer's kernels and cuSPARSE path."""

    ffi_methods = ("kernel", "cusparse")

    def ffi_index_bytes(self, out_features, in_features, fan_in, deterministic=False):
        return csc_bytes(out_features, in_features, fan_in) if deterministic else 0

    # -- derived index structures (cached per index version) ---------------------------
    def _ffi_csc(self, index):
        if "csc" not in index.cache:
            index.cache["csc"] = build_csc(self.xp, index.idx, index.in_features)
        return index.cache["csc"]

    def _ffi_csr(self, index, w_lk):
        """The CSR view W (L, I) of (index, w): cached while w is the same array."""
        xp = self.xp
        entry = index.cache.get("csr")
        if entry is None or entry[0] is not w_lk:
            n_labels, fan_in = index.shape
            nnz = n_labels * fan_in
            it = _index_dtype(n_labels, index.in_features, nnz)
            indptr = xp.arange(0, nnz + 1, fan_in, dtype=it)
            flat_idx = index.idx.reshape(-1)
            if index.rows_sorted:
                perm, buffer = None, None
                data = w_lk.reshape(-1)                       # a view: follows in-place updates
                indices = xp.ascontiguousarray(flat_idx.astype(it, copy=False))
            else:
                perm = row_sort_permutation(xp, index.idx)
                buffer = xp.empty((nnz,), dtype=w_lk.dtype)
                data = buffer
                indices = xp.ascontiguousarray(flat_idx[perm].astype(it, copy=False))
            W = self._csr_from_parts(data, indices, indptr, (n_labels, index.in_features))
            entry = (w_lk, perm, buffer, W)
            index.cache["csr"] = entry
        _, perm, buffer, W = entry
        if perm is not None:
            xp.take(w_lk.reshape(-1), perm, out=buffer)       # rows unsorted: gather w
        return W

    def _ffi_kernel_dtype(self, *arrays):
        dt = arrays[0].dtype
        ok = dt in _KERNEL_DTYPES and all(a.dtype == dt for a in arrays[1:])
        return dt if ok else None

    # -- forward -----------------------------------------------------------------------
    def ffi_forward(self, xt_ib, index, w_lk, bias_l=None, method="reference"):
        self._ffi_check_method(method, "ffi_forward")
        self.check_array(xt_ib, "ffi_forward: xt_ib")
        self.check_array(w_lk, "ffi_forward: w_lk")
        dt = self._ffi_kernel_dtype(w_lk, xt_ib, *(() if bias_l is None else (bias_l,)))
        if method == "reference" or dt is None or not w_lk.flags.c_contiguous:
            return super().ffi_forward(xt_ib, index, w_lk, bias_l, "reference")
        xp = self.xp
        n_inputs, n_batch = xt_ib.shape
        n_labels, fan_in = index.shape
        if method == "cusparse":
            W = self._ffi_csr(index, w_lk)
            xt = xp.ascontiguousarray(xt_ib)             # x^T (I, B): SpMM reads it as op(B)
            y = self.csr_matmul(W, xt).T                 # (L, B) F-ordered == y (B, L) C-ordered
            if bias_l is not None:
                y += bias_l
            return y
        xt = xp.ascontiguousarray(xt_ib)
        y = xp.empty((n_batch, n_labels), dtype=dt)
        if n_batch == 0 or n_labels == 0:
            return y
        has_bias = bias_l is not None
        bias = xp.ascontiguousarray(bias_l) if has_bias else xp.zeros((1,), dtype=dt)
        grid, block = kernels.launch_rows(-(-n_labels // 32))
        kernels.get_kernel("ffi.cu", "ffi_forward", dt)(
            grid, block, (y, xt, index.idx, w_lk, bias, _i64(n_batch), _i64(n_labels),
                          _i64(fan_in), _i64(n_inputs), numpy.int32(has_bias)))
        return y

    # -- backward ----------------------------------------------------------------------
    def ffi_backward(self, dy_bl, xt_ib, index, w_lk, method="reference", skip_zero=True,
                     deterministic=False, need_input_grad=True):
        self._ffi_check_method(method, "ffi_backward")
        for arr, what in ((dy_bl, "dy_bl"), (xt_ib, "xt_ib"), (w_lk, "w_lk")):
            self.check_array(arr, f"ffi_backward: {what}")
        dt = self._ffi_kernel_dtype(w_lk, xt_ib)
        if method == "reference" or dt is None or not w_lk.flags.c_contiguous:
            return super().ffi_backward(dy_bl, xt_ib, index, w_lk, "reference", skip_zero,
                                        deterministic, need_input_grad)
        xp = self.xp
        dy = xp.ascontiguousarray(dy_bl, dtype=dt)
        xt = xp.ascontiguousarray(xt_ib)
        # the kernel path scatters dx atomically in the same pass; otherwise dw only
        atomic = method == "kernel" and need_input_grad and not deterministic
        dw, dxt = self._ffi_backward_kernel(dy, xt, index, w_lk, skip_zero, atomic)
        if not need_input_grad:
            return dw, None
        if atomic:
            return dw, xp.ascontiguousarray(dxt.T)
        if deterministic:
            return dw, self._ffi_grad_input_csc(dy, index, w_lk)
        W = self._ffi_csr(index, w_lk)                   # cusparse, atomic-free dx
        return dw, self.csr_matmul(W, dy.T, transpose_a=True).T   # (I, B) F == (B, I) C

    def _ffi_backward_kernel(self, dy, xt, index, w_lk, skip_zero, atomic):
        """(dw (L, K), dxt (I, B) accumulated by atomics when `atomic`, else a placeholder)."""
        xp = self.xp
        n_inputs, n_batch = xt.shape
        n_labels, fan_in = index.shape
        dw = xp.empty((n_labels, fan_in), dtype=w_lk.dtype)
        dxt = (xp.zeros((n_inputs, n_batch), dtype=w_lk.dtype) if atomic
               else xp.empty((1, 1), dtype=w_lk.dtype))
        if n_batch == 0:
            dw.fill(0)
        elif n_labels:
            grid, block = kernels.launch_rows(-(-n_labels // 32))
            kernels.get_kernel("ffi.cu", "ffi_backward", w_lk.dtype)(
                grid, block, (dw, dxt, dy, xt, index.idx, w_lk, _i64(n_batch), _i64(n_labels),
                              _i64(fan_in), _i64(n_inputs), numpy.int32(bool(skip_zero)),
                              numpy.int32(bool(atomic))))
        return dw, dxt

    def _ffi_grad_input_csc(self, dy, index, w_lk):
        """dx (B, I), every dx[b, i] summed in slot order over the CSC (deterministic)."""
        xp = self.xp
        n_batch = dy.shape[0]
        fan_in = index.shape[1]
        n_inputs = index.in_features
        colptr, slots = self._ffi_csc(index)
        dyt = xp.ascontiguousarray(dy.T)
        dxt = xp.empty((n_inputs, n_batch), dtype=w_lk.dtype)
        warps = n_inputs * (-(-n_batch // 32))
        if warps:
            grid, block = kernels.launch_1d(warps * 32)
            kernels.get_kernel("ffi.cu", "ffi_grad_input_csc", w_lk.dtype)(
                grid, block, (dxt, colptr, slots, w_lk, dyt, _i64(n_batch), _i64(n_inputs),
                              _i64(fan_in)))
        return xp.ascontiguousarray(dxt.T)
