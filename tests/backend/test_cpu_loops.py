"""The numba loops of the CPU backend equal the NumPy expressions they replace, bit for bit."""
import numpy
import pytest

from engine.backend import cpu_loops

pytestmark = pytest.mark.skipif(cpu_loops.numba is None, reason="numba is not importable")


def numpy_adam(p, g, m, v, lr, b1, b2, eps, step, wd):
    """The pure NumPy expression of Backend.adam_step (what ran before the numba loop)."""
    c1, c2 = 1 - b1 ** step, 1 - b2 ** step
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * (g * g)
    p *= (1 - lr * wd)
    p -= (lr / c1) * m / (numpy.sqrt(v / c2) + eps)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_numba_adam_equals_numpy_expression_bitwise(dtype, wd):
    rng = numpy.random.default_rng(0)
    shape = (257, 5)
    p, g = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    m = (0.1 * rng.standard_normal(shape)).astype(dtype)
    v = (0.1 * numpy.abs(rng.standard_normal(shape))).astype(dtype)
    fast, ref = [a.copy() for a in (p, g, m, v)], [a.copy() for a in (p, g, m, v)]
    for step in (1, 2, 50):
        cpu_loops.adam_step(fast[0], fast[1], fast[2], fast[3], 3e-3, 0.9, 0.999, 1e-8, step, wd)
        numpy_adam(*ref, 3e-3, 0.9, 0.999, 1e-8, step, wd)
        for a, b in zip(fast, ref):
            assert numpy.array_equal(a, b)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_numba_adam_rows_touch_only_their_rows(dtype):
    rng = numpy.random.default_rng(1)
    p, m = rng.standard_normal((20, 3)).astype(dtype), numpy.zeros((20, 3), dtype)
    v = numpy.zeros((20, 3), dtype)
    rows = numpy.array([2, 7, 19])
    g = rng.standard_normal((3, 3)).astype(dtype)
    fast = [p.copy(), m.copy(), v.copy()]
    cpu_loops.adam_step_rows(fast[0], rows, g, fast[1], fast[2], 1e-2, 0.9, 0.999, 1e-8, 4, 0.1)
    sub = [p[rows].copy(), g.copy(), m[rows].copy(), v[rows].copy()]
    numpy_adam(*sub, 1e-2, 0.9, 0.999, 1e-8, 4, 0.1)
    untouched = numpy.setdiff1d(numpy.arange(20), rows)
    assert numpy.array_equal(fast[0][untouched], p[untouched])
    assert numpy.array_equal(fast[0][rows], sub[0])
    assert numpy.array_equal(fast[1][rows], sub[2]) and numpy.array_equal(fast[2][rows], sub[3])
    assert not fast[1][untouched].any() and not fast[2][untouched].any()
