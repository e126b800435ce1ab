"""Label shards and the row split of a minibatch: who owns what, and the moves every sharded
output shares.

Dimension letters: N ranks, r this rank, L labels (words), L_r = this rank's labels, B the
global minibatch, B_r this rank's rows, d the width of h, k a top-k cut-off.

- Labels: rank r owns the contiguous range [r L / N, (r + 1) L / N) (`label_range`) with that
  range's weights and optimizer state. Shards are not padded: every rank holds exactly its
  rows, so no padded column exists that could match a target or add to a normaliser. Fewer
  labels than ranks would leave a shard empty: `check_shardable` refuses it.
- Rows: rank r takes rows [r B / N, (r + 1) B / N) of the global minibatch (`batch_rows`), so
  concatenating the ranks' rows in rank order gives the single-process minibatch.
- Initial weights: `uniform_rows` draws a (L, d) uniform matrix block by block from the model's
  generator and keeps rows [start, stop): the same numbers as the single-process draw, in
  O(block + L_r d) memory, and the generator ends in the same state.

`ShardedOutput` is the mixin of the label-sharded output layers. Per call it all-gathers h
(B_r, d) -> H (B, d) and the targets (B_r[, K]) -> T (B[, K]) (`gather_rows`), computes on its
label range, and returns dh for its own rows with a reduce-scatter of the (B, d) partial sums
(`scatter_rows`). Losses and evaluation sums it returns are those of the global minibatch
(identical on every rank); per-row results (log_prob, predict_topk) are for the caller's rows.
`merge_topk` merges every rank's top-k (ids already offset by the rank's first label) into the
global top-k, ordered as xmc_metrics.TopK orders (best first, equal scores by label id).
"""
from __future__ import annotations

import numpy

from .comm import SingleProcess

#: Largest block of the initial-weight draw (elements).
DRAW_BLOCK_ELEMS = 1 << 20


def label_range(num_labels: int, size: int, rank: int):
    """(start, stop) of rank `rank`'s labels: [r L / N, (r + 1) L / N)."""
    return rank * num_labels // size, (rank + 1) * num_labels // size


def check_shardable(num_labels: int, size: int, what: str = "output"):
    if num_labels < size:
        raise ValueError(f"{what}: {num_labels} labels cannot be sharded over {size} ranks "
                         f"(every rank needs at least one label; use fewer ranks)")


