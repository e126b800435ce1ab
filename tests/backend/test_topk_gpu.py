"""Top-k NaN and tie behaviour on rows long enough for the GPU kernel's every stage
(rawkernels/topk_rows.cu: one block of 256 threads strides over a row of thousands of entries;
the radix select runs all of its 4 (float) or 8 (double) passes when the k-th key is a tie).

The rule (engine/backend/numpy_topk.py): NaN above every number (NaNs tie with each other),
-0.0 == +0.0, equal keys to the lowest index, magnitude mode ranks |a|; order="score" is best
first, order="index" ascending ids. Checked against a lexicographic sort written here, on the
`backend` fixture (NumPy always; CuPy marked gpu, skipped without one). Shapes: a (B, N) -> (B, k).
"""
from __future__ import annotations

import numpy
import pytest
from numpy.testing import assert_array_equal

from devices import to_host


def rule_ids(a, k, magnitude):
    """Best-first ids by (not NaN, key descending, index) with key = a or |a| in float64."""
    key = numpy.abs(a.astype(numpy.float64)) if magnitude else a.astype(numpy.float64)
    nan = numpy.isnan(key)
    key = numpy.where(nan, 0.0, key) + 0.0                        # -0.0 -> +0.0
    n = a.shape[1]
    return numpy.stack([numpy.lexsort((numpy.arange(n), -key[r], ~nan[r]))[:k]
                        for r in range(a.shape[0])])


def hard_rows(rng, dtype, n=3000):
    """Rows built to stress the rule: few distinct values (long runs of ties at the k-th key),
    NaNs fewer than / as many as / more than k, +-inf, signed zeros, an all-NaN row, an all-zero
    row (ReLU's common tie), and values that differ only in their last bits."""
    rows = []
    base = (rng.integers(-3, 4, n) * 0.5).astype(dtype)
    rows.append(base)
    r = base.copy(); r[rng.choice(n, 5, replace=False)] = numpy.nan; rows.append(r)
    r = base.copy(); r[rng.choice(n, 40, replace=False)] = numpy.nan; rows.append(r)
    r = base.copy(); r[rng.choice(n, 300, replace=False)] = numpy.nan; rows.append(r)
    r = base.copy(); r[[3, 700, n - 1]] = numpy.inf; r[[5, n // 2]] = -numpy.inf; rows.append(r)
    r = numpy.where(rng.random(n) < 0.5, -0.0, 0.0).astype(dtype); r[[17, n - 500]] = 1; rows.append(r)
    rows.append(numpy.full(n, numpy.nan, dtype=dtype))
    rows.append(numpy.zeros(n, dtype=dtype))
    one = numpy.ones(n, dtype=dtype)
    r = numpy.nextafter(one, numpy.asarray(2, dtype=dtype) * rng.integers(0, 2, n)).astype(dtype)
    rows.append(r)                                                 # 1 and 1 + ulp, interleaved
    r = -numpy.abs(rng.standard_normal(n)).astype(dtype); r[::97] = -r[::97]; rows.append(r)
    return numpy.stack(rows)


@pytest.mark.parametrize("k", [1, 40, 299, 2999])
@pytest.mark.parametrize("magnitude", [False, True])
def test_long_rows_nan_and_ties(backend, float_dtype, k, magnitude):
    a = hard_rows(numpy.random.default_rng(k), float_dtype)
    want = rule_ids(a, k, magnitude)
    vals, ids = backend.topk(backend.asarray(a), k, magnitude=magnitude)
    assert_array_equal(to_host(ids), want)
    assert_array_equal(to_host(vals), numpy.take_along_axis(a, want, 1))    # NaN == NaN here
    _, ids = backend.topk(backend.asarray(a), k, magnitude=magnitude, order="index")
    assert_array_equal(to_host(ids), numpy.sort(want, axis=1))


def test_strided_and_float16_inputs_follow_the_rule(backend):
    """A column slice (not contiguous: the GPU copies it) and float16 scores (cast to float32)."""
    rng = numpy.random.default_rng(3)
    wide = hard_rows(rng, numpy.float32, n=1200)
    a = backend.asarray(wide)[:, 100:1100]
    _, ids = backend.topk(a, 37)
    assert_array_equal(to_host(ids), rule_ids(wide[:, 100:1100], 37, False))
    half = wide.astype(numpy.float16)
    _, ids = backend.topk(backend.asarray(half), 37, magnitude=True)
    assert_array_equal(to_host(ids), rule_ids(half, 37, True))
