"""Float64 references of one step of each benchmarked layer, written out from the equations.

They share no code with engine/: the benchmark harness (tools/_bench_harness.py) compares every
method's first step with them, and the tests of tools/ use them for the golden numbers. Each
function takes the array module `xp` (NumPy, or CuPy so that GPU-sized checks stay fast) and
returns float64 arrays of that module; inputs may be float32. Shapes:

  softmax_sgd_step     h (B, d), W (D, d), b (D,), t (B,): mean cross-entropy of softmax(h W^T + b)
  adaptive_sgd_step    the adaptive softmax (Grave et al. 2017): head over the shortlist and one
                       token per tail cluster; tail i = softmax(out_i (proj_i h))
  dense_output_sgd_step  O = h W^T (B, D) with the squared error ||o - y||^2 or the spherical
                       softmax -log((o_t^2 + eps) / (||o||^2 + D eps)), mean over B
  ffi_step             fixed fan-in layer y[b, l] = sum_j w[l, j] x[b, idx[l, j]] + bias[l]
  linear_step          y = x W^T + b and its gradients (dense baselines, meProp's masked ones)
  sketch_vectors       random vectors whose products with y, dx, dW cover every entry cheaply
  topk_mask            meProp's selections (per row, or one set of columns for the batch)

"sgd step" functions return the loss, dh and the parameter updates -lr * gradient (the methods
report W1 - W0, so the update is what is compared), over the listed `rows` of big matrices
only. The B x D products are done in blocks of about 64 MiB; a big W may stay on the host
(NumPy) while xp is CuPy: each block goes to the device in turn.
"""
from __future__ import annotations

import numpy

F8 = numpy.float64
BLOCK_BYTES = 64 * 2 ** 20


