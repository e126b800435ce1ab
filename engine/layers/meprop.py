"""meProp (Sun et al., ICML 2017; docs/meprop.md): top-k sparsified back-propagation.

For a linear layer y = x W^T + b, the backward pass keeps only k entries of each row of the
output gradient dy and back-propagates with that sparse dy~:

    dW = dy~^T x   touches only the selected rows of W     -> a RowSparseGrad
    dx = dy~ W     reads only the selected rows of W
    db = sum_b dy  the FULL gradient (the paper: element-wise parts stay exact)

Shapes: B batch, I in_features, O out_features (n in the paper), K kept entries (k).

Modes (the `meprop` dict of `Linear`: {"k": int, "mode": str, "seed": int}):
  "per-example"  each row keeps its own k largest |dy[b, :]|            -> idx (B, K)
  "unified"      one pattern S for the minibatch: the k columns with the largest
                 sum_b |dy[b, j]|                                       -> S (K,) ascending
  "random"       k distinct uniform indices per row (the paper's baseline), drawn from
                 counter-based random numbers keyed by (seed, model seed, step, layer, call):
                 reproducible, and the same on the CPU and the GPU.
With k >= O every mode is plain back-propagation (the Linear layer takes its dense path).

Products:
  unified       small dense products through BLAS/cuBLAS: dy[:, S] W[S] and dy[:, S]^T x
                (no host read).
  per-example   `backend.meprop_products` (engine/backend/numpy_sparse.py): on the CPU two numba
                loops or, for large k, two BLAS products over the union of the selected rows
                (engine/backend/cpu_sparse.py); on the GPU cuSPARSE SpMM, CSR(dy~) @ W and
                CSR(dy~ on the compacted rows)^T @ x, W read in place (only the selected rows,
                no copy); one host read (the number of distinct selected rows).
Selection: `backend.topk(|a|, k, order="index")` (engine/backend/numpy_topk.py; the GPU kernel
  is rawkernels/topk_rows.cu): each row's k largest |a|, indices ascending, ties at the k-th
  value to the lowest index (exact zeros from ReLU are the common tie), NaN above every number;
  the same entries on every backend.

`masked_reference` is the dense specification the tests compare against: dy * mask, then the
plain products.
"""
from __future__ import annotations

import numpy

from .base import RowSparseGrad

MODES = ("per-example", "unified", "random")


def check_config(meprop):
    """None, or a validated copy {"k": int, "mode": str, "seed": int} of a meProp setting.

    Extra key "output" (the model-wide option "also at the output layer") is accepted and
    dropped: it concerns the model, not one layer."""
    if meprop is None or meprop is False:
        return None
    if not isinstance(meprop, dict):
        raise TypeError(f"meprop: expected None or a dict {{'k', 'mode', 'seed'}}, got "
                        f"{type(meprop).__name__}")
    unknown = set(meprop) - {"k", "mode", "seed", "output"}
    if unknown:
        raise ValueError(f"meprop: unknown keys {sorted(unknown)} (known: k, mode, seed, output)")
    if "k" not in meprop:
        raise ValueError("meprop: 'k' (entries kept per row) is required")
    k = meprop["k"]
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"meprop: k must be a positive integer, got {k!r}")
    mode = meprop.get("mode", "per-example")
    if mode not in MODES:
        raise ValueError(f"meprop: mode must be one of {MODES}, got {mode!r}")
    return {"k": int(k), "mode": str(mode), "seed": int(meprop.get("seed", 0))}


# ------------------------------------------------------------------------------- selection
def topk_rows(backend, a_bo, k):
    """(B, K) int64: per row, the column indices of the k largest |a[b, :]|, ascending."""
    n_cols = a_bo.shape[1]
    k = int(k)
    if not 1 <= k <= n_cols:
        raise ValueError(f"topk_rows: k must be in [1, {n_cols}], got {k}")
    return backend.topk(a_bo, k, magnitude=True, order="index")[1]


def topk_unified(backend, dy_bo, k):
    """(K,) int64 ascending: the k columns with the largest sum_b |dy[b, j]|."""
    score = backend.xp.abs(dy_bo).sum(axis=0)
    return topk_rows(backend, score.reshape(1, -1), k)[0]


