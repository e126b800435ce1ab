"""SparseLinear: exact against Linear on the densified input, float64 finite differences, the
row-sparse gradient over the features present, and NumPy vs CuPy (cuSPARSE) on one test body."""
import numpy
import pytest
import scipy.sparse

from devices import make_backend, to_host, tolerance, BACKEND_PARAMS
from engine.backend import Backend
from engine.layers import Linear, RowSparseGrad
from engine.layers.sparse_linear import SparseLinear, to_backend_csr
from gradcheck import check_layer_gradients, dense_grad


def random_csr(rng, rows, cols, density=0.2, empty_row=True, dtype=numpy.float64):
    x = scipy.sparse.random(rows, cols, density=density, format="csr", random_state=rng,
                            dtype=dtype)
    x.data = rng.standard_normal(x.data.shape).astype(dtype)
    if empty_row:                            # a point without features
        x = x.tolil()
        x[1, :] = 0
        x = x.tocsr()
        x.eliminate_zeros()
    return x


def bound(layer, be, dtype=numpy.float64, seed=0):
    return layer.bind(be, numpy.random.default_rng(seed), dtype)


@pytest.mark.parametrize("bias", [True, False])
def test_equals_dense_linear_on_densified_input(bias):
    be = Backend()
    rng = numpy.random.default_rng(0)
    x = random_csr(rng, 6, 13)
    layer = bound(SparseLinear(13, 5, bias=bias), be)
    dense = bound(Linear(13, 5, bias=bias), be)
    dense.params["W"][...] = layer.params["W"].T          # Linear stores (O, I)
    if bias:
        layer.params["b"][...] = rng.standard_normal(5)
        dense.params["b"][...] = layer.params["b"]
    y = layer.forward(x)
    yd = dense.forward(x.toarray())
    assert isinstance(y, numpy.ndarray) and y.shape == (6, 5)
    numpy.testing.assert_allclose(y, yd, rtol=1e-13, atol=1e-13)
    dy = rng.standard_normal((6, 5))
    assert layer.backward(dy) is None                       # no input gradient
    dense.backward(dy)
    g = layer.grads["W"]
    assert isinstance(g, RowSparseGrad) and g.unique
    numpy.testing.assert_array_equal(g.rows, numpy.unique(x.indices))
    numpy.testing.assert_allclose(dense_grad(be, g), dense.grads["W"].T, rtol=1e-13, atol=1e-13)
    if bias:
        numpy.testing.assert_allclose(layer.grads["b"], dense.grads["b"], rtol=1e-13)


def test_gradient_rows_are_only_the_features_present():
    be = Backend()
    x = scipy.sparse.csr_matrix((numpy.array([1.0, 2.0, 3.0]), numpy.array([7, 2, 7]),
                                 numpy.array([0, 2, 2, 3])), shape=(3, 10))
    layer = bound(SparseLinear(10, 4), be)
    layer.forward(x)
    dy = numpy.arange(12.0).reshape(3, 4)
    layer.backward(dy)
    g = layer.grads["W"]
    numpy.testing.assert_array_equal(g.rows, [2, 7])
    numpy.testing.assert_allclose(g.values, [2.0 * dy[0], 1.0 * dy[0] + 3.0 * dy[2]])


def test_finite_differences_float64():
    be = Backend()
    rng = numpy.random.default_rng(1)
    layer = bound(SparseLinear(11, 4), be)
    x = random_csr(rng, 5, 11, density=0.3)
    check_layer_gradients(layer, x, differentiable_input=False)


def test_float32_input_into_float64_layer_and_bad_inputs():
    be = Backend()
    layer = bound(SparseLinear(9, 3), be)
    x = random_csr(numpy.random.default_rng(2), 4, 9, dtype=numpy.float32)
    y = layer.forward(x)
    assert y.dtype == numpy.float64
    with pytest.raises(TypeError, match="CSR"):
        layer.forward(x.toarray())
    with pytest.raises(ValueError, match=r"\(B, 9\)"):
        layer.forward(random_csr(numpy.random.default_rng(2), 4, 8))
    with pytest.raises(RuntimeError, match="without a forward"):
        SparseLinear(3, 2).bind(be, numpy.random.default_rng(0), "float64").backward(numpy.zeros((1, 2)))


def test_adam_updates_only_the_rows_present():
    from engine.optim import make_optimizer
    be = Backend()
    layer = bound(SparseLinear(10, 3), be)
    before = layer.params["W"].copy()
    x = scipy.sparse.csr_matrix(([1.0, 1.0], [4, 6], [0, 1, 2]), shape=(2, 10))
    layer.forward(x)
    layer.backward(numpy.ones((2, 3)))
    opt = make_optimizer("adam", lr=0.1).bind(be)
    opt.step([("W", layer.params["W"], layer.grads["W"])])
    changed = numpy.flatnonzero(numpy.any(layer.params["W"] != before, axis=1))
    numpy.testing.assert_array_equal(changed, [4, 6])


@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backend_matches_dense_float64_reference(backend_name, dtype):
    """SciPy (NumPy backend) and cuSPARSE (CuPy backend) products against dense float64 ones
    computed here from the densified input and the layer's own (rounded) parameters."""
    be = make_backend(backend_name)
    rng = numpy.random.default_rng(3)
    x = random_csr(rng, 37, 300, density=0.05, dtype=numpy.dtype(dtype))
    layer = bound(SparseLinear(300, 17), be, dtype)
    layer.params["b"][...] = be.asarray(rng.standard_normal(17).astype(dtype))
    dy = rng.standard_normal((37, 17)).astype(dtype)
    W64 = to_host(layer.params["W"]).astype(numpy.float64)
    b64 = to_host(layer.params["b"]).astype(numpy.float64)
    x64, dy64 = x.toarray().astype(numpy.float64), dy.astype(numpy.float64)
    y = layer.forward(to_backend_csr(be, x))
    layer.backward(be.asarray(dy))
    tol = tolerance(dtype)
    numpy.testing.assert_allclose(to_host(y), x64 @ W64 + b64, **tol)
    present = numpy.flatnonzero(numpy.abs(x64).sum(axis=0))          # features in the batch
    g = layer.grads["W"]
    numpy.testing.assert_array_equal(to_host(g.rows), present)
    numpy.testing.assert_allclose(to_host(g.values), (x64.T @ dy64)[present], **tol)
    numpy.testing.assert_allclose(to_host(layer.grads["b"]), dy64.sum(axis=0), **tol)
