"""Label-sharded exact softmax cross-entropy, whole or chunked (vocabulary-parallel).

Shapes: N ranks; rank r owns words [s_r, e_r) (L_r = e_r - s_r of the L words, shard.py) with
W_r (L_r, d) and b_r (L_r,) and their optimizer state; h (B_r, d) and targets (B_r,) are this
rank's rows of the global minibatch (B rows, -1 = ignored).

`num_classes` is this shard's L_r (so the inherited pieces work on the local columns);
`num_labels` and `config()` give the global L. One training step, after the single-process
layer (engine/outputs/softmax.py) whose pieces it reuses on the local columns (`_logits`,
`_chunked_lse`, the chunk and fused-SGD backward loops, the backend's
`logsumexp_chunk_update` / `softmax_xent_grad_chunk` kernels):
    H = allgather(h) (B, d), T = allgather(targets) (B,)
    local: logits_r = H W_r^T + b_r (B, L_r), whole or chunk by chunk; per row the shard's
           log-sum-exp lse_r and the target logit where the target is in the shard (else 0)
    allreduce MAX of lse_r, then SUM of exp(lse_r - max) and of the target logits (2 B numbers,
           float64): lse = max + log(sum), loss_row = lse - target logit
    local: G_r = softmax - onehot on the shard's columns (exp(logit - lse); targets of other
           shards are columns no chunk has, so they only keep the row's softmax term), dW_r,
           db_r; dH_r = G_r W_r (B, d)
    dh = reduce_scatter(sum_r dH_r) -> this rank's rows (B_r, d).
Moved per step (float32, B d-sized): gather h B d (N-1)/N, reduce dh the same, 3 B numbers.
The 1/N of the mean counts the non-ignored rows of the whole minibatch; every rank gets the
same loss. An ignored row gets loss 0 and gradient 0.

Accumulation: within a shard the sums of exponentials run in the layer's dtype as in the
single-process layer (exp(x - max) in (0, 1], tree/pairwise summed: relative error about
eps log2(L_r), 1e-6 in float32 at L_r = 10^6, where 16-bit accumulators would lose
everything); the sums across ranks are combined in float64.

Evaluation: `log_prob` / `predict_topk` return this rank's rows (their normaliser and top-k
over all shards), so the inherited `eval_sums` gives this rank's part of the minibatch sums;
their sum over ranks (step.eval_sums) is the single-process one. meProp
on the output (a top-k over a whole row of the logit gradient) is refused.
"""
from __future__ import annotations

import numpy

from ..outputs.softmax import SoftmaxOutput, _check_targets
from ..outputs.xmc_metrics import TopK
from .shard import ShardedOutput, local_targets, uniform_rows

#: Largest block (elements) the whole mode copies to fold its logits into the log-sum-exp.
STATS_BLOCK_ELEMS = 1 << 22


