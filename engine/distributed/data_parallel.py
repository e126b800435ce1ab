"""Data parallelism for the replicated parameters: one flat all-reduce of the dense gradients,
an all-gather of the row-sparse ones, and the weighting of a replicated output's loss.

Dimension letters: N ranks, P parameters, B the global minibatch, B_r this rank's rows, n_r
the examples this rank's loss is a mean over (rows, or rows with a target), n = sum_r n_r.

`GradientReducer(comm, backend).reduce(items, sharded_keys, weight)` takes the optimizer's
items [(key, param, grad)] after the backward pass of this rank's rows and returns them with
every replicated gradient summed over the ranks (sharded ones, the label rows of a sharded
output, pass unchanged):
  1. one small all-reduce of per-parameter flags (P x 2 ints: ranks with a dense gradient,
     ranks with a row-sparse one), so every rank knows the same layout even when a parameter
     got no gradient on some ranks (an adaptive-softmax tail no row of theirs reached) and
     leaves out what got none anywhere (as the single-process optimizer skips a None grad);
  2. the dense gradients, each times `weight`, packed in one flat buffer per dtype and
     all-reduced in place (one collective per step for a model of one dtype);
  3. each row-sparse gradient (embedding, sparse input layer, meProp rows) all-gathered as
     (rows (U_r,) int64, values (U_r, D...)) in rank order and coalesced (duplicate rows summed
     in that order, the order of the single-process minibatch), so every rank gets the same.
Every rank then holds the same gradients, applies the same update and its replicated
parameters stay identical (tested bit for bit on the CPU).

`weight`: a label-sharded output already returns the loss and dh of the global mean, so the
body's gradients are partial sums and the weight is 1 (None). A replicated output (adaptive
softmax, squared error, ...) runs data-parallel: its loss is the mean over this rank's n_r
examples, so every gradient of the rank is weighted by n_r / n before the sum, and the global
loss is sum_r n_r loss_r / n (`data_parallel_loss`).
"""
from __future__ import annotations

import numpy

from ..outputs.adaptive import AdaptiveSoftmaxOutput
from ..outputs.softmax import SoftmaxOutput
from ..row_sparse import RowSparseGrad


def is_label_sharded(layer) -> bool:
    return bool(getattr(type(layer), "label_sharded", False))


def mean_count(output, targets):
    """n_r: the number of examples `output`'s loss is a mean over for these targets (a 0-d
    array or an int), or None when the loss is a sum (weight 1)."""
    xp = output.backend.xp
    if isinstance(output, AdaptiveSoftmaxOutput):
        if output.reduction == "none":
            raise ValueError("data-parallel adaptive softmax: reduction='none' returns per-row "
                             "losses; use 'mean' or 'sum'")
        if output.reduction == "sum":
            return None
        t = targets.astype(xp.int64, copy=False)
        return ((t >= 0) & (t != output.ignore_index)).sum()
    if isinstance(output, SoftmaxOutput):
        return (targets >= 0).sum()
    if output.config().get("reduction", "mean") == "sum":
        return None
    return targets.shape[0]


def data_parallel_loss(comm, output, loss, targets):
    """(global loss, weight of this rank's gradients) for a replicated output whose `loss` is
    over this rank's rows only: loss = sum_r n_r loss_r / n, weight = n_r / n (one all-reduce
    of two numbers). A summed loss gives (sum_r loss_r, None)."""
    xp = output.backend.xp
    count = mean_count(output, targets)
    if count is None:
        return comm.allreduce(xp.asarray(loss, dtype=numpy.float64), "sum").astype(loss.dtype), None
    n_r = xp.asarray(count, dtype=numpy.float64)
    packed = xp.stack([n_r * loss.astype(numpy.float64), n_r])
    packed = comm.allreduce(packed, "sum", inplace=True)
    n = xp.maximum(packed[1], 1.0)
    return (packed[0] / n).astype(loss.dtype), n_r / n


