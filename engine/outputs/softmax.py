"""Exact softmax cross-entropy over the whole vocabulary, whole or chunk by chunk.

Shapes: h (B, d), W (D, d), b (D,), targets (B,) int (-1 = ignored row), logits (B, D) or one
chunk of them (B, C). Loss = mean over the non-ignored rows of logsumexp(h W^T + b) - logit[t].

Whole mode (`chunk_size=None`): forward(train=True) computes the logits once and the fused
kernel (`backend.softmax_xent_fused`, rawkernels/softmax_xent.cu) turns them in place into the
gradient G = softmax - onehot while it computes the loss; backward is then dW = G^T h,
db = sum_b G, dh = G W. Peak extra memory: one B x D matrix.

Chunked mode (`chunk_size=C`): the B x D logits never exist. Forward folds each chunk's
logits into a running log-sum-exp (`backend.logsumexp_chunk_update`); backward recomputes each
chunk's logits, turns them into that chunk's gradient in place
(`backend.softmax_xent_grad_chunk`) and accumulates dh and writes the chunk's rows of dW, db.
It costs one extra B x C x d product per chunk (4 products instead of 3) and holds one B x C
chunk at a time; loss and gradients equal the whole mode's to rounding.

The 1/N of the mean (N = rows not ignored) is applied to the small results (dW, db, dh) as a
device scalar, so there is no host synchronisation in a step.

Fused SGD update (`update="fused-sgd"`, chunked mode): backward applies W_c -= lr G_c^T h (and
the bias) chunk by chunk, right after the chunk's contribution to dh has been taken with the old
W_c, so the D x d gradient is never stored either: the step's extra memory is one B x C chunk.
The result equals a plain SGD step (no momentum, decay or clipping on this layer: those need the
whole gradient). The layer then owns its update (`owns_update`): the engine hands it the
learning rate with `prepare_update(lr)` before backward, and the optimizer skips it.
"""
from __future__ import annotations


from ..layers.base import OutputLayer
from ..layers.meprop import check_config, meprop_backward
from ..options import Option, at_least, bias_option, init_scale_option, parse_int, parse_str

#: Largest temporary the fused SGD update allocates for one block of W's rows.
UPDATE_BLOCK_BYTES = 16 * 2 ** 20


def _check_targets(targets, batch):
    if targets.ndim != 1 or targets.shape[0] != batch:
        raise ValueError(f"softmax: targets must be (B,) = ({batch},), got {tuple(targets.shape)}")


