"""Label-sharded multi-label outputs: squared hinge and BCE over dense or fixed fan-in weights.

Shapes: N ranks; rank r owns labels [s_r, e_r) (L_r of L, shard.py) and their rows of the
weight layer: dense W_r (L_r, d), b_r (L_r,), or FFI weights_r / indices_r (L_r, k), bias_r;
h (B_r, d) and targets (B_r, K) (padded with -1; a (B_r,) array is one label per row).

These losses need no normalisation across labels, so a step moves only h and dh:
    H = allgather(h) (B, d), T = allgather(targets) (B, K)
    local: s_r = inner_r(H) (B, L_r), y = +1 at the targets inside [s_r, e_r), the loss and
           dl/ds on the shard (engine/outputs/multilabel.py's `_loss_grad`), dW_r (inner's
           backward), dH_r = (dl/ds_r) W_r (B, d)
    loss = allreduce SUM of the shard's loss sum (one number) / B;
    dh = reduce_scatter(sum_r dH_r) -> this rank's rows (B_r, d).
Moved per step: B d (N-1)/N for h and for dh, one number for the loss (float32: 8 B d (N-1)/N).

Initial weights equal the single-process layer's rows: the dense rows are drawn block by block
from the model's generator (shard.uniform_rows); the FFI draw (indices then weights over all L
rows, fixed_fanin_rewire.draw_distinct) runs whole on the host and the rank keeps its rows.
Dynamic rewiring of the FFI layer prunes the globally smallest weights, a selection over all
shards: refused here (rewire_every must be 0).

Evaluation: the loss and a running top-k over the shard's label blocks (ids offset by s_r),
then the top-k of all ranks merged (shard.merge_topk); `eval_sums` returns this rank's part of
the minibatch sums (the loss of its labels over all rows; P@k, nDCG@k, PSP@k of its own rows),
whose sum over ranks (step.eval_sums) is the single-process sums.
"""
from __future__ import annotations

import numpy

from ..layers.fixed_fanin import FixedFanInLinear
from ..layers.linear import Linear
from ..outputs.multilabel import BCEOutput, MultilabelOutput, SquaredHingeOutput
from ..outputs.xmc_metrics import DEFAULT_KS, metric_sums
from ..optim.slots import slot_count
from .shard import ShardedOutput, uniform_rows


class _LinearRows(Linear):
    """Linear over labels [start, stop) of a (L, d) layer: initial W = those rows of the
    single-process draw (Glorot bound from the full width L)."""

    def __init__(self, in_features, num_labels, start, stop, bias):
        super().__init__(in_features, stop - start, bias=bias)
        self.num_labels, self.start, self.stop = num_labels, start, stop

    def init_params(self, rng):
        a = numpy.sqrt(6.0 / (self.in_features + self.num_labels))
        params = {"W": uniform_rows(rng, a, self.num_labels, self.in_features, self.start,
                                    self.stop)}
        if self.use_bias:
            params["b"] = numpy.zeros(self.stop - self.start)
        return params


class _FixedFanInRows(FixedFanInLinear):
    """Fixed fan-in layer over labels [start, stop): indices and weights = those rows of the
    single-process draw over all L labels."""

    def __init__(self, in_features, num_labels, start, stop, fan_in, bias, seed, **kwargs):
        super().__init__(in_features, stop - start, fan_in, bias=bias, seed=seed, **kwargs)
        self.num_labels, self.start, self.stop = num_labels, start, stop

    def init_params(self, rng):
        full = FixedFanInLinear(self.in_features, self.num_labels, self.fan_in,
                                bias=self.use_bias, seed=self.seed)
        params = full.init_params(rng)
        self._host_indices = numpy.ascontiguousarray(full._host_indices[self.start:self.stop])
        return {name: numpy.ascontiguousarray(value[self.start:self.stop])
                for name, value in params.items()}


