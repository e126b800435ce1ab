"""GPU launcher of the per-row top-k (`Backend.topk`, numpy_topk.py has the rule and the reference).

Kernel: rawkernels/topk_rows.cu `topk_rows<T>(idx (B, K) int64, a (B, N) T, B, N, K, magnitude)`,
one block per row: a radix select on an order-preserving integer key of each value (or of its
magnitude), NaN above every number, then an ordered compaction, so the ids come out ascending
with ties at the k-th key broken towards the lowest index, exactly as the NumPy reference. The
best-first order is then two stable sorts of the (B, k) selection (numpy_topk._best_first).
Scores of other dtypes are cast to float32 (float16) or float64 first. No host read.
"""
from __future__ import annotations

import numpy

from . import kernels

_KERNEL_DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))


class CupyTopK:
    """Mixin of `CupyBackend`: the top-k kernel."""

    def _topk_ids(self, scores_bn, k, magnitude):
        xp = self.xp
        self.check_array(scores_bn, "topk: scores_bn")
        n_rows, n_cols = scores_bn.shape
        if k == 0 or n_rows == 0:
            return xp.zeros((n_rows, k), dtype=xp.int64)
        if k == n_cols:
            return xp.ascontiguousarray(
                xp.broadcast_to(xp.arange(n_cols, dtype=xp.int64), (n_rows, k)))
        a = scores_bn
        if a.dtype not in _KERNEL_DTYPES:
            a = a.astype(numpy.float32 if a.dtype == numpy.float16 else numpy.float64)
        a = xp.ascontiguousarray(a)
        ids = xp.empty((n_rows, k), dtype=xp.int64)
        grid, block = kernels.launch_rows(n_rows)
        kernels.get_kernel("topk_rows.cu", "topk_rows", a.dtype)(
            grid, block, (ids, a, numpy.int64(n_rows), numpy.int64(n_cols), numpy.int64(k),
                          numpy.int32(bool(magnitude))))
        return ids