def batch_rows(batch: int, size: int, rank: int) -> slice:
    """This rank's rows of a global minibatch of `batch` rows: [r B / N, (r + 1) B / N)."""
    return slice(rank * batch // size, (rank + 1) * batch // size)


def uniform_rows(rng, bound, num_rows, width, start, stop, block_elems=DRAW_BLOCK_ELEMS):
    """Rows [start, stop) of rng.uniform(-bound, bound, size=(num_rows, width)), drawn in
    blocks (host float64, (stop - start, width)); the generator advances past all rows."""
    out = numpy.empty((stop - start, width))
    rows_per_block = max(1, block_elems // max(width, 1))
    for r0 in range(0, num_rows, rows_per_block):
        r1 = min(r0 + rows_per_block, num_rows)
        block = rng.uniform(-bound, bound, size=(r1 - r0, width))
        lo, hi = max(r0, start), min(r1, stop)
        if lo < hi:
            out[lo - start:hi - start] = block[lo - r0:hi - r0]
    return out


def local_targets(xp, targets, start, stop):
    """Targets in this shard's column numbering: ignored (< 0) stay -1, labels of this shard
    become label - start, labels of other shards become stop - start (a column no local chunk
    has, so they add nothing to a target logit, yet the row keeps its softmax gradient)."""
    t = targets.astype(xp.int64, copy=False)
    owned = (t >= start) & (t < stop)
    return xp.where(t < 0, -1, xp.where(owned, t - start, stop - start))


def select_topk(backend, ids, vals, k):
    """The k best of the candidates (ids, vals) (B, C) per row, best first (`backend.topk`:
    equal scores by position, which is ascending label id when the candidates come in label
    order, as the ranks' blocks do)."""
    vals, pos = backend.topk(vals, min(int(k), vals.shape[1]))
    return backend.xp.take_along_axis(ids, pos, axis=1), vals


class ShardedOutput:
    """Mixin of the label-sharded outputs (see the module docstring)."""

    #: names of the params whose arrays are this rank's label rows (never all-reduced)
    sharded_params: tuple = ()
    #: names of the other state entries whose leading axis is this rank's labels (checkpoints)
    sharded_buffers: tuple = ()
    #: marks the layer for the distributed step (its losses and sums are already global)
    label_sharded = True
    #: the single-process layer's class name: state and optimizer keys are "<i>.<state_name>.<x>"
    #: as in one process (engine/models/base.py layer_state_name), so checkpoints merge and split
    state_name: str = None

    def sharded_state(self):
        """Names of the state entries (state_dict) split by labels over the ranks: rows
        [label_start, label_stop) here; every other entry is the same on every rank."""
        return tuple(self.sharded_params) + tuple(self.sharded_buffers)

    def _init_shard(self, comm, num_labels, what):
        self.comm = comm if comm is not None else SingleProcess()
        self.num_labels = int(num_labels)
        check_shardable(self.num_labels, self.comm.size, what)
        self.label_start, self.label_stop = label_range(self.num_labels, self.comm.size,
                                                        self.comm.rank)
        self._row_counts = None

    @property
    def local_labels(self):
        return self.label_stop - self.label_start

    # -- rows ---------------------------------------------------------------------------------
    def gather_rows(self, h, targets=None):
        """H (B, d) and T (B[, K]) of the global minibatch, in rank order; remembers the row
        counts for `scatter_rows`. K-hot targets are padded with -1 to the largest K."""
        comm = self.comm
        if comm.size == 1:
            self._row_counts = [h.shape[0]]
            return h, targets
        k = 0 if targets is None or targets.ndim == 1 else targets.shape[1]
        shape = comm.allgather(numpy.array([h.shape[0], k], dtype=numpy.int64)).reshape(-1, 2)
        counts = [int(c) for c in shape[:, 0]]
        self._row_counts = counts
        H = comm.allgatherv(h, counts)
        if targets is None:
            return H, None
        if targets.ndim == 2 and int(shape[:, 1].max()) > k:
            xp = self.backend.xp
            pad = xp.full((targets.shape[0], int(shape[:, 1].max()) - k), -1, dtype=targets.dtype)
            targets = xp.concatenate([targets, pad], axis=1)
        return H, comm.allgatherv(targets, counts)

    def own_rows(self, x):
        """This rank's rows of a global (B, ...) array (after `gather_rows`)."""
        counts = self._row_counts
        offset = sum(counts[:self.comm.rank])
        return x[offset:offset + counts[self.comm.rank]]

    def scatter_rows(self, dH):
        """(B, d) partial sums on every rank -> this rank's rows of their sum (B_r, d)."""
        if self.comm.size == 1:
            return dH
        return self.comm.reduce_scatter(dH, self._row_counts)

    # -- top-k over all shards ---------------------------------------------------------------------
    def merge_topk(self, ids, vals, k):
        """Every rank's top candidates (B, k_r) (global label ids) -> the global top-k (B, k),
        best first. Ranks with fewer than k labels pad with id -1 and score -inf."""
        xp = self.backend.xp
        k = int(min(k, self.num_labels))
        if self.comm.size == 1:
            return select_topk(self.backend, ids, vals, k)
        rows = ids.shape[0]
        if ids.shape[1] < k:
            fill = k - ids.shape[1]
            ids = xp.concatenate([ids, xp.full((rows, fill), -1, dtype=ids.dtype)], axis=1)
            vals = xp.concatenate([vals, xp.full((rows, fill), -xp.inf, dtype=vals.dtype)], axis=1)
        ids = ids[:, :k].astype(xp.int64)
        vals = xp.ascontiguousarray(vals[:, :k])
        size = self.comm.size
        all_ids = self.comm.allgather(xp.ascontiguousarray(ids)).reshape(size, rows, k)
        all_vals = self.comm.allgather(vals).reshape(size, rows, k)
        all_ids = all_ids.transpose(1, 0, 2).reshape(rows, size * k)
        all_vals = all_vals.transpose(1, 0, 2).reshape(rows, size * k)
        return select_topk(self.backend, all_ids, all_vals, k)


__all__ = ["label_range", "check_shardable", "batch_rows", "uniform_rows", "local_targets",
           "select_topk", "ShardedOutput", "DRAW_BLOCK_ELEMS"]