def _blocks(D, B):
    step = max(1, BLOCK_BYTES // (8 * max(B, 1)))
    return [(s, min(D, s + step)) for s in range(0, D, step)]


def _lse_rows(xp, z):
    m = z.max(axis=1)
    return m + xp.log(xp.exp(z - m[:, None]).sum(axis=1))


def _f8(xp, a):
    return xp.asarray(a, dtype=F8)


# ---------------------------------------------------------------------------- softmax
def softmax_sgd_step(xp, W, b, h, t, lr, rows):
    """Exact softmax cross-entropy (mean over B) and one plain SGD step.
    -> {loss, dh (B, d), W_update (len(rows), d), b_update (D,) (absent when b is None)}."""
    h = _f8(xp, h)
    t = xp.asarray(t).astype(numpy.int64)
    rows = numpy.asarray(rows, dtype=numpy.int64)
    B, D = h.shape[0], W.shape[0]
    ar = xp.arange(B)

    def logits(s, e):
        Wc = _f8(xp, W[s:e])
        z = h @ Wc.T
        if b is not None:
            z += _f8(xp, b[s:e])
        return z, Wc

    m = xp.full(B, -numpy.inf)
    total = xp.zeros(B)
    target = xp.zeros(B)
    for s, e in _blocks(D, B):
        z, _ = logits(s, e)
        m_new = xp.maximum(m, z.max(axis=1))
        total = total * xp.exp(m - m_new) + xp.exp(z - m_new[:, None]).sum(axis=1)
        m = m_new
        inside = (t >= s) & (t < e)
        target += xp.where(inside, z[ar, xp.clip(t - s, 0, e - s - 1)], 0.0)
    lse = m + xp.log(total)
    dh = xp.zeros_like(h)
    db = xp.zeros(D)
    dW = xp.zeros((rows.size, h.shape[1]))
    for s, e in _blocks(D, B):
        z, Wc = logits(s, e)
        G = xp.exp(z - lse[:, None])
        inside = (t >= s) & (t < e)
        G[ar[inside], t[inside] - s] -= 1.0
        G /= B
        dh += G @ Wc
        db[s:e] = G.sum(axis=0)
        pick = numpy.nonzero((rows >= s) & (rows < e))[0]
        if pick.size:
            dW[xp.asarray(pick)] = G[:, xp.asarray(rows[pick] - s)].T @ h
    out = {"loss": float((lse - target).mean()), "dh": dh, "W_update": -lr * dW}
    if b is not None:
        out["b_update"] = -lr * db
    return out


# ---------------------------------------------------------------------------- adaptive softmax
def adaptive_sgd_step(xp, params, cutoffs, num_classes, h, t, lr):
    """Adaptive softmax (mean over B) and one plain SGD step. `params` as the engine names them:
    head_W (c_1 + J, d), head_b (optional), proj{i}_W (d_i, d), out{i}_W (S_i, d_i), out{i}_b
    (optional); tail i holds the words [c_{i+1}, c_{i+2}) (c_{J+1} = D).
    -> {loss, dh, <name>_update for every parameter (zero for a tail no row reached)}."""
    P = {k: _f8(xp, v) for k, v in params.items()}
    h = _f8(xp, h)
    t = xp.asarray(t).astype(numpy.int64)
    B = h.shape[0]
    ar = xp.arange(B)
    cut = [int(c) for c in cutoffs]
    bounds = cut + [int(num_classes)]
    short = cut[0]
    cluster = xp.searchsorted(xp.asarray(cut), t, side="right")   # 0 = head, i + 1 = tail i
    head_target = xp.where(cluster == 0, t, short + cluster - 1)
    grads = {k: xp.zeros_like(v) for k, v in P.items()}

    z = h @ P["head_W"].T
    if "head_b" in P:
        z += P["head_b"]
    lse = _lse_rows(xp, z)
    logp = z[ar, head_target] - lse
    G = xp.exp(z - lse[:, None])
    G[ar, head_target] -= 1.0
    G /= B
    grads["head_W"] = G.T @ h
    if "head_b" in P:
        grads["head_b"] = G.sum(axis=0)
    dh = G @ P["head_W"]
    for i in range(len(cut)):
        rows = xp.nonzero(cluster == i + 1)[0]
        if rows.size == 0:
            continue
        hr = h[rows]
        p = hr @ P[f"proj{i}_W"].T
        zt = p @ P[f"out{i}_W"].T
        if f"out{i}_b" in P:
            zt += P[f"out{i}_b"]
        tt = t[rows] - bounds[i]
        lt = _lse_rows(xp, zt)
        n = xp.arange(rows.size)
        logp[rows] += zt[n, tt] - lt
        Gt = xp.exp(zt - lt[:, None])
        Gt[n, tt] -= 1.0
        Gt /= B
        grads[f"out{i}_W"] = Gt.T @ p
        if f"out{i}_b" in P:
            grads[f"out{i}_b"] = Gt.sum(axis=0)
        dp = Gt @ P[f"out{i}_W"]
        grads[f"proj{i}_W"] = dp.T @ hr
        dh[rows] += dp @ P[f"proj{i}_W"]
    out = {"loss": float(-logp.mean()), "dh": dh}
    out.update({f"{k}_update": -lr * g for k, g in grads.items()})
    return out


# ---------------------------------------------------------------------------- dense outputs
def dense_output_sgd_step(xp, W, h, t, lr, loss, rows, eps=1e-3):
    """The naive dense output O = h W^T with loss "squared" (||o - y||^2, y one-hot) or
    "spherical" (-log(o_t^2 + eps) + log(q + D eps), q = ||o||^2), mean over B; one SGD step.
    -> {loss, dh, W_update (len(rows), d)}."""
    h = _f8(xp, h)
    t = xp.asarray(t).astype(numpy.int64)
    rows = numpy.asarray(rows, dtype=numpy.int64)
    B, D = h.shape[0], W.shape[0]
    ar = xp.arange(B)
    q, oc = xp.zeros(B), xp.zeros(B)
    for s, e in _blocks(D, B):
        O = h @ _f8(xp, W[s:e]).T
        q += (O * O).sum(axis=1)
        inside = (t >= s) & (t < e)
        oc += xp.where(inside, O[ar, xp.clip(t - s, 0, e - s - 1)], 0.0)
    if loss == "squared":
        per_row = q - 2.0 * oc + 1.0
        g_q, g_c = xp.ones(B), -2.0 * xp.ones(B)
    elif loss == "spherical":
        num, z = oc * oc + eps, q + D * eps
        per_row = -xp.log(num) + xp.log(z)
        g_q, g_c = 1.0 / z, -2.0 * oc / num
    else:
        raise ValueError(f"unknown loss {loss!r}")
    dh = xp.zeros_like(h)
    dW = xp.zeros((rows.size, h.shape[1]))
    for s, e in _blocks(D, B):
        Wc = _f8(xp, W[s:e])
        G = 2.0 * g_q[:, None] * (h @ Wc.T)           # dl/dO = 2 g_q O + g_c at the target
        inside = (t >= s) & (t < e)
        G[ar[inside], t[inside] - s] += g_c[inside]
        G /= B
        dh += G @ Wc
        pick = numpy.nonzero((rows >= s) & (rows < e))[0]
        if pick.size:
            dW[xp.asarray(pick)] = G[:, xp.asarray(rows[pick] - s)].T @ h
    return {"loss": float(per_row.mean()), "dh": dh, "W_update": -lr * dW}


# ---------------------------------------------------------------------------- FFI and linear
def sketch_vectors(B, O, I, seed=0):
    """Random +-1 vectors r (B,), s (O,), v (I,) for the sketches of the layer checks: y s (B,)
    and r^T dx (I,) involve every row and column of y and dx, and dW v (O,) every row of dW, at
    the cost of one pass; a wrong entry anywhere moves them (relative size about 1 / sqrt(n))."""
    rng = numpy.random.default_rng([seed, 12345])
    return tuple(rng.choice([-1.0, 1.0], size=n) for n in (B, O, I))


def ffi_step(w, idx, bias, x, dy, batch_rows, label_rows, sketch=None):
    """Fixed fan-in forward and backward on the host, on subsets: y and dx for `batch_rows`,
    dw for `label_rows` (all batch rows), dbias for every label, and with `sketch` = (r, s, v)
    the sketches y_sketch = y s and dx_sketch = r^T dx over the whole batch.
    w, idx (L, K); bias (L,) or None; x (B, I); dy (B, L)."""
    w = numpy.asarray(w, dtype=F8)
    idx = numpy.asarray(idx, dtype=numpy.int64)
    I = x.shape[1]

    def times_w(c_l):         # c (L,) -> c^T W (I,): W's entries scattered by their indices
        return numpy.bincount(idx.reshape(-1), weights=(c_l[:, None] * w).reshape(-1), minlength=I)

    bias64 = numpy.zeros(w.shape[0]) if bias is None else numpy.asarray(bias, F8)
    y, dx = [], []
    for b in batch_rows:
        y.append((numpy.asarray(x[b], dtype=F8)[idx] * w).sum(axis=1) + bias64)
        dx.append(times_w(numpy.asarray(dy[b], dtype=F8)))
    lr = numpy.asarray(label_rows, dtype=numpy.int64)
    xg = numpy.asarray(x, dtype=F8)[:, idx[lr]]                   # (B, n, K)
    dw = (numpy.asarray(dy[:, lr], dtype=F8)[:, :, None] * xg).sum(axis=0)
    out = {"y": numpy.array(y), "dx": numpy.array(dx), "dw": dw}
    if bias is not None:
        out["dbias"] = _column_sums(dy)
    if sketch is not None:
        r, s_, _ = sketch
        out["y_sketch"] = numpy.asarray(x, dtype=F8) @ times_w(s_) + bias64 @ s_
        out["dx_sketch"] = times_w(_left_product(r, dy))
    return out


def linear_step(W, b, x, dy, batch_rows, label_rows, mask=None, sketch=None):
    """y = x W^T + b, dW = dy~^T x, db = sum_b dy, dx = dy~ W on the host, on subsets (as
    ffi_step), with dy~ = dy * mask (meProp; mask None: dy itself); with `sketch` = (r, s, v)
    also y_sketch = y s, dx_sketch = r^T dx and dW_sketch = dW v. W (O, I), x (B, I), dy (B, O)."""
    dy64 = numpy.asarray(dy, dtype=F8)
    dyt = dy64 if mask is None else dy64 * mask
    br = numpy.asarray(batch_rows, dtype=numpy.int64)
    lr = numpy.asarray(label_rows, dtype=numpy.int64)
    x64, W64 = numpy.asarray(x, dtype=F8), numpy.asarray(W, dtype=F8)
    b64 = 0.0 if b is None else numpy.asarray(b, F8)
    out = {"y": x64[br] @ W64.T + b64, "dx": dyt[br] @ W64, "dW": dyt[:, lr].T @ x64}
    if b is not None:
        out["db"] = dy64.sum(axis=0)
    if sketch is not None:
        r, s_, v = sketch
        out["y_sketch"] = x64 @ (W64.T @ s_) + (b64 @ s_ if b is not None else 0.0)
        out["dx_sketch"] = (r @ dyt) @ W64
        out["dW_sketch"] = dyt.T @ (x64 @ v)
    return out


def _column_sums(a, block=4096):
    """sum over rows of a (B, n) host array in float64, a block of columns at a time."""
    return numpy.concatenate([numpy.asarray(a[:, s:s + block], dtype=F8).sum(axis=0)
                              for s in range(0, a.shape[1], block)])


def _left_product(r, a, block=4096):
    """r^T a for a (B, n) host array in float64, a block of columns at a time."""
    return numpy.concatenate([r @ numpy.asarray(a[:, s:s + block], dtype=F8)
                              for s in range(0, a.shape[1], block)])


def _top_rows(a, k):
    """0/1 mask of the k largest entries of each row of a (ties go to the lowest index)."""
    n = a.shape[1]
    thr = numpy.partition(a, n - k, axis=1)[:, n - k][:, None]
    mask = a > thr
    need = k - mask.sum(axis=1, keepdims=True)
    tie = a == thr
    mask |= tie & (numpy.cumsum(tie, axis=1) <= need)
    return mask.astype(F8)


def topk_mask(dy, k, mode):
    """meProp's 0/1 mask (B, O) of the top-k |dy| entries: per row ("per-example"), or the k
    columns with the largest sum_b |dy[b, j]| ("unified"); ties go to the lowest index.
    Also returns the scores the choice was made on ((B, O) or (O,))."""
    a = numpy.abs(numpy.asarray(dy, dtype=F8))
    if mode == "per-example":
        return _top_rows(a, k), a
    if mode == "unified":
        score = a.sum(axis=0)
        return numpy.broadcast_to(_top_rows(score[None, :], k), a.shape), score
    raise ValueError(f"topk_mask: mode must be per-example or unified, got {mode!r}")


def unified_gap(score, selected):
    """How far the columns `selected` are from the k best of `score`: max(0, best score left
    out - worst score taken) / max score; 0 for a true top-k (up to ties)."""
    score = numpy.asarray(score, dtype=F8)
    taken = numpy.zeros(score.size, dtype=bool)
    taken[numpy.asarray(selected, dtype=numpy.int64)] = True
    if taken.all() or not taken.any():
        return 0.0
    gap = float(score[~taken].max() - score[taken].min())
    return max(0.0, gap) / max(float(score.max()), 1e-300)
