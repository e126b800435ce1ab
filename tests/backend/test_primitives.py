"""Every shared backend primitive against a plain float64 NumPy reference written here.

Each test body runs on each backend (`backend` fixture: numpy always, cupy on a GPU), in
float32 and float64, so the NumPy backend (the specification) is checked as well as the CUDA
kernels. Shapes include odd sizes (B = 1, C = 1, D = 3), rows beyond one grid (B > 65535),
launches forced to stride over the grid (`small_grid`), duplicate ids, ignored targets and
targets inside and outside a vocabulary chunk.
"""
from __future__ import annotations

import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from engine.backend import Backend

# ------------------------------------------------------------------ references (float64)


def ref_softmax_xent(logits, targets, scale):
    x = numpy.asarray(logits, dtype=numpy.float64)
    t = numpy.asarray(targets)
    m = x.max(axis=1, keepdims=True)
    e = numpy.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    lse = (m + numpy.log(s))[:, 0]
    loss = numpy.zeros(x.shape[0])
    grad = e / s
    for b in range(x.shape[0]):
        if t[b] >= 0:
            loss[b] = lse[b] - x[b, t[b]]
            grad[b, t[b]] -= 1.0
            grad[b] *= scale
        else:
            grad[b] = 0.0
    return loss, grad, lse


def ref_adam(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay):
    p, g = param.astype(numpy.float64), grad.astype(numpy.float64)
    m = beta1 * m.astype(numpy.float64) + (1 - beta1) * g
    v = beta2 * v.astype(numpy.float64) + (1 - beta2) * g * g
    m_hat = m / (1 - beta1 ** step)
    v_hat = v / (1 - beta2 ** step)
    p = p * (1 - lr * weight_decay) - lr * m_hat / (numpy.sqrt(v_hat) + eps)
    return p, m, v


def _targets(rng, n_rows, n_cols, ignore_every=3):
    t = rng.integers(0, n_cols, size=n_rows).astype(numpy.int64)
    t[::ignore_every] = -1
    return t


# ------------------------------------------------------------------------ rows of a table


@pytest.mark.parametrize("n_rows,width,ids_shape", [(50, 3, (4, 5)), (7, 1, (1,)),
                                                    (1000, 70, (3000,))])
def test_gather_rows(backend, float_dtype, to_host, n_rows, width, ids_shape):
    rng = numpy.random.default_rng(0)
    table = rng.standard_normal((n_rows, width)).astype(float_dtype)
    ids = rng.integers(0, n_rows, size=ids_shape)
    ids.reshape(-1)[:2] = ids.reshape(-1)[-1]  # duplicates
    out = to_host(backend.gather_rows(backend.asarray(table), backend.asarray(ids)))
    assert out.shape == ids_shape + (width,)
    assert out.dtype == float_dtype
    assert_array_equal(out, table.astype(numpy.float64)[ids].astype(float_dtype))


def test_gather_rows_small_grid(backend, float_dtype, to_host, small_grid):
    rng = numpy.random.default_rng(1)
    table = rng.standard_normal((300, 37)).astype(float_dtype)
    ids = rng.integers(0, 300, size=2001).astype(numpy.int32)
    out = to_host(backend.gather_rows(backend.asarray(table), backend.asarray(ids)))
    assert_array_equal(out, table[ids])


def _ref_scatter(out, ids, rows):
    ref = out.astype(numpy.float64).copy()
    rows64 = rows.astype(numpy.float64).reshape(len(ids), -1)
    for n, i in enumerate(ids):
        ref[i] += rows64[n].reshape(ref.shape[1:])
    return ref


@pytest.mark.parametrize("n_rows,width,n", [(10, 3, 40), (1, 1, 5), (500, 64, 3000),
                                            (20, 1, 1)])
