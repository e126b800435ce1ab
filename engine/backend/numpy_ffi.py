"""Fixed fan-in (FFI) layer primitives: the NumPy reference and the CPU dispatch.

Shapes: B batch, L labels (outputs), K fan-in, I inputs; idx (L, K) int32, w (L, K), bias (L,).
The input is passed transposed, xt (I, B) C-contiguous (made once per forward by the layer and
kept for backward): every loop and kernel gathers input columns x[:, i] as B adjacent numbers.

    forward        y[b, l]  = sum_k w[l, k] x[b, idx[l, k]] + bias[l]                (B, L)
    grad_weights   dw[l, k] = sum_b dy[b, l] x[b, idx[l, k]]                          (L, K)
    grad_input     dx[b, i] = sum over (l, k) with idx[l, k] = i of w[l, k] dy[b, l]  (B, I)

`ffi_forward(xt, index, w, bias, method)` and `ffi_backward(dy, xt, index, w, method, ...)`
run one of the paths of `("reference",) + backend.ffi_methods`:
  "reference"  the specification below, written with `self.xp` one fan-in column at a time
               (O(B L) scratch, never a (B, L, K) array); any backend (tests compare with it);
  "numba"      the CPU loops of cpu_ffi.py (the NumPy backend's path);
  "kernel", "cusparse"  the GPU paths of cupy_ffi.py (rawkernels/ffi.cu; cuSPARSE).

`index = backend.ffi_index(idx, in_features, rows_sorted)` wraps one version of the layer's
index buffer; a backend keeps in `index.cache` what it derives from it (the CSC of the
deterministic GPU input gradient, the cuSPARSE CSR view), built once per index version: the
layer makes a new index whenever it changes its indices (rewiring, loading a checkpoint).
"""
from __future__ import annotations

import numpy

from . import cpu_ffi


class FFIIndex:
    """One version of a fixed fan-in layer's index: idx (L, K) int32 (an array of the backend),
    the input count I, whether every row is sorted, and `cache` (what backends derive)."""

    __slots__ = ("idx", "in_features", "rows_sorted", "cache")

    def __init__(self, idx_lk, in_features, rows_sorted):
        self.idx = idx_lk
        self.in_features = int(in_features)
        self.rows_sorted = bool(rows_sorted)
        self.cache = {}

    @property
    def shape(self):
        return tuple(self.idx.shape)


def build_csc(xp, idx_lk, in_features):
    """(colptr (I + 1,) int64, slots (L K,) int32): the slots reading input i, ascending, are
    slots[colptr[i]:colptr[i + 1]] (slot = l * K + k). No host read."""
    n = int(idx_lk.size)
    if n >= 2 ** 31:
        raise ValueError(f"FixedFanInLinear: deterministic mode needs L * K < 2^31, got {n}")
    flat = idx_lk.reshape(-1).astype(xp.int64)
    order = xp.argsort(flat * n + xp.arange(n, dtype=xp.int64))   # unique keys: any sort agrees
    colptr = xp.searchsorted(flat[order], xp.arange(in_features + 1, dtype=xp.int64))
    return colptr.astype(xp.int64), order.astype(xp.int32)


def row_sort_permutation(xp, idx_lk):
    """Flat permutation that sorts every row of idx (for a CSR with sorted column indices)."""
    n_labels, fan_in = idx_lk.shape
    order = xp.argsort(idx_lk, axis=1)
    return (order + (xp.arange(n_labels, dtype=order.dtype) * fan_in)[:, None]).reshape(-1)


def csc_bytes(out_features, in_features, fan_in):
    """Bytes of the CSC the deterministic GPU input gradient keeps: (I + 1) 8 + L K 4."""
    return (int(in_features) + 1) * 8 + int(out_features) * int(fan_in) * 4


class FFIPrimitives:
    """Mixin of `Backend`: the fixed fan-in layer's forward and backward."""

    #: the fast paths this backend offers besides "reference" (the first one is its default)
    ffi_methods = ("numba",) if cpu_ffi.numba is not None else ("reference",)

    def ffi_index(self, idx_lk, in_features, rows_sorted=True):
        """Wrap one version of an index buffer (L, K) int32 of this backend (see FFIIndex)."""
        self.check_array(idx_lk, "ffi_index: idx_lk")
        if idx_lk.ndim != 2 or idx_lk.dtype != numpy.int32 or not idx_lk.flags.c_contiguous:
            raise ValueError(f"ffi_index: expected a C-contiguous (L, K) int32 index, got "
                             f"{idx_lk.dtype} {tuple(idx_lk.shape)}")
        return FFIIndex(idx_lk, in_features, rows_sorted)

    def ffi_index_bytes(self, out_features, in_features, fan_in, deterministic=False):
        """Bytes of what this backend derives from an index (0 here: the CPU loops need none)."""
        return 0

    def _ffi_check_method(self, method, what):
        known = ("reference",) + tuple(self.ffi_methods)
        if method not in known:
            raise ValueError(f"{what}: method {method!r} is not one of this backend's {known}")

    def ffi_forward(self, xt_ib, index, w_lk, bias_l=None, method="reference"):
        """y (B, L) = sum_k w[:, k] * x[:, idx[:, k]] (+ bias), from xt = x^T (I, B)."""
        self._ffi_check_method(method, "ffi_forward")
        if method == "numba":
            return cpu_ffi.forward(xt_ib, index.idx, w_lk, bias_l)
        xp = self.xp
        x_bi = xt_ib.T
        idx = index.idx
        y = xp.zeros((x_bi.shape[0], idx.shape[0]), dtype=w_lk.dtype)
        for k in range(idx.shape[1]):
            y += x_bi[:, idx[:, k]] * w_lk[:, k]
        if bias_l is not None:
            y += bias_l
        return y

    def ffi_backward(self, dy_bl, xt_ib, index, w_lk, method="reference", skip_zero=True,
                     deterministic=False, need_input_grad=True):
        """(dw (L, K), dx (B, I) or None). `skip_zero`: labels whose dy column is all zero cost
        no work (their dw is 0) on the paths that can skip them; `deterministic`: the GPU sums
        dx in a fixed order (the CPU paths always do). The results do not depend on either."""
        self._ffi_check_method(method, "ffi_backward")
        if method == "numba":
            return cpu_ffi.backward(dy_bl, xt_ib, index.idx, w_lk, skip_zero, need_input_grad)
        xp = self.xp
        x_bi = xt_ib.T
        idx = index.idx
        n_labels, fan_in = idx.shape
        dw = xp.empty((n_labels, fan_in), dtype=dy_bl.dtype)
        for k in range(fan_in):
            dw[:, k] = (dy_bl * x_bi[:, idx[:, k]]).sum(axis=0)
        if not need_input_grad:
            return dw, None
        # every slot (l, k) adds w[l, k] dy[:, l] to column idx[l, k] (duplicates accumulate)
        dxt = xp.zeros((index.in_features, dy_bl.shape[0]), dtype=dy_bl.dtype)
        for k in range(fan_in):
            self.scatter_add_rows(dxt, idx[:, k], (dy_bl * w_lk[:, k]).T)
        return dw, xp.ascontiguousarray(dxt.T)
