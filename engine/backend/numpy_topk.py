"""Per-row top-k, the one top-k of the engine: meProp's selection and every output's predict_topk.

`Backend.topk(scores_bn, k, magnitude=False, order="score")` -> (values (B, k), ids (B, k) int64)

Rule (the same on every backend, so CPU and GPU select the same entries):
  * the key of an entry is its value, or its magnitude |value| with `magnitude=True`;
  * the k entries of largest key are taken; entries of equal key are taken lowest index first
    (an exact tie at the k-th key, e.g. the exact zeros ReLU produces, keeps the first ones);
  * NaN ranks above every number (a NaN score surfaces in the top-k instead of hiding), NaNs
    tie with each other, and -0.0 ties with +0.0;
  * order="score": best first (key descending; NaN first; equal keys by ascending index);
    order="index": the selected ids ascending (what meProp's sparse products want).
`values` are the entries of `scores_bn` at `ids` (signed, also with `magnitude=True`).
0 <= k <= N; k = 0 gives empty (B, 0) arrays.

Callers that merge chunks (a running top-k over vocabulary or label chunks) keep the rule when
they concatenate [kept so far, next chunk] with the kept entries first and the chunks in column
order: a tie between positions is then a tie between ids, lowest first.

CPU (this file): numpy.partition finds each row's k-th largest key (NaN sorts last, i.e. as the
largest), then a numba pass (cpu_loops.select_by_threshold) takes the keys above it and the
lowest-index ties, in index order; without numba, or for other dtypes, a stable lexicographic
sort on (NaN first, key descending). GPU: rawkernels/topk_rows.cu (a radix select per row on an
order-preserving integer key, then an ordered block compaction), launched by cupy_topk.py.
Dimension letters: B rows, N columns, K = k kept.
"""
from __future__ import annotations

import numpy

from . import cpu_loops

ORDERS = ("score", "index")


class TopKPrimitives:
    """Mixin of `Backend`: the per-row top-k."""

    def topk(self, scores_bn, k, magnitude=False, order="score"):
        """(values (B, k), ids (B, k) int64): per row the k entries of largest value (or of
        largest |value| with `magnitude`), NaN above every number, ties to the lowest index;
        best first (order="score") or ids ascending (order="index"). See the module docstring."""
        if scores_bn.ndim != 2:
            raise ValueError(f"topk: expected a 2-D (B, N) array, got shape {tuple(scores_bn.shape)}")
        n_cols = scores_bn.shape[1]
        k = int(k)
        if not 0 <= k <= n_cols:
            raise ValueError(f"topk: k must be in [0, {n_cols}], got {k}")
        if order not in ORDERS:
            raise ValueError(f"topk: order must be one of {ORDERS}, got {order!r}")
        ids = self._topk_ids(scores_bn, k, bool(magnitude))
        values = self.xp.take_along_axis(scores_bn, ids, axis=1)
        if order == "score" and k > 1:
            ids, values = self._best_first(ids, values, bool(magnitude))
        return values, ids

    def _topk_ids(self, scores_bn, k, magnitude):
        """(B, k) int64, ascending per row: the selected columns (the rule of the docstring)."""
        n_rows, n_cols = scores_bn.shape
        if k == 0:
            return numpy.zeros((n_rows, 0), dtype=numpy.int64)
        if k == n_cols:
            return numpy.broadcast_to(numpy.arange(n_cols, dtype=numpy.int64), (n_rows, k)).copy()
        key = numpy.abs(scores_bn) if magnitude else scores_bn
        if key.dtype not in (numpy.float32, numpy.float64):
            key = key.astype(numpy.float32 if key.dtype == numpy.float16 else numpy.float64)
        thr = numpy.partition(key, n_cols - k, axis=1)[:, n_cols - k]    # NaN sorts last
        ids = cpu_loops.select_by_threshold(key, thr, k)
        if ids is None:          # no numba: one stable sort on (NaN first, key descending)
            nan = numpy.isnan(key)
            order = numpy.lexsort((-numpy.where(nan, 0, key), ~nan), axis=1)
            ids = numpy.sort(order[:, :k], axis=1).astype(numpy.int64)
        return ids

    def _best_first(self, ids_bk, values_bk, magnitude):
        """Reorder the selected entries best first: NaN first, then key descending, equal keys
        in their current (ascending id) order. Two stable sorts of (B, k): no host read."""
        xp = self.xp
        key = xp.abs(values_bk) if magnitude else values_bk
        if key.dtype.kind != "f":
            key = key.astype(xp.float64)
        nan = xp.isnan(key)
        by_key = xp.argsort(-xp.where(nan, 0, key), axis=1, kind="stable")
        not_nan = (~xp.take_along_axis(nan, by_key, axis=1)).astype(xp.int8)   # (sortable)
        nan_first = xp.argsort(not_nan, axis=1, kind="stable")
        order = xp.take_along_axis(by_key, nan_first, axis=1)
        return xp.take_along_axis(ids_bk, order, axis=1), xp.take_along_axis(values_bk, order, axis=1)
