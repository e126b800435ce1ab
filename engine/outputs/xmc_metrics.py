"""Extreme multi-label ranking metrics: P@k, nDCG@k and propensity-scored P@k, as minibatch sums.

Dimension letters: B examples, L labels, C labels of one chunk, K positives per example (targets
(B, K) int padded with -1), k the cut-off (1, 3, 5).

The scores of a minibatch are never needed as one B x L matrix: `TopK` keeps a running top-k per
row while the caller feeds it score chunks (B, C) of consecutive label columns (merging the
chunk's candidates with the ones kept so far, through `backend.topk`), so memory is B x (k + C). `metric_sums` then turns
the top-k label ids into per-minibatch sums, which `Engine.evaluate` adds over a split and
`finish_metrics` divides.

Definitions (the Extreme Classification Repository's, as in its pyxclib code):
- P@k = (1/k) sum_{j<k} y[r_j] (r_j the j-th best label); examples without positives count 0.
- nDCG@k = DCG@k / IDCG@k, DCG@k = sum_{j<k} y[r_j] / log2(j + 2),
  IDCG@k = sum_{j < min(k, |y|)} 1 / log2(j + 2); 0 for an example without positives.
- PSP@k (Jain, Prabhu, Varma, KDD 2016): propensity p_l = 1 / (1 + C (N_l + B)^-A),
  C = (ln N - 1) (B + 1)^A, N training points, N_l the training count of label l, A = 0.55 and
  B = 1.5 by default. The unnormalised PSP@k of an example is (1/k) sum_{j<k} y[r_j] / p_{r_j}.
  Reported normalised as in pyxclib: PSP@k = sum over the split of the unnormalised PSP@k divided
  by the sum of its best achievable value (each example's k positives of largest 1/p), i.e. a
  ratio of split totals (not a mean of per-example ratios); it lies in [0, 1] and is 1 for a
  perfect ranking. The sums are kept as "psp@k" and "psp_best@k".
All metric values are fractions in [0, 1] (the papers print them x 100).
"""
from __future__ import annotations

import math

import numpy

DEFAULT_KS = (1, 3, 5)


def inverse_propensity(label_counts, num_train, a: float = 0.55, b: float = 1.5):
    """1 / p_l for every label (L,) float64 (host), from the training counts N_l and N."""
    counts = numpy.asarray(label_counts, dtype=numpy.float64)
    n = float(num_train)
    if counts.ndim != 1:
        raise ValueError(f"label_counts must be 1-D (one count per label), got shape {counts.shape}")
    if n < 1 or (counts.size and counts.min() < 0):
        raise ValueError(f"propensities need num_train >= 1 and counts >= 0, got N={num_train}, "
                         f"min count {counts.min() if counts.size else None}")
    c = (math.log(n) - 1.0) * (b + 1.0) ** a
    return 1.0 + c * (counts + b) ** (-a)


class TopK:
    """Running top-k over label chunks of the same rows: feed (scores (B, C), first column).

    Chunks must come in increasing column order. Selection and order follow `backend.topk`
    (engine/backend/numpy_topk.py): best first, equal scores by ascending label id (the kept
    entries stand before the new chunk, whose ids are larger), NaN above every number."""

    def __init__(self, backend, rows: int, k: int, dtype):
        self.backend, self.xp, self.k = backend, backend.xp, int(k)
        self.vals = self.xp.full((rows, 0), -self.xp.inf, dtype=dtype)
        self.ids = self.xp.zeros((rows, 0), dtype=self.xp.int64)

    def add(self, scores, start: int):
        be, xp, k = self.backend, self.xp, self.k
        vals, ids = be.topk(scores, min(k, scores.shape[1]))   # the chunk's own top-k first
        vals = xp.concatenate([self.vals, vals.astype(self.vals.dtype, copy=False)], axis=1)
        ids = xp.concatenate([self.ids, ids + start], axis=1)
        vals, pos = be.topk(vals, min(k, vals.shape[1]))
        self.vals, self.ids = vals, xp.take_along_axis(ids, pos, axis=1)

    def result(self):
        """(ids (B, k') int64, scores (B, k')) best first, k' = min(k, labels seen); equal
        scores ordered by label id."""
        return self.ids, self.vals


def unique_targets(xp, targets):
    """(B, K) targets with repeated labels of a row replaced by -1 (padding stays -1)."""
    t = xp.sort(targets, axis=1)
    dup = xp.zeros(t.shape, dtype=bool)
    dup[:, 1:] = t[:, 1:] == t[:, :-1]
    return xp.where(dup, -1, t)


def metric_sums(xp, top_ids, targets, inv_prop=None, ks=DEFAULT_KS):
    """Minibatch sums of p@k, ndcg@k (and psp@k, psp_best@k with `inv_prop` (L,)) for k in ks.

    top_ids (B, k') best first (k' may be below max(ks) when there are fewer labels);
    targets (B, K) int padded with -1. Returns {name: 0-d float64 array of xp}."""
    kmax = max(ks)
    targets = unique_targets(xp, targets)
    valid = targets >= 0
    rows, kk = top_ids.shape
    hits = xp.zeros((rows, kmax), dtype=numpy.float64)
    if kk and targets.shape[1]:
        match = (top_ids[:, :kmax, None] == targets[:, None, :]) & valid[:, None, :]
        hits[:, :min(kk, kmax)] = match.any(axis=2)
    npos = valid.sum(axis=1)
    disc = 1.0 / numpy.log2(numpy.arange(kmax) + 2.0)                  # (kmax,) host
    cum_disc = xp.asarray(numpy.concatenate([[0.0], numpy.cumsum(disc)]))
    dcg = xp.cumsum(hits * xp.asarray(disc), axis=1)
    cum_hits = xp.cumsum(hits, axis=1)
    out = {}
    for k in ks:
        out[f"p@{k}"] = cum_hits[:, k - 1].sum() / k
        ideal = cum_disc[xp.minimum(npos, k)]
        out[f"ndcg@{k}"] = xp.where(npos > 0, dcg[:, k - 1] / xp.maximum(ideal, 1e-300), 0.0).sum()
    if inv_prop is not None:
        w = xp.zeros((rows, kmax), dtype=numpy.float64)
        if kk:
            w[:, :min(kk, kmax)] = inv_prop[top_ids[:, :kmax]]
        cum_w = xp.cumsum(hits * w, axis=1)
        # best achievable: the example's positives of largest 1/p, best first
        pos_w = xp.where(valid, inv_prop[xp.where(valid, targets, 0)], 0.0)
        pos_w = -xp.sort(-pos_w, axis=1)
        best = xp.zeros((rows, kmax), dtype=numpy.float64)
        m = min(kmax, pos_w.shape[1])
        best[:, :m] = pos_w[:, :m]
        cum_best = xp.cumsum(best, axis=1)
        for k in ks:
            out[f"psp@{k}"] = cum_w[:, k - 1].sum() / k
            out[f"psp_best@{k}"] = cum_best[:, k - 1].sum() / k
    return out


def finish_metrics(sums):
    """Host split totals -> metrics: "loss" and p@k/ndcg@k divided by "count"; psp@k divided by
    psp_best@k (pyxclib's normalisation, see the module docstring)."""
    n = sums["count"]
    out = {}
    for key, value in sums.items():
        if key == "count" or key.startswith("psp_best@"):
            continue
        if key.startswith("psp@"):
            best = sums.get("psp_best@" + key[4:], 0.0)
            out[key] = value / best if best > 0 else 0.0
        else:
            out[key] = value / n if n else float("nan")
    return out
