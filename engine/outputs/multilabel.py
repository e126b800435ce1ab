"""Multi-label outputs for extreme classification: squared hinge (default) and BCE, over a dense
or a fixed fan-in (FFI) weight layer (docs/fixed-fanin.md).

Dimension letters: B examples, d input width (last hidden / intermediate layer), L labels,
K positives per example, k fan-in of the FFI layer.

    scores s = inner(h)    (B, L); inner = Linear(d, L) (W (L, d), b (L,)) with weights="dense",
                           or FixedFanInLinear(d, L, fan_in) (weights (L, k), indices (L, k),
                           bias (L,)) with weights="ffi"
    targets (B, K) int padded with -1 (the positive labels; a (B,) array is one label per row);
    y[b, l] = +1 for a positive, -1 otherwise.

Losses, normalised as the mean over examples of the sum over labels (so a per-example loss is
comparable across batch sizes; the paper's mean over all B x L entries differs by the constant
factor L, which Adam's update ignores up to its epsilon):
    "squared-hinge"  l_b = sum_l max(0, 1 - y s)^2;   dl/ds = -2 y max(0, 1 - y s)
    "bce"            l_b = sum_l softplus(-y s)        (= -log sigmoid(y s), computed as
                     max(z, 0) + log1p(exp(-|z|)) with z = -y s: no overflow for any s);
                     dl/ds = sigmoid(s) - [y = +1]
Backward hands dL/ds (B, L), scaled by 1/B, to the inner layer; many of its entries are exactly
zero with the squared hinge (confidently right labels), which the FFI layer skips.

The output owns its inner layer and exposes the inner's `params` and `grads` dicts as its own
(the same dict objects), so the optimizer keys are "<i>.<OutputClass>.<name>" and checkpoints
hold the inner's state (FFI indices included). `after_step(step, optimizer, key_prefix)` is
forwarded to the inner (dynamic rewiring, which resets the optimizer slots under that prefix).

Evaluation never forms B x L at once: scores come in blocks (label chunks of the dense W; row
blocks of the FFI layer, which computes all labels of a row at once), each of at most
`eval_block_elems` entries; the loss is summed and a running top-k kept per block
(xmc_metrics.TopK). `eval_sums` returns count, loss, p@k, ndcg@k and, when the training label
frequencies are known, psp@k (propensities of Jain et al. 2016; see xmc_metrics).
Label frequencies: `label_counts` (an array of L training counts, with `num_train`: a
DatasetInfo's label_counts and num_train), or `set_label_frequencies`; a checkpoint keeps them
in the layer's state.
"""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy

from ..layers.base import OutputLayer
from ..layers.linear import Linear
from ..optim.slots import slot_count
from ..options import (DETERMINISTIC_HELP, Option, at_least, bias_option, in_open_closed,
                       parse_float, parse_int, parse_str)
from .xmc_metrics import DEFAULT_KS, TopK, finish_metrics, inverse_propensity, metric_sums

#: Largest score block (entries) evaluation and prediction hold at once (16 Mi floats = 64 MiB;
#: the loss and top-k of a block take a few temporaries of that size).
EVAL_BLOCK_ELEMS = 1 << 24
_FFI_KWARGS = ("method", "deterministic", "rewire_every", "rewire_fraction", "skip_zero_grads")
_FFI = ("weights", ("ffi",))


