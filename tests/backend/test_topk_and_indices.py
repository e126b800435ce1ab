"""`Backend.topk` (the one top-k of the engine) and the index utilities (unique_inverse, rank_ids,
sort_groups, check_ids_in_range) against plain references, one body per backend."""
from __future__ import annotations

import numpy
import pytest
from numpy.testing import assert_array_equal

from engine.backend import Backend


def reference_topk(a, k, magnitude=False):
    """(values, ids) best first by a stable sort on (NaN first, key descending, index)."""
    key = numpy.abs(a) if magnitude else a.astype(numpy.float64)
    ids = numpy.empty((a.shape[0], k), dtype=numpy.int64)
    for b in range(a.shape[0]):
        order = sorted(range(a.shape[1]), key=lambda j: (not numpy.isnan(key[b, j]),
                                                          -numpy.nan_to_num(key[b, j], nan=0.0), j))
        ids[b] = order[:k]
    return numpy.take_along_axis(a, ids, 1), ids


@pytest.mark.parametrize("magnitude", [False, True])
@pytest.mark.parametrize("shape,k", [((1, 1), 1), ((3, 7), 7), ((5, 300), 1), ((70, 513), 37),
                                     ((4, 1000), 999), ((2, 3), 0)])
def test_topk_equals_a_stable_sort(backend, float_dtype, to_host, magnitude, shape, k, small_grid):
    rng = numpy.random.default_rng(shape[1] + k)
    a = (rng.integers(-4, 5, size=shape) * 0.5).astype(float_dtype)      # many ties
    vals, ids = backend.topk(backend.asarray(a), k, magnitude=magnitude)
    ref_vals, ref_ids = reference_topk(a, k, magnitude)
    assert_array_equal(to_host(ids), ref_ids)
    assert_array_equal(to_host(vals), ref_vals)
    vals, ids = backend.topk(backend.asarray(a), k, magnitude=magnitude, order="index")
    assert_array_equal(to_host(ids), numpy.sort(ref_ids, axis=1))
    assert to_host(ids).dtype == numpy.int64 and to_host(vals).dtype == float_dtype


def test_topk_nan_ranks_first_and_signed_zeros_tie(backend, to_host):
    nan, inf = numpy.nan, numpy.inf
    a = numpy.array([[1.0, nan, inf, -inf, nan, 2.0],
                     [-0.0, 0.0, -1.0, -0.0, -2.0, -3.0],
                     [nan, nan, nan, 1.0, nan, 0.0]])
    vals, ids = backend.topk(backend.asarray(a), 3)
    assert_array_equal(to_host(ids), [[1, 4, 2], [0, 1, 3], [0, 1, 2]])
    _, ids = backend.topk(backend.asarray(-a), 2, magnitude=True)
    assert_array_equal(to_host(ids), [[1, 4], [5, 4], [0, 1]])
    _, ids = backend.topk(backend.asarray(a), 4, order="index")
    assert_array_equal(to_host(ids), [[1, 2, 4, 5], [0, 1, 2, 3], [0, 1, 2, 4]])


def test_topk_rejects_bad_arguments():
    be = Backend()
    with pytest.raises(ValueError, match="k must be in"):
        be.topk(numpy.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="order"):
        be.topk(numpy.zeros((2, 3)), 1, order="value")
    with pytest.raises(ValueError, match="2-D"):
        be.topk(numpy.zeros(3), 1)


def test_topk_without_numba_follows_the_same_rule(monkeypatch):
    from engine.backend import cpu_loops
    be = Backend()
    rng = numpy.random.default_rng(2)
    a = (rng.integers(-3, 4, size=(20, 30)) * 1.0)
    a[3, 5] = numpy.nan
    want = be.topk(a, 6)
    monkeypatch.setattr(cpu_loops, "numba", None)
    got = be.topk(a, 6)
    assert_array_equal(got[1], want[1])
    assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("n,high", [(0, 5), (1, 5), (40, 7), (1000, 100000)])
def test_unique_inverse_equals_numpy_unique(backend, to_host, n, high):
    rng = numpy.random.default_rng(n)
    ids = rng.integers(-2, high, size=n)
    reads = backend.host_reads
    unique, inverse = backend.unique_inverse(backend.asarray(ids))
    assert backend.host_reads - reads == 1 or n == 0       # U, which sizes the result
    ref_u, ref_inv = numpy.unique(ids, return_inverse=True)
    assert_array_equal(to_host(unique), ref_u)
    assert_array_equal(to_host(inverse), ref_inv.reshape(-1))
    assert to_host(inverse).dtype == numpy.int64 and to_host(unique).dtype == ids.dtype


def test_rank_ids_is_a_dense_rank_with_an_upper_bound(backend, to_host):
    ids = numpy.array([7, -1, 7, 3, 3, 12, -1, 0])
    reads = backend.host_reads
    rank, width = backend.rank_ids(backend.asarray(ids))
    assert backend.host_reads == reads                         # no host read on any backend
    assert_array_equal(to_host(rank), numpy.unique(ids, return_inverse=True)[1])
    assert 5 <= width <= ids.size
    if backend.host_checks_are_free:
        assert width == 5


@pytest.mark.parametrize("n_groups", [1, 4])
def test_sort_groups_matches_bincount(backend, to_host, n_groups):
    rng = numpy.random.default_rng(n_groups)
    g = rng.integers(0, n_groups, size=57)
    g[:3] = 0
    order, offsets = backend.sort_groups(backend.asarray(g), n_groups)
    assert_array_equal(to_host(order), numpy.argsort(g, kind="stable"))
    want = numpy.concatenate([[0], numpy.cumsum(numpy.bincount(g, minlength=n_groups))])
    assert_array_equal(to_host(offsets), want)


def test_check_ids_in_range_only_where_host_checks_are_free(backend):
    ids = backend.asarray(numpy.array([0, 4, -1]))
    if backend.host_checks_are_free:
        with pytest.raises(ValueError, match=r"x: ids \[-1, 4\] outside \[0, 4\)"):
            backend.check_ids_in_range(ids, 0, 4, "x: ids [{min}, {max}] outside [{low}, {high})")
        backend.check_ids_in_range(ids, -1, 5, "unused")
        with pytest.raises(ValueError, match="^4$"):
            backend.check_ids_in_range(ids, None, 4, "{max}")
        # no ids: nothing out of range (no min/max of an empty array)
        backend.check_ids_in_range(backend.asarray(numpy.zeros(0, numpy.int64)), 0, 4, "unused")
    else:
        backend.check_ids_in_range(ids, 0, 4, "must not be raised on a device backend")
