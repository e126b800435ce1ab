"""Dense squared error output: finite differences, K-hot targets with repeats, reductions."""
import numpy
import pytest

from engine.backend import Backend
from engine.outputs import SquaredErrorOutput
from gradcheck import check_output_gradients


def make(D=11, d=4, bias=False, reduction="mean"):
    out = SquaredErrorOutput(d, D, bias=bias, reduction=reduction)
    return out.bind(Backend(), numpy.random.default_rng(0), numpy.float64)


def dense_target(t, B, D):
    Y = numpy.zeros((B, D))
    t = t.reshape(B, -1)
    for b in range(B):
        for c in t[b]:
            if c >= 0:
                Y[b, c] += 1
    return Y


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("targets", [numpy.array([1, 10, 1]),
                                     numpy.array([[1, 2, -1], [10, 10, 3], [-1, -1, -1]])])
def test_squared_loss_and_gradients(bias, reduction, targets):
    out = make(bias=bias, reduction=reduction)
    h = numpy.random.default_rng(1).standard_normal((3, 4))
    O = h @ out.params["W"].T + (out.params["b"] if bias else 0)
    Y = dense_target(targets, 3, 11)
    expect = ((O - Y) ** 2).sum() / (1 if reduction == "sum" else 3)
    assert abs(float(out.forward(h, targets, train=False)) - expect) < 1e-12
    numpy.testing.assert_allclose(out.loss_per_example(h, targets), ((O - Y) ** 2).sum(1), rtol=1e-12)
    check_output_gradients(out, h, targets)