class ShardedSoftmaxOutput(ShardedOutput, SoftmaxOutput):
    sharded_params = ("W", "b")
    state_name = "SoftmaxOutput"

    def __init__(self, in_features: int, num_classes: int, comm=None, **kwargs):
        SoftmaxOutput.__init__(self, in_features, num_classes, **kwargs)
        if self.meprop is not None:
            raise ValueError("sharded softmax: meprop on the output layer is not supported "
                             "(its top-k runs over a whole row of the logit gradient)")
        self._init_shard(comm, num_classes, "softmax")
        # the inherited pieces (chunks, scratch, gradient buffers) work on this shard's columns
        self.num_classes = self.local_labels

    def config(self):
        return {**SoftmaxOutput.config(self), "num_classes": self.num_labels}

    # -- this rank's columns ------------------------------------------------------------------
    def init_params(self, rng):
        d, L = self.in_features, self.num_labels
        a = self.init_scale if self.init_scale is not None else 1.0 / numpy.sqrt(d)
        params = {"W": uniform_rows(rng, a, L, d, self.label_start, self.label_stop)}
        if self.use_bias:
            params["b"] = numpy.zeros(self.local_labels)
        return params

    def _whole(self):
        return ((self.chunk_size is None or self.chunk_size >= self.local_labels)
                and not self.owns_update)

    # -- statistics over all shards ---------------------------------------------------------------
    def _global_lse(self, lse_r, target_r):
        """Per-row log-sum-exp over all words and the target logit, from every shard's."""
        xp = self.backend.xp
        top = self.comm.allreduce(lse_r, "max")
        rows = lse_r.shape[0]
        packed = xp.concatenate([xp.exp((lse_r - top).astype(numpy.float64)),
                                 target_r.astype(numpy.float64)])
        packed = self.comm.allreduce(packed, "sum", inplace=True)
        lse = (top.astype(numpy.float64) + xp.log(packed[:rows])).astype(self.dtype)
        return lse, packed[rows:].astype(self.dtype)

    def _local_stats_whole(self, logits, t_local):
        """The shard's lse_r and target logit from logits kept intact (copied block by block,
        since the CPU reference of the fold overwrites its input)."""
        xp, be = self.backend.xp, self.backend
        rows, width = logits.shape
        run_max = xp.full((rows,), -xp.inf, dtype=self.dtype)
        run_sum = xp.zeros((rows,), dtype=self.dtype)
        target = xp.zeros((rows,), dtype=self.dtype)
        cols = max(1, min(width, STATS_BLOCK_ELEMS // max(rows, 1)))
        scratch = xp.empty((rows * cols,), dtype=self.dtype)
        for c0 in range(0, width, cols):
            c1 = min(c0 + cols, width)
            piece = scratch[:rows * (c1 - c0)].reshape(rows, c1 - c0)
            piece[...] = logits[:, c0:c1]
            be.logsumexp_chunk_update(piece, c0, t_local, run_max, run_sum, target)
        return run_max + xp.log(run_sum), target

    def _global_log_prob(self, H, T, chunk_size=None):
        """log p(target) (B,) of the global rows (0 for ignored rows)."""
        t_local = local_targets(self.backend.xp, T, self.label_start, self.label_stop)
        lse_r, target_r = self._chunked_lse(H, t_local, chunk_size)
        lse, target = self._global_lse(lse_r, target_r)
        return (target - lse) * (T >= 0)

    # -- OutputLayer ---------------------------------------------------------------------------
    def forward(self, h, targets, train=True):
        """Mean cross-entropy of the global minibatch (0-d, the same on every rank)."""
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"softmax: expected h (B, {self.in_features}), got {tuple(h.shape)}")
        _check_targets(targets, h.shape[0])
        H, T = self.gather_rows(h, targets)
        t_local = local_targets(self.backend.xp, T, self.label_start, self.label_stop)
        scale = self._mean_scale(T)
        if self._whole():
            logits = self._logits(H, 0, self.local_labels)
            lse_r, target_r = self._local_stats_whole(logits, t_local)
            lse, target = self._global_lse(lse_r, target_r)
            if train:     # logits -> G_r = softmax - onehot on this shard, in place
                self.backend.softmax_xent_grad_chunk(logits, 0, t_local, lse, 1.0)
            self._cache = ("whole", H, t_local, logits, scale) if train else None
        else:
            lse_r, target_r = self._chunked_lse(H, t_local)
            lse, target = self._global_lse(lse_r, target_r)
            self._cache = ("chunked", H, t_local, lse, scale) if train else None
        loss_rows = (lse - target) * (T >= 0)
        return loss_rows.sum() * scale

    def backward(self, dy=None):
        """dh (B_r, d) of this rank's rows; grads of W_r, b_r (or their fused SGD update)."""
        return self.scatter_rows(SoftmaxOutput.backward(self, dy))

    def log_prob(self, h, targets, chunk_size=None):
        _check_targets(targets, h.shape[0])
        H, T = self.gather_rows(h, targets)
        return self.own_rows(self._global_log_prob(H, T, chunk_size))

    def log_softmax(self, h, start=0, stop=None):
        raise NotImplementedError("sharded softmax: each rank holds only its words; use "
                                  "log_prob or predict_topk (or merge the checkpoint)")

    def predict_topk(self, h, k: int, chunk_size=None):
        """The k most probable words of this rank's rows: (ids (B_r, k) int64, log-probs)."""
        xp = self.backend.xp
        H, _ = self.gather_rows(h)
        rows = H.shape[0]
        none = xp.full((rows,), -1, dtype=xp.int64)
        lse_r, _ = self._chunked_lse(H, none, chunk_size)
        lse, _ = self._global_lse(lse_r, xp.zeros((rows,), dtype=self.dtype))
        top = TopK(self.backend, rows, int(min(k, self.local_labels)), self.dtype)
        for start, stop in self._chunks(chunk_size or self.chunk_size or 65536):
            top.add(self._logits(H, start, stop), self.label_start + start)
        ids, vals = top.result()
        ids, vals = self.merge_topk(ids, vals, k)
        return self.own_rows(ids), self.own_rows(vals - lse[:, None])


__all__ = ["ShardedSoftmaxOutput"]
