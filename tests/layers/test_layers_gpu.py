"""NumPy vs CuPy for layer paths no other GPU test covers: Linear with meProp and no input
gradient, meProp inside whole Engine training steps (hidden layers and the softmax output), the
fixed fan-in (FFI) layer with skip_zero_grads=False and need_input_grad=False, evaluation of a
multi-label output with FFI weights, and the int64-index CSR path of every cuSPARSE product.

Shapes: x (B, I), W (O, I) for Linear; FFI indices (L, K) int32, weights (L, K), input
transposed xt (I, B); CSR inputs (B, I). One body per backend (`backend` fixture); the reference
is the NumPy backend in float64 (tests/backend_compare.py).
"""
from __future__ import annotations

import numpy
import pytest
import scipy.sparse
from numpy.testing import assert_array_equal

from backend_compare import REFERENCE, assert_close, grads_of, host, model_state
from engine import Adam, Engine, MLPClassifier
from engine.backend import cupy_sparse
from engine.layers import Linear
from engine.layers.fixed_fanin import METHODS as METHODS_FFI, FixedFanInLinear
from engine.layers.sparse_linear import SparseLinear
from engine.outputs import make_output

MODES = ["per-example", "unified", "random"]


# ------------------------------------------------------------------ Linear with meProp
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("input_grad", [False, True])
def test_linear_meprop_backward(backend, float_dtype, mode, input_grad):
    """Linear(meprop=...) with and without the input gradient: dx is None without it, and the
    row-sparse dW (the selected rows exactly: dy is the same numbers on both sides), the full db
    and dx equal the float64 NumPy layer's."""
    rng = numpy.random.default_rng(4)
    B, I, O = 33, 17, 70
    x = rng.standard_normal((B, I)).astype(float_dtype)
    dy = rng.standard_normal((B, O)).astype(float_dtype)
    out = []
    for be, dt in ((REFERENCE, numpy.float64), (backend, float_dtype)):
        layer = Linear(I, O, meprop={"k": 9, "mode": mode, "seed": 2}, input_grad=input_grad)
        layer.bind(be, numpy.random.default_rng(0), dt)
        layer.set_random_key(3, 5)
        layer.forward(be.asarray(x.astype(dt)))
        dx = layer.backward(be.asarray(dy.astype(dt)))
        rows = host(layer.grads["W"].rows)
        assert (numpy.diff(rows) > 0).all()
        out.append((None if dx is None else host(dx), rows, grads_of(layer)))
    (dx_r, rows_r, g_r), (dx, rows, g) = out
    assert (dx is None) == (dx_r is None) == (not input_grad)
    if input_grad:
        assert_close(dx, dx_r, float_dtype, err_msg="dx")
    assert_array_equal(rows, rows_r)
    for name in g_r:
        assert_close(g[name], g_r[name], float_dtype, err_msg=name)


def classifier_run(be, dtype, make_model, optimizer, batches, seed=1):
    """Engine.train_step over `batches` [(x, y)]; returns (losses, host model state)."""
    model = make_model()
    eng = Engine(model, optimizer(), device=be, seed=seed, dtype=dtype, verbose=False)
    losses = [host(eng.train_step(be.asarray(x.astype(dtype)), be.asarray(y))) for x, y in batches]
    return numpy.array(losses), model_state(model), eng


@pytest.mark.parametrize("mode", MODES)
def test_meprop_inside_whole_training_steps(backend, mode):
    """MLPClassifier with meProp on both hidden Linear layers and the softmax output, trained by
    Engine.train_step with lazy Adam (row-sparse updates of W), 5 steps: the losses and every
    parameter equal the CPU's in float64 (ReLU's exact zeros tie alike on both: ties go to the
    lowest index)."""
    rng = numpy.random.default_rng(5)
    batches = [(rng.standard_normal((24, 12)), rng.integers(0, 30, 24)) for _ in range(5)]

    def make():
        return MLPClassifier(12, 30, hidden=(32, 20),
                             meprop={"k": 5, "mode": mode, "seed": 1, "output": True})
    lw, sw, _ = classifier_run(REFERENCE, numpy.float64, make, lambda: Adam(1e-2), batches)
    lg, sg, eng = classifier_run(backend, numpy.float64, make, lambda: Adam(1e-2), batches)
    assert_close(lg, lw, numpy.float64, err_msg="losses")
    for key in sw:
        assert_close(sg[key], sw[key], numpy.float64, err_msg=key)
    assert eng.model.output.meprop["k"] == 5


