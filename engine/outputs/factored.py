"""Exact factored output layer for very large sparse targets (Vincent et al. 2015; docs/factored.md).

Shapes: h (B, d) the last hidden layer, D outputs, targets (B,) or (B, K) padded with -1.
W = V U + 1 a^T (D, d) is kept implicitly (engine/outputs/factored_state.py); O = h W^T (B, D)
is never formed. Per minibatch: the loss (mean over B, or sum), dh and the exact SGD update of W
cost O(B d^2 + B K d) plus O(B^2 d + B^3) for the minibatch terms.

Losses (engine/outputs/spherical_family.py): "factored-squared" (matches the dense "squared"
output: ||o - y||^2 with y K-hot), "factored-spherical" (eps), "factored-taylor",
"factored-zloss" (a, b); or FactoredOutput(loss=...).

Forward (old state): HU = h U^T, Vc = V[targets] (gathered), o_c = Vc . HU + h . a,
q = diag(h Q h^T), s = h . wbar -> loss, g_q, g_s, g_c. Backward: dh = r (2 g_q h Q + Ydot W
+ g_s wbar^T) with Ydot W = (sum_k g_c Vc) U + (sum_k g_c) a^T. Update: `apply_update(lr)`.

Why only SGD: the update W <- W M + (rank-B row-sparse term) is exact because plain SGD moves W
by a multiple of G^T H, which factors as a right-multiplication plus target rows. Adam/momentum
keep a D x d per-element state and rescale each element of W differently; that update is not of
this form, so it cannot be applied without touching all D x d entries. The rest of the network
trains with any optimizer; this layer owns its update (`owns_update`): the engine calls
`prepare_update(lr)` before backward (the learning-rate guard then refuses a step that would make
U singular before anything changes, or with `guard_action="shrink"` halves that minibatch's
learning rate until the step is safe: still an exact SGD step, with a smaller rate, counted in
`shrunk_steps`) and `apply_update(lr)` after the optimizer step. Its
learning rate is `lr` if given, else `lr_scale` times the engine's (scheduled) learning rate.
L2 decay (`weight_decay`) is exact: W <- W - lr (G^T H + wd W).

Output bias (`bias`): o = W h + b is the same layer over h' = [h, 1] with W' = [W, b] (D, d + 1),
so the layer appends a constant 1 to h on entry, keeps its state at width d + 1 (the bias is the
last column of W = V U + 1 a^T, starting at 0) and drops the last column of dh on the way out.
Everything above stays exact; the cost grows from d to d + 1. The bias is what lets the
spherical family learn the unigram distribution directly (docs/factored.md, "Output bias").

Multi-label use (MLPClassifier over an XMC file): the targets are each example's positive labels,
(B, K) padded with -1, so the target vector y has 1 at every positive label and 0 elsewhere (the
classifier passes each label once; a label named twice in a row would be a 2, as in the dense
`squared` output). The exact update needs nothing more: Ydot has K non-zeros per row instead of
one. Evaluation with (B, K) targets reports the mean loss and the ranking metrics P@k, nDCG@k and
PSP@k (engine/outputs/xmc_metrics.py) from `predict_topk`'s chunked top-k, never a B x D matrix;
PSP@k needs the training label counts (`label_counts`, `num_train`, from the data, kept in the
checkpoint). Every loss of the family makes sense there: squared error regresses y, and the
spherical / Taylor softmax and the Z-loss with K-hot targets sum one term per positive label
under a single normalised distribution over the labels (the "pick all labels" reduction of a
softmax, a known multi-label ranking loss); labels are ranked by the layer's score (o, o^2 for
the spherical softmax, 1 + o + o^2/2 for the Taylor softmax).

Kernels: the target rows of V are gathered and the row updates scatter-added by the backend
(`factored_gather_rows`, `factored_scatter_rows`: engine/backend/numpy_factored.py, on the GPU
rawkernels/factored_rows.cu, atomic or deterministic by a sort and a per-row ordered sum); the
d x d work is BLAS / cuBLAS matmul. Host reads per training step (engine/backend/syncs.py): the
learning-rate guard's (2, or 3 when its Cholesky test fails; none with lr_guard=False), and the
monitors every `check_every` updates; K-hot targets add none (their compaction needs no count).
"""
from __future__ import annotations