def test_scatter_add_rows_duplicates_accumulate(backend, float_dtype, to_host, tol,
                                                 n_rows, width, n):
    rng = numpy.random.default_rng(2)
    out = rng.standard_normal((n_rows, width)).astype(float_dtype)
    ids = rng.integers(0, n_rows, size=n)
    if n > 2:
        ids[: n // 2] = ids[0]  # many duplicates of one id
    rows = rng.standard_normal((n, width)).astype(float_dtype)
    expected = _ref_scatter(out, ids, rows)
    dev_out = backend.asarray(out.copy())  # the NumPy backend's asarray does not copy
    ret = backend.scatter_add_rows(dev_out, backend.asarray(ids), backend.asarray(rows))
    assert ret is dev_out
    # float sums of many duplicates: the order of the additions is free (atomics), so the
    # rounding error grows with the number of contributions to one row
    tolerances = tol(float_dtype)
    tolerances["atol"] *= max(1, int(numpy.bincount(ids).max()))
    assert_allclose(to_host(dev_out), expected, **tolerances)


def test_scatter_add_rows_small_grid(backend, float_dtype, to_host, tol, small_grid):
    rng = numpy.random.default_rng(3)
    out = numpy.zeros((33, 129), dtype=float_dtype)
    ids = rng.integers(0, 33, size=517).astype(numpy.int32)
    rows = rng.standard_normal((517, 129)).astype(float_dtype)
    dev_out = backend.asarray(out.copy())
    backend.scatter_add_rows(dev_out, backend.asarray(ids), backend.asarray(rows))
    assert_allclose(to_host(dev_out), _ref_scatter(out, ids, rows), **tol(float_dtype))


def test_coalesce_rows(backend, float_dtype, to_host, tol):
    rng = numpy.random.default_rng(4)
    ids = numpy.array([7, 3, 7, 0, 3, 7, 12, 0, 5])
    rows = rng.standard_normal((ids.size, 3)).astype(float_dtype)
    uniq, summed = backend.coalesce_rows(backend.asarray(ids), backend.asarray(rows))
    uniq, summed = to_host(uniq), to_host(summed)
    assert_array_equal(uniq, [0, 3, 5, 7, 12])
    expected = numpy.stack([rows[ids == u].astype(numpy.float64).sum(axis=0) for u in uniq])
    assert summed.dtype == float_dtype
    assert_allclose(summed, expected, **tol(float_dtype))


# ------------------------------------------------------------------ softmax cross-entropy


@pytest.mark.parametrize("n_rows,n_cols", [(1, 1), (1, 7), (5, 3), (33, 1000), (3, 5000),
                                           (4, 1)])
def test_softmax_xent_fused(backend, float_dtype, to_host, tol, n_rows, n_cols):
    rng = numpy.random.default_rng(5)
    logits = (3 * rng.standard_normal((n_rows, n_cols))).astype(float_dtype)
    targets = _targets(rng, n_rows, n_cols)
    if n_rows > 1:
        targets[1] = n_cols - 1  # last column
    scale = 1.0 / n_rows
    loss_ref, grad_ref, _ = ref_softmax_xent(logits, targets, scale)
    dev = backend.asarray(logits.copy())
    loss = to_host(backend.softmax_xent_fused(dev, backend.asarray(targets), scale))
    assert loss.shape == (n_rows,) and loss.dtype == float_dtype
    assert_allclose(loss, loss_ref, **tol(float_dtype))
    assert_allclose(to_host(dev) / scale, grad_ref / scale, **tol(float_dtype))
    assert numpy.all(to_host(dev)[targets < 0] == 0)
    assert numpy.all(loss[targets < 0] == 0)


def test_softmax_xent_fused_beyond_one_grid(backend, to_host, tol):
    """More rows than a grid of 65535 blocks (row kernels stride over rows)."""
    rng = numpy.random.default_rng(6)
    n_rows, n_cols = 65536 + 1000, 3
    logits = rng.standard_normal((n_rows, n_cols))
    targets = _targets(rng, n_rows, n_cols, ignore_every=7)
    loss_ref, grad_ref, _ = ref_softmax_xent(logits, targets, 0.5)
    dev = backend.asarray(logits.copy())
    loss = to_host(backend.softmax_xent_fused(dev, backend.asarray(targets), 0.5))
    assert_allclose(loss, loss_ref, **tol(numpy.float64))
    assert_allclose(to_host(dev), grad_ref, **tol(numpy.float64))


def test_softmax_xent_fused_small_grid_large_values(backend, float_dtype, to_host, tol,
                                                    small_grid):
    rng = numpy.random.default_rng(7)
    n_rows, n_cols = 9, 777
    shift = 120.0 if float_dtype == numpy.float32 else 1000.0   # exp overflows in this dtype
    logits = (rng.standard_normal((n_rows, n_cols)) + shift).astype(float_dtype)
    targets = _targets(rng, n_rows, n_cols, ignore_every=4)
    loss_ref, grad_ref, _ = ref_softmax_xent(logits, targets, 1.0)
    dev = backend.asarray(logits.copy())
    loss = to_host(backend.softmax_xent_fused(dev, backend.asarray(targets), 1.0))
    assert_allclose(loss, loss_ref, **tol(float_dtype))
    assert_allclose(to_host(dev), grad_ref, **tol(float_dtype))


def _chunk_bounds(n_cols, sizes):
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, min(n_cols, start + size)))
        start += size
    if start < n_cols:
        bounds.append((start, n_cols))
    return [(a, b) for a, b in bounds if b > a]