def random_rows(backend, B, O, k, key, row_offset=0):
    """(B, K) int64 ascending: k distinct uniform column indices per row, a pure function of
    `key` (the same on every backend: the uniforms are counter-based, see random_hash.py);
    row b draws what row `row_offset + b` of a global minibatch draws."""
    u = backend.uniform((int(B), int(O)), tuple(key), numpy.float64,
                        offset=int(row_offset) * int(O))
    return topk_rows(backend, u, k)     # the k largest of iid uniforms: a uniform k-subset


def select(backend, dy_bo, cfg, key, row_offset=0):
    """The pattern of one backward: ("unified", S (K,)) or ("rows", idx (B, K))."""
    B, O = dy_bo.shape
    k = min(int(cfg["k"]), O)
    mode = cfg["mode"]
    if mode == "unified":
        return "unified", topk_unified(backend, dy_bo, k)
    if mode == "per-example":
        return "rows", topk_rows(backend, dy_bo, k)
    if mode == "random":
        return "rows", random_rows(backend, B, O, k, key, row_offset)
    raise ValueError(f"meprop: unknown mode {mode!r}")


def selection_mask(backend, shape, kind, pattern):
    """Dense 0/1 mask (B, O) of a pattern from `select` (for references and tests)."""
    xp = backend.xp
    mask = xp.zeros(shape, dtype=numpy.float64)
    if kind == "unified":
        mask[:, pattern] = 1.0
    else:
        mask[xp.arange(shape[0])[:, None], pattern] = 1.0
    return mask


# -------------------------------------------------------------------------------- products
def unified_backward(backend, dy_bo, x_bi, W_oi, S_k, need_dx=True):
    """meProp backward with one pattern S for the batch -> (RowSparseGrad of W, dx (B, I) or
    None when not `need_dx`)."""
    dy_s = dy_bo[:, S_k]                       # (B, K)
    dx = dy_s @ W_oi[S_k] if need_dx else None   # W[S] (K, I): the only rows of W read
    dW_s = dy_s.T @ x_bi                       # (K, I)
    return RowSparseGrad(S_k, dW_s, tuple(W_oi.shape), unique=True), dx


def per_example_backward(backend, dy_bo, x_bi, W_oi, idx_bk, need_dx=True):
    """meProp backward with a pattern per row -> (RowSparseGrad of W over the union of the
    selected rows, ascending and unique; dx (B, I) or None when not `need_dx`)."""
    vals = backend.xp.take_along_axis(dy_bo, idx_bk, axis=1)       # (B, K)
    rows_u, dW_u, dx = backend.meprop_products(idx_bk, vals, x_bi, W_oi, need_dx)
    return RowSparseGrad(rows_u, dW_u, tuple(W_oi.shape), unique=True), dx


def meprop_backward(backend, dy_bo, x_bi, W_oi, cfg, key=(0, 0, 0), need_dx=True, row_offset=0):
    """The weight gradient (RowSparseGrad) and dx (None unless `need_dx`) of a linear layer
    under meProp `cfg`.

    Callers handle k >= O themselves (plain backprop) and compute the bias gradient from the
    full dy. Usable by any layer of the form y = x W^T (+ b), output layers included."""
    kind, pattern = select(backend, dy_bo, cfg, key, row_offset)
    if kind == "unified":
        return unified_backward(backend, dy_bo, x_bi, W_oi, pattern, need_dx)
    return per_example_backward(backend, dy_bo, x_bi, W_oi, pattern, need_dx)


def masked_reference(backend, dy_bo, x_bi, W_oi, kind, pattern):
    """Dense specification: dy~ = dy * mask, dW = dy~^T x (dense), dx = dy~ W."""
    mask = selection_mask(backend, tuple(dy_bo.shape), kind, pattern).astype(dy_bo.dtype)
    dyt = dy_bo * mask
    return dyt.T @ x_bi, dyt @ W_oi


__all__ = ["MODES", "check_config", "topk_rows", "topk_unified", "random_rows", "select",
           "selection_mask", "unified_backward", "per_example_backward", "meprop_backward",
           "masked_reference"]