class ShardedMultilabelOutput(ShardedOutput, MultilabelOutput):
    """Base of the sharded multi-label losses; `num_classes` stays the global L."""

    def __init__(self, in_features: int, num_classes: int, comm=None, **kwargs):
        MultilabelOutput.__init__(self, in_features, num_classes, **kwargs)
        self._init_shard(comm, num_classes, self.name)
        start, stop = self.label_start, self.label_stop
        if self.weights == "ffi":
            if int(self.ffi_kwargs.get("rewire_every", 0)):
                raise ValueError(f"sharded {self.name}: dynamic rewiring (rewire_every) selects "
                                 f"the smallest weights over all labels; not supported across "
                                 f"ranks (set rewire_every=0)")
            self.inner = _FixedFanInRows(self.in_features, num_classes, start, stop,
                                         self.fan_in, self.use_bias, self.seed, **self.ffi_kwargs)
            self.sharded_params = ("weights", "bias")
            self.sharded_buffers = ("indices",)        # each label's fan-in feature ids
        else:
            self.inner = _LinearRows(self.in_features, num_classes, start, stop, self.use_bias)
            self.sharded_params = ("W", "b")

    # -- the loss ---------------------------------------------------------------------------
    def forward(self, h, targets, train=True):
        """Mean over the global minibatch of the summed label losses (every rank the same)."""
        self._check(h, targets)
        H, T = self.gather_rows(h, targets)
        s = self.inner.forward(H, train)
        y = self._positives(T, slice(None), self.label_start, self.label_stop)
        loss, grad = self._loss_grad(s, y, want_grad=train)
        total = self.comm.allreduce(loss.sum(dtype=numpy.float64), "sum")
        scale = 1.0 / H.shape[0]
        if train:
            grad *= self.dtype.type(scale)
            self._cache = grad
        return total.astype(self.dtype) * self.dtype.type(scale)

    def backward(self, dy=None):
        return self.scatter_rows(MultilabelOutput.backward(self, dy))

    # -- evaluation ---------------------------------------------------------------------------
    def _score_blocks(self, h):
        """(row slice, first global label, scores) over this shard's labels, each block at
        most `eval_block_elems` entries."""
        B, L = h.shape[0], self.local_labels
        if self.weights == "dense":
            W = self.params["W"]
            b = self.params.get("b")
            c = max(1, min(L, self.eval_block_elems // max(B, 1)))
            r = max(1, self.eval_block_elems // c)
            for r0 in range(0, B, r):
                hr = h[r0:r0 + r]
                for c0 in range(0, L, c):
                    s = hr @ W[c0:c0 + c].T
                    if b is not None:
                        s += b[c0:c0 + c]
                    yield slice(r0, r0 + r), self.label_start + c0, s
        else:
            r = max(1, self.eval_block_elems // L)
            for r0 in range(0, B, r):
                yield slice(r0, r0 + r), self.label_start, self.inner.forward(h[r0:r0 + r], False)

    def predict_topk(self, h, k: int):
        H, _ = self.gather_rows(h)
        ids, vals, _ = self._ranked(H, k)
        ids, vals = self.merge_topk(ids, vals, k)
        return self.own_rows(ids), self.own_rows(vals)

    def eval_sums(self, h, targets, ks=DEFAULT_KS):
        """This rank's part of the minibatch sums (their sum over ranks is the single-process
        sums): count and P@k, nDCG@k, PSP@k of its own rows (from the merged global top-k),
        and the loss of its labels over all rows."""
        self._check(h, targets)
        H, T = self.gather_rows(h, targets)
        t2 = T.reshape(-1, 1) if T.ndim == 1 else T
        ids, vals, loss = self._ranked(H, max(ks), t2)
        ids, _ = self.merge_topk(ids, vals, max(ks))
        sums = {"count": self.backend.xp.asarray(float(h.shape[0])), "loss": loss}
        sums.update(metric_sums(self.backend.xp, self.own_rows(ids), self.own_rows(t2),
                                self._inv_prop, ks))
        return sums

    def loss_per_example(self, h, targets):
        """(B_r,) summed label loss of this rank's examples, float64."""
        self._check(h, targets)
        H, T = self.gather_rows(h, targets)
        t2 = T.reshape(-1, 1) if T.ndim == 1 else T
        xp = self.backend.xp
        out = xp.zeros((H.shape[0],), dtype=numpy.float64)
        for rows, c0, s in self._score_blocks(H):
            y = self._positives(t2, rows, c0, c0 + s.shape[1])
            out[rows] += self._loss_grad(s, y, want_grad=False)[0].sum(axis=1, dtype=numpy.float64)
        return self.own_rows(self.comm.allreduce(out, "sum"))

    def memory_report(self, optimizer=None, batch=None, dtype=None):
        """This rank's bytes: the shard's weight layer (see MultilabelOutput.memory_report),
        plus the gathered (B, d) h and its (B, d) partial dh with `batch` (the global B)."""
        if self.weights == "ffi":
            out = self.inner.memory_report(optimizer=optimizer, batch=batch, dtype=dtype)
            out.pop("total")
        else:
            s = numpy.dtype(dtype if dtype is not None else (self.dtype or numpy.float32)).itemsize
            L, d = self.local_labels, self.in_features
            nb = L if self.use_bias else 0
            out = {"weights": L * d * s, "bias": nb * s, "grads": (L * d + nb) * s,
                   "optimizer": slot_count(optimizer) * (L * d + nb) * s}
            if batch is not None:
                out["activations"] = int(batch) * (2 * d + 2 * L) * s
        out["total"] = int(sum(out.values()))
        return {k: int(v) for k, v in out.items()}


class ShardedSquaredHingeOutput(ShardedMultilabelOutput, SquaredHingeOutput):
    name = "squared-hinge"
    state_name = "SquaredHingeOutput"


class ShardedBCEOutput(ShardedMultilabelOutput, BCEOutput):
    name = "bce"
    state_name = "BCEOutput"


__all__ = ["ShardedMultilabelOutput", "ShardedSquaredHingeOutput", "ShardedBCEOutput"]