@pytest.mark.parametrize("as_views", [True, False])
@pytest.mark.parametrize("n_rows,n_cols,sizes", [(6, 1000, (1, 256, 300)), (1, 5, (2, 2)),
                                                 (40, 3001, (1024, 1024))])
def test_chunked_logsumexp_and_grad_equal_full(backend, float_dtype, to_host, tol, as_views,
                                               n_rows, n_cols, sizes):
    """Online log-sum-exp over chunks = full log-sum-exp; chunked grads = the full gradient."""
    rng = numpy.random.default_rng(8)
    logits = (4 * rng.standard_normal((n_rows, n_cols))).astype(float_dtype)
    targets = _targets(rng, n_rows, n_cols)
    targets[-1] = 0
    scale = 1.0 / n_rows
    loss_ref, grad_ref, lse_ref = ref_softmax_xent(logits, targets, scale)
    bounds = _chunk_bounds(n_cols, sizes)
    assert len(bounds) >= 2 or n_cols <= sizes[0]

    full = backend.asarray(logits.copy())
    scratch = backend.asarray(logits.copy())   # logsumexp_chunk_update may overwrite its chunk
    dev_t = backend.asarray(targets)
    run_max = backend.asarray(numpy.full(n_rows, -numpy.inf, dtype=float_dtype))
    run_sum = backend.zeros((n_rows,), float_dtype)
    target_logit = backend.zeros((n_rows,), float_dtype)
    chunks = []
    for a, b in bounds:
        chunk = full[:, a:b] if as_views else backend.asarray(logits[:, a:b].copy())
        chunks.append(chunk)
        lse_chunk = scratch[:, a:b] if as_views else backend.asarray(logits[:, a:b].copy())
        backend.logsumexp_chunk_update(lse_chunk, a, dev_t, run_max, run_sum, target_logit)
    lse = to_host(run_max) + numpy.log(to_host(run_sum).astype(numpy.float64))
    assert_allclose(lse, lse_ref, **tol(float_dtype))
    valid = targets >= 0
    assert_allclose(to_host(target_logit)[valid], logits[valid, targets[valid]])

    lse_dev = backend.asarray(lse.astype(float_dtype))
    for (a, b), chunk in zip(bounds, chunks):
        backend.softmax_xent_grad_chunk(chunk, a, dev_t, lse_dev, scale)
    grad = to_host(full) if as_views else numpy.concatenate([to_host(c) for c in chunks], 1)
    assert_allclose(grad / scale, grad_ref / scale, **tol(float_dtype))


def test_logsumexp_chunk_update_targets_in_and_out(backend, float_dtype, to_host):
    logits = numpy.arange(12, dtype=float_dtype).reshape(3, 4)
    targets = numpy.array([9, 10, -1])  # inside columns [8, 12): 9, 10; ignored row
    run_max = backend.asarray(numpy.full(3, -numpy.inf, dtype=float_dtype))
    run_sum = backend.zeros((3,), float_dtype)
    sentinel = numpy.full(3, -7, dtype=float_dtype)
    target_logit = backend.asarray(sentinel)
    backend.logsumexp_chunk_update(backend.asarray(logits), 8, backend.asarray(targets),
                                   run_max, run_sum, target_logit)
    assert_array_equal(to_host(target_logit), [1, 6, -7])
    backend.logsumexp_chunk_update(backend.asarray(logits), 0, backend.asarray(targets),
                                   run_max, run_sum, target_logit)  # no target inside
    assert_array_equal(to_host(target_logit), [1, 6, -7])
    assert_array_equal(to_host(run_max), [3, 7, 11])


