"""The CuPy backend's launchers, run on the CPU against emulated kernels and cuSPARSE.

What this checks: the Python side of every GPU path -- argument order, transposes and layouts
handed to cuSPARSE (b F-contiguous, op(B) = transpose for a C-contiguous operand, no copy of the
weight), caching of the FFI CSR view, the top-k best-first order, the conversions of ids -- by
running CupyBackend's methods with `xp = numpy`, each kernel replaced by a NumPy emulation of
what its .cu file computes (written from the .cu sources, argument for argument), and
`cupyx.scipy.sparse` / `cupyx.cusparse` replaced by SciPy with cuSPARSE's layout rules (spmm
refuses a b that is not F-contiguous and a matrix not flagged canonical). The results are
compared with the NumPy backend. What it cannot check: the CUDA code itself (the GPU tests and
the NVRTC compile test do).
"""
from __future__ import annotations

import sys
import types

import numpy
import pytest
import scipy.sparse
from numpy.testing import assert_allclose, assert_array_equal

from engine.backend import Backend, kernels
from engine.backend.cupy_backend import CupyBackend

# ------------------------------------------------------------------ kernel emulations


def _gather_rows(out, table, ids, N, D, V):
    safe = numpy.where(ids < 0, ids + V, ids)
    ok = (safe >= 0) & (safe < V)
    out[...] = numpy.where(ok[:, None], table[numpy.where(ok, safe, 0)], numpy.nan)


def _scatter_add_rows(out, ids, rows, N, D, V):
    ok = (ids >= 0) & (ids < V)
    numpy.add.at(out.reshape(V, -1), ids[ok], rows.reshape(N, -1)[ok])


def _softmax_xent_fused(loss, logits, targets, scale, B, C, ld):
    loss[...] = Backend().softmax_xent_fused(logits, targets, scale)


def _logsumexp_chunk_update(run_max, run_sum, tl, logits, targets, col_offset, B, C, ld):
    Backend().logsumexp_chunk_update(logits.copy(), int(col_offset), targets, run_max, run_sum, tl)


def _softmax_xent_grad_chunk(logits, lse, targets, scale, col_offset, B, C, ld):
    Backend().softmax_xent_grad_chunk(logits, int(col_offset), targets, lse, scale)


def _adam(param, m, v, grad, b1, omb1, b2, omb2, lr_c1, c2, eps, decay):
    m *= b1
    m += omb1 * grad
    v *= b2
    v += omb2 * (grad * grad)
    param *= decay
    param -= lr_c1 * m / (numpy.sqrt(v / c2) + eps)


def _adam_step(param, m, v, grad, *scalars_and_n):
    _adam(param, m, v, grad, *scalars_and_n[:8])


def _adam_step_rows(param, m, v, rows, grad, *rest):
    scalars = rest[:8]                                      # then N, D, V
    p, mm, vv = param[rows], m[rows], v[rows]
    _adam(p, mm, vv, grad.reshape(p.shape), *scalars)
    param[rows], m[rows], v[rows] = p, mm, vv


def _factored_gather_rows(out, V, ids, N, d, Dv):
    ok = (ids >= 0) & (ids < Dv)
    out[...] = numpy.where(ok[:, None], V[numpy.where(ok, ids, 0)], 0)