class GradientReducer:
    """Sums the replicated gradients over the ranks (see the module docstring)."""

    def __init__(self, comm, backend):
        self.comm, self.backend = comm, backend

    def reduce(self, items, sharded_keys=(), weight=None):
        """items [(key, param, grad)] -> the same list with replicated grads summed over ranks
        (dense grads are views into the flat all-reduced buffer; row-sparse grads coalesced)."""
        comm = self.comm
        sharded_keys = set(sharded_keys)
        if comm.size == 1:
            return list(items)
        replicated = [i for i, (key, _, _) in enumerate(items) if key not in sharded_keys]
        flags = numpy.zeros((len(replicated), 2), dtype=numpy.int64)
        for j, i in enumerate(replicated):
            grad = items[i][2]
            if grad is not None:
                flags[j, 1 if isinstance(grad, RowSparseGrad) else 0] = 1
        flags = comm.allreduce(flags, "sum")
        out = list(items)
        dense = [(i, j) for j, i in enumerate(replicated) if flags[j, 0] > 0]
        sparse = [(i, j) for j, i in enumerate(replicated) if flags[j, 1] > 0]
        for i, j in dense:
            if flags[j, 1]:
                key = items[i][0]
                raise RuntimeError(f"{key}: a dense gradient on {flags[j, 0]} ranks and a "
                                   f"row-sparse one on {flags[j, 1]}; layers must give the same "
                                   f"kind of gradient on every rank")
        for j, i in enumerate(replicated):
            if not flags[j].any():
                out[i] = (items[i][0], items[i][1], None)
        self._reduce_dense(items, out, [i for i, _ in dense], weight)
        for i, _ in sparse:
            out[i] = self._gather_sparse(items[i], weight)
        return out

    # -- dense: one flat buffer per dtype ------------------------------------------------------
    def _reduce_dense(self, items, out, indices, weight):
        xp = self.backend.xp
        by_dtype = {}
        for i in indices:
            param = items[i][1]
            by_dtype.setdefault(numpy.dtype(param.dtype).name, []).append(i)
        for name in sorted(by_dtype):
            group = by_dtype[name]
            dtype = numpy.dtype(name)
            sizes = [int(items[i][1].size) for i in group]
            flat = xp.empty((sum(sizes),), dtype=dtype)
            offset = 0
            for i, n in zip(group, sizes):
                grad = items[i][2]
                if grad is None:
                    flat[offset:offset + n] = 0
                else:
                    flat[offset:offset + n] = grad.reshape(-1)
                offset += n
            if weight is not None:
                flat *= xp.asarray(weight).astype(dtype)
            flat = self.comm.allreduce(flat, "sum", inplace=True)
            offset = 0
            for i, n in zip(group, sizes):
                key, param, _ = items[i]
                out[i] = (key, param, flat[offset:offset + n].reshape(param.shape))
                offset += n

    # -- row-sparse: all-gather (rows, values), coalesce in rank order --------------------------
    def _gather_sparse(self, item, weight):
        xp = self.backend.xp
        key, param, grad = item
        if grad is None:
            rows = xp.zeros((0,), dtype=xp.int64)
            values = xp.zeros((0,) + tuple(param.shape[1:]), dtype=param.dtype)
        else:
            rows = grad.rows.reshape(-1).astype(xp.int64)
            values = grad.values.reshape((rows.shape[0],) + tuple(param.shape[1:]))
            values = values.astype(param.dtype, copy=weight is not None)
            if weight is not None:
                values *= xp.asarray(weight).astype(param.dtype)
        counts = self.comm.row_counts(rows.shape[0])
        all_rows = self.comm.allgatherv(rows, counts)
        all_values = self.comm.allgatherv(xp.ascontiguousarray(values), counts)
        merged = RowSparseGrad(all_rows, all_values, tuple(param.shape)).coalesced(self.backend)
        return key, param, merged


__all__ = ["GradientReducer", "data_parallel_loss", "mean_count", "is_label_sharded"]
