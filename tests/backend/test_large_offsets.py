"""Element offsets beyond 2^31 in every kernel of rawkernels/ (GPU only; marked gpu and slow).

Each test allocates just past 2^31 elements of float32 (8.6 GB per array; at most ~45 GB at
once, sized for one 139 GiB H200; skipped with the reason when the device has less free) and
checks, on the host, the rows whose offsets lie beyond the boundary (and one before it) against
formulas computed here in float64:

    scatter_rows.cu    gather_rows, scatter_add_rows on a table (V, 64), V * 64 > 2^31
    adam.cu            adam_step over n > 2^31 elements; adam_step_rows on the table's last rows
    softmax_xent.cu    softmax_xent_fused on logits (B, C), B * C > 2^31; logsumexp_chunk_update
                       and softmax_xent_grad_chunk on a column slice (row stride C)
    topk_rows.cu       top-k of every row of those logits (signed, and meProp's magnitudes)
    factored_rows.cu   factored_gather_rows, factored_scatter_rows (atomic, sorted) on V (D, 64)
    ffi.cu             ffi_forward, ffi_backward (dw and atomic dx) with L * K > 2^31; the
                       cuSPARSE path over the same storage (int64 CSR indices); the deterministic
                       input gradient refuses L * K >= 2^31 with a clear error

Run alone: `python -m pytest -m gpu tests/backend/test_large_offsets.py` (tools/gpu_check.sh
runs it as its own stage). Shapes named as in cupy_backend.py: B rows, C columns, V table rows,
D features; FFI: L labels, K fan-in, I inputs.
"""
from __future__ import annotations

import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from devices import make_backend, to_host

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

BIG = 2 ** 31
GB = 1e9


@pytest.fixture
def gpu():
    be = make_backend("cupy")            # skips with the reason without a GPU
    yield be
    be.xp.get_default_memory_pool().free_all_blocks()


def need(be, n_bytes):
    """Skip unless the device can hold n_bytes more (CuPy's cached blocks count as free)."""
    pool = be.xp.get_default_memory_pool()
    pool.free_all_blocks()
    free = be.xp.cuda.runtime.memGetInfo()[0] + pool.free_bytes()
    if free < 1.1 * n_bytes:
        pytest.skip(f"needs {n_bytes / GB:.0f} GB of device memory, {free / GB:.0f} GB free")


def randn(be, shape, seed):
    """float32 N(0, 1) of `shape`, made on the device."""
    rs = be.xp.random.RandomState(seed)
    return rs.standard_normal(shape, dtype=numpy.float32)


def rows_of(a, rows):
    return {int(r): to_host(a[int(r)]).astype(numpy.float64) for r in rows}


