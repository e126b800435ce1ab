"""Cutoffs for the adaptive softmax chosen by the paper's cost model (docs/adaptive-softmax.md, "Choosing the cutoffs"), with
the cost of the current backend measured, not assumed.

Dimension letters: B batch rows, d hidden width, d_i = d // f^(i+1) the width of tail i, m rows
a block sees, n its inner width, k its number of outputs, D the vocabulary.

Cost model. The paper models the time of a B x d by d x k product as flat then affine in k and
writes the expected cost C = g(J + c_1) + sum_i p_i g(size_i) (plus projections). We measure,
once per (device, dtype, B, d, f, J_max), the time of what a training step really runs:
  softmax block  S_n(m, k): logits m x n @ n x k, the fused softmax/cross-entropy, dW = G^T x,
                 dx = G W (forward + backward, so backward's ~2x is measured, not assumed);
  projection     L_i(m):    m x d @ d x d_i forward and its two backward products.
on a grid (k = 16, 64, ..., 16384, capped at D; m = B, B/4, ..., 1) and interpolate in log-log
(linear beyond the largest k, proportional below one row: an expected cluster of 0.3 rows costs
0.3 x the one-row block). Tables are cached in memory and as JSON under $ENGINE_CACHE (else
~/.cache/engine)/adaptive_cost/.

Expected cost of cutoffs c_1 < ... < c_J (c_{J+1} = D), q_i the probability mass of tail i:
    C = S_d(B, c_1 + J) + sum_i [ L_i(B q_i) + S_{d_i}(B q_i, c_{i+2} - c_{i+1}) ]
i.e. the head sees every row and tail i the B q_i rows whose target falls in it. For each
J = 0..J_max, the split points are chosen by dynamic programming over a geometric grid of
candidate positions (F_i(a) = min_b cost_i(a, b) + F_{i+1}(b), O(J P^2) for P candidates);
`brute_force_cutoffs` enumerates the same grid exhaustively (the tests compare the two).
"""
from __future__ import annotations

import itertools
import json
import os
import time

import numpy

GRID_VERSION = 2
K_GRID = (16, 64, 256, 1024, 4096, 16384)
_MEMORY_CACHE: dict = {}


# ------------------------------------------------------------------------------ measurement
def _device_name(backend):
    return backend.device_description()


