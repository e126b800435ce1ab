"""FixedFanInLinear (engine/layers/fixed_fanin.py): exactness against a dense Linear, float64
finite differences, the layer on the numba path vs the NumPy reference, NumPy vs CuPy for both
GPU paths (kernel, cuSPARSE; atomic and deterministic input gradients), state round trip, memory
report, errors. The primitives themselves (reference, CPU loops, index layouts) are tested in
tests/backend/test_ffi_primitives.py."""
from __future__ import annotations

import numpy
import pytest

from devices import BACKEND_PARAMS, make_backend, to_host, tolerance
from gradcheck import check_layer_gradients

from engine.backend import Backend
from engine.layers import Linear
from engine.layers import fixed_fanin as ffi_layer
from engine.layers.fixed_fanin import FixedFanInLinear
from engine.optim import Adam

GPU_METHODS = ["kernel", "cusparse"]
# `method` picks among the GPU paths; on the CPU every method but "reference" runs the numba
# loops, so the NumPy cases are the numba path ("auto") and the plain NumPy reference
BACKEND_METHODS = [("numpy", "auto"), ("numpy", "reference")] + [
    pytest.param("cupy", m, marks=pytest.mark.gpu) for m in ("auto", "kernel", "cusparse")]


def make_layer(backend, I=30, L=50, K=7, dtype="float64", seed=0, **kw):
    layer = FixedFanInLinear(I, L, K, **kw)
    return layer.bind(backend, numpy.random.default_rng(seed), dtype)


def host_reference(layer, x, dy):
    """(y, dw, db, dx) from the NumPy reference (Backend.ffi_*, method="reference") on host
    copies of the layer's state."""
    w, idx = to_host(layer.params["weights"]), to_host(layer.indices)
    b = to_host(layer.params["bias"]) if layer.use_bias else None
    x, dy = to_host(x), to_host(dy)
    be = Backend()
    index = be.ffi_index(numpy.ascontiguousarray(idx, dtype=numpy.int32), layer.in_features)
    xt = numpy.ascontiguousarray(x.T)
    y = be.ffi_forward(xt, index, w, b, method="reference")
    dw, dx = be.ffi_backward(dy, xt, index, w, method="reference")
    return y, dw, dy.sum(axis=0), dx


def dense_of(layer):
    """The (L, I) dense matrix the layer represents."""
    w, idx = to_host(layer.params["weights"]), to_host(layer.indices)
    dense = numpy.zeros((layer.out_features, layer.in_features), dtype=w.dtype)
    rows = numpy.repeat(numpy.arange(layer.out_features), layer.fan_in)
    numpy.add.at(dense, (rows, idx.reshape(-1)), w.reshape(-1))
    return dense


