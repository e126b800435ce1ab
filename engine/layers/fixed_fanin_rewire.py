"""Index sets of the fixed fan-in layer: initial draw and dynamic rewiring (prune and regrow).

Shapes: L labels (rows), K fan-in, I inputs; idx (L, K) int32, every row K distinct values in
[0, I). Everything here runs on the host with NumPy and a seeded `numpy.random.Generator`, so the
CPU and the GPU layers draw the same indices.

`draw_distinct(rng, L, I, K)`: every row K distinct uniform positions, sorted within the row.

`prune_smallest(abs_w, n)`: the flat positions of the n globally smallest |w|; ties at the
threshold go to the lowest flat positions, so the choice is a function of the values alone.

`regrow(rng, idx, flat)`: new indices for the pruned slots `flat` (flat positions into idx), in
the same rows, each uniform over the positions that the row does not hold after pruning (the
pruned positions are free again; with I >> K a regrown slot almost never gets its old index,
and with K = I rewiring can only re-pick the pruned positions). Afterwards every row holds K
distinct indices. Regrown slots keep their position in the row (rows are no longer sorted):
their weight and optimizer moments are reset in place, and the surviving weights stay where
they are.

Both draws use rejection rounds, vectorised over all rows: draw for every pending slot, keep
the draws that collide with nothing (surviving indices first, then regrown slots in order of
position), redraw the rest. With I >> K a round leaves about K / I of the slots pending. Rows
still pending after `MAX_ROUNDS` (dense rows, K close to I) are finished exactly with
`rng.choice` over their free positions.
"""
from __future__ import annotations

import numpy

MAX_ROUNDS = 32
_ROW_BLOCK = 1 << 16     # rows checked at once (bounds the scratch to ~_ROW_BLOCK * K)


def _duplicates(rows_idx, regrown_mask):
    """Boolean (R, K): slots of `rows_idx` (R, K) that repeat a value held by a slot that wins.

    Winners: non-regrown slots first, then regrown slots by position. Only regrown slots can
    lose (the non-regrown ones are distinct by construction)."""
    R, K = rows_idx.shape
    priority = numpy.where(regrown_mask, 1 + numpy.arange(K)[None, :], 0)
    # sort each row by (value, priority): a slot loses when its left neighbour has its value
    key = rows_idx.astype(numpy.int64) * (K + 1) + priority
    order = numpy.argsort(key, axis=1, kind="stable")
    sorted_vals = numpy.take_along_axis(rows_idx, order, axis=1)
    lose_sorted = numpy.zeros((R, K), dtype=bool)
    lose_sorted[:, 1:] = sorted_vals[:, 1:] == sorted_vals[:, :-1]
    lose = numpy.zeros((R, K), dtype=bool)
    numpy.put_along_axis(lose, order, lose_sorted, axis=1)
    return lose


def _fill(rng, idx, pending_mask, in_features):
    """Draw new values for the slots of `pending_mask` (L, K) so that every row of idx is
    distinct (the other slots are kept and assumed distinct). In place; returns idx."""
    L, K = idx.shape
    regrown = pending_mask.copy()
    pending = pending_mask.copy()
    for _round in range(MAX_ROUNDS):
        n = int(pending.sum())
        if n == 0:
            return idx
        idx[pending] = rng.integers(0, in_features, size=n, dtype=idx.dtype)
        rows = numpy.flatnonzero(pending.any(axis=1))
        pending[:] = False
        for start in range(0, rows.size, _ROW_BLOCK):
            r = rows[start:start + _ROW_BLOCK]
            pending[r] = _duplicates(idx[r], regrown[r])
    # dense rows: finish them exactly
    for r in numpy.flatnonzero(pending.any(axis=1)):
        keep = ~pending[r]
        free = numpy.setdiff1d(numpy.arange(in_features), idx[r, keep], assume_unique=False)
        idx[r, pending[r]] = rng.choice(free, size=int(pending[r].sum()), replace=False)
    return idx


def draw_distinct(rng, out_features, in_features, fan_in):
    """(L, K) int32: every row fan_in distinct uniform positions in [0, I), sorted."""
    L, I, K = int(out_features), int(in_features), int(fan_in)
    if K > I:
        raise ValueError(f"fan_in {K} exceeds in_features {I}")
    if K == I:
        return numpy.tile(numpy.arange(I, dtype=numpy.int32), (L, 1))
    if 2 * K > I:   # dense rows: an exact draw per row is cheaper than rejection
        idx = numpy.empty((L, K), dtype=numpy.int32)
        for r in range(L):
            idx[r] = rng.choice(I, size=K, replace=False)
    else:
        idx = numpy.zeros((L, K), dtype=numpy.int32)
        _fill(rng, idx, numpy.ones((L, K), dtype=bool), I)
    idx.sort(axis=1)
    return idx


def prune_smallest(abs_w, n):
    """Flat positions (int64, ascending) of the n smallest values of abs_w (ties: lowest first)."""
    flat = numpy.asarray(abs_w).reshape(-1)
    n = int(n)
    if n <= 0:
        return numpy.zeros(0, dtype=numpy.int64)
    if n >= flat.size:
        return numpy.arange(flat.size, dtype=numpy.int64)
    threshold = numpy.partition(flat, n - 1)[n - 1]
    below = numpy.flatnonzero(flat < threshold)
    at = numpy.flatnonzero(flat == threshold)[: n - below.size]
    return numpy.sort(numpy.concatenate([below, at])).astype(numpy.int64)


def regrow(rng, idx, flat, in_features):
    """Give the slots at flat positions `flat` of idx (L, K) new distinct indices. In place."""
    mask = numpy.zeros(idx.shape, dtype=bool)
    mask.reshape(-1)[flat] = True
    return _fill(rng, idx, mask, int(in_features))


def check_indices(idx, in_features, what="indices"):
    """ValueError unless idx is (L, K) integer with rows of distinct values in [0, I)."""
    idx = numpy.asarray(idx)
    if idx.ndim != 2 or idx.dtype.kind not in "iu":
        raise ValueError(f"{what}: expected a 2-D integer array, got {idx.dtype} {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= in_features):
        raise ValueError(f"{what}: values must lie in [0, {in_features}), got "
                         f"[{idx.min()}, {idx.max()}]")
    s = numpy.sort(idx, axis=1)
    dup = numpy.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
    if dup.size:
        raise ValueError(f"{what}: row {int(dup[0])} repeats an input position "
                         f"({dup.size} rows with duplicates)")
    return idx