# ------------------------------------------------------------------ scatter_rows.cu, adam.cu
def test_row_kernels_and_adam_beyond_2_31(gpu):
    xp, D = gpu.xp, 64
    V = BIG // D + 8                                  # V * D = 2^31 + 512
    need(gpu, 4 * V * D * 4)
    table = xp.zeros((V, D), dtype=numpy.float32)
    rng = numpy.random.default_rng(0)
    ids = numpy.array([0, V // 2, V - 3, V - 1, V - 1, V - 3, V - 1], dtype=numpy.int64)
    vals = rng.standard_normal((ids.size, D)).astype(numpy.float32)
    gpu.scatter_add_rows(table, gpu.asarray(ids), gpu.asarray(vals))
    want = {int(r): vals[ids == r].astype(numpy.float64).sum(axis=0) for r in numpy.unique(ids)}
    got = to_host(gpu.gather_rows(table, gpu.asarray(ids)))
    for n, r in enumerate(ids):
        assert_allclose(got[n], want[int(r)], rtol=1e-6, atol=1e-6, err_msg=f"row {r}")
    assert not to_host(table[V - 2]).any() and not to_host(table[V // 2 + 1]).any()
    # lazy Adam on unique rows at the end, then one dense step over all V * D elements
    m, v = xp.zeros_like(table), xp.zeros_like(table)
    uniq = numpy.unique(ids)
    g = rng.standard_normal((uniq.size, D)).astype(numpy.float32)
    before = rows_of(table, uniq)
    gpu.adam_step_rows(table, gpu.asarray(uniq), gpu.asarray(g), m, v, 1e-2, 0.9, 0.999, 1e-8, 1)
    after = rows_of(table, uniq)
    for n, r in enumerate(uniq):                     # first step: p - lr g / (|g| + eps)
        step = 1e-2 * g[n] / (numpy.abs(g[n].astype(numpy.float64)) + 1e-8)
        assert_allclose(after[int(r)], before[int(r)] - step, rtol=1e-5, atol=1e-7)
    m.fill(0)
    v.fill(0)
    grad = xp.zeros_like(table)
    tail = rng.standard_normal((2, D)).astype(numpy.float32)
    grad[V - 2:] = gpu.asarray(tail)
    before = rows_of(table, (V - 3, V - 2, V - 1))
    gpu.adam_step(table, grad, m, v, 1e-2, 0.9, 0.999, 1e-8, 1)
    after = rows_of(table, (V - 3, V - 2, V - 1))
    assert_array_equal(after[V - 3], before[V - 3])   # zero gradient, zero moments: unmoved
    for n, r in enumerate((V - 2, V - 1)):
        step = 1e-2 * tail[n] / (numpy.abs(tail[n].astype(numpy.float64)) + 1e-8)
        assert_allclose(after[r], before[r] - step, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ softmax_xent.cu, topk_rows.cu
def softmax_reference(row, t):
    m = row.max()
    e = numpy.exp(row - m)
    lse = m + numpy.log(e.sum())
    grad = e / e.sum()
    if t >= 0:
        grad[t] -= 1.0
        return lse - row[t], grad, lse
    return 0.0, numpy.zeros_like(row), lse


def test_softmax_and_topk_kernels_beyond_2_31(gpu):
    from engine.layers import meprop as mp
    xp = gpu.xp
    C = 40000
    B = BIG // C + 2                                  # B * C = 2^31 + 116,352
    need(gpu, 2 * B * C * 4)
    check = [0, 1, B // 2, B - 2, B - 1]              # row 1 is ignored (target -1)
    rng = numpy.random.default_rng(1)
    t_host = rng.integers(0, C, B)
    t_host[1] = -1
    targets = gpu.asarray(t_host)
    logits = randn(gpu, (B, C), 2)
    logits *= 4
    ref = rows_of(logits, check)
    # top-k, signed best first and meProp's |.| with ascending ids
    vals, ids = gpu.topk(logits, 5)
    sel = to_host(mp.topk_rows(gpu, logits, 64))
    vals, ids = to_host(vals), to_host(ids)
    for r in check:
        row32 = ref[r].astype(numpy.float32)
        want = numpy.argsort(-row32, kind="stable")[:5]
        assert_array_equal(ids[r], want, err_msg=f"topk row {r}")
        assert_array_equal(vals[r], row32[want])
        assert_array_equal(sel[r], numpy.sort(numpy.argsort(-numpy.abs(row32), kind="stable")[:64]))
    del vals, ids, sel
    # fused loss and gradient, in place over the whole (B, C)
    loss = to_host(gpu.softmax_xent_fused(logits, targets, 1.0))
    for r in check:
        lw, gw, _ = softmax_reference(ref[r], int(t_host[r]))
        assert abs(loss[r] - lw) <= 1e-4 * max(1.0, abs(lw)), (r, loss[r], lw)
        assert_allclose(to_host(logits[r]), gw, rtol=1e-4, atol=1e-6, err_msg=f"grad row {r}")
    # the chunk kernels on the right half: a (B, C - c0) slice with row stride C
    logits[...] = randn(gpu, (B, C), 3)
    c0 = C // 2
    ref = rows_of(logits, check)
    chunk = logits[:, c0:]
    local = numpy.where(t_host >= 0, c0 + t_host % (C - c0), -1)
    tl = gpu.asarray(local)
    run_max = xp.full((B,), -numpy.inf, dtype=numpy.float32)
    run_sum = xp.zeros((B,), dtype=numpy.float32)
    target_logit = xp.zeros((B,), dtype=numpy.float32)
    gpu.logsumexp_chunk_update(chunk, c0, tl, run_max, run_sum, target_logit)
    lse = run_max + xp.log(run_sum)
    lse_h, tgt_h = to_host(lse), to_host(target_logit)
    for r in check:
        _, _, lw = softmax_reference(ref[r][c0:], -1)
        assert abs(lse_h[r] - lw) <= 1e-5 * max(1.0, abs(lw)), (r, lse_h[r], lw)
        if local[r] >= 0:
            assert tgt_h[r] == numpy.float32(ref[r][local[r]])
    for r in check:                     # the logits are scratch to logsumexp_chunk_update
        logits[r] = gpu.asarray(ref[r].astype(numpy.float32))
    gpu.softmax_xent_grad_chunk(chunk, c0, tl, lse, 1.0)
    for r in check:
        got = to_host(logits[r]).astype(numpy.float64)
        assert_array_equal(got[:c0], ref[r][:c0], err_msg=f"row {r}: left columns touched")
        want = numpy.exp(ref[r][c0:] - float(lse_h[r]))
        if local[r] >= 0:
            want[local[r] - c0] -= 1.0
        else:
            want[:] = 0.0
        assert_allclose(got[c0:], want, rtol=1e-4, atol=1e-6, err_msg=f"chunk grad row {r}")


# ------------------------------------------------------------------ factored_rows.cu
@pytest.mark.parametrize("deterministic", [False, True])
def test_factored_rows_beyond_2_31(gpu, deterministic):
    xp, d = gpu.xp, 64
    Dn = BIG // d + 8
    need(gpu, Dn * d * 4)
    Vt = randn(gpu, (Dn, d), 4)
    rng = numpy.random.default_rng(5)
    ids = numpy.array([Dn - 1, 3, Dn - 2, Dn - 1, Dn // 2, Dn - 1], dtype=numpy.int64)  # B=3, K=2
    valid = numpy.array([True, True, True, False, True, True])
    before = rows_of(Vt, ids)
    got = to_host(gpu.factored_gather_rows(Vt, gpu.asarray(ids), gpu.asarray(valid)))
    for n, r in enumerate(ids):
        assert_array_equal(got[n], before[int(r)] if valid[n] else numpy.zeros(d))
    coef = (rng.standard_normal(ids.size) * valid).astype(numpy.float32)
    hrows = rng.standard_normal((3, d)).astype(numpy.float32)
    gpu.factored_scatter_rows(Vt, gpu.asarray(ids), gpu.asarray(coef), gpu.asarray(hrows), 2,
                              deterministic)
    after = rows_of(Vt, ids)
    for r in numpy.unique(ids):
        add = sum(coef[n] * hrows[n // 2].astype(numpy.float64) for n in range(ids.size)
                  if ids[n] == r)
        assert_allclose(after[int(r)], before[int(r)] + add, rtol=1e-5, atol=1e-5,
                        err_msg=f"row {r}")


# ------------------------------------------------------------------ ffi.cu, cuSPARSE int64
def ffi_case(gpu):
    """idx (L, K) int32 sorted rows: idx[l, k] = 2 k + l % 2 (I = 64); w (L, K) random; x and
    dy (B = 3); dy zero except at a few labels, the last ones among them."""
    xp = gpu.xp
    K, I, B = 32, 64, 3
    L = BIG // K + 8                                  # L * K = 2^31 + 256
    idx = (xp.arange(K, dtype=xp.int32) * 2)[None, :] + (xp.arange(L, dtype=xp.int32) % 2)[:, None]
    idx = xp.ascontiguousarray(idx)
    w = randn(gpu, (L, K), 6)
    rng = numpy.random.default_rng(7)
    x = rng.standard_normal((B, I)).astype(numpy.float32)
    labels = numpy.array([0, L // 2, L - 3, L - 2, L - 1])
    dy_cols = rng.standard_normal((B, labels.size)).astype(numpy.float32)
    dy = xp.zeros((B, L), dtype=numpy.float32)
    dy[:, gpu.asarray(labels)] = gpu.asarray(dy_cols)
    bias = xp.zeros((L,), dtype=numpy.float32)
    return idx, w, bias, x, dy, dy_cols, labels, I


def ffi_expected(w_rows, x, dy_cols, labels, I):
    """y at `labels`, dw at `labels`, dx (from those labels only: dy is zero elsewhere)."""
    K = w_rows[int(labels[0])].size
    y, dw, dx = {}, {}, numpy.zeros_like(x, dtype=numpy.float64)
    for j, l in enumerate(labels):
        cols = 2 * numpy.arange(K) + int(l) % 2
        wl = w_rows[int(l)]
        y[int(l)] = x[:, cols].astype(numpy.float64) @ wl
        dw[int(l)] = dy_cols[:, j].astype(numpy.float64) @ x[:, cols]
        dx[:, cols] += dy_cols[:, j, None].astype(numpy.float64) * wl[None, :]
    return y, dw, dx


@pytest.mark.parametrize("method", ["kernel", "cusparse"])
def test_ffi_beyond_2_31(gpu, method):
    L_K_bytes = (BIG + 256) * 4
    need(gpu, L_K_bytes * (6 if method == "cusparse" else 3))
    idx, w, bias, x, dy, dy_cols, labels, I = ffi_case(gpu)
    index = gpu.ffi_index(idx, I, rows_sorted=True)
    xt = gpu.asarray(numpy.ascontiguousarray(x.T))
    y_want, dw_want, dx_want = ffi_expected(rows_of(w, labels), x, dy_cols, labels, I)
    y = gpu.ffi_forward(xt, index, w, bias, method)
    for l in labels:
        assert_allclose(to_host(y[:, int(l)]), y_want[int(l)], rtol=1e-5, atol=1e-5,
                        err_msg=f"{method} y[:, {l}]")
    del y
    if method == "cusparse":
        view = index.cache["csr"][3]
        assert view.indices.dtype == numpy.int64 and view.nnz == idx.size
    dw, dx = gpu.ffi_backward(dy, xt, index, w, method, skip_zero=True)
    for l in labels:
        assert_allclose(to_host(dw[int(l)]), dw_want[int(l)], rtol=1e-5, atol=1e-5,
                        err_msg=f"{method} dw[{l}]")
    assert not to_host(dw[1]).any() and not to_host(dw[-4]).any()       # zero dy columns
    assert_allclose(to_host(dx), dx_want, rtol=1e-4, atol=1e-5, err_msg=f"{method} dx")
    if method == "kernel":
        del dw, dx
        with pytest.raises(ValueError, match=r"L \* K < 2\^31"):
            gpu.ffi_backward(dy, xt, index, w, method, deterministic=True)