class SoftmaxOutput(OutputLayer):
    OPTIONS = (
        Option("chunk_size", parse_int, None, "softmax over vocabulary chunks of this many words "
               "(never holds the B x D logits)", check=at_least(1), metavar="C"),
        Option("update", parse_str, "optimizer", "optimizer: the optimizer updates W; fused-sgd: "
               "plain SGD inside the chunk loop (needs --chunk-size; no D x d gradient)",
               flag="--softmax-update", choices=("optimizer", "fused-sgd")),
        bias_option(True),
        init_scale_option(),
    )
    NOT_OPTIONS = {**OutputLayer.NOT_OPTIONS,
                   "meprop": "set by the classifier's --meprop-output (meProp at the output)"}

    def __init__(self, in_features: int, num_classes: int, bias: bool = True,
                 chunk_size: int | None = None, init_scale: float | None = None,
                 update: str = "optimizer", meprop: dict | None = None):
        super().__init__()
        if update not in ("optimizer", "fused-sgd"):
            raise ValueError(f"softmax: update must be 'optimizer' or 'fused-sgd', got {update!r}")
        self.update = update
        self.owns_update = update == "fused-sgd"
        self._lr = None
        if in_features < 1 or num_classes < 1:
            raise ValueError(f"softmax: sizes must be positive, got d={in_features}, D={num_classes}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"softmax: chunk_size must be positive or None, got {chunk_size}")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.use_bias = bool(bias)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        # meProp on the output layer (docs/meprop.md, "Where it is applied": the output layer can opt in): top-k
        # of each row of the logit gradient, whole mode only (the chunked mode never holds a row)
        self.meprop = check_config(meprop)
        if self.meprop is not None and (self.chunk_size is not None or self.owns_update):
            raise ValueError("softmax: meprop needs the whole mode (no chunk_size, "
                             "update='optimizer')")
        self.key = (0, 0)                 # (model seed, step), set by Model.set_random_key
        self.init_scale = init_scale
        self._cache = None

    # -- pieces -------------------------------------------------------------------
    def _chunks(self, chunk_size=None):
        c = chunk_size or self.chunk_size or self.num_classes
        for start in range(0, self.num_classes, c):
            yield start, min(start + c, self.num_classes)

    def _logits(self, h, start, stop, scratch=None):
        """Logits of columns [start, stop): (B, stop - start). With `scratch` (a flat buffer of
        at least B * chunk elements) they are written into it, so a chunk loop reuses one buffer."""
        W = self.params["W"][start:stop]
        if scratch is None:
            logits = h @ W.T
        else:
            logits = scratch[:h.shape[0] * (stop - start)].reshape(h.shape[0], stop - start)
            self.backend.xp.matmul(h, W.T, out=logits)
        if self.use_bias:
            logits += self.params["b"][start:stop]
        return logits

    def _scratch(self, rows, chunk_size=None):
        """A flat buffer for `rows` x (largest chunk) elements, reused across a chunk loop."""
        c = min(chunk_size or self.chunk_size or self.num_classes, self.num_classes)
        return self.backend.xp.empty((rows * c,), dtype=self.dtype)

    def _mean_scale(self, targets):
        """Device scalar 1 / (number of rows not ignored)."""
        n_valid = (targets >= 0).sum()
        return (1.0 / self.backend.xp.maximum(n_valid, 1)).astype(self.dtype)

    def _chunked_lse(self, h, targets, chunk_size=None):
        """Per-row log-sum-exp and target logit, folded over vocabulary chunks."""
        xp, be = self.backend.xp, self.backend
        batch = h.shape[0]
        run_max = xp.full((batch,), -xp.inf, dtype=self.dtype)
        run_sum = xp.zeros((batch,), dtype=self.dtype)
        target_logit = xp.zeros((batch,), dtype=self.dtype)
        scratch = self._scratch(batch, chunk_size)
        for start, stop in self._chunks(chunk_size):
            be.logsumexp_chunk_update(self._logits(h, start, stop, scratch), start, targets,
                                      run_max, run_sum, target_logit)
        return run_max + xp.log(run_sum), target_logit

    # -- OutputLayer ------------------------------------------------------------
    def forward(self, h, targets, train=True):
        """Mean cross-entropy (0-d device array). With train=True, caches for backward()."""
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"softmax: expected h (B, {self.in_features}), got {tuple(h.shape)}")
        _check_targets(targets, h.shape[0])
        scale = self._mean_scale(targets)
        if (self.chunk_size is None or self.chunk_size >= self.num_classes) and not self.owns_update:
            logits = self._logits(h, 0, self.num_classes)
            # fused: loss per row, and logits -> (softmax - onehot) in place (zero for ignored rows)
            loss_rows = self.backend.softmax_xent_fused(logits, targets, 1.0)
            self._cache = ("whole", h, targets, logits, scale) if train else None
        else:
            lse, target_logit = self._chunked_lse(h, targets)
            loss_rows = (lse - target_logit) * (targets >= 0)
            self._cache = ("chunked", h, targets, lse, scale) if train else None
        return loss_rows.sum() * scale

    def backward(self, dy=None):
        if self._cache is None:
            raise RuntimeError("softmax.backward called without a forward(train=True)")
        mode, h, targets, extra, scale = self._cache
        self._cache = None
        W = self.params["W"]
        h_scaled = h * scale                          # (B, d): the 1/N goes on the small side
        if mode == "whole":
            grad_logits = extra                       # (B, D), already softmax - onehot
            if self.use_bias:                         # the full gradient, also under meProp
                self.grads["b"] = grad_logits.sum(axis=0) * scale
            if self.meprop is not None and self.meprop["k"] < self.num_classes:
                key = (self.meprop["seed"],) + tuple(int(v) for v in self.key) + (self.layer_id, 1)
                self.grads["W"], dh = meprop_backward(self.backend, grad_logits, h_scaled, W,
                                                      self.meprop, key)
                return dh * scale
            self.grads["W"] = grad_logits.T @ h_scaled
            return (grad_logits @ W) * scale
        lse = extra
        xp, be = self.backend.xp, self.backend
        if self.owns_update:
            return self._backward_fused_sgd(h, targets, lse, scale, h_scaled)
        dW = xp.empty_like(W)
        db = xp.empty((self.num_classes,), dtype=self.dtype) if self.use_bias else None
        dh = xp.zeros_like(h)
        scratch = self._scratch(h.shape[0])
        for start, stop in self._chunks():
            g = self._logits(h, start, stop, scratch)
            be.softmax_xent_grad_chunk(g, start, targets, lse, 1.0)
            xp.matmul(g.T, h_scaled, out=dW[start:stop])
            if db is not None:
                g.sum(axis=0, out=db[start:stop])
            dh += g @ W[start:stop]
        self.grads["W"] = dW
        if db is not None:
            db *= scale
            self.grads["b"] = db
        dh *= scale
        return dh

    # -- fused SGD update (owns_update) -------------------------------------------
    def prepare_update(self, lr):
        """The learning rate the coming backward() applies (called by the engine)."""
        self._lr = float(lr)

    def apply_update(self, lr):
        """Nothing left to do: backward() already applied the update with prepare_update's lr."""

    def _backward_fused_sgd(self, h, targets, lse, scale, h_scaled):
        if self._lr is None:
            raise RuntimeError("softmax(update='fused-sgd'): call prepare_update(lr) before backward()")
        xp, be = self.backend.xp, self.backend
        W = self.params["W"]
        step = (-self._lr * scale).astype(self.dtype)       # device scalar: -lr / N
        h_step = h_scaled * self.dtype.type(-self._lr)      # (B, d): -lr/N folded into h
        dh = xp.zeros_like(h)
        scratch = self._scratch(h.shape[0])
        d = self.in_features
        # the update of a chunk's rows is added in blocks of at most UPDATE_BLOCK_BYTES, so its
        # temporary stays small even when a wide chunk is chosen for a small batch
        block_rows = max(1, UPDATE_BLOCK_BYTES // (d * self.dtype.itemsize))
        update = xp.empty((min(block_rows, self.num_classes) * d,), dtype=self.dtype)
        for start, stop in self._chunks():
            g = self._logits(h, start, stop, scratch)
            be.softmax_xent_grad_chunk(g, start, targets, lse, 1.0)
            dh += g @ W[start:stop]                        # with the old W_c
            for r0 in range(start, stop, block_rows):
                r1 = min(r0 + block_rows, stop)
                step_rd = update[:(r1 - r0) * d].reshape(r1 - r0, d)
                xp.matmul(g[:, r0 - start:r1 - start].T, h_step, out=step_rd)
                W[r0:r1] += step_rd
            if self.use_bias:
                self.params["b"][start:stop] += g.sum(axis=0) * step
        self.grads = {}
        dh *= scale
        return dh

    def log_prob(self, h, targets, chunk_size=None):
        """log p(target | h) per row (B,); 0 for ignored rows. Chunked when asked or configured."""
        _check_targets(targets, h.shape[0])
        lse, target_logit = self._chunked_lse(h, targets, chunk_size)
        return (target_logit - lse) * (targets >= 0)

    def log_softmax(self, h, start=0, stop=None):
        """Full log-probabilities of columns [start, stop) (B, C); the whole row needs D columns."""
        stop = self.num_classes if stop is None else stop
        xp = self.backend.xp
        lse, _ = self._chunked_lse(h, xp.full((h.shape[0],), -1, dtype=xp.int32))
        return self._logits(h, start, stop) - lse[:, None]

    def predict_topk(self, h, k: int, chunk_size=None):
        """The k most probable classes per row, best first: (ids (B, k) int64, log-probs (B, k)).

        Runs over vocabulary chunks, keeping a running top-k (`backend.topk`: equal logits by
        ascending id), so B x D is never held at once."""
        xp, be = self.backend.xp, self.backend
        k = int(min(k, self.num_classes))
        batch = h.shape[0]
        best_val = xp.full((batch, 0), -xp.inf, dtype=self.dtype)
        best_ids = xp.zeros((batch, 0), dtype=xp.int64)
        lse, _ = self._chunked_lse(h, xp.full((batch,), -1, dtype=xp.int32), chunk_size)
        for start, stop in self._chunks(chunk_size or self.chunk_size or 65536):
            vals = xp.concatenate([best_val, self._logits(h, start, stop)], axis=1)
            ids = xp.concatenate(
                [best_ids, xp.broadcast_to(xp.arange(start, stop, dtype=xp.int64), (batch, stop - start))],
                axis=1)
            best_val, pos = be.topk(vals, min(k, vals.shape[1]))
            best_ids = xp.take_along_axis(ids, pos, axis=1)
        return best_ids, best_val - lse[:, None]

    def config(self):
        return {"in_features": self.in_features, "num_classes": self.num_classes,
                "bias": self.use_bias, "chunk_size": self.chunk_size, "init_scale": self.init_scale,
                "update": self.update, "meprop": self.meprop}