# ------------------------------------------------------------------ fixed fan-in
def ffi_reference(layer, x, dy):
    """(y, dw, db, dx) of the float64 NumPy reference path on host copies of the layer."""
    w, idx = host(layer.params["weights"]), host(layer.indices)
    b = host(layer.params["bias"])
    index = REFERENCE.ffi_index(numpy.ascontiguousarray(idx, dtype=numpy.int32), layer.in_features)
    xt = numpy.ascontiguousarray(x.T)
    y = REFERENCE.ffi_forward(xt, index, w, b, method="reference")
    dw, dx = REFERENCE.ffi_backward(dy, xt, index, w, method="reference")
    return y, dw, dy.sum(axis=0), dx


@pytest.mark.parametrize("skip_zero_grads", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("rewired", [False, True])
def test_ffi_options_on_every_path(backend, float_dtype, skip_zero_grads, deterministic, rewired):
    """Every FFI path of the backend (numba on the CPU; kernel and cuSPARSE on the GPU) with
    skip_zero_grads on and off (half of dy's columns zero) and need_input_grad on and off."""
    rng = numpy.random.default_rng(7)
    I, L, K, B = 41, 300, 6, 37
    x = rng.standard_normal((B, I)).astype(float_dtype)
    dy = rng.standard_normal((B, L)).astype(float_dtype)
    dy[:, rng.random(L) < 0.5] = 0
    for method in backend.ffi_methods:          # the layer reaches the CPU's "numba" by "auto"
        layer = FixedFanInLinear(I, L, K, method=method if method in METHODS_FFI else "auto",
                                 deterministic=deterministic,
                                 skip_zero_grads=skip_zero_grads)
        layer.bind(backend, numpy.random.default_rng(0), float_dtype)
        if rewired:
            layer.rewire(step=1)
        y_r, dw_r, db_r, dx_r = ffi_reference(layer, x.astype(numpy.float64),
                                              dy.astype(numpy.float64))
        for need_input_grad in (True, False):
            y = layer.forward(backend.asarray(x))
            dx = layer.backward(backend.asarray(dy), need_input_grad=need_input_grad)
            assert layer._used_method == method
            msg = f"{method} need_input_grad={need_input_grad}"
            assert_close(y, y_r, float_dtype, err_msg=f"y {msg}")
            assert_close(layer.grads["weights"], dw_r, float_dtype, err_msg=f"dw {msg}")
            assert_close(layer.grads["bias"], db_r, float_dtype, err_msg=f"db {msg}")
            if need_input_grad:
                assert_close(dx, dx_r, float_dtype, err_msg=f"dx {msg}")
            else:
                assert dx is None


@pytest.mark.parametrize("name", ["squared-hinge", "bce"])
def test_multilabel_evaluation_with_ffi_weights(backend, float_dtype, name):
    """eval_sums (loss, P@k, nDCG@k, PSP@k) and predict_topk of a multi-label output with FFI
    weights, scored in row blocks of 4 (eval_block_elems), equal the float64 NumPy output's; so
    do Engine.evaluate's metrics of a classifier with that output."""
    rng = numpy.random.default_rng(8)
    L, dd = 300, 12
    counts = rng.integers(0, 50, L)
    kw = dict(weights="ffi", fan_in=5, label_counts=counts, num_train=400)
    ref = make_output(name, dd, L, **kw).bind(REFERENCE, numpy.random.default_rng(0), numpy.float64)
    out = make_output(name, dd, L, eval_block_elems=4 * L, **kw).bind(
        backend, numpy.random.default_rng(0), float_dtype)
    out.load_state_dict(ref.state_dict())
    ref.load_state_dict(out.state_dict())              # the reference holds the rounded weights
    h = rng.standard_normal((18, dd)).astype(float_dtype)
    t = numpy.stack([rng.choice(L, 4, replace=False) for _ in range(18)])
    t[0, 2:] = -1
    got = out.eval_sums(backend.asarray(h), backend.asarray(t))
    want = ref.eval_sums(h.astype(numpy.float64), t)
    assert set(got) == set(want)
    for key in want:
        assert_close(got[key], want[key], float_dtype, err_msg=key)
    ids, scores = out.predict_topk(backend.asarray(h), 5)
    ids_r, scores_r = ref.predict_topk(h.astype(numpy.float64), 5)
    assert_array_equal(host(ids), ids_r)
    assert_close(scores, scores_r, float_dtype)
    # the same through a classifier and Engine.evaluate
    x = rng.standard_normal((40, 9))
    y = numpy.stack([rng.choice(L, 3, replace=False) for _ in range(40)])
    metrics = []
    for be, dt in ((REFERENCE, numpy.float64), (backend, float_dtype)):
        model = MLPClassifier(9, L, hidden=(dd,), output=name,
                              output_kwargs={"weights": "ffi", "fan_in": 5})
        eng = Engine(model, Adam(1e-2), device=be, seed=0, dtype=dt, verbose=False)
        metrics.append(eng.evaluate((x.astype(dt), y), batch_size=16))
    for key, value in metrics[0].items():
        if isinstance(value, float) and key != "seconds":
            assert_close(metrics[1][key], value, float_dtype, err_msg=key)


# ------------------------------------------------------------------ int64 CSR indices
def test_int64_csr_path(backend, float_dtype, monkeypatch):
    """The CSR structures the GPU builds take int64 indices past 2^31 - 1 entries (or columns):
    with that limit lowered to 0 every CSR of the backend is int64 (on the GPU; the CPU path is
    SciPy's and ignores it), and the FFI cuSPARSE path, the CSR conversion and products,
    SparseLinear and meProp's per-example products still equal the NumPy reference."""
    monkeypatch.setattr(cupy_sparse, "_INT32_MAX", 0)
    on_gpu = backend.name == "cupy"
    rng = numpy.random.default_rng(9)
    dt = float_dtype
    # FFI, cuSPARSE view (rows sorted: a view of w; rewired: the permuted gather)
    I, L, K, B = 23, 57, 5, 9
    x = rng.standard_normal((B, I)).astype(dt)
    dy = rng.standard_normal((B, L)).astype(dt)
    method = "cusparse" if on_gpu else "auto"
    for rewired in (False, True):
        layer = FixedFanInLinear(I, L, K, method=method).bind(backend, numpy.random.default_rng(1), dt)
        if rewired:
            layer.rewire(step=1)
        y_r, dw_r, _, dx_r = ffi_reference(layer, x.astype(numpy.float64), dy.astype(numpy.float64))
        assert_close(layer.forward(backend.asarray(x)), y_r, dt, err_msg=f"ffi y {rewired}")
        dx = layer.backward(backend.asarray(dy))
        assert_close(layer.grads["weights"], dw_r, dt, err_msg=f"ffi dw {rewired}")
        assert_close(dx, dx_r, dt, err_msg=f"ffi dx {rewired}")
        if on_gpu:
            view = layer._index.cache["csr"][3]
            assert view.indices.dtype == view.indptr.dtype == numpy.int64
    # conversion and products, both transposes
    xs = scipy.sparse.random(11, 30, density=0.25, format="csr", random_state=rng, dtype=dt)
    dev = backend.to_device_csr(xs)
    if on_gpu:
        assert dev.indices.dtype == dev.indptr.dtype == numpy.int64
    W = rng.standard_normal((30, 6)).astype(dt)
    g = rng.standard_normal((11, 6)).astype(dt)
    x64 = xs.toarray().astype(numpy.float64)
    assert_close(backend.csr_matmul(dev, backend.asarray(W)), x64 @ W, dt)
    assert_close(backend.csr_matmul(dev, backend.asarray(g), transpose_a=True), x64.T @ g, dt)
    # SparseLinear (forward SpMM, backward over the compacted columns)
    ref = SparseLinear(30, 6).bind(REFERENCE, numpy.random.default_rng(2), numpy.float64)
    lay = SparseLinear(30, 6).bind(backend, numpy.random.default_rng(2), dt)
    assert_close(lay.forward(dev), ref.forward(xs.astype(numpy.float64)), dt)
    lay.backward(backend.asarray(g))
    ref.backward(g.astype(numpy.float64))
    assert_array_equal(host(lay.grads["W"].rows), ref.grads["W"].rows)
    assert_close(lay.grads["W"], ref.grads["W"], dt)
    # meProp per-example products
    idx = numpy.sort(numpy.stack([rng.choice(30, 4, replace=False) for _ in range(11)]), axis=1)
    vals = rng.standard_normal((11, 4)).astype(dt)
    xin = rng.standard_normal((11, 8)).astype(dt)
    Wm = rng.standard_normal((30, 8)).astype(dt)
    got = backend.meprop_products(backend.asarray(idx), backend.asarray(vals),
                                  backend.asarray(xin), backend.asarray(Wm))
    want = REFERENCE.meprop_products(idx, vals.astype(numpy.float64), xin.astype(numpy.float64),
                                     Wm.astype(numpy.float64))
    assert_array_equal(host(got[0]), want[0])
    assert_close(got[1], want[1], dt, err_msg="dW_u")
    assert_close(got[2], want[2], dt, err_msg="dx")
