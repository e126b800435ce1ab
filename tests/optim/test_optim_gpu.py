"""NumPy vs CuPy for the optimizer options no other GPU test covers: Adam with
sparse_mode="dense" on row-sparse gradients (every row moves, as dense Adam does), and SGD's L2
weight decay (dense, with plain / heavy-ball / Nesterov momentum; row-sparse lazy and dense).

Shapes: a param (V, D), row-sparse gradients RowSparseGrad(rows (N,), values (N, D)) with
repeated rows. One body per backend (`backend` fixture), against the float64 formulas of
tests/optim/optim_reference.py run on the densified gradients.
"""
from __future__ import annotations

import numpy
import pytest

from backend_compare import assert_close, host
from engine.optim import SGD, Adam
from engine.row_sparse import RowSparseGrad
from optim_reference import adam_reference, sgd_reference

V, DIM = 50, 6


def sparse_steps(rng, steps, dtype, same_rows=False):
    """[(rows (N,), values (N, D))] with a repeated row in each step; the rows change from step
    to step unless `same_rows` (then every step names the same 12 rows)."""
    fixed = rng.choice(V, 12, replace=False)
    out = []
    for _ in range(steps):
        rows = fixed.copy() if same_rows else rng.choice(V, 12, replace=False)
        rows = numpy.concatenate([rows, rows[:3]])                 # duplicates accumulate
        out.append((rows.astype(numpy.int64), rng.standard_normal((rows.size, DIM)).astype(dtype)))
    return out


def dense_of(rows, values):
    g = numpy.zeros((V, DIM))
    numpy.add.at(g, rows, values.astype(numpy.float64))
    return g


def run(backend, opt, p0, grads, dtype):
    """Steps of `opt` on a copy of p0 with the given (dense array | (rows, values)) grads."""
    p = backend.asarray(p0.astype(dtype))
    opt.bind(backend)
    for g in grads:
        if isinstance(g, tuple):
            rows, values = g
            grad = RowSparseGrad(backend.asarray(rows), backend.asarray(values.astype(dtype)),
                                 (V, DIM))
        else:
            grad = backend.asarray(g.astype(dtype))
        opt.step([("w", p, grad)])
    return host(p)


def test_adam_dense_mode_on_row_sparse_grads(backend, float_dtype):
    """sparse_mode="dense": each row-sparse gradient is densified and the fused dense Adam step
    runs, so rows touched once keep moving on their moments; equals AdamW on the dense grads."""
    rng = numpy.random.default_rng(0)
    p0 = rng.standard_normal((V, DIM))
    steps = sparse_steps(rng, 6, float_dtype)
    opt = Adam(lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.01, sparse_mode="dense")
    got = run(backend, opt, p0, steps, float_dtype)
    ref_p, ref_m, ref_v = adam_reference(p0.astype(float_dtype), [dense_of(*s) for s in steps],
                                         1e-2, 0.8, 0.95, 1e-6, 0.01)
    assert_close(got, ref_p, float_dtype, err_msg="param")
    assert_close(opt.state["m"]["w"], ref_m, float_dtype, err_msg="m")
    assert_close(opt.state["v"]["w"], ref_v, float_dtype, err_msg="v")
    lazy = run(backend, Adam(lr=1e-2, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.01),
               p0, steps, float_dtype)
    last = set(steps[-1][0].tolist())
    idle = [r for r in set(steps[0][0].tolist()) - last]   # touched at step 1, not at the last
    assert idle and not numpy.allclose(lazy[idle], got[idle])   # the two modes really differ


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_weight_decay_dense(backend, float_dtype, momentum, nesterov):
    rng = numpy.random.default_rng(1)
    p0 = rng.standard_normal((V, DIM))
    grads = [rng.standard_normal((V, DIM)) for _ in range(5)]
    opt = SGD(lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=0.1)
    got = run(backend, opt, p0, grads, float_dtype)
    ref = sgd_reference(p0.astype(float_dtype), [g.astype(float_dtype) for g in grads], 0.05,
                        momentum, nesterov, 0.1)
    assert_close(got, ref, float_dtype)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_weight_decay_row_sparse(backend, float_dtype, momentum):
    """Lazy mode: decay and momentum on the touched rows only (every step names the same rows,
    so those rows follow the dense formula and the others stay put); dense mode: every row
    decays, the formula on the densified gradients."""
    rng = numpy.random.default_rng(2)
    p0 = rng.standard_normal((V, DIM))
    steps = sparse_steps(rng, 5, float_dtype, same_rows=True)
    rows = numpy.unique(steps[0][0])
    lazy = run(backend, SGD(lr=0.05, momentum=momentum, weight_decay=0.1), p0, steps, float_dtype)
    p32 = p0.astype(float_dtype).astype(numpy.float64)
    want = p32.copy()
    want[rows] = sgd_reference(p32[rows], [dense_of(*s)[rows] for s in steps], 0.05, momentum,
                               False, 0.1)
    assert_close(lazy, want, float_dtype, err_msg="lazy")
    dense = run(backend, SGD(lr=0.05, momentum=momentum, weight_decay=0.1, sparse_mode="dense"),
                p0, steps, float_dtype)
    assert_close(dense, sgd_reference(p32, [dense_of(*s) for s in steps], 0.05, momentum, False,
                                      0.1), float_dtype, err_msg="dense")