# ------------------------------------------------------------------ exactness vs dense
@pytest.mark.parametrize("backend_name,method", BACKEND_METHODS)
@pytest.mark.parametrize("shuffle", [False, True])
def test_full_fan_in_equals_dense_linear_over_adam_steps(backend_name, method, shuffle):
    """fan_in = in_features with every index: forward, backward and 5 Adam steps equal Linear.
    shuffle: every row holds its indices in a different order (weights permuted to match)."""
    be = make_backend(backend_name)
    I, L, B = 13, 40, 9
    rng = numpy.random.default_rng(1)
    dense = Linear(I, L).bind(be, numpy.random.default_rng(2), "float64")
    ffi = make_layer(be, I, L, I, method=method)
    idx = numpy.tile(numpy.arange(I, dtype=numpy.int32), (L, 1))
    if shuffle:
        idx = numpy.stack([rng.permutation(I) for _ in range(L)]).astype(numpy.int32)
    ffi.set_indices(idx)
    W = to_host(dense.params["W"])
    ffi.params["weights"][...] = be.asarray(numpy.take_along_axis(W, idx.astype(numpy.int64), 1))
    ffi.params["bias"][...] = be.asarray(rng.standard_normal(L))
    dense.params["b"][...] = ffi.params["bias"]
    opt_d, opt_f = Adam(lr=1e-2).bind(be), Adam(lr=1e-2).bind(be)
    for step in range(5):
        x = be.asarray(rng.standard_normal((B, I)))
        dy = be.asarray(rng.standard_normal((B, L)))
        yd, yf = dense.forward(x), ffi.forward(x)
        if backend_name == "numpy":
            assert ffi._used_method == {"auto": "numba", "reference": "reference"}[method]
        elif method != "auto":
            assert ffi._used_method == method
        numpy.testing.assert_allclose(to_host(yf), to_host(yd), rtol=1e-12, atol=1e-12)
        dxd, dxf = dense.backward(dy), ffi.backward(dy)
        numpy.testing.assert_allclose(to_host(dxf), to_host(dxd), rtol=1e-12, atol=1e-12)
        dW = numpy.take_along_axis(to_host(dense.grads["W"]), idx.astype(numpy.int64), 1)
        numpy.testing.assert_allclose(to_host(ffi.grads["weights"]), dW, rtol=1e-12, atol=1e-12)
        opt_d.step([("W", dense.params["W"], dense.grads["W"]), ("b", dense.params["b"], dense.grads["b"])])
        opt_f.step([("w", ffi.params["weights"], ffi.grads["weights"]),
                    ("b", ffi.params["bias"], ffi.grads["bias"])])
    numpy.testing.assert_allclose(dense_of(ffi), to_host(dense.params["W"]), rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(to_host(ffi.params["bias"]), to_host(dense.params["b"]),
                                  rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ finite differences
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_finite_differences(backend_name, bias):
    be = make_backend(backend_name)
    layer = make_layer(be, I=11, L=23, K=4, bias=bias)
    x = be.asarray(numpy.random.default_rng(3).standard_normal((6, 11)))
    check_layer_gradients(layer, x, seed=4)


# ------------------------------------------------------------------ numba vs reference
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("skip", [True, False])
def test_numba_matches_reference_with_zero_dy_columns(dtype, skip):
    """Odd sizes, K > 32, B > 32, duplicate indices across rows, many all-zero dy columns."""
    be = make_backend("numpy")
    I, L, K, B = 61, 203, 45, 37
    layer = make_layer(be, I, L, K, dtype=dtype, skip_zero_grads=skip)
    rng = numpy.random.default_rng(5)
    x = rng.standard_normal((B, I)).astype(dtype)
    dy = rng.standard_normal((B, L)).astype(dtype)
    dy[:, rng.random(L) < 0.7] = 0
    dy[rng.random((B, L)) < 0.3] = 0
    y = layer.forward(x)
    dx = layer.backward(dy)
    assert layer._used_method == "numba"
    y_r, dw_r, db_r, dx_r = host_reference(layer, x.astype(numpy.float64), dy.astype(numpy.float64))
    tol = tolerance(dtype) if dtype == "float64" else dict(rtol=1e-4, atol=1e-4)
    numpy.testing.assert_allclose(y, y_r, **tol)
    numpy.testing.assert_allclose(layer.grads["weights"], dw_r, **tol)
    numpy.testing.assert_allclose(layer.grads["bias"], db_r, **tol)
    numpy.testing.assert_allclose(dx, dx_r, **tol)
    zero_cols = numpy.flatnonzero(~dy.any(axis=0))
    assert zero_cols.size and (layer.grads["weights"][zero_cols] == 0).all()
    assert y.dtype == dx.dtype == layer.grads["weights"].dtype == numpy.dtype(dtype)


def test_cpu_input_gradient_is_deterministic():
    be = make_backend("numpy")
    layer = make_layer(be, 20, 300, 6, dtype="float32")
    rng = numpy.random.default_rng(6)
    x = rng.standard_normal((8, 20)).astype("float32")
    dy = rng.standard_normal((8, 300)).astype("float32")
    layer.forward(x)
    a = layer.backward(dy)
    layer.forward(x)
    b = layer.backward(dy)
    assert numpy.array_equal(a, b)


# ------------------------------------------------------------------ NumPy vs CuPy
@pytest.mark.gpu
@pytest.mark.parametrize("method", GPU_METHODS)
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rewired", [False, True])
def test_gpu_paths_match_numpy(method, deterministic, dtype, rewired, small_grid):
    """Sizes spanning several grid strides (grid capped at 2 blocks), B and K not multiples of
    32, indices shared by many rows; rewired: rows no longer sorted (cuSPARSE permutation)."""
    gpu = make_backend("cupy")
    I, L, K, B = 97, 1000, 40, 70
    layer = make_layer(gpu, I, L, K, dtype=dtype, method=method, deterministic=deterministic)
    if rewired:
        layer.rewire(step=1)
        assert not layer.rows_sorted
    rng = numpy.random.default_rng(7)
    x = rng.standard_normal((B, I))
    dy = rng.standard_normal((B, L))
    dy[:, rng.random(L) < 0.5] = 0
    y = layer.forward(gpu.asarray(x.astype(dtype)))
    dx = layer.backward(gpu.asarray(dy.astype(dtype)))
    assert layer._used_method == method
    y_r, dw_r, db_r, dx_r = host_reference(layer, x.astype(dtype).astype(numpy.float64), dy.astype(dtype).astype(numpy.float64))
    tol = tolerance(dtype) if dtype == "float64" else dict(rtol=1e-4, atol=1e-4)
    numpy.testing.assert_allclose(to_host(y), y_r, **tol)
    numpy.testing.assert_allclose(to_host(layer.grads["weights"]), dw_r, **tol)
    numpy.testing.assert_allclose(to_host(layer.grads["bias"]), db_r, **tol)
    numpy.testing.assert_allclose(to_host(dx), dx_r, **tol)
    if deterministic:
        layer.forward(gpu.asarray(x.astype(dtype)))
        again = layer.backward(gpu.asarray(dy.astype(dtype)))
        assert numpy.array_equal(to_host(again), to_host(dx))


@pytest.mark.gpu
def test_gpu_auto_picks_a_method_once_per_shape():
    gpu = make_backend("cupy")
    layer = make_layer(gpu, 50, 300, 8, dtype="float32", method="auto")
    x = gpu.asarray(numpy.ones((16, 50), dtype="float32"))
    layer.forward(x)
    assert layer._used_method in gpu.ffi_methods
    keys = [k for k in ffi_layer.CHOICES if k[1:5] == (300, 50, 8, 16)]
    assert len(keys) == 1 and ffi_layer.CHOICES[keys[0]] == layer._used_method


@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_cpu_and_gpu_layers_start_identical(backend_name):
    be = make_backend(backend_name)
    a = make_layer(make_backend("numpy"), 40, 90, 5, seed=11)
    b = make_layer(be, 40, 90, 5, seed=11)
    assert numpy.array_equal(to_host(a.indices), to_host(b.indices))
    assert numpy.array_equal(to_host(a.params["weights"]), to_host(b.params["weights"]))
    idx = to_host(a.indices)
    assert idx.dtype == numpy.int32 and idx.shape == (90, 5)
    assert all(len(set(row)) == 5 for row in idx.tolist())


# ------------------------------------------------------------------ state, config, memory
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_state_dict_round_trip_with_indices(backend_name):
    be = make_backend(backend_name)
    a = make_layer(be, 30, 60, 6, seed=1)
    a.rewire(step=3)                      # unsorted rows travel too
    state = a.state_dict()
    assert set(state) == {"weights", "bias", "indices"} and "indices" not in a.params
    b = make_layer(be, 30, 60, 6, seed=2)
    assert not numpy.array_equal(to_host(b.indices), state["indices"])
    b.load_state_dict(state)
    assert numpy.array_equal(to_host(b.indices), state["indices"])
    assert b.rows_sorted == a.rows_sorted
    x = be.asarray(numpy.random.default_rng(0).standard_normal((4, 30)))
    numpy.testing.assert_array_equal(to_host(b.forward(x, train=False)), to_host(a.forward(x, train=False)))
    bad = dict(state, indices=state["indices"].copy())
    bad["indices"][5, 1] = bad["indices"][5, 0]
    with pytest.raises(ValueError, match="row 5 repeats"):
        b.load_state_dict(bad)
    with pytest.raises(ValueError, match="values must lie"):
        b.load_state_dict(dict(state, indices=state["indices"] + 30))
    with pytest.raises(KeyError, match="indices"):
        b.load_state_dict({"weights": state["weights"], "bias": state["bias"]})


def test_config_round_trips_every_argument():
    kw = dict(in_features=20, out_features=33, fan_in=4, bias=False, seed=9, method="kernel",
              deterministic=True, rewire_every=100, rewire_fraction=0.25, skip_zero_grads=False)
    layer = FixedFanInLinear(**kw)
    assert layer.config() == kw
    assert FixedFanInLinear(**layer.config()).config() == kw
    default = FixedFanInLinear(5, 6, 2).config()
    assert FixedFanInLinear(**default).config() == default


def test_memory_report_matches_the_arrays_and_the_optimizer_state():
    be = make_backend("numpy")
    layer = make_layer(be, 30, 70, 5, dtype="float32")
    opt = Adam().bind(be)
    x = numpy.ones((3, 30), dtype="float32")
    layer.forward(x)
    layer.backward(numpy.ones((3, 70), dtype="float32"))
    opt.step([(k, layer.params[k], layer.grads[k]) for k in ("weights", "bias")])
    rep = layer.memory_report(opt)
    assert rep["weights"] == layer.params["weights"].nbytes
    assert rep["bias"] == layer.params["bias"].nbytes
    assert rep["indices"] == layer.indices.nbytes
    assert rep["grads"] == sum(g.nbytes for g in layer.grads.values())
    assert rep["optimizer"] == sum(b.nbytes for slot in opt.state.values() for b in slot.values())
    assert rep["total"] == sum(v for k, v in rep.items() if k != "total")
    assert layer.memory_report("adam") == rep
    assert layer.memory_report(2) == rep
    assert layer.memory_report()["optimizer"] == 0
    unbound = FixedFanInLinear(32768, 670091, 32).memory_report("adam", dtype="float32")
    assert unbound["weights"] == unbound["indices"] == 670091 * 32 * 4
    with pytest.raises(ValueError, match="unknown optimizer"):
        layer.memory_report("lbfgs")


# ------------------------------------------------------------------ errors
def test_bad_arguments_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="fan_in 9 exceeds in_features 8"):
        FixedFanInLinear(8, 10, 9)
    with pytest.raises(ValueError, match="method"):
        FixedFanInLinear(8, 10, 2, method="magic")
    with pytest.raises(ValueError, match="rewire_fraction"):
        FixedFanInLinear(8, 10, 2, rewire_fraction=0)
    with pytest.raises(ValueError, match="positive"):
        FixedFanInLinear(8, 0, 2)
    be = make_backend("numpy")
    layer = make_layer(be, 8, 10, 2)
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(numpy.ones((2, 10)))
    with pytest.raises(ValueError, match=r"expected input \(B, 8\), got \(2, 9\)"):
        layer.forward(numpy.ones((2, 9)))
    with pytest.raises(ValueError, match="expected input"):
        layer.forward(numpy.ones(8))
    import scipy.sparse
    with pytest.raises(TypeError, match="dense input"):
        layer.forward(scipy.sparse.csr_matrix(numpy.ones((2, 8))))
    layer.forward(numpy.ones((2, 8)))
    with pytest.raises(ValueError, match=r"dy of shape \(2, 11\)"):
        layer.backward(numpy.ones((2, 11)))
    with pytest.raises(ValueError, match="shape"):
        layer.set_indices(numpy.tile(numpy.arange(3, dtype=numpy.int32), (10, 1)))


def test_auto_measures_once_per_power_of_two_batch_bucket():
    assert [ffi_layer.batch_bucket(b) for b in (1, 3, 32, 33, 256)] == [1, 4, 32, 64, 256]


def test_rows_sorted_flag_follows_the_indices():
    # rows_sorted: every row's indices strictly ascending (adjacent indices included)
    layer = make_layer(Backend(), I=6, L=2, K=3)
    for idx, expect in [([[0, 1, 2], [3, 4, 5]], True), ([[0, 2, 5], [1, 3, 4]], True),
                        ([[0, 1, 2], [4, 3, 5]], False)]:
        layer.set_indices(numpy.array(idx))
        assert layer.rows_sorted is expect, idx


class _TwoPathBackend(Backend):
    """The NumPy backend offering two FFI paths, as the GPU does: "auto" must measure."""
    ffi_methods = ("numba", "reference")


def test_auto_measures_and_picks_one_of_several_paths(monkeypatch):
    monkeypatch.setattr(ffi_layer, "CHOICES", {})
    be = _TwoPathBackend()
    layer = make_layer(be, method="auto")
    rng = numpy.random.default_rng(3)
    x, dy = rng.standard_normal((5, 30)), rng.standard_normal((5, 50))
    y = layer.forward(x)
    dx = layer.backward(dy)
    assert layer._used_method in be.ffi_methods and len(ffi_layer.CHOICES) == 1
    dense, idx = dense_of(layer), layer.indices
    numpy.testing.assert_allclose(y, x @ dense.T + layer.params["bias"], rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(dx, dy @ dense, rtol=1e-12, atol=1e-12)
    dw = numpy.einsum("bl,blk->lk", dy, x[:, idx])          # slot (l, k) sees x[:, idx[l, k]]
    numpy.testing.assert_allclose(layer.grads["weights"], dw, rtol=1e-12, atol=1e-12)
