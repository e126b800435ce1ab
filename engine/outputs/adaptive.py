"""Adaptive softmax (Grave et al., ICML 2017; docs/adaptive-softmax.md): a head over the most frequent
words plus one token per tail cluster, each tail a reduced projection then a softmax.

Shapes: h (B, d); cutoffs c_1 < ... < c_J < D split the frequency-sorted vocabulary into the
head [0, c_1) and tails i = 0..J-1 covering [c_{i+1}, c_{i+2}) (c_{J+1} = D), of size S_i.
Parameters (names map one to one onto torch.nn.AdaptiveLogSoftmaxWithLoss):
    head_W (c_1 + J, d), head_b (c_1 + J,)      head.weight, (head.bias)
    proj{i}_W (d_i, d), d_i = d // f^(i+1)      tail[i][0].weight
    out{i}_W (S_i, d_i), out{i}_b (S_i,)        tail[i][1].weight, (our optional tail bias)
log p(w) = log_softmax(head)[w] for a head word, else
log_softmax(head)[c_1 + i] + log_softmax(out_i(proj_i(h)))[w - c_{i+1}].

Training step. Every row's cluster id (0 = head, i + 1 = tail i) is computed on the device
(searchsorted on the cutoffs), the rows are ordered by cluster and counted on the device
(`backend.sort_groups`: a stable argsort and a searchsorted, no bincount and no host read), and
the small (J + 2,) offsets vector is the ONE host transfer of the step (it sizes each tail's
products; PyTorch's layer calls nonzero() once per cluster). Tail i then runs only on its n_i rows:
gather h rows, project, logits, and the same fused kernel as the exact softmax
(`backend.softmax_xent_fused`, rawkernels/softmax_xent.cu) turns the logits into the gradient
in place while it returns the per-row loss; the head uses it too. `ignore_index` rows (targets
< 0 by default) get cluster 0 and head target -1: zero loss and zero gradient.

Reductions: "mean" (over rows not ignored; 1/N applied to the small side as a device scalar),
"sum", "none" (per-row losses (B,); backward(dy) takes per-row weights, default ones).

Gradients of a tail that no row of the minibatch reached are left out (None in `grads`), not
reported as dense zeros: the optimizer skips them, as PyTorch's Adam skips parameters whose
.grad is None, so Adam's moments of an idle tail are not decayed and it is not moved by stale
momentum. (Dense zeros would give dense-Adam semantics at the cost of a full pass.)

Evaluation: `log_prob(h, targets)` runs each tail on its rows only (exact, per row);
`log_softmax(h, start, stop, chunk_size)` gives the full distribution of columns [start, stop),
with every tail's log-sum-exp folded chunk by chunk (`backend.logsumexp_chunk_update`), so no
B x D block is needed; `predict_topk(h, k)` is exact: a tail is evaluated for a row only when
its cluster's log-probability (an upper bound on any of its words') reaches the row's current
k-th best, so a row whose head argmax is a head word never touches a tail (k = 1).

Cutoffs: a list, or "auto": chosen at bind by engine/outputs/adaptive_cutoffs.py from word
`counts` (an array: DatasetInfo.word_counts) and the measured cost model of the backend; `config()`
then stores the resolved list, so a checkpoint rebuilds the same layer.
"""
from __future__ import annotations

import os

import numpy

from ..layers.base import OutputLayer
from ..options import (Option, at_least, cutoffs_value, in_range, init_scale_option, parse_float,
                       parse_int, reduction_option)

_REDUCTIONS = ("mean", "sum", "none")


def _check_cutoffs(cutoffs, num_classes):
    cut = [int(c) for c in cutoffs]
    if any(c <= 0 for c in cut) or any(b <= a for a, b in zip(cut, cut[1:])) or (
            cut and cut[-1] >= num_classes):
        raise ValueError(f"adaptive: cutoffs must be increasing integers in (0, {num_classes}), "
                         f"got {list(cutoffs)}")
    return cut