def _factored_scatter(V, ids, coef, rows, N, K, d, Dv):
    ok = (ids >= 0) & (ids < Dv) & (coef != 0)
    numpy.add.at(V, ids[ok], (coef[:, None] * rows[numpy.arange(N) // K])[ok])


def _factored_scatter_sorted(V, ids, order, coef, rows, N, K, d, Dv):
    assert_array_equal(numpy.sort(order), numpy.arange(N))      # a permutation sorted by id
    assert numpy.all(numpy.diff(ids[order]) >= 0)
    _factored_scatter(V, ids, coef, rows, N, K, d, Dv)


def _ffi_forward(y, xt, idx, w, bias, B, L, K, I, has_bias):
    y[...] = numpy.einsum("lk,lkb->bl", w, xt[idx]) + (bias if has_bias else 0)


def _ffi_backward(dw, dxt, dy, xt, idx, w, B, L, K, I, skip_zero, atomic_dx):
    dw[...] = numpy.einsum("bl,lkb->lk", dy, xt[idx])
    if atomic_dx:
        numpy.add.at(dxt, idx.reshape(-1), (w[:, :, None] * dy.T[:, None, :]).reshape(L * K, B))


def _ffi_grad_input_csc(dxt, colptr, slots, w, dyt, B, I, K):
    for i in range(I):
        s = slots[colptr[i]:colptr[i + 1]].astype(numpy.int64)
        dxt[i] = (w.reshape(-1)[s][:, None] * dyt[s // K]).sum(axis=0)


def _topk_rows(idx, a, B, O, K, magnitude):
    key = numpy.abs(a) if magnitude else a + 0.0             # -0.0 + 0.0 == +0.0
    for b in range(B):
        order = sorted(range(O), key=lambda j: (not numpy.isnan(key[b, j]),
                                                -numpy.nan_to_num(key[b, j], nan=0.0), j))
        idx[b] = numpy.sort(order[:K])


EMULATED = {"gather_rows": _gather_rows, "scatter_add_rows": _scatter_add_rows,
            "softmax_xent_fused": _softmax_xent_fused,
            "logsumexp_chunk_update": _logsumexp_chunk_update,
            "softmax_xent_grad_chunk": _softmax_xent_grad_chunk, "adam_step": _adam_step,
            "adam_step_rows": _adam_step_rows, "factored_gather_rows": _factored_gather_rows,
            "factored_scatter_atomic": _factored_scatter,
            "factored_scatter_sorted": _factored_scatter_sorted, "ffi_forward": _ffi_forward,
            "ffi_backward": _ffi_backward, "ffi_grad_input_csc": _ffi_grad_input_csc,
            "topk_rows": _topk_rows}


# ------------------------------------------------------------------ cupyx emulation


class _CSR(scipy.sparse.csr_matrix):
    @classmethod
    def _from_parts(cls, data, indices, indptr, shape, has_canonical_format=None,
                    has_sorted_indices=None):
        assert indices.dtype == indptr.dtype and data.size == indices.size
        m = cls((data, indices, indptr), shape=shape, copy=False)
        assert m.data is data or numpy.shares_memory(m.data, data)   # a view, no copy
        m.flagged = bool(has_canonical_format)
        return m


def _spmm(a, b, c=None, alpha=1, beta=0, transa=False, transb=False):
    if not b.flags.f_contiguous:
        raise ValueError("expected F-contiguous array for b")
    if not getattr(a, "flagged", False):
        raise AssertionError("spmm on a CSR not flagged canonical (cupyx would check it on the "
                             "device: a host read)")
    assert a.has_canonical_format, "flagged canonical but it is not"
    assert a.dtype == b.dtype, "cupyx would cast (copy) one side"
    op_a = a.T if transa else a
    op_b = b.T if transb else b
    return numpy.asfortranarray(op_a @ op_b)


@pytest.fixture
def emulated_gpu(monkeypatch):
    sparse = types.ModuleType("cupyx.scipy.sparse")
    sparse.csr_matrix = _CSR
    sparse.issparse = lambda m: isinstance(m, _CSR)           # "device" matrices only
    cusparse = types.ModuleType("cupyx.cusparse")
    cusparse.spmm = _spmm
    cupyx = types.ModuleType("cupyx")
    cupyx_scipy = types.ModuleType("cupyx.scipy")
    cupyx_scipy.sparse = sparse
    cupyx.scipy, cupyx.cusparse = cupyx_scipy, cusparse
    for name, module in (("cupyx", cupyx), ("cupyx.scipy", cupyx_scipy),
                         ("cupyx.scipy.sparse", sparse), ("cupyx.cusparse", cusparse)):
        monkeypatch.setitem(sys.modules, name, module)
    launched = []

    def get_kernel(file, name, dtype):
        assert name in kernels.KERNELS[file]

        def launch(grid, block, args):
            launched.append(name)
            EMULATED[name](*args)
        return launch
    monkeypatch.setattr(kernels, "get_kernel", get_kernel)
    be = CupyBackend.__new__(CupyBackend)
    be.xp = numpy
    be.device_id = 0
    be.launched = launched
    be.asarray = lambda x, dtype=None: numpy.asarray(x, dtype=dtype)   # (no cupy.cuda here)

    def to_host(x):
        be.host_reads += 1
        return numpy.asarray(x)
    be.to_host = to_host
    return be


# ------------------------------------------------------------------ the comparisons


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_ffi_paths(emulated_gpu, dtype):
    gpu, cpu = emulated_gpu, Backend()
    rng = numpy.random.default_rng(0)
    L, I, K, B = 57, 23, 5, 9
    idx = numpy.stack([rng.choice(I, K, replace=False) for _ in range(L)]).astype(numpy.int32)
    w = rng.standard_normal((L, K)).astype(dtype)
    bias = rng.standard_normal(L).astype(dtype)
    xt = numpy.ascontiguousarray(rng.standard_normal((B, I)).astype(dtype).T)      # (I, B)
    dy = rng.standard_normal((B, L)).astype(dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == numpy.float32 else dict(rtol=1e-11, atol=1e-11)
    for sorted_rows in (True, False):
        ix = numpy.sort(idx, axis=1) if sorted_rows else idx
        ci, gi = cpu.ffi_index(ix, I, sorted_rows), gpu.ffi_index(ix, I, sorted_rows)
        want_y = cpu.ffi_forward(xt, ci, w, bias)
        want_dw, want_dx = cpu.ffi_backward(dy, xt, ci, w)
        for method in gpu.ffi_methods:
            assert_allclose(gpu.ffi_forward(xt, gi, w, bias, method), want_y, **tol)
            assert_allclose(gpu.ffi_forward(xt, gi, w, None, method), want_y - bias, **tol)
            for det in (False, True):
                dw, dx = gpu.ffi_backward(dy, xt, gi, w, method, deterministic=det)
                assert_allclose(dw, want_dw, **tol)
                assert_allclose(dx, want_dx, **tol)
                assert dx.shape == (B, I) and dw.shape == (L, K)
            assert gpu.ffi_backward(dy, xt, gi, w, method, need_input_grad=False)[1] is None
        view = gi.cache["csr"][3]                    # the CSR view is cached per index
        assert gpu.ffi_forward(xt, gi, w, None, "cusparse") is not None
        assert gi.cache["csr"][3] is view            # same weights: reused
        w2 = w * 2
        gpu.ffi_forward(xt, gi, w2, None, "cusparse")
        assert gi.cache["csr"][3] is not view        # other weights: rebuilt
        w2 *= 2                                      # in place: the cached view follows
        assert_allclose(gpu.ffi_forward(xt, gi, w2, None, "cusparse"), 4 * (want_y - bias), **tol)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_sparse_products(emulated_gpu, dtype):
    gpu, cpu = emulated_gpu, Backend()
    rng = numpy.random.default_rng(1)
    x = scipy.sparse.random(11, 30, density=0.2, format="csr", random_state=rng, dtype=dtype)
    W = rng.standard_normal((30, 6)).astype(dtype)
    dev = gpu.to_device_csr(x)
    assert gpu.is_csr(dev) and dev.indices.dtype == numpy.int32
    assert_allclose(gpu.csr_matmul(dev, W), x @ W, rtol=1e-5)
    assert_allclose(gpu.csr_matmul(dev, numpy.asfortranarray(W)), x @ W, rtol=1e-5)
    dy = rng.standard_normal((11, 6)).astype(dtype)
    assert_allclose(gpu.csr_matmul(dev, dy, transpose_a=True), x.T @ dy, rtol=1e-5)
    # SparseLinear end to end
    from engine.layers.sparse_linear import SparseLinear
    ref = SparseLinear(30, 6).bind(cpu, numpy.random.default_rng(0), dtype)
    lay = SparseLinear(30, 6).bind(gpu, numpy.random.default_rng(0), dtype)
    assert_allclose(lay.forward(dev), ref.forward(x), rtol=1e-5)
    lay.backward(dy)
    ref.backward(dy)
    assert_array_equal(lay.grads["W"].rows, ref.grads["W"].rows)
    assert_allclose(lay.grads["W"].values, ref.grads["W"].values, rtol=1e-5, atol=1e-6)
    # meProp per-example products
    idx = numpy.sort(numpy.stack([rng.choice(30, 4, replace=False) for _ in range(11)]), axis=1)
    vals = rng.standard_normal((11, 4)).astype(dtype)
    xin = rng.standard_normal((11, 8)).astype(dtype)
    Wm = rng.standard_normal((30, 8)).astype(dtype)
    got, want = gpu.meprop_products(idx, vals, xin, Wm), cpu.meprop_products(idx, vals, xin, Wm)
    assert_array_equal(got[0], want[0])
    assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-6)
    assert got[1].flags.c_contiguous and got[2].flags.c_contiguous


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_rows_softmax_adam_topk_factored(emulated_gpu, dtype):
    gpu, cpu = emulated_gpu, Backend()
    rng = numpy.random.default_rng(2)
    table = rng.standard_normal((20, 3)).astype(dtype)
    ids = rng.integers(0, 20, 15).astype(numpy.int32)
    assert_array_equal(gpu.gather_rows(table, ids), cpu.gather_rows(table, ids))
    a, b = table.copy(), table.copy()
    rows = rng.standard_normal((15, 3)).astype(dtype)
    assert_allclose(gpu.scatter_add_rows(a, ids, rows), cpu.scatter_add_rows(b, ids, rows), rtol=1e-6)
    u1, s1 = gpu.coalesce_rows(ids, rows)
    u2, s2 = cpu.coalesce_rows(ids, rows)
    assert_array_equal(u1, u2)
    assert_allclose(s1, s2, rtol=1e-6)
    logits = rng.standard_normal((6, 40)).astype(dtype)
    t = numpy.array([0, 26, -1, 5, 20, 1])
    la, lb = logits.copy(), logits.copy()
    assert_allclose(gpu.softmax_xent_fused(la[:, 3:30], t, 1.0),
                    cpu.softmax_xent_fused(lb[:, 3:30], t, 1.0), rtol=1e-5)
    assert_allclose(la, lb, rtol=1e-5, atol=1e-7)
    for magnitude in (False, True):
        for order in ("score", "index"):
            s = (rng.integers(-3, 4, (7, 50)) * 0.5).astype(dtype)
            s[2, 4] = numpy.nan
            got, want = gpu.topk(s, 6, magnitude, order), cpu.topk(s, 6, magnitude, order)
            assert_array_equal(got[1], want[1])
            assert_array_equal(got[0], want[0])
    V1 = rng.standard_normal((12, 4)).astype(dtype)
    V2 = V1.copy()
    fid = rng.integers(0, 12, 10).astype(numpy.int32)
    valid = rng.random(10) < 0.8
    assert_allclose(gpu.factored_gather_rows(V1, fid, valid), cpu.factored_gather_rows(V1, fid, valid))
    coef = (rng.standard_normal(10) * valid).astype(dtype)
    hrows = rng.standard_normal((5, 4)).astype(dtype)
    for det in (False, True):
        gpu.factored_scatter_rows(V1, fid, coef, hrows, 2, det)
        cpu.factored_scatter_rows(V2, fid, coef, hrows, 2, det)
        assert_allclose(V1, V2, rtol=1e-5, atol=1e-6)
    p1, m1, v1 = (rng.standard_normal((6, 4)).astype(dtype) for _ in range(3))
    v1 = numpy.abs(v1)
    p2, m2, v2 = p1.copy(), m1.copy(), v1.copy()
    g = rng.standard_normal((2, 4)).astype(dtype)
    r = numpy.array([1, 4])
    gpu.adam_step_rows(p1, r, g, m1, v1, 1e-2, 0.9, 0.999, 1e-8, 2, 0.01)
    cpu.adam_step_rows(p2, r, g, m2, v2, 1e-2, 0.9, 0.999, 1e-8, 2, 0.01)
    assert_allclose(p1, p2, rtol=1e-5)
    assert {"topk_rows", "factored_scatter_sorted", "gather_rows"} <= set(gpu.launched)