@pytest.mark.parametrize("col_offset", [0, 3, 50])
def test_softmax_xent_grad_chunk(backend, float_dtype, to_host, tol, col_offset, small_grid):
    rng = numpy.random.default_rng(9)
    n_rows, n_cols = 7, 10
    logits = rng.standard_normal((n_rows, n_cols)).astype(float_dtype)
    lse = (rng.standard_normal(n_rows) + 3).astype(float_dtype)
    targets = numpy.array([3, 12, -1, 0, 9, 55, 2])
    scale = 0.25
    expected = numpy.exp(logits.astype(numpy.float64) - lse[:, None].astype(numpy.float64))
    for b, t in enumerate(targets):
        if 0 <= t - col_offset < n_cols:
            expected[b, t - col_offset] -= 1
    expected *= scale
    expected[targets < 0] = 0
    dev = backend.asarray(logits.copy())
    backend.softmax_xent_grad_chunk(dev, col_offset, backend.asarray(targets),
                                    backend.asarray(lse), scale)
    assert_allclose(to_host(dev), expected, **tol(float_dtype))


def test_softmax_fallback_layouts(backend, to_host, tol):
    """Layouts and dtypes without a kernel (transposed logits, float16) take the reference path."""
    rng = numpy.random.default_rng(10)
    logits = rng.standard_normal((6, 5))
    targets = numpy.array([0, 4, -1, 2, 2, 1])
    loss_ref, grad_ref, _ = ref_softmax_xent(logits, targets, 1.0)
    dev = backend.asarray(numpy.ascontiguousarray(logits.T)).T  # column-major view
    loss = to_host(backend.softmax_xent_fused(dev, backend.asarray(targets), 1.0))
    assert_allclose(loss, loss_ref, **tol(numpy.float64))
    assert_allclose(to_host(dev), grad_ref, **tol(numpy.float64))
    half = backend.asarray(logits.astype(numpy.float16))
    loss16 = to_host(backend.softmax_xent_fused(half, backend.asarray(targets), 1.0))
    assert loss16.dtype == numpy.float16
    assert_allclose(loss16.astype(numpy.float64),
                    ref_softmax_xent(logits.astype(numpy.float16), targets, 1.0)[0],
                    **tol(numpy.float16))


# ----------------------------------------------------------------------- optimizer steps

ADAM = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(3,), (17, 5), (1, 1)])
def test_adam_step(backend, float_dtype, to_host, tol, weight_decay, shape, small_grid):
    rng = numpy.random.default_rng(11)
    param = rng.standard_normal(shape).astype(float_dtype)
    m = numpy.zeros(shape, float_dtype)
    v = numpy.zeros(shape, float_dtype)
    dev = [backend.asarray(a.copy()) for a in (param, m, v)]
    ref = (param, m, v)
    for step in range(1, 6):
        grad = rng.standard_normal(shape).astype(float_dtype)
        ref = ref_adam(*ref[:1], grad, *ref[1:], step=step, weight_decay=weight_decay, **ADAM)
        backend.adam_step(dev[0], backend.asarray(grad), dev[1], dev[2], step=step,
                          weight_decay=weight_decay, **ADAM)
    for got, want in zip(dev, ref):
        assert to_host(got).dtype == float_dtype
        assert_allclose(to_host(got), want, **tol(float_dtype))