def cache_dir():
    root = os.environ.get("ENGINE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "engine")
    return os.path.join(root, "adaptive_cost")


def _time(fn, sync, budget_s=0.05, max_repeats=15):
    """Best of several timed calls after one warm-up (up to 15 for fast blocks): on a shared
    CPU a call may lose a scheduler quantum (~4-8 ms), and the minimum is the block's own cost."""
    fn()
    sync()
    best, spent, n = float("inf"), 0.0, 0
    while n < 3 or (spent < budget_s and n < max_repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best


def _softmax_block_time(backend, dtype, m, n, k, rng):
    xp = backend.xp
    x = backend.asarray(rng.standard_normal((m, n)).astype(dtype))
    W = backend.asarray((rng.standard_normal((k, n)) * 0.1).astype(dtype))
    t = backend.asarray(rng.integers(0, k, m).astype(numpy.int64))
    z = xp.empty((m, k), dtype=dtype)

    def step():
        xp.matmul(x, W.T, out=z)
        backend.softmax_xent_fused(z, t, 1.0)
        z.T @ x
        z @ W
    return _time(step, backend.synchronize)


def _linear_time(backend, dtype, m, n_in, n_out, rng):
    x = backend.asarray(rng.standard_normal((m, n_in)).astype(dtype))
    W = backend.asarray(rng.standard_normal((n_out, n_in)).astype(dtype))

    def step():
        y = x @ W.T
        y.T @ x
        y @ W
    return _time(step, backend.synchronize)


def _m_grid(batch):
    grid, m = [], int(batch)
    while m > 1:
        grid.append(m)
        m = max(1, m // 4)
    grid.append(1)
    return sorted(set(grid))


def tail_dims(d, div_value, n):
    return [max(1, int(d // (div_value ** (i + 1)))) for i in range(n)]


def measure_cost_model(backend, dtype, batch, d, div_value=4.0, max_clusters=4, vocab=None,
                       verbose=False, use_cache=True):
    """The measured tables (a dict; see the module docstring), from cache when present."""
    dtype = numpy.dtype(dtype)
    kmax = max(K_GRID) if vocab is None else int(min(max(K_GRID), max(16, vocab)))
    key = (f"v{GRID_VERSION}-{_device_name(backend)}-{dtype.name}-B{int(batch)}-d{int(d)}"
           f"-f{float(div_value):g}-J{int(max_clusters)}-k{kmax}")
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in key)
    if use_cache and safe in _MEMORY_CACHE:
        return _MEMORY_CACHE[safe]
    path = os.path.join(cache_dir(), safe + ".json")
    if use_cache and os.path.exists(path):
        try:
            with open(path) as fh:
                table = json.load(fh)
            _MEMORY_CACHE[safe] = table
            return table
        except (OSError, ValueError):
            pass
    t0 = time.perf_counter()
    rng = numpy.random.default_rng(0)
    ks = [k for k in K_GRID if k <= kmax] or [kmax]
    ms = _m_grid(batch)
    dims = tail_dims(d, div_value, max_clusters)
    table = {"key": key, "batch": int(batch), "d": int(d), "div_value": float(div_value),
             "k_grid": ks, "m_grid": ms, "dims": dims,
             "head": [_softmax_block_time(backend, dtype, int(batch), d, k, rng) for k in ks],
             "tails": [[[_softmax_block_time(backend, dtype, m, n, k, rng) for k in ks] for m in ms]
                       for n in dims],
             "proj": [[_linear_time(backend, dtype, m, d, n, rng) for m in ms] for n in dims]}
    table["seconds_to_measure"] = time.perf_counter() - t0
    if verbose:
        print(f"[adaptive] measured the cost model of {key} in {table['seconds_to_measure']:.1f} s")
    _MEMORY_CACHE[safe] = table
    if use_cache:
        try:
            os.makedirs(cache_dir(), exist_ok=True)
            tmp = path + f".tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                json.dump(table, fh)
            os.replace(tmp, path)
        except OSError:
            pass
    return table


# ------------------------------------------------------------------------------ interpolation
def _interp_k(ks, ts, k):
    """Log-log interpolation of one k-row; linear in k beyond the grid, flat below it."""
    lk, lt = numpy.log(ks), numpy.log(numpy.maximum(ts, 1e-9))
    k = numpy.asarray(k, dtype=numpy.float64)
    inside = numpy.exp(numpy.interp(numpy.log(numpy.clip(k, ks[0], ks[-1])), lk, lt))
    return numpy.where(k > ks[-1], ts[-1] * k / ks[-1], inside)


def _interp_m(ms, values, m):
    """values: (len(ms), N) at each grid m; m: (N,) -> (N,). Proportional below one row,
    linear above the largest m, log-log between."""
    m = numpy.asarray(m, dtype=numpy.float64)
    lm = numpy.log(ms)
    mc = numpy.clip(m, ms[0], ms[-1])
    j = numpy.clip(numpy.searchsorted(lm, numpy.log(mc)) - 1, 0, len(ms) - 2) if len(ms) > 1 else 0
    if len(ms) == 1:
        out = values[0]
    else:
        cols = numpy.arange(values.shape[1])
        a, b = values[j, cols], values[j + 1, cols]
        w = (numpy.log(mc) - lm[j]) / (lm[j + 1] - lm[j])
        out = numpy.exp((1 - w) * numpy.log(numpy.maximum(a, 1e-9)) + w * numpy.log(numpy.maximum(b, 1e-9)))
    out = numpy.where(m < ms[0], out * m / ms[0], out)
    return numpy.where(m > ms[-1], out * m / ms[-1], out)


class CostModel:
    """Seconds per training step of each piece, from a measured table (or any object with the
    same three methods: the tests pass analytic ones)."""

    def __init__(self, table):
        self.t = table
        self.ks = numpy.asarray(table["k_grid"], dtype=numpy.float64)
        self.ms = numpy.asarray(table["m_grid"], dtype=numpy.float64)

    def head(self, k):
        return _interp_k(self.ks, numpy.asarray(self.t["head"]), k)

    def tail(self, i, m, k):
        m, k = numpy.broadcast_arrays(numpy.asarray(m, float), numpy.asarray(k, float))
        rows = numpy.stack([_interp_k(self.ks, numpy.asarray(r), k.ravel()) for r in self.t["tails"][i]])
        return _interp_m(self.ms, rows, m.ravel()).reshape(m.shape)

    def proj(self, i, m):
        m = numpy.asarray(m, float)
        vals = numpy.asarray(self.t["proj"][i], dtype=numpy.float64)[:, None].repeat(m.size, 1)
        return _interp_m(self.ms, vals, m.ravel()).reshape(m.shape)


# ------------------------------------------------------------------------------ the search
def candidate_positions(D, n=96, first=8):
    """Candidate cut positions: a geometric grid in [first, D), as integers, plus D itself last."""
    D = int(D)
    if D <= first + 1:
        return numpy.arange(1, D + 1, dtype=numpy.int64)
    pos = numpy.unique(numpy.round(numpy.geomspace(first, D, n)).astype(numpy.int64))
    pos = pos[(pos >= 1) & (pos < D)]
    return numpy.concatenate([pos, [D]]).astype(numpy.int64)


def expected_cost(cutoffs, probs, model, batch):
    """Predicted seconds per step of the adaptive softmax with these cutoffs (probs: (D,) mass of
    each word, frequency-sorted)."""
    cum = numpy.concatenate([[0.0], numpy.cumsum(probs)])
    D = len(probs)
    cut = list(cutoffs)
    J = len(cut)
    bounds = cut + [D]
    c = float(model.head(cut[0] + J if J else D))
    for i in range(J):
        q = cum[bounds[i + 1]] - cum[bounds[i]]
        c += float(model.proj(i, batch * q)) + float(model.tail(i, batch * q, bounds[i + 1] - bounds[i]))
    return c


def dp_cutoffs(probs, model, batch, J, cands, min_head=1):
    """(cost, cutoffs) minimising expected_cost over cutoffs drawn from `cands` (ending with D),
    with a head of at least `min_head` words."""
    D = len(probs)
    cum = numpy.concatenate([[0.0], numpy.cumsum(probs)])
    P = numpy.asarray(cands, dtype=numpy.int64)
    if J == 0:
        return float(model.head(D)), []
    n = len(P)
    a_idx, b_idx = numpy.meshgrid(numpy.arange(n), numpy.arange(n), indexing="ij")
    ok = b_idx > a_idx
    q = numpy.where(ok, cum[P[b_idx]] - cum[P[a_idx]], 0.0)
    size = numpy.where(ok, P[b_idx] - P[a_idx], 1)
    F = numpy.full(n, numpy.inf)          # F_{J}(a): nothing left to cover only at a = D
    F[n - 1] = 0.0
    choice = []
    for i in reversed(range(J)):
        pair = model.proj(i, batch * q) + model.tail(i, batch * q, size)
        pair = numpy.where(ok, pair, numpy.inf)
        total = pair + F[None, :]
        best_b = numpy.argmin(total, axis=1)
        F = total[numpy.arange(n), best_b]
        F[n - 1] = numpy.inf              # a tail cannot start at D
        choice.append(best_b)
    choice.reverse()
    heads = numpy.where(P[:-1] >= min_head, model.head(P[:-1] + J) + F[:-1], numpy.inf)
    a = int(numpy.argmin(heads))
    if not numpy.isfinite(heads[a]):
        return float("inf"), None
    cost = float(heads[a])
    cut = [int(P[a])]
    for i in range(J - 1):
        a = int(choice[i][a])
        cut.append(int(P[a]))
    return cost, cut


def brute_force_cutoffs(probs, model, batch, J, cands, min_head=1):
    """The same minimum by enumerating every increasing J-subset of the candidates (tests)."""
    best = (float("inf"), None)
    for cut in itertools.combinations([int(c) for c in cands[:-1] if c >= min_head], J):
        c = expected_cost(list(cut), probs, model, batch)
        if c < best[0]:
            best = (c, list(cut))
    return best


def coverage_head(counts, coverage):
    """The fewest most-frequent words whose counts make up `coverage` of all tokens (0 -> 1)."""
    counts = numpy.asarray(counts, dtype=numpy.float64)
    if not coverage > 0:
        return 1
    share = numpy.cumsum(counts) / max(counts.sum(), 1e-300)
    return int(min(numpy.searchsorted(share, min(float(coverage), 1.0) - 1e-12) + 1, counts.size))


def choose_cutoffs(counts, d, backend=None, dtype="float32", batch=256, div_value=4.0,
                   max_clusters=4, model=None, n_candidates=96, min_head=1, head_coverage=0.0,
                   verbose=True):
    """Choose J and the cutoffs minimising the predicted step time, the head holding at least
    `min_head` words and at least the words that cover `head_coverage` of the tokens (the cost
    model optimises speed only; a floor on the head keeps the most frequent words out of
    reduced-capacity tails). Returns a dict: cutoffs, predicted_ms, full_ms (J = 0, the exact
    softmax), per_J [(J, ms, cutoffs)], min_head (the floor used)."""
    counts = numpy.asarray(counts, dtype=numpy.float64)
    if counts.ndim != 1 or counts.size < 2 or not numpy.all(numpy.isfinite(counts)) or counts.min() < 0:
        raise ValueError("adaptive auto cutoffs: counts must be (D,) finite and >= 0, D >= 2")
    if numpy.any(numpy.diff(counts) > 0):
        raise ValueError("adaptive auto cutoffs: counts must be frequency-sorted (non-increasing)")
    probs = (counts + 1e-3) / (counts + 1e-3).sum()        # unseen words keep a little mass
    D = counts.size
    if model is None:
        if backend is None:
            from ..backend import get_backend
            backend = get_backend("cpu")
        model = CostModel(measure_cost_model(backend, dtype, batch, d, div_value, max_clusters,
                                             vocab=D, verbose=verbose))
    min_head = max(int(min_head), coverage_head(counts, head_coverage))
    cands = candidate_positions(D, n_candidates)
    if min_head > 1:                            # the floor itself is a candidate split point
        cands = numpy.unique(numpy.append(cands, min(min_head, D - 1)))
    per_J = []
    for J in range(0, int(max_clusters) + 1):
        if J and len(cands) - 1 < J:
            break
        cost, cut = dp_cutoffs(probs, model, batch, J, cands, min_head)
        if cut is not None:
            per_J.append((J, cost * 1e3, cut))
    J, ms, cut = min(per_J, key=lambda r: r[1])
    report = {"cutoffs": cut, "predicted_ms": ms, "full_ms": per_J[0][1], "per_J": per_J,
              "batch": int(batch), "d": int(d), "vocab": D, "min_head": min_head}
    if verbose:
        floor = (f", head >= {min_head} words" + (f" ({head_coverage:.0%} of the tokens)"
                                                   if head_coverage > 0 else "")) if min_head > 1 else ""
        print(f"[adaptive] auto cutoffs for D={D:,}, d={d}, B={batch}{floor}: {cut} ({J} tail "
              f"clusters), predicted {ms:.2f} ms per step (exact softmax {per_J[0][1]:.2f} ms)")
    return report