import numpy

from ..layers.base import OutputLayer
from ..options import (DETERMINISTIC_HELP, Option, at_least, bias_option, float_pair, greater_than,
                       in_open_closed, init_scale_option, parse_float, parse_int, parse_str,
                       reduction_option, with_defaults)
from . import factored_state as fs
from .spherical_family import LOSS_OPTIONS, make_loss, targets_and_mask
from .xmc_metrics import DEFAULT_KS, finish_metrics, inverse_propensity, metric_sums


# ------------------------------------------------------------------ row primitives
def gather_target_rows(backend, V, ids, valid):
    """V[ids] (N, d) with zero rows where not valid (`backend.factored_gather_rows`)."""
    return backend.factored_gather_rows(V, ids, valid)


def scatter_outer_rows(backend, V, ids, coef, rows, K, deterministic=False):
    """V[ids[n]] += coef[n] * rows[n // K] for n < N = B K; repeated ids accumulate
    (`backend.factored_scatter_rows`)."""
    return backend.factored_scatter_rows(V, ids, coef, rows, K, deterministic)


def default_check_every(D, d, B):
    """Monitor cadence when not given: every 100 updates, or rarer for a huge D so that the probe
    monitor (it reads all of V: D d elements, memory-bound) stays near a tenth of the training
    time. One step is ~10 B d^2 flops; reading V costs about 3 D / (B d) steps on a CPU (measured
    at D = 793,471, d = 300, B = 128: 348 ms vs 5.8 ms per step), hence 30 D / (B d)."""
    return max(100, int(numpy.ceil(30.0 * D / (max(B, 1) * d))))


def _compact_targets(backend, t2, valid, gc):
    """Ydot restricted to the columns the minibatch names: (B, n) with n columns, one per
    distinct target id (ascending), Yc[b, col(t2[b, j])] = sum of gc[b, j] over the valid slots
    naming that id, so that Ydot Ydot^T = Yc Yc^T with O(B^2 K) memory instead of the
    (B, K, B, K) pair table. No host read: `backend.rank_ids` gives each id its column and an
    upper bound n of their number (exact on the CPU; B K on the GPU, where counting them would
    be a host read: the unused columns stay zero and add nothing to Yc Yc^T, at the price of
    B^2 (B K) instead of B^2 n multiply-adds when many targets repeat)."""
    xp = backend.xp
    B, K = t2.shape
    ids = xp.where(valid, t2, -1).reshape(-1)
    col, n = backend.rank_ids(ids)
    rows = xp.repeat(xp.arange(B, dtype=xp.int64), K)
    weights = xp.where(valid, gc, 0).reshape(-1, 1).astype(numpy.float64)
    Yc = xp.zeros((B * n, 1), dtype=numpy.float64)
    backend.scatter_add_rows(Yc, rows * n + col, weights)        # in slot order on the CPU
    return Yc.reshape(B, n).astype(gc.dtype)


def _rng_words(rng):
    """A PCG64 generator's state as 6 uint64 words (for the checkpoint): the 128-bit state and
    increment as (high, low) pairs, then has_uint32 and uinteger."""
    st = rng.bit_generator.state
    m = (1 << 64) - 1
    s, inc = st["state"]["state"], st["state"]["inc"]
    return numpy.array([s >> 64, s & m, inc >> 64, inc & m, st["has_uint32"], st["uinteger"]],
                       dtype=numpy.uint64)


def _rng_from_words(words):
    w = [int(x) for x in numpy.asarray(words, dtype=numpy.uint64).reshape(-1)]
    rng = numpy.random.default_rng(0)
    rng.bit_generator.state = {"bit_generator": "PCG64",
                               "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
                               "has_uint32": w[4], "uinteger": w[5]}
    return rng


# ------------------------------------------------------------------ the layer

def _band_check(band):
    """U starts as the identity: its singular values 1 must lie inside the band."""
    low, high = band
    if not 0 < low <= 1 <= high:
        raise ValueError(f"must be LOW,HIGH with 0 < LOW <= 1 <= HIGH, got {low},{high}")