def test_adam_step_rows_equals_dense_on_those_rows(backend, float_dtype, to_host, tol,
                                                   small_grid):
    rng = numpy.random.default_rng(12)
    n_rows, width = 40, 3
    param = rng.standard_normal((n_rows, width)).astype(float_dtype)
    m = (0.1 * rng.standard_normal((n_rows, width))).astype(float_dtype)
    v = (0.1 * rng.random((n_rows, width))).astype(float_dtype)
    rows = numpy.array([31, 0, 7, 39, 8])
    grad = rng.standard_normal((rows.size, width)).astype(float_dtype)
    p_ref, m_ref, v_ref = param.astype(numpy.float64), m.astype(numpy.float64), \
        v.astype(numpy.float64)
    p_ref[rows], m_ref[rows], v_ref[rows] = ref_adam(param[rows], grad, m[rows], v[rows],
                                                     step=3, weight_decay=0.01, **ADAM)
    dev = [backend.asarray(a.copy()) for a in (param, m, v)]
    backend.adam_step_rows(dev[0], backend.asarray(rows), backend.asarray(grad), dev[1],
                           dev[2], step=3, weight_decay=0.01, **ADAM)
    untouched = numpy.setdiff1d(numpy.arange(n_rows), rows)
    for got, want, before in zip(dev, (p_ref, m_ref, v_ref), (param, m, v)):
        got = to_host(got)
        assert_allclose(got, want, **tol(float_dtype))
        assert_array_equal(got[untouched], before[untouched])

    # the same step through the dense primitive on the gathered rows gives the same rows
    sub = [backend.asarray(a[rows].copy()) for a in (param, m, v)]
    backend.adam_step(sub[0], backend.asarray(grad), sub[1], sub[2], step=3,
                      weight_decay=0.01, **ADAM)
    for got_rows, got_sub in zip(dev, sub):
        assert_allclose(to_host(got_rows)[rows], to_host(got_sub), **tol(float_dtype))


# ----------------------------------------------------------------------------- randomness


def test_uniform_same_key_same_numbers_on_every_backend(backend, float_dtype, to_host):
    shape = (37, 11)
    u = to_host(backend.uniform(shape, (5, 1, 2), float_dtype))
    u_cpu = Backend().uniform(shape, (5, 1, 2), float_dtype)
    assert u.shape == shape and u.dtype == float_dtype
    assert_array_equal(u, u_cpu)
    assert numpy.all(u >= 0) and numpy.all(u < 1)
    assert_array_equal(to_host(backend.uniform(shape, (5, 1, 2), float_dtype)), u)
    other = to_host(backend.uniform(shape, (5, 1, 3), float_dtype))
    assert numpy.mean(other == u) < 0.01
    assert 0.4 < u.mean() < 0.6


# ------------------------------------------------------------- host/device mixing (GPU)


class _ForeignArray:
    """Stands for an array of another library (a device array handed to the NumPy backend)."""
    shape, dtype, ndim = (4, 3), numpy.dtype(numpy.float32), 2


def test_array_of_the_other_kind_fails_fast(backend):
    """A host array on the device backend, or a foreign array on the NumPy backend, is refused
    with a message naming backend.asarray (check_array, and the optimizer's step through it)."""
    from engine.optim import SGD
    if backend.name == "numpy":
        foreign = _ForeignArray()
    else:
        foreign = numpy.zeros((4, 3), dtype=numpy.float32)
    with pytest.raises(TypeError, match="backend.asarray"):
        backend.check_array(foreign, "x")
    param = backend.zeros((4, 3), numpy.float32)
    with pytest.raises(TypeError, match=r"w grad.*backend\.asarray"):
        SGD(0.1).bind(backend).step([("w", param, foreign)])
    assert backend.check_array(param, "param") is param
    if backend.name != "numpy":                 # a kernel primitive checks its inputs too
        with pytest.raises(TypeError, match="backend.asarray"):
            backend.gather_rows(foreign, backend.asarray(numpy.array([0, 1])))


