"""GPU launchers of the factored layer's row primitives (numpy_factored.py has the reference).

Kernels (rawkernels/factored_rows.cu), T = float or double, ids int64 C-contiguous (any integer
ids are converted on the device, never read on the host):
    factored_gather_rows<T>(out (N, d), V (Dv, d), ids (N,), N, d, Dv)   invalid slots -> id -1
    factored_scatter_atomic<T>(V, ids, coef (N,), rows (B, d), N, K, d, Dv)
    factored_scatter_sorted<T>(V, ids, order (N,), coef, rows, N, K, d, Dv)   deterministic
The deterministic scatter sorts the unique keys id * N + n on the device (cupy.argsort), so any
sort gives the same order and every row is summed in one fixed order. No host read.
Other dtypes or a non-contiguous V take the NumPy definitions (on CuPy arrays).
"""
from __future__ import annotations

import numpy

from . import kernels

_KERNEL_DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
_i64 = numpy.int64


class CupyFactored:
    """Mixin of `CupyBackend`: factored_gather_rows / factored_scatter_rows kernels."""

    def factored_gather_rows(self, V_dd, ids_n, valid_n):
        self.check_array(V_dd, "factored_gather_rows: V_dd")
        if V_dd.dtype not in _KERNEL_DTYPES or V_dd.ndim != 2 or not V_dd.flags.c_contiguous:
            return super().factored_gather_rows(V_dd, ids_n, valid_n)
        xp = self.xp
        ids = self._index(xp.where(valid_n.reshape(-1), ids_n.reshape(-1), -1),
                          "factored_gather_rows: ids_n")
        n, d = int(ids.size), int(V_dd.shape[1])
        out = xp.empty((n, d), dtype=V_dd.dtype)
        if n * d:
            grid, block = kernels.launch_1d(n * d)
            kernels.get_kernel("factored_rows.cu", "factored_gather_rows", V_dd.dtype)(
                grid, block, (out, V_dd, ids, _i64(n), _i64(d), _i64(V_dd.shape[0])))
        return out

    def factored_scatter_rows(self, V_dd, ids_n, coef_n, rows_bd, K, deterministic=False):
        self.check_array(V_dd, "factored_scatter_rows: V_dd")
        if V_dd.dtype not in _KERNEL_DTYPES or V_dd.ndim != 2 or not V_dd.flags.c_contiguous:
            return super().factored_scatter_rows(V_dd, ids_n, coef_n, rows_bd, K, deterministic)
        xp = self.xp
        ids = self._index(ids_n, "factored_scatter_rows: ids_n")      # contiguous int64
        n, d, K = int(ids.size), int(V_dd.shape[1]), int(K)
        if n == 0:
            return V_dd
        if coef_n.size != n or rows_bd.shape[0] * K != n or rows_bd.shape[1] != d:
            raise ValueError(f"factored_scatter_rows: {n} ids, {coef_n.size} coefficients and "
                             f"rows {tuple(rows_bd.shape)} do not fit K = {K}, d = {d}")
        coef = xp.ascontiguousarray(coef_n.reshape(-1), dtype=V_dd.dtype)
        rows = xp.ascontiguousarray(rows_bd, dtype=V_dd.dtype)
        sizes = (_i64(n), _i64(K), _i64(d), _i64(V_dd.shape[0]))
        if not deterministic:
            grid, block = kernels.launch_1d(n * d)
            kernels.get_kernel("factored_rows.cu", "factored_scatter_atomic", V_dd.dtype)(
                grid, block, (V_dd, ids, coef, rows) + sizes)
        else:
            keys = ids * n + xp.arange(n, dtype=xp.int64)           # unique keys
            order = xp.ascontiguousarray(xp.argsort(keys).astype(xp.int64, copy=False))
            grid, block = kernels.launch_rows(n, 128)
            kernels.get_kernel("factored_rows.cu", "factored_scatter_sorted", V_dd.dtype)(
                grid, block, (V_dd, ids, order, coef, rows) + sizes)
        return V_dd