class MultilabelOutput(OutputLayer):
    """Base of the multi-label losses; subclasses define `name` and `_loss_grad`."""

    name = "multilabel"
    has_likelihood = False
    TARGETS = ("one", "many")
    OPTIONS = (
        Option("weights", parse_str, "dense", "the label layer's weights: dense (L x d) or ffi "
               "(fixed fan-in: --fan-in connections per label)", choices=("dense", "ffi")),
        Option("fan_in", parse_int, None, "FFI: connections per label", check=at_least(1),
               when=_FFI),
        Option("method", parse_str, None, "FFI on the GPU: kernel (rawkernels/ffi.cu), cusparse, "
               "auto (measured once per shape; the default) or reference (NumPy)",
               flag="--ffi-method", choices=("auto", "kernel", "cusparse", "reference"), when=_FFI),
        Option("deterministic", default=None, switch=True, help=DETERMINISTIC_HELP, when=_FFI),
        Option("rewire_every", parse_int, None, "FFI: dynamic rewiring every N steps (default 0: "
               "never)", check=at_least(0), when=_FFI),
        Option("rewire_fraction", parse_float, None, "FFI: share of each label's connections "
               "rewired (default 0.1)", check=in_open_closed(0, 1), when=_FFI),
        Option("skip_zero_grads", default=None, switch=True, help="FFI: skip labels whose score "
               "gradient is zero in the whole minibatch (default on)", when=_FFI),
        Option("seed", parse_int, 0, "FFI: seed of the connections drawn", flag="--ffi-seed",
               check=at_least(0), when=_FFI),
        bias_option(True),
        Option("psp_a", parse_float, 0.55, "PSP@k propensity parameter A (Jain et al. 2016)"),
        Option("psp_b", parse_float, 1.5, "PSP@k propensity parameter B"),
        Option("eval_block_elems", parse_int, EVAL_BLOCK_ELEMS, "evaluation: most scores held "
               "at once (entries)", check=at_least(1)),
    )
    NOT_OPTIONS = {**OutputLayer.NOT_OPTIONS,
                   "label_counts": "training points per label, from the data "
                                   "(DatasetInfo.label_counts)",
                   "num_train": "training points, from the data (DatasetInfo.num_train)"}
    FROM_DATA = {"label_counts": "label_counts", "num_train": "num_train"}

    def __init__(self, in_features: int, num_classes: int, weights: str = "dense",
                 fan_in: int | None = None, bias: bool = True, seed: int = 0,
                 label_counts=None, num_train: int | None = None, psp_a: float = 0.55,
                 psp_b: float = 1.5, eval_block_elems: int = EVAL_BLOCK_ELEMS,
                 method: str | None = None, deterministic: bool | None = None,
                 rewire_every: int | None = None, rewire_fraction: float | None = None,
                 skip_zero_grads: bool | None = None):
        self.inner = None
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError(f"{self.name}: sizes must be positive, got d={in_features}, "
                             f"L={num_classes}")
        if weights not in ("dense", "ffi"):
            raise ValueError(f"{self.name}: weights must be 'dense' or 'ffi', got {weights!r}")
        # the FFI layer's own options: None leaves FixedFanInLinear's default
        ffi_kwargs = {k: v for k, v in zip(_FFI_KWARGS, (method, deterministic, rewire_every,
                                                         rewire_fraction, skip_zero_grads))
                      if v is not None}
        if weights == "dense" and ffi_kwargs:
            raise ValueError(f"{self.name}: {sorted(ffi_kwargs)} apply to weights='ffi' only")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.weights, self.use_bias, self.seed = weights, bool(bias), int(seed)
        self.ffi_kwargs = dict(ffi_kwargs)
        self.psp_a, self.psp_b = float(psp_a), float(psp_b)
        self.eval_block_elems = int(eval_block_elems)
        if weights == "ffi":
            if fan_in is None:
                raise ValueError(f"{self.name}: weights='ffi' needs fan_in (connections per label)")
            from ..layers.fixed_fanin import FixedFanInLinear
            self.fan_in = int(fan_in)
            self.inner = FixedFanInLinear(self.in_features, self.num_classes, self.fan_in,
                                          bias=self.use_bias, seed=self.seed, **self.ffi_kwargs)
        else:
            if fan_in is not None:
                raise ValueError(f"{self.name}: fan_in applies to weights='ffi' only")
            self.fan_in = None
            self.inner = Linear(self.in_features, self.num_classes, bias=self.use_bias)
        self.label_counts = self.num_train = None
        self._inv_prop = None
        if isinstance(label_counts, (str, bytes, os.PathLike)):
            raise ValueError(f"{self.name}: label_counts must be an array of training counts per "
                             f"label, got the path {label_counts!r} (use "
                             f"engine.data.registry.describe(path).label_counts and .num_train)")
        if label_counts is not None:
            if num_train is None:
                raise ValueError(f"{self.name}: label_counts given without num_train")
            self.set_label_frequencies(label_counts, num_train)
        self._cache = None

    # -- the inner layer's parameters are this layer's -----------------------------------
    @property
    def params(self):
        return self.inner.params if self.inner is not None else {}

    @params.setter
    def params(self, value):
        if value:
            raise AttributeError(f"{self.name}: params belong to the inner layer")

    @property
    def grads(self):
        return self.inner.grads if self.inner is not None else {}

    @grads.setter
    def grads(self, value):
        if self.inner is not None:
            self.inner.grads = value

    def bind(self, backend, rng, dtype):
        self.backend, self.dtype = backend, numpy.dtype(dtype)
        self.inner.layer_id = self.layer_id
        self.inner.bind(backend, rng, dtype)
        if self.label_counts is not None:
            self._inv_prop = backend.asarray(inverse_propensity(
                self.label_counts, self.num_train, self.psp_a, self.psp_b))
        return self

    def zero_grads(self):
        self.inner.zero_grads()

    def after_step(self, step, optimizer, key_prefix=""):
        self.inner.after_step(step, optimizer, key_prefix)

    def memory_report(self, optimizer=None, batch=None, dtype=None) -> Dict[str, int]:
        """Bytes of the weight layer, with the FFI layer's keys and conventions (computable
        before bind): the FFI layer's own report, or for dense weights W (L, d) and b (L,):
        weights, bias, grads (same size), optimizer (slots x params; `optimizer` None, a name
        such as "adam", or a slot count) and, with `batch`, activations B (2 d + 2 L) s
        (the cached h, the scores and their gradient, dh)."""
        if self.weights == "ffi":
            return self.inner.memory_report(optimizer=optimizer, batch=batch, dtype=dtype)
        s = numpy.dtype(dtype if dtype is not None else (self.dtype or numpy.float32)).itemsize
        L, d = self.num_classes, self.in_features
        nb = L if self.use_bias else 0
        slots = slot_count(optimizer)
        out = {"weights": L * d * s, "bias": nb * s, "grads": (L * d + nb) * s,
               "optimizer": slots * (L * d + nb) * s}
        if batch is not None:
            out["activations"] = int(batch) * (2 * d + 2 * L) * s
        out["total"] = sum(out.values())
        return {k: int(v) for k, v in out.items()}

    # -- state ------------------------------------------------------------------------------
    def state_dict(self):
        state = dict(self.inner.state_dict())
        if self.label_counts is not None:
            state["label_counts"] = numpy.asarray(self.label_counts, dtype=numpy.int64)
            state["num_train"] = numpy.asarray([self.num_train], dtype=numpy.int64)
        return state

    def load_state_dict(self, state):
        self.inner.load_state_dict({k: v for k, v in state.items()
                                    if k not in ("label_counts", "num_train")})
        if "label_counts" in state:
            self.set_label_frequencies(numpy.asarray(state["label_counts"]),
                                       int(numpy.asarray(state["num_train"]).reshape(-1)[0]))

    def set_label_frequencies(self, label_counts, num_train):
        """Training counts of every label (L,) and the number of training points: enables PSP@k."""
        counts = numpy.asarray(label_counts, dtype=numpy.int64).reshape(-1)
        if counts.shape[0] != self.num_classes:
            raise ValueError(f"{self.name}: {counts.shape[0]} label counts for "
                             f"{self.num_classes} labels")
        self.label_counts, self.num_train = counts, int(num_train)
        inv = inverse_propensity(counts, self.num_train, self.psp_a, self.psp_b)
        self._inv_prop = self.backend.asarray(inv) if self.backend is not None else None

    def config(self) -> Dict[str, Any]:
        cfg = {"in_features": self.in_features, "num_classes": self.num_classes,
               "weights": self.weights, "fan_in": self.fan_in, "bias": self.use_bias,
               "seed": self.seed, "psp_a": self.psp_a, "psp_b": self.psp_b,
               "eval_block_elems": self.eval_block_elems, **self.ffi_kwargs}
        return cfg

    # -- the loss ---------------------------------------------------------------------------
    def _positives(self, targets, rows, start, stop):
        """(R, C) bool: y = +1 at the targets of `rows` that fall in label columns [start, stop)."""
        xp = self.backend.xp
        t = targets[rows]
        if t.ndim == 1:
            t = t.reshape(-1, 1)
        width = stop - start
        local = t - start
        inside = (t >= 0) & (local >= 0) & (local < width)
        mask = xp.zeros((t.shape[0], width + 1), dtype=bool)   # column `width`: a sink for the rest
        r = xp.broadcast_to(xp.arange(t.shape[0])[:, None], t.shape)
        mask[r, xp.where(inside, local, width)] = True
        return mask[:, :width]

    def _check(self, h, targets):
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"{self.name}: expected h (B, {self.in_features}), got {tuple(h.shape)}")
        if targets.ndim not in (1, 2) or targets.shape[0] != h.shape[0]:
            raise ValueError(f"{self.name}: targets must be (B,) or (B, K) with B = {h.shape[0]}, "
                             f"got {tuple(targets.shape)}")
        # a no-op on the GPU (a host read per call); models check the labels once, on the host
        self.backend.check_ids_in_range(targets, None, self.num_classes,
                                        self.name + ": label id {max} outside [0, {high})")

    def _loss_grad(self, s, y, want_grad):
        """Per-entry loss (B, C) and, with want_grad, dl/ds (B, C) (may overwrite s)."""
        raise NotImplementedError

    def forward(self, h, targets, train=True):
        """Mean over examples of the summed label losses (0-d device array)."""
        self._check(h, targets)
        rows = slice(None)
        s = self.inner.forward(h, train)
        y = self._positives(targets, rows, 0, self.num_classes)
        loss, grad = self._loss_grad(s, y, want_grad=train)
        scale = 1.0 / h.shape[0]
        if train:
            grad *= self.dtype.type(scale)
            self._cache = grad
        return loss.sum(dtype=numpy.float64).astype(self.dtype) * self.dtype.type(scale)

    def backward(self, dy=None):
        if self._cache is None:
            raise RuntimeError(f"{self.name}.backward called without a forward(train=True)")
        grad, self._cache = self._cache, None
        return self.inner.backward(grad)

    # -- evaluation without a B x L matrix ------------------------------------------------------
    def _score_blocks(self, h):
        """Yield (row slice, first label, scores (R, C)) covering all B x L scores, each block at
        most `eval_block_elems` entries (label chunks for dense weights, row blocks for FFI)."""
        B, L = h.shape[0], self.num_classes
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
                    yield slice(r0, r0 + r), c0, s
        else:
            r = max(1, self.eval_block_elems // L)
            for r0 in range(0, B, r):
                yield slice(r0, r0 + r), 0, self.inner.forward(h[r0:r0 + r], False)

    def _ranked(self, h, k, targets=None):
        """Top-k ids/scores per row (best first) and, with targets, the summed loss."""
        xp = self.backend.xp
        k = int(min(k, self.num_classes))
        ids, vals, loss = [], [], xp.zeros((), dtype=numpy.float64)
        current, top = None, None
        for rows, c0, s in self._score_blocks(h):
            if targets is not None:
                loss += self._block_loss(s, targets[rows], c0)
            if rows != current:
                if top is not None:
                    i, v = top.result()
                    ids.append(i)
                    vals.append(v)
                current, top = rows, TopK(self.backend, s.shape[0], k, s.dtype)
            top.add(s, c0)
        i, v = top.result()
        ids.append(i)
        vals.append(v)
        return xp.concatenate(ids), xp.concatenate(vals), loss

    def _block_loss(self, s, t, c0):
        """Summed loss of a score block s (R, C) (labels c0 ... c0 + C - 1) whose rows have the
        positives t (R, K): every entry as a negative (one pass, no (R, C) label mask), plus a
        correction at the positives that fall in the block (each distinct label once, as the
        training loss counts it). Leaves s unchanged."""
        xp = self.backend.xp
        total = self._negative_loss_sum(s)
        t = xp.sort(t, axis=1)
        distinct = xp.ones(t.shape, dtype=bool)
        distinct[:, 1:] = t[:, 1:] != t[:, :-1]
        local = t - c0
        keep = distinct & (t >= 0) & (local >= 0) & (local < s.shape[1])
        r, j = xp.nonzero(keep)
        if r.shape[0]:
            total = total + self._positive_correction(s[r, local[r, j]]).sum(dtype=numpy.float64)
        return total

    def predict_topk(self, h, k: int):
        """(ids (B, k) int64, scores (B, k)) best first, block by block (never B x L at once)."""
        ids, vals, _ = self._ranked(h, k)
        return ids, vals

    def eval_sums(self, h, targets, ks=DEFAULT_KS):
        self._check(h, targets)
        t2 = targets.reshape(-1, 1) if targets.ndim == 1 else targets
        ids, _, loss = self._ranked(h, max(ks), t2)
        sums = {"count": self.backend.xp.asarray(float(h.shape[0])), "loss": loss}
        sums.update(metric_sums(self.backend.xp, ids, t2, self._inv_prop, ks))
        return sums

    def eval_finish(self, sums):
        return finish_metrics(sums)

    def loss_per_example(self, h, targets):
        """(B,) summed label loss of each example (no scaling), float64."""
        self._check(h, targets)
        t2 = targets.reshape(-1, 1) if targets.ndim == 1 else targets
        xp = self.backend.xp
        out = xp.zeros((h.shape[0],), dtype=numpy.float64)
        for rows, c0, s in self._score_blocks(h):
            y = self._positives(t2, rows, c0, c0 + s.shape[1])
            out[rows] += self._loss_grad(s, y, want_grad=False)[0].sum(axis=1, dtype=numpy.float64)
        return out

    def log_prob(self, h, targets):
        raise NotImplementedError(f"{self.name} defines no likelihood; use eval_sums or "
                                  f"loss_per_example")


class SquaredHingeOutput(MultilabelOutput):
    """max(0, 1 - y s)^2 summed over labels, y in {-1, +1} (the fixed fan-in paper's default loss)."""

    name = "squared-hinge"

    def _loss_grad(self, s, y, want_grad):
        xp = self.backend.xp
        sign = xp.where(y, s.dtype.type(1), s.dtype.type(-1))
        margin = s
        margin *= -sign
        margin += 1
        xp.maximum(margin, 0, out=margin)                # m = max(0, 1 - y s), in place of s
        loss = margin * margin
        if not want_grad:
            return loss, None
        margin *= sign
        margin *= -2                                     # dl/ds = -2 y m
        return loss, margin

    def _negative_loss_sum(self, s):
        """sum max(0, 1 + s)^2 over the block (every label a negative), float64."""
        xp = self.backend.xp
        m = s + s.dtype.type(1)
        xp.maximum(m, 0, out=m)
        return xp.einsum("ij,ij->", m, m, dtype=numpy.float64)

    def _positive_correction(self, sp):
        """Loss as a positive minus loss as a negative, at positive scores sp (float64)."""
        sp = sp.astype(numpy.float64)
        xp = self.backend.xp
        return xp.maximum(1 - sp, 0) ** 2 - xp.maximum(1 + sp, 0) ** 2


class BCEOutput(MultilabelOutput):
    """Binary cross-entropy on every label, softplus form (no overflow for large |s|)."""

    name = "bce"

    def _loss_grad(self, s, y, want_grad):
        xp = self.backend.xp
        z = xp.where(y, -s, s)                           # loss = softplus(z)
        loss = xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))
        if not want_grad:
            return loss, None
        # sigmoid(s) - y01, stably: sigmoid(s) = exp(min(s,0)) / (1 + exp(-|s|))
        e = xp.exp(-xp.abs(s))
        sig = xp.where(s >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(s.dtype)
        sig -= y
        return loss, sig

    def _negative_loss_sum(self, s):
        """sum softplus(s) over the block (every label a negative), float64."""
        xp = self.backend.xp
        a = xp.abs(s)
        xp.negative(a, out=a)
        xp.exp(a, out=a)
        xp.log1p(a, out=a)                               # log1p(exp(-|s|))
        return (xp.maximum(s, 0).sum(dtype=numpy.float64) + a.sum(dtype=numpy.float64))

    def _positive_correction(self, sp):
        """softplus(-s) - softplus(s) = -s at the positive scores (float64)."""
        return -sp.astype(numpy.float64)