@pytest.mark.parametrize("dtype", [numpy.float16, numpy.float32])
@pytest.mark.parametrize("order", ["C", "F"])
def test_scatter_add_rows_fallback_layouts(backend, to_host, dtype, order):
    """Dtypes and layouts the kernel does not take still scatter correctly (no host loop on the GPU)."""
    rng = numpy.random.default_rng(13)
    out = numpy.asarray(rng.standard_normal((6, 3)), dtype=dtype, order=order)
    ids = numpy.array([5, 0, 5, 2, 5])
    rows = rng.standard_normal((5, 3)).astype(dtype)
    expected = out.astype(numpy.float64)
    numpy.add.at(expected, ids, rows.astype(numpy.float64))
    dev = backend.asarray(out)
    if order == "F":
        dev = backend.xp.asfortranarray(dev)
    backend.scatter_add_rows(dev, backend.asarray(ids), backend.asarray(rows))
    assert dev.dtype == dtype
    tol = 5e-3 if dtype == numpy.float16 else 1e-6
    assert_allclose(to_host(dev).astype(numpy.float64), expected, rtol=tol, atol=tol)
    u, summed = backend.coalesce_rows(backend.asarray(ids), backend.asarray(rows))
    assert_array_equal(to_host(u), [0, 2, 5])
    assert_allclose(to_host(summed).astype(numpy.float64)[2],
                    rows.astype(numpy.float64)[[0, 2, 4]].sum(0), rtol=tol, atol=tol)


def test_adam_step_broadcast_grad_takes_the_numpy_path():
    """A grad that broadcasts against the param must not reach the fused loop (which would read
    past its end): the NumPy expression handles it."""
    from engine.backend import Backend, cpu_loops
    p = numpy.ones((4, 2), numpy.float32)
    g = numpy.array([0.5, -0.5], numpy.float32)
    m, v = numpy.zeros_like(p), numpy.zeros_like(p)
    assert not cpu_loops.adam_fast_path(p, g, m, v)
    Backend().adam_step(p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 1)
    assert_allclose(p, numpy.tile(numpy.array([0.9, 1.1], numpy.float32), (4, 1)), rtol=1e-5)


@pytest.mark.parametrize("dtype", [numpy.float16, numpy.float32, numpy.float64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_scatter_add_rows_into_a_3d_table(dtype, order):
    """A (V, 2, 3) table, contiguous or not, through the numba loop (float32/64) or the NumPy
    fallback (float16): the rows are (2, 3) blocks; the update lands in the caller's array."""
    rng = numpy.random.default_rng(17)
    out = numpy.asarray(rng.standard_normal((5, 2, 3)), dtype=dtype, order=order)
    ids = numpy.array([4, 0, 4, 1])
    rows = rng.standard_normal((4, 2, 3)).astype(dtype)
    expected = out.astype(numpy.float64)
    numpy.add.at(expected, ids, rows.astype(numpy.float64))
    ret = Backend().scatter_add_rows(out, ids, rows)
    assert ret is out and out.dtype == dtype
    tol = 5e-3 if dtype == numpy.float16 else 1e-6
    assert_allclose(out.astype(numpy.float64), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", ["fortran-order", "float64-grad"])
def test_adam_step_rows_numpy_path(case):
    """adam_step_rows where the numba loops cannot take the arrays (a column-major table, a
    gradient of another dtype): the NumPy path, against the Adam formula on those rows."""
    rng = numpy.random.default_rng(14)
    n_rows, width = 12, 4
    param = rng.standard_normal((n_rows, width)).astype(numpy.float32)
    m = (0.1 * rng.standard_normal((n_rows, width))).astype(numpy.float32)
    v = (0.1 * rng.random((n_rows, width))).astype(numpy.float32)
    rows = numpy.array([9, 2, 5])
    grad = rng.standard_normal((rows.size, width))
    want = ref_adam(param[rows], grad.astype(numpy.float32), m[rows], v[rows], step=4,
                    weight_decay=0.05, **ADAM)
    dev = [numpy.asfortranarray(a) if case == "fortran-order" else a.copy() for a in (param, m, v)]
    g = grad.astype(numpy.float32) if case == "fortran-order" else grad
    Backend().adam_step_rows(dev[0], rows, g, dev[1], dev[2], step=4, weight_decay=0.05, **ADAM)
    untouched = numpy.setdiff1d(numpy.arange(n_rows), rows)
    for got, w, before in zip(dev, want, (param, m, v)):
        assert_allclose(got[rows], w, rtol=1e-5, atol=1e-6)
        assert_array_equal(got[untouched], before[untouched])
