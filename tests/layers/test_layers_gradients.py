"""Float64 finite-difference checks of every layer's backward pass (CPU reference backend)."""
import numpy
import pytest

from engine.backend import Backend
from engine.layers import Dropout, Embedding, Linear, ReLU, RowSparseGrad, Tanh
from gradcheck import check_layer_gradients, dense_grad


@pytest.fixture
def be():
    return Backend()


def bound(layer, be, seed=0):
    return layer.bind(be, numpy.random.default_rng(seed), numpy.float64)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(be, bias):
    layer = bound(Linear(7, 5, bias=bias), be)
    x = numpy.random.default_rng(1).standard_normal((4, 7))
    check_layer_gradients(layer, x)


@pytest.mark.parametrize("cls", [Tanh, ReLU])
def test_activation_gradients(be, cls):
    layer = bound(cls(), be)
    x = numpy.random.default_rng(2).standard_normal((6, 9))
    x[numpy.abs(x) < 1e-3] = 0.5          # keep ReLU away from its kink
    check_layer_gradients(layer, x)


def test_embedding_gradient_is_row_sparse_and_exact(be):
    layer = bound(Embedding(11, 4), be)
    ids = numpy.array([[1, 3, 1], [3, 3, 10]])         # duplicates within and across rows
    y = layer.forward(ids)
    assert y.shape == (2, 3, 4)
    numpy.testing.assert_array_equal(y[0, 0], layer.params["E"][1])
    dy = numpy.random.default_rng(3).standard_normal(y.shape)
    assert layer.backward(dy) is None
    g = layer.grads["E"]
    assert isinstance(g, RowSparseGrad)
    expected = numpy.zeros((11, 4))
    numpy.add.at(expected, ids.reshape(-1), dy.reshape(-1, 4))
    numpy.testing.assert_allclose(dense_grad(be, g), expected, rtol=0, atol=1e-15)
    c = g.coalesced(be)
    numpy.testing.assert_array_equal(c.rows, [1, 3, 10])
    numpy.testing.assert_allclose(c.values, expected[[1, 3, 10]], atol=1e-15)


def test_embedding_finite_difference(be):
    layer = bound(Embedding(9, 3), be)
    ids = numpy.array([[0, 8], [8, 8], [2, 0]])
    check_layer_gradients(layer, ids, differentiable_input=False)


def test_dropout_mask_gradient_and_scaling(be):
    layer = bound(Dropout(0.3), be)
    layer.key = (5, 7)
    x = numpy.random.default_rng(4).standard_normal((50, 40))
    y = layer.forward(x, train=True)
    kept = y != 0
    assert 0.6 < kept.mean() < 0.8
    numpy.testing.assert_allclose(y[kept], x[kept] / 0.7)
    dy = numpy.random.default_rng(5).standard_normal(x.shape)
    dx = layer.backward(dy)
    numpy.testing.assert_allclose(dx, dy * kept / 0.7)
    # same key -> same mask; next step -> a different one; eval -> identity
    numpy.testing.assert_array_equal(layer.forward(x, train=True), y)
    layer.key = (5, 8)
    assert not numpy.array_equal(layer.forward(x, train=True), y)
    numpy.testing.assert_array_equal(layer.forward(x, train=False), x)


def test_linear_rejects_wrong_shape(be):
    layer = bound(Linear(3, 2), be)
    with pytest.raises(ValueError, match=r"expected input \(B, 3\)"):
        layer.forward(numpy.zeros((4, 5)))