class FactoredOutput(OutputLayer):
    owns_update = True
    default_loss = "squared"
    TARGETS = ("one", "many")
    OPTIONS = with_defaults(LOSS_OPTIONS, loss="squared") + (
        reduction_option(),
        bias_option(False),
        Option("lr", parse_float, None, "the layer's own exact-SGD learning rate (default: "
               "--lr-scale times the optimizer's scheduled --lr)", flag="--output-lr",
               check=at_least(0)),
        Option("lr_scale", parse_float, 1.0, "without --output-lr: the layer's learning rate is "
               "this times the optimizer's", check=at_least(0)),
        Option("weight_decay", parse_float, 0.0, "exact L2 decay of the layer's W",
               flag="--output-weight-decay", check=at_least(0)),
        Option("inverse", parse_str, "woodbury", "how U^-1 follows U: woodbury (rank-B update) or "
               "solve", choices=("woodbury", "solve")),
        Option("reinvert_every", parse_int, 0, "numerical care: recompute U^-1 every N updates "
               "(0: only when the monitor asks)", check=at_least(0)),
        Option("check_every", parse_int, None, "numerical care: run the monitors every N updates "
               "(default: 100, rarer for a huge output)", check=at_least(1)),
        Option("q_tol", parse_float, None, "recompute Q = W^T W when its relative error exceeds "
               "this (default 1000 machine epsilons)", check=greater_than(0)),
        Option("inv_tol", parse_float, None, "re-invert U when ||U U^-1 - I|| exceeds this "
               "(default 1000 machine epsilons)", check=greater_than(0)),
        Option("band", float_pair, [0.5, 2.0], "keep U's singular values in LOW,HIGH (rank-1 "
               "fixes)", metavar="LOW,HIGH", check=_band_check),
        Option("unfactorize_fraction", parse_float, 1.0 / 3.0, "unfactorize (V <- V U, U <- I) "
               "when more than this share of U's singular values leave the band",
               check=in_open_closed(0, 1)),
        Option("recompute_q_every", parse_int, 0, "numerical care: recompute Q every N updates "
               "(0: only when the monitor asks)", check=at_least(0)),
        Option("lr_guard", default=True, switch=True, help="refuse (before any change) a step "
               "that would make U singular"),
        Option("guard_min", parse_float, 1e-2, "the guard's smallest allowed eigenvalue of the "
               "step's factor", check=greater_than(0)),
        Option("guard_action", parse_str, "refuse", "what the guard does with an unsafe step: "
               "refuse it (stop training with SingularStepError) or shrink it (halve that "
               "minibatch's learning rate until it is safe; an exact SGD step all the same)",
               choices=("refuse", "shrink")),
        Option("deterministic", default=False, switch=True, help=DETERMINISTIC_HELP),
        init_scale_option(),
        Option("monitor", parse_str, "probe", "the Q monitor: probe (a few random directions, "
               "O(D d p)) or exact (O(D d^2))", choices=("probe", "exact")),
        Option("monitor_probes", parse_int, 4, "directions of the probe monitor",
               check=at_least(1)),
        Option("topk_chunk", parse_int, 65536, "prediction: output rows scored at once",
               check=at_least(1)),
        Option("psp_a", parse_float, 0.55, "PSP@k propensity parameter A (Jain et al. 2016)"),
        Option("psp_b", parse_float, 1.5, "PSP@k propensity parameter B"),
    )
    NOT_OPTIONS = {**OutputLayer.NOT_OPTIONS,
                   "label_counts": "training points per label, from the data "
                                   "(DatasetInfo.label_counts; multi-label data only)",
                   "num_train": "training points, from the data (DatasetInfo.num_train)"}
    FROM_DATA = {"label_counts": "label_counts", "num_train": "num_train"}

    def __init__(self, in_features: int, num_classes: int, loss: str | None = None,
                 loss_kwargs: dict | None = None, reduction: str = "mean",
                 lr: float | None = None, lr_scale: float = 1.0, weight_decay: float = 0.0,
                 inverse: str = "woodbury", reinvert_every: int = 0, check_every: int | None = None,
                 q_tol: float | None = None, inv_tol: float | None = None,
                 band: tuple = (0.5, 2.0), unfactorize_fraction: float = 1.0 / 3.0,
                 recompute_q_every: int = 0, lr_guard: bool = True, guard_min: float = 1e-2,
                 guard_action: str = "refuse",
                 deterministic: bool = False, init_scale: float | None = None,
                 monitor: str = "probe", monitor_probes: int = 4,
                 topk_chunk: int = 65536, label_counts=None, num_train: int | None = None,
                 psp_a: float = 0.55, psp_b: float = 1.5, bias: bool = False,
                 **extra_loss_kwargs):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"factored: reduction must be 'mean' or 'sum', got {reduction!r}")
        if inverse not in ("woodbury", "solve"):
            raise ValueError(f"factored: inverse must be 'woodbury' or 'solve', got {inverse!r}")
        if weight_decay < 0 or (lr is not None and lr < 0) or lr_scale < 0:
            raise ValueError("factored: lr, lr_scale and weight_decay must be >= 0")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.loss_name = loss or self.default_loss
        self.loss_kwargs = {**(loss_kwargs or {}), **extra_loss_kwargs}
        self.loss = make_loss(self.loss_name, **self.loss_kwargs)
        self.has_likelihood = self.loss.has_likelihood
        self.reduction, self.init_scale, self.use_bias = reduction, init_scale, bool(bias)
        self.state_features = self.in_features + int(self.use_bias)   # d' of the state
        self.lr, self.lr_scale, self.weight_decay = lr, float(lr_scale), float(weight_decay)
        self.inverse, self.reinvert_every = inverse, int(reinvert_every)
        self.check_every = None if check_every is None else int(check_every)
        self.q_tol, self.inv_tol = q_tol, inv_tol
        self.band, self.unfactorize_fraction = tuple(band), float(unfactorize_fraction)
        self.recompute_q_every = int(recompute_q_every)
        self.lr_guard, self.guard_min = bool(lr_guard), float(guard_min)
        if guard_action not in ("refuse", "shrink"):
            raise ValueError(f"factored: guard_action must be 'refuse' or 'shrink', "
                             f"got {guard_action!r}")
        self.guard_action = guard_action
        self.shrunk_steps = 0          # steps the guard shrank (guard_action="shrink")
        self.last_step_lr = None       # the learning rate of the last update taken
        self.deterministic, self.topk_chunk = bool(deterministic), int(topk_chunk)
        if monitor not in ("probe", "exact"):
            raise ValueError(f"factored: monitor must be 'probe' or 'exact', got {monitor!r}")
        self.monitor, self.monitor_probes = monitor, int(monitor_probes)
        self._probe_rng = numpy.random.default_rng(0)
        self.updates = 0
        self.events = []            # (update number, what the numerical care did)
        self.last_monitors = None
        self._cache = None
        self._pending = None
        self._prepared_lr = None
        self.psp_a, self.psp_b = float(psp_a), float(psp_b)
        self.label_counts = self.num_train = self._inv_prop = None
        if label_counts is not None:
            if num_train is None:
                raise ValueError("factored: label_counts given without num_train")
            self.set_label_frequencies(label_counts, num_train)

    # -- parameters ----------------------------------------------------------------
    def init_params(self, rng):
        a = self.init_scale if self.init_scale is not None else 1.0 / numpy.sqrt(self.in_features)
        W0 = rng.uniform(-a, a, size=(self.num_classes, self.in_features))
        if self.use_bias:                      # the bias column starts at 0
            W0 = numpy.concatenate([W0, numpy.zeros((self.num_classes, 1))], axis=1)
        return fs.init_state(W0, self.loss.uses_s)

    def _with_one(self, h):
        """h (B, d) -> h' = [h, 1] (B, d + 1) when the layer has a bias, else h."""
        if not self.use_bias:
            return h
        xp = self.backend.xp
        return xp.concatenate([h, xp.ones((h.shape[0], 1), dtype=h.dtype)], axis=1)

    def bind(self, backend, rng, dtype):
        super().bind(backend, rng, dtype)
        if self.label_counts is not None:
            self._inv_prop = backend.asarray(inverse_propensity(
                self.label_counts, self.num_train, self.psp_a, self.psp_b))
        return self

    def set_label_frequencies(self, label_counts, num_train):
        """Training counts of every label (D,) and the number of training points: PSP@k."""
        counts = numpy.asarray(label_counts, dtype=numpy.int64).reshape(-1)
        if counts.shape[0] != self.num_classes:
            raise ValueError(f"factored: {counts.shape[0]} label counts for "
                             f"{self.num_classes} labels")
        self.label_counts, self.num_train = counts, int(num_train)
        inv = inverse_propensity(counts, self.num_train, self.psp_a, self.psp_b)
        self._inv_prop = self.backend.asarray(inv) if self.backend is not None else None

    def state_dict(self):
        """The factored state, the update count and the probe generator (numerical care runs
        every `check_every` updates with random probes: a resumed run must take the same
        decisions to stay bit-identical), and the label counts when known."""
        state = super().state_dict()
        state["updates"] = numpy.asarray([self.updates], dtype=numpy.int64)
        state["probe_rng"] = _rng_words(self._probe_rng)
        if self.label_counts is not None:
            state["label_counts"] = self.label_counts.copy()
            state["num_train"] = numpy.asarray([self.num_train], dtype=numpy.int64)
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "updates" in state:             # (checkpoints written before they were saved lack them)
            self.updates = int(numpy.asarray(state["updates"]).reshape(-1)[0])
        if "probe_rng" in state:
            self._probe_rng = _rng_from_words(state["probe_rng"])
        if "label_counts" in state:
            self.set_label_frequencies(numpy.asarray(state["label_counts"]),
                                       int(numpy.asarray(state["num_train"]).reshape(-1)[0]))

    def memory_report(self, optimizer=None, batch=None, dtype=None, targets=1) -> dict:
        """Bytes of the layer's training state (computable before bind), in the multi-label
        outputs' keys: weights = V (D, d) + U, U^-T, Q (d, d) [+ a, wbar (d,)]; grads and
        optimizer 0 (the layer takes its own SGD step: no gradient array, no moments, whatever
        the body's `optimizer`); with `batch` B and `targets` K per example, activations = the
        step's temporaries: the target rows Vc (B K d), about eight (B, d) arrays (h U^T, h Q,
        dh, the Woodbury solve, ...), about eight (B, B) ones (H H^T, G G^T, ...), the compacted
        targets (B, B K) and three (d, d) products of the update."""
        s = numpy.dtype(dtype if dtype is not None else (self.dtype or numpy.float32)).itemsize
        D, d = self.num_classes, self.state_features
        extra = 2 * d if self.loss.uses_s else 0
        out = {"weights": (D * d + 3 * d * d + extra) * s, "grads": 0, "optimizer": 0}
        if batch is not None:
            B, K = int(batch), int(targets)
            out["activations"] = (B * K * d + 8 * B * d + 8 * B * B + B * B * K + 3 * d * d) * s
        out["total"] = sum(out.values())
        return {k: int(v) for k, v in out.items()}

    def _dense_state(self):
        W = self.params["V"] @ self.params["U"]
        if "a" in self.params:
            W = W + self.params["a"]
        return W

    def dense_weight(self):
        """Export W = V U + 1 a^T as a host (D, d) array (O(D d^2)), without the bias column."""
        W = self._dense_state()
        return self.backend.to_host(W[:, :self.in_features] if self.use_bias else W)

    def dense_bias(self):
        """The output bias b (D,) on the host, or None without `bias`."""
        return self.backend.to_host(self._dense_state()[:, -1]) if self.use_bias else None

    # -- forward / backward ------------------------------------------------------------
    def _check(self, h, targets):
        xp = self.backend.xp
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"factored: expected h (B, {self.in_features}), got {tuple(h.shape)}")
        t2, valid = targets_and_mask(xp, targets, h.shape[0], self.num_classes)
        self.backend.check_ids_in_range(
            targets, -1, self.num_classes,
            "factored: target ids must be in [{low}, {high}), got [{min}, {max}]")
        return self._with_one(h), t2, valid

    def _terms(self, h, t2, valid):
        """(HU, Vc (B, K, d), o_c (B, K), HQ, q, s)."""
        p = self.params
        B, K = t2.shape
        HU = h @ p["U"].T
        Vc = gather_target_rows(self.backend, p["V"], t2.reshape(-1), valid).reshape(B, K, -1)
        oc = (Vc * HU[:, None, :]).sum(axis=2)
        if "a" in p:
            oc = oc + (h @ p["a"])[:, None]
        HQ = h @ p["Q"]
        q = (HQ * h).sum(axis=1)
        s = h @ p["wbar"] if "wbar" in p else None
        return HU, Vc, oc, HQ, q, s

    def forward(self, h, targets, train=True):
        xp = self.backend.xp
        h, t2, valid = self._check(h, targets)
        HU, Vc, oc, HQ, q, s = self._terms(h, t2, valid)
        extra = self.loss.prepare(xp, t2, valid)
        loss, g_q, g_s, g_c = self.loss.value_and_grads(xp, q, s, oc, valid, self.num_classes, extra)
        r = 1.0 if self.reduction == "sum" else 1.0 / h.shape[0]
        self._cache = (h, t2, valid, Vc, HQ, s, r * g_q, None if g_s is None else r * g_s,
                       r * g_c, HU) if train else None
        self.last_loss_rows = loss
        return loss.sum() * r

    def backward(self, dy=None):
        if self._cache is None:
            raise RuntimeError("factored.backward called without a forward(train=True)")
        h, t2, valid, Vc, HQ, s, gq, gs, gc, HU = self._cache
        self._cache = None
        p = self.params
        gcsum = gc.sum(axis=1)
        R = (gc[:, :, None] * Vc).sum(axis=1) @ p["U"]            # Ydot W, (B, d)
        if "a" in p:
            R += gcsum[:, None] * p["a"]
        dh = (2.0 * gq)[:, None] * HQ
        dh += R
        if gs is not None:
            dh += gs[:, None] * p["wbar"]
        # G G^T (B, B) from h Q h^T, h R^T and Ydot Ydot^T (pairs naming the same row)
        HR = h @ R.T
        GG = (4.0 * gq[:, None] * gq[None, :]) * (HQ @ h.T)
        GG += 2.0 * gq[:, None] * HR
        GG += 2.0 * HR.T * gq[None, :]
        if t2.shape[1] == 1:     # one target per row: a B x B table, no host synchronisation
            same = (t2[:, 0, None] == t2[None, :, 0]) & valid[:, 0, None] & valid[None, :, 0]
            GG += same * (gc[:, 0, None] * gc[None, :, 0])
        else:                    # K-hot: compact the named ids (no host read)
            Yc = _compact_targets(self.backend, t2, valid, gc)
            GG += Yc @ Yc.T
        G1 = None
        if gs is not None:
            u = 2.0 * gq * s + gcsum
            GG += self.num_classes * gs[:, None] * gs[None, :] + u[:, None] * gs[None, :] \
                + gs[:, None] * u[None, :]
            G1 = u + self.num_classes * gs
        self._pending = (h, t2.reshape(-1), gc, gq, gs, G1, dh, GG, HU)
        if self._prepared_lr is not None:
            self._plan(self._eta(self._prepared_lr))
        return dh[:, :self.in_features] if self.use_bias else dh

    # -- the exact update ------------------------------------------------------------
    def _eta(self, lr):
        return float(self.lr) if self.lr is not None else self.lr_scale * float(lr)

    #: halvings the shrinking guard tries before it refuses the step after all
    MAX_HALVINGS = 40

    def _plan(self, eta):
        """(requested eta, eta taken, A, Mb, s_) of the pending step, checked by the guard."""
        h, gq = self._pending[0], self._pending[3]
        requested = eta
        for halvings in range(self.MAX_HALVINGS + 1):
            try:                                   # both raise SingularStepError
                A, Mb, s_, C = fs.step_matrix(self.backend.xp, h, gq, eta, self.weight_decay)
                if self.lr_guard:
                    fs.check_step(self.backend, Mb, s_, eta, self.guard_min, A, C)
                break
            except fs.SingularStepError:
                if self.guard_action != "shrink" or halvings == self.MAX_HALVINGS:
                    raise
                eta *= 0.5
        if eta != requested:
            self.shrunk_steps += 1
        self._plan_cache = (requested, eta, A, Mb, s_)
        return self._plan_cache

    def prepare_update(self, lr):
        """Called by the engine before backward: the guard runs in backward, before any change."""
        self._prepared_lr = lr

    def apply_update(self, lr):
        if self._pending is None:
            raise RuntimeError("factored.apply_update called without a backward()")
        eta = self._eta(lr)
        plan = getattr(self, "_plan_cache", None)
        if plan is None or plan[0] != eta:
            plan = self._plan(eta)
        _, eta, A, Mb, s_ = plan
        self.last_step_lr = eta
        h, ids, gc, gq, gs, G1, dh, GG, HU = self._pending
        xp = self.backend.xp

        def scatter(V, ids_, coef, rows, K):
            scatter_outer_rows(self.backend, V, ids_, coef, rows, K, self.deterministic)

        fs.sgd_step(self.params, xp, h, ids, gc, gq, gs, G1, dh, GG, eta, self.weight_decay,
                    A, Mb, s_, scatter, self.inverse, HU=HU)
        self._pending, self._plan_cache, self._prepared_lr = None, None, None
        self.updates += 1
        if self.check_every is None:
            self.check_every = default_check_every(self.num_classes, self.in_features, h.shape[0])
        self._numerical_care()

    def _numerical_care(self):
        xp, n, st = self.backend.xp, self.updates, self.params
        if self.reinvert_every and n % self.reinvert_every == 0:
            fs.reinvert(st, xp)
        if self.recompute_q_every and n % self.recompute_q_every == 0:
            fs.recompute_Q(st, xp)
        if self.check_every and n % self.check_every == 0:
            self.run_checks()

    def run_checks(self, exact: bool | None = None):
        """Monitors, then: re-invert U when ||U U^{-1} - I|| > inv_tol, recompute Q (and wbar)
        when ||W^T W - Q|| / ||Q|| > q_tol, and keep U's singular values in `band` (rank-1
        fixes, or unfactorize). Returns the monitors (floats) measured before any fix.

        The Q monitor is exact (O(D d^2), `monitor="exact"` or exact=True) or, by default, a
        probe through a few random directions (O(D d p)): at D = 793,471, d = 300 the exact one
        costs as much as ~2,000 training steps, the probe about 30 (see fs.probe_monitors)."""
        xp, st = self.backend.xp, self.params
        eps = numpy.finfo(self.dtype).eps
        q_tol = self.q_tol if self.q_tol is not None else 1e3 * eps
        inv_tol = self.inv_tol if self.inv_tol is not None else 1e3 * eps
        if exact is None:
            exact = self.monitor == "exact"
        mon = (fs.monitors(st, xp) if exact else
               fs.probe_monitors(st, xp, self._probe_rng, self.monitor_probes))
        self.last_monitors = mon
        band = fs.fix_band(st, xp, self.band[0], self.band[1], self.unfactorize_fraction)
        if band != "none":
            self.events.append((self.updates, band))
        if band == "unfactorized":
            fs.recompute_Q(st, xp)
        elif band == "none" and mon["inv_err"] > inv_tol:
            fs.reinvert(st, xp)
            self.events.append((self.updates, "reinverted"))
        if band != "unfactorized" and max(mon["q_rel_err"], mon.get("wbar_rel_err", 0.0)) > q_tol:
            fs.recompute_Q(st, xp)
            self.events.append((self.updates, "recomputed Q"))
        return mon

    def zero_grads(self):
        self.grads = {}

    # -- evaluation --------------------------------------------------------------------
    def loss_per_example(self, h, targets):
        xp = self.backend.xp
        h, t2, valid = self._check(h, targets)
        HU, Vc, oc, HQ, q, s = self._terms(h, t2, valid)
        extra = self.loss.prepare(xp, t2, valid)
        return self.loss.value_and_grads(xp, q, s, oc, valid, self.num_classes, extra)[0]

    def eval_sums(self, h, targets, ks=DEFAULT_KS):
        """One target per row: the likelihood (perplexity) or the loss (OutputLayer.eval_sums).
        K-hot targets (B, K): the loss and the ranking sums p@k, ndcg@k (psp@k with the label
        counts) of the top max(ks) labels (`predict_topk`, chunk by chunk)."""
        if targets.ndim == 1:
            return super().eval_sums(h, targets)
        sums = {"count": self.backend.xp.asarray(float(h.shape[0])),
                "loss": self.forward(h, targets, train=False).astype(numpy.float64) * h.shape[0]}
        ids, _ = self.predict_topk(h, max(ks))
        sums.update(metric_sums(self.backend.xp, ids, targets, self._inv_prop, ks))
        return sums

    def eval_finish(self, sums):
        """Sums over a split -> the mean loss, and P@k, nDCG@k, PSP@k when they were summed."""
        return finish_metrics(sums)

    def log_prob(self, h, targets):
        """Exact log p(target) in O(d^2) per example (spherical and Taylor softmax)."""
        if not self.has_likelihood:
            raise NotImplementedError(f"factored-{self.loss_name} defines no likelihood; "
                                      f"use loss_per_example")
        if targets.ndim != 1:
            raise ValueError("factored.log_prob takes one target per row (B,)")
        h, t2, valid = self._check(h, targets)
        HU, Vc, oc, HQ, q, s = self._terms(h, t2, valid)
        return self.loss.log_prob(self.backend.xp, q, s, oc[:, 0], self.num_classes)

    def _score(self, o):
        if self.loss_name == "spherical":
            return o * o
        if self.loss_name == "taylor":
            return 1.0 + o + 0.5 * o * o
        return o

    def predict_topk(self, h, k: int, chunk_size=None):
        """Best k outputs per row by chunks of V's rows (never B x D at once): O(D d B).
        Best first; equal scores by ascending id (`backend.topk`'s rule)."""
        xp, p, be = self.backend.xp, self.params, self.backend
        k = int(min(k, self.num_classes))
        chunk = max(int(chunk_size or self.topk_chunk), k)
        h = self._with_one(h)
        HU = h @ p["U"].T                                         # (B, d)
        ha = (h @ p["a"])[:, None] if "a" in p else 0.0
        best_v = best_i = None
        for start in range(0, self.num_classes, chunk):
            stop = min(start + chunk, self.num_classes)
            sc = self._score(HU @ p["V"][start:stop].T + ha)      # (B, chunk)
            vals, ids = be.topk(sc, min(k, stop - start))
            ids = ids + start
            if best_v is not None:     # kept entries first: a tie goes to the lower id
                cv = xp.concatenate([best_v, vals], axis=1)
                ci = xp.concatenate([best_i, ids], axis=1)
                vals, sel = be.topk(cv, min(k, cv.shape[1]))
                ids = xp.take_along_axis(ci, sel, axis=1)
            best_v, best_i = vals, ids
        return best_i, best_v

    def config(self):
        return {"in_features": self.in_features, "num_classes": self.num_classes,
                "loss": self.loss_name, "loss_kwargs": self.loss_kwargs,
                "reduction": self.reduction, "lr": self.lr, "lr_scale": self.lr_scale,
                "weight_decay": self.weight_decay, "inverse": self.inverse,
                "reinvert_every": self.reinvert_every, "check_every": self.check_every,
                "monitor": self.monitor, "monitor_probes": self.monitor_probes,
                "q_tol": self.q_tol, "inv_tol": self.inv_tol, "band": list(self.band),
                "unfactorize_fraction": self.unfactorize_fraction,
                "recompute_q_every": self.recompute_q_every, "lr_guard": self.lr_guard,
                "guard_min": self.guard_min, "guard_action": self.guard_action,
                "deterministic": self.deterministic,
                "init_scale": self.init_scale, "topk_chunk": self.topk_chunk,
                "psp_a": self.psp_a, "psp_b": self.psp_b, "bias": self.use_bias}


class FactoredSquaredOutput(FactoredOutput):
    default_loss = "squared"


class FactoredSphericalOutput(FactoredOutput):
    default_loss = "spherical"
    OPTIONS = with_defaults(FactoredOutput.OPTIONS, loss="spherical")


class FactoredTaylorOutput(FactoredOutput):
    default_loss = "taylor"
    OPTIONS = with_defaults(FactoredOutput.OPTIONS, loss="taylor")


class FactoredZLossOutput(FactoredOutput):
    default_loss = "zloss"
    OPTIONS = with_defaults(FactoredOutput.OPTIONS, loss="zloss")