def load_counts(counts):
    """Word counts (V,) as a float64 host array. A path is refused: the caller reads the data
    (engine.data.registry.describe(path).word_counts)."""
    if isinstance(counts, (str, bytes, os.PathLike)):
        raise ValueError(f"adaptive: counts must be an array of word counts, got the path "
                        f"{counts!r} (use engine.data.registry.describe(path).word_counts)")
    return numpy.asarray(counts, dtype=numpy.float64)


class AdaptiveSoftmaxOutput(OutputLayer):
    OPTIONS = (
        Option("cutoffs", cutoffs_value, [2000], "comma-separated cutoffs (e.g. 2000,10000) or "
               "'auto' (chosen from --data's word counts by the measured cost model)",
               cli_default="auto", metavar="C1,C2|auto"),
        Option("div_value", parse_float, 4.0, "tail i has width d / div_value^(i+1)",
               check=at_least(1)),
        Option("head_bias", default=True, switch=True, help="a bias on the head softmax"),
        Option("tail_bias", default=False, switch=True, help="a bias on the tail softmaxes"),
        reduction_option(),
        Option("auto_batch", parse_int, 256, "auto cutoffs: the batch the cost model times",
               check=at_least(1), when=("cutoffs", ("auto",)), default_from="batch_size"),
        Option("auto_max_clusters", parse_int, 4, "auto cutoffs: most tail clusters",
               flag="--max-clusters", check=at_least(0), when=("cutoffs", ("auto",))),
        Option("auto_min_head", parse_int, 1, "auto cutoffs: fewest words in the head",
               flag="--min-head", check=at_least(1), when=("cutoffs", ("auto",))),
        Option("auto_head_coverage", parse_float, 0.8, "auto cutoffs: the head holds the words of "
               "this share of the training tokens (0: the pure cost model)",
               flag="--head-coverage", check=in_range(0, 1, high_open=False),
               when=("cutoffs", ("auto",))),
        init_scale_option(),
    )
    NOT_OPTIONS = {**OutputLayer.NOT_OPTIONS,
                   "counts": "the training word counts, from the data (DatasetInfo.word_counts)",
                   "ignore_index": "the loaders never pad a language-model target",
                   "verbose": "printing of the auto cutoffs; follows the engine"}
    FROM_DATA = {"counts": "word_counts"}

    def __init__(self, in_features: int, num_classes: int, cutoffs=(2000,), div_value: float = 4.0,
                 head_bias: bool = True, tail_bias: bool = False, reduction: str = "mean",
                 ignore_index: int = -1, counts=None, auto_batch: int = 256,
                 auto_max_clusters: int = 4, auto_min_head: int = 1,
                 auto_head_coverage: float = 0.8,
                 init_scale: float | None = None, verbose: bool = True):
        super().__init__()
        if in_features < 1 or num_classes < 2:
            raise ValueError(f"adaptive: need d >= 1 and D >= 2, got d={in_features}, D={num_classes}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"adaptive: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if float(div_value) < 1:
            raise ValueError(f"adaptive: div_value must be >= 1, got {div_value}")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.div_value = float(div_value)
        self.head_bias, self.tail_bias = bool(head_bias), bool(tail_bias)
        self.reduction, self.ignore_index = reduction, int(ignore_index)
        self.init_scale, self.verbose = init_scale, verbose
        self.auto_batch, self.auto_max_clusters = int(auto_batch), int(auto_max_clusters)
        self.auto_min_head = int(auto_min_head)
        # With no floor the speed-only cost model picks heads of a few dozen words, which costs
        # perplexity (PTB, 600 steps: head 12 -> 329 test ppl, head 1,134 (80% of the tokens)
        # -> 311, as the hand-set 2000); 0 gives the paper's pure cost model.
        self.auto_head_coverage = float(auto_head_coverage)
        self.counts = None if counts is None else load_counts(counts)
        self.auto_report = None
        if isinstance(cutoffs, str):
            if cutoffs != "auto":
                cutoffs = [int(c) for c in cutoffs.split(",") if c.strip()]
            self.cutoffs = cutoffs if cutoffs == "auto" else _check_cutoffs(cutoffs, num_classes)
        else:
            self.cutoffs = _check_cutoffs(cutoffs, num_classes)
        if self.cutoffs != "auto":
            self._set_structure()
        self._cache = None

    # -- structure -------------------------------------------------------------------
    def _set_structure(self):
        d, cut = self.in_features, self.cutoffs
        self.bounds = [cut[0] if cut else self.num_classes] + cut[1:] + [self.num_classes]
        self.shortlist = self.bounds[0]
        self.n_clusters = len(cut)
        self.head_size = self.shortlist + self.n_clusters
        self.tail_dims = [max(1, int(d // (self.div_value ** (i + 1)))) for i in range(self.n_clusters)]
        self.tail_sizes = [self.bounds[i + 1] - self.bounds[i] for i in range(self.n_clusters)]

    def resolve_cutoffs(self, backend, dtype):
        """Choose the cutoffs ("auto") with the backend's cost model; a no-op for a list."""
        if self.cutoffs != "auto":
            return self.cutoffs
        from .adaptive_cutoffs import choose_cutoffs
        if self.counts is None:
            raise ValueError("adaptive: cutoffs='auto' needs the word counts: pass counts=<array> "
                             "(engine train --cutoffs auto reads them from --data)")
        counts = self.counts
        if counts.shape != (self.num_classes,):
            raise ValueError(f"adaptive: counts has shape {counts.shape}, expected ({self.num_classes},)")
        report = choose_cutoffs(counts, self.in_features, backend=backend, dtype=dtype,
                                batch=self.auto_batch, div_value=self.div_value,
                                max_clusters=self.auto_max_clusters, min_head=self.auto_min_head,
                                head_coverage=self.auto_head_coverage,
                                verbose=self.verbose)
        self.auto_report = report
        self.cutoffs = _check_cutoffs(report["cutoffs"], self.num_classes)
        self._set_structure()
        return self.cutoffs

    def bind(self, backend, rng, dtype):
        self.resolve_cutoffs(backend, dtype)
        self._cut_dev = None                 # the cutoffs on the device, made on first use
        return super().bind(backend, rng, dtype)

    def init_params(self, rng):
        """Uniform in +-1/sqrt(fan_in) (PyTorch's Linear default range), biases zero."""
        d = self.in_features
        a = self.init_scale if self.init_scale is not None else 1.0 / numpy.sqrt(d)
        params = {"head_W": rng.uniform(-a, a, size=(self.head_size, d))}
        if self.head_bias:
            params["head_b"] = numpy.zeros(self.head_size)
        for i, (di, si) in enumerate(zip(self.tail_dims, self.tail_sizes)):
            params[f"proj{i}_W"] = rng.uniform(-a, a, size=(di, d))
            ai = self.init_scale if self.init_scale is not None else 1.0 / numpy.sqrt(di)
            params[f"out{i}_W"] = rng.uniform(-ai, ai, size=(si, di))
            if self.tail_bias:
                params[f"out{i}_b"] = numpy.zeros(si)
        return params

    # -- pieces ----------------------------------------------------------------------------
    def _check(self, h, targets):
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"adaptive: expected h (B, {self.in_features}), got {tuple(h.shape)}")
        if targets.ndim != 1 or targets.shape[0] != h.shape[0]:
            raise ValueError(f"adaptive: targets must be (B,) = ({h.shape[0]},), got "
                             f"{tuple(targets.shape)}")
        # (a no-op on the GPU, where it would cost a sync: the model checks ids once, in
        # validate_data)
        self.backend.check_ids_in_range(
            targets, None, self.num_classes,
            "adaptive: target {max} is outside the vocabulary [0, {high})")

    def _head_logits(self, h):
        logits = h @ self.params["head_W"].T
        if self.head_bias:
            logits += self.params["head_b"]
        return logits

    def _tail_logits(self, i, x):
        """(projection (n, d_i), logits (n, S_i)) of tail i for the rows x (n, d)."""
        p = x @ self.params[f"proj{i}_W"].T
        z = p @ self.params[f"out{i}_W"].T
        if self.tail_bias:
            z += self.params[f"out{i}_b"]
        return p, z

    def _route(self, targets):
        """Per row: valid mask, cluster id (0 head, i + 1 tail i; 0 for ignored rows) and the
        head target (word, cluster token, or -1 for ignored rows). All on the device."""
        xp = self.backend.xp
        t = targets.astype(xp.int64, copy=False)
        valid = (t >= 0) & (t != self.ignore_index)
        safe = xp.where(valid, t, 0)
        if self.n_clusters:
            if getattr(self, "_cut_dev", None) is None:
                self._cut_dev = self.backend.asarray(numpy.asarray(self.cutoffs, dtype=numpy.int64))
            cid = xp.searchsorted(self._cut_dev, safe, side="right")
        else:
            cid = xp.zeros_like(safe)
        head_t = xp.where(cid == 0, safe, self.shortlist + cid - 1)
        head_t = xp.where(valid, head_t, -1)
        return valid, cid, head_t

    def _groups(self, cid):
        """Rows ordered by cluster and the (start, stop) of each tail's rows in that order: one
        host transfer (the (J + 2,) offsets) -- the only synchronisation of a training step."""
        order, offsets = self.backend.sort_groups(cid, self.n_clusters + 1)
        offsets = self.backend.to_host(offsets)
        return order, [(int(offsets[i + 1]), int(offsets[i + 2])) for i in range(self.n_clusters)]

    def _scale(self, valid, h):
        """The loss scale: 1/N (device scalar) for mean, 1 for sum/none."""
        xp = self.backend.xp
        if self.reduction == "mean":
            return (1.0 / xp.maximum(valid.sum(), 1)).astype(self.dtype)
        return xp.ones((), dtype=self.dtype)

    # -- OutputLayer -----------------------------------------------------------------------
    def forward(self, h, targets, train=True):
        """Loss (0-d device array; (B,) with reduction="none"). train=True caches for backward."""
        self._check(h, targets)
        xp, be = self.backend.xp, self.backend
        valid, cid, head_t = self._route(targets)
        logits = self._head_logits(h)
        loss_rows = be.softmax_xent_fused(logits, head_t, 1.0)      # logits -> G_head in place
        tails = []
        if self.n_clusters:
            order, spans = self._groups(cid)
            t64 = targets.astype(xp.int64, copy=False)
            for i, (a, b) in enumerate(spans):
                if b == a:
                    tails.append(None)
                    continue
                rows = order[a:b]
                x = be.gather_rows(h, rows)
                p, z = self._tail_logits(i, x)
                local = t64[rows] - self.bounds[i]
                loss_i = be.softmax_xent_fused(z, local, 1.0)        # z -> G_i in place
                loss_rows[rows] += loss_i                             # rows are unique
                tails.append((rows, x, p, z))
        scale = self._scale(valid, h)
        self._cache = (h, logits, tails, scale) if train else None
        if self.reduction == "none":
            return loss_rows
        return loss_rows.sum() * scale

    def backward(self, dy=None):
        """dh (B, d); fills grads (tails without rows this step: no entry, see the docstring).
        With reduction="none", `dy` (B,) weights each row's loss (default ones)."""
        if self._cache is None:
            raise RuntimeError("adaptive.backward called without a forward(train=True)")
        h, G, tails, scale = self._cache
        self._cache = None
        be = self.backend
        if self.reduction == "none" and dy is not None:
            w = dy.astype(self.dtype, copy=False)        # (B,) per-row weights
        else:
            w = None
        grads = {}
        # head: dW = G^T (h s), db = sum_b G s, dh = (G W) s
        if w is None:
            hs = h * scale
            grads["head_W"] = G.T @ hs
            if self.head_bias:
                grads["head_b"] = G.sum(axis=0) * scale
            dh = G @ self.params["head_W"]
            dh *= scale
        else:
            hs = h * w[:, None]
            grads["head_W"] = G.T @ hs
            if self.head_bias:
                grads["head_b"] = w @ G
            dh = G @ self.params["head_W"]
            dh *= w[:, None]
        for i, tail in enumerate(tails):
            if tail is None:
                continue
            rows, x, p, z = tail
            s = scale if w is None else w[rows][:, None]
            grads[f"out{i}_W"] = z.T @ (p * s)
            if self.tail_bias:
                grads[f"out{i}_b"] = (z.sum(axis=0) * scale) if w is None else (w[rows] @ z)
            dp = z @ self.params[f"out{i}_W"]
            dp *= s
            grads[f"proj{i}_W"] = dp.T @ x
            be.scatter_add_rows(dh, rows, dp @ self.params[f"proj{i}_W"])
        self.grads = grads
        return dh

    # -- evaluation --------------------------------------------------------------------------
    def _head_log_softmax(self, h):
        """log_softmax of the head (B, c_1 + J)."""
        xp = self.backend.xp
        logits = self._head_logits(h)
        m = logits.max(axis=1, keepdims=True)
        logits -= m
        lse = xp.log(xp.exp(logits).sum(axis=1, keepdims=True))
        logits -= lse
        return logits

    def log_prob(self, h, targets):
        """log p(target | h) per row (B,); 0 for ignored rows. Each tail runs on its rows only."""
        self._check(h, targets)
        xp, be = self.backend.xp, self.backend
        valid, cid, head_t = self._route(targets)
        batch = h.shape[0]
        run_max = xp.full((batch,), -xp.inf, dtype=self.dtype)
        run_sum = xp.zeros((batch,), dtype=self.dtype)
        tl = xp.zeros((batch,), dtype=self.dtype)
        be.logsumexp_chunk_update(self._head_logits(h), 0, head_t, run_max, run_sum, tl)
        out = tl - (run_max + xp.log(run_sum))
        if self.n_clusters:
            order, spans = self._groups(cid)
            t64 = targets.astype(xp.int64, copy=False)
            for i, (a, b) in enumerate(spans):
                if b == a:
                    continue
                rows = order[a:b]
                _, z = self._tail_logits(i, be.gather_rows(h, rows))
                n = b - a
                mx = xp.full((n,), -xp.inf, dtype=self.dtype)
                sm = xp.zeros((n,), dtype=self.dtype)
                tz = xp.zeros((n,), dtype=self.dtype)
                be.logsumexp_chunk_update(z, self.bounds[i], t64[rows], mx, sm, tz)
                out[rows] += tz - (mx + xp.log(sm))
        return xp.where(valid, out, 0).astype(self.dtype)

    def _tail_lse(self, i, p, chunk_size):
        """Per-row log-sum-exp of tail i's logits over all its words, chunk by chunk."""
        xp, be = self.backend.xp, self.backend
        n = p.shape[0]
        mx = xp.full((n,), -xp.inf, dtype=self.dtype)
        sm = xp.zeros((n,), dtype=self.dtype)
        dummy = xp.zeros((n,), dtype=self.dtype)
        none = xp.full((n,), -1, dtype=xp.int64)
        for s in range(0, self.tail_sizes[i], chunk_size):
            e = min(s + chunk_size, self.tail_sizes[i])
            be.logsumexp_chunk_update(self._tail_block(i, p, s, e), 0, none, mx, sm, dummy)
        return mx + xp.log(sm)

    def _tail_block(self, i, p, s, e):
        z = p @ self.params[f"out{i}_W"][s:e].T
        if self.tail_bias:
            z += self.params[f"out{i}_b"][s:e]
        return z

    def log_softmax(self, h, start=0, stop=None, chunk_size=None):
        """Full log-probabilities of columns [start, stop) (B, stop - start). Tails' normalisers
        are folded over chunks of `chunk_size` words, so only the asked block is ever held."""
        xp = self.backend.xp
        stop = self.num_classes if stop is None else int(stop)
        if not 0 <= start <= stop <= self.num_classes:
            raise ValueError(f"adaptive.log_softmax: bad column range [{start}, {stop})")
        chunk = int(chunk_size or 65536)
        head = self._head_log_softmax(h)
        out = xp.empty((h.shape[0], stop - start), dtype=self.dtype)
        a, b = start, min(stop, self.shortlist)
        if b > a:
            out[:, a - start:b - start] = head[:, a:b]
        for i in range(self.n_clusters):
            lo, hi = max(start, self.bounds[i]), min(stop, self.bounds[i + 1])
            if hi <= lo:
                continue
            p = h @ self.params[f"proj{i}_W"].T
            shift = head[:, self.shortlist + i] - self._tail_lse(i, p, chunk)
            for s in range(lo, hi, chunk):
                e = min(s + chunk, hi)
                blk = self._tail_block(i, p, s - self.bounds[i], e - self.bounds[i])
                blk += shift[:, None]
                out[:, s - start:e - start] = blk
        return out

    def iter_log_softmax(self, h, chunk_size=65536):
        """Yield (start, stop, log-probabilities (B, stop - start)) over the whole vocabulary."""
        for s in range(0, self.num_classes, chunk_size):
            e = min(s + chunk_size, self.num_classes)
            yield s, e, self.log_softmax(h, s, e, chunk_size)

    def predict_topk(self, h, k: int = 1):
        """The k most probable words per row, best first: (ids (B, k) int64, log-probs (B, k)).
        Exact; tail i is evaluated only on the rows where log p(cluster i) >= their k-th best."""
        xp, be = self.backend.xp, self.backend
        k = int(min(max(k, 1), self.num_classes))
        head = self._head_log_softmax(h)
        best_v, best_i = self._topk(head[:, :self.shortlist],
                                    xp.arange(self.shortlist, dtype=xp.int64), k)
        for i in range(self.n_clusters):
            cl = head[:, self.shortlist + i]
            rows = xp.nonzero(cl >= best_v[:, k - 1])[0]           # host sync (inference only)
            if rows.shape[0] == 0:
                continue
            p = be.gather_rows(h, rows) @ self.params[f"proj{i}_W"].T
            lse = self._tail_lse(i, p, 65536)
            shift = (cl[rows] - lse)[:, None]
            cand_v, cand_i = best_v[rows], best_i[rows]
            for s in range(0, self.tail_sizes[i], 65536):
                e = min(s + 65536, self.tail_sizes[i])
                blk = self._tail_block(i, p, s, e) + shift
                ids = xp.arange(self.bounds[i] + s, self.bounds[i] + e, dtype=xp.int64)
                cand_v, cand_i = self._merge(cand_v, cand_i, blk, ids, k)
            best_v[rows], best_i[rows] = cand_v, cand_i
        return best_i, best_v

    def _topk(self, vals, ids, k):
        """Top-k (values, ids) of each row, best first (`backend.topk`: equal values by position,
        which callers keep in id order), padded with -inf when fewer than k."""
        xp = self.backend.xp
        batch = vals.shape[0]
        pad = k - vals.shape[1]
        if pad > 0:
            vals = xp.concatenate([vals, xp.full((batch, pad), -xp.inf, dtype=vals.dtype)], axis=1)
            ids = xp.concatenate([ids, xp.full((pad,), -1, dtype=xp.int64)])
        ids = xp.broadcast_to(ids, vals.shape)
        vals, pos = self.backend.topk(vals, k)
        return vals, xp.take_along_axis(ids, pos, 1)

    def _merge(self, cand_v, cand_i, blk, ids, k):
        xp = self.backend.xp
        v = xp.concatenate([cand_v, blk], axis=1)
        i = xp.concatenate([cand_i, xp.broadcast_to(ids, blk.shape)], axis=1)
        return self._topk(v, i, k)

    def predict(self, h):
        """argmax word per row (B,): the head argmax when it is a head word (exact shortcut)."""
        return self.predict_topk(h, 1)[0][:, 0]

    def config(self):
        """Constructor arguments with the cutoffs resolved (no counts: a checkpoint rebuilds the
        same layer without the corpus)."""
        if self.cutoffs == "auto":
            raise RuntimeError("adaptive: cutoffs='auto' are resolved at bind(); bind first")
        return {"in_features": self.in_features, "num_classes": self.num_classes,
                "cutoffs": list(self.cutoffs), "div_value": self.div_value,
                "head_bias": self.head_bias, "tail_bias": self.tail_bias,
                "reduction": self.reduction, "ignore_index": self.ignore_index,
                "init_scale": self.init_scale}
