"""What a rank reads and draws, checked in one process: every loader's share of every global
minibatch (`part=(rank, size)`), the counter-based random numbers of a rank's rows, the
dropout and random meProp masks of a share, and a caller's loader cut by the engine."""
from __future__ import annotations

import numpy
import pytest
import scipy.sparse

from dist_scenarios import write_files
from engine.backend import Backend
from engine.backend.random_hash import uniform_from_key
from engine.data.arrays import ArrayLoader, part_slice
from engine.data.registry import describe, make_loader
from engine.distributed.run import RankShare, rank_share
from engine.layers.dropout import Dropout
from engine.layers.meprop import random_rows


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_files(str(tmp_path_factory.mktemp("data")))


def _dense(x):
    return x.toarray() if scipy.sparse.issparse(x) else numpy.asarray(x)


def _stack(parts):
    """The ranks' shares of one minibatch, in rank order (K-hot targets padded with -1)."""
    x = numpy.concatenate([_dense(p[0]) for p in parts])
    ys = [numpy.asarray(p[1]) for p in parts]
    if ys[0].ndim == 2:
        k = max(y.shape[1] for y in ys)
        ys = [numpy.pad(y, ((0, 0), (0, k - y.shape[1])), constant_values=-1) for y in ys]
    return x, numpy.concatenate(ys)


def _same_batches(make, size, epoch=1, start=1):
    whole = list(make(None).iter_from(epoch, start))
    shares = [list(make((r, size)).iter_from(epoch, start)) for r in range(size)]
    assert whole and all(len(s) == len(whole) for s in shares)
    for i, batch in enumerate(whole):
        x, y = _stack([s[i] for s in shares])
        wx, wy = _dense(batch[0]), numpy.asarray(batch[1])
        if wy.ndim == 2:
            wy = numpy.pad(wy, ((0, 0), (0, y.shape[1] - wy.shape[1])), constant_values=-1)
        numpy.testing.assert_array_equal(x, wx)
        numpy.testing.assert_array_equal(y, wy)
        for r, s in enumerate(shares):         # rank r holds rows [r B / N, (r + 1) B / N)
            rows = part_slice(wy.shape[0], (r, size))
            assert s[i][1].shape[0] == rows.stop - rows.start


@pytest.mark.parametrize("name, context", [("corpus.h5", 2), ("xmc.h5", None),
                                           ("classes.h5", None)])
@pytest.mark.parametrize("batch", [7, 2, 64])
@pytest.mark.parametrize("size", [2, 3])
def test_file_loaders_yield_each_rank_its_rows(files, name, context, batch, size):
    info = describe(f"{files}/{name}")
    kw = {"context": context} if context else {}
    _same_batches(lambda part: make_loader(info, "train", batch, True, 5, part=part, **kw), size)


@pytest.mark.parametrize("size", [2, 3, 5])
def test_array_loader_yields_each_rank_its_rows(size):
    rng = numpy.random.default_rng(0)
    x, y = rng.standard_normal((23, 4)), rng.integers(0, 5, 23)
    _same_batches(lambda part: ArrayLoader(x, y, 5, seed=3, part=part), size, epoch=2, start=0)


def test_a_callers_loader_is_cut_by_rank():
    rng = numpy.random.default_rng(1)
    x, y = rng.standard_normal((11, 2)), rng.integers(0, 3, 11)

    class Comm:
        rank, size = 1, 3
    loader = ArrayLoader(x, y, 4, seed=0)
    share = rank_share(loader, Comm())
    assert isinstance(share, RankShare) and len(share) == len(loader) == 3
    got = [b[1] for b in share.iter_from(0, 0)]
    want = [b[1][part_slice(b[1].shape[0], (1, 3))] for b in loader.iter_from(0, 0)]
    for g, w in zip(got, want):
        numpy.testing.assert_array_equal(g, w)
    already = ArrayLoader(x, y, 4, seed=0, part=(1, 3))
    assert rank_share(already, Comm()) is already


def test_part_must_be_a_rank_of_size():
    with pytest.raises(ValueError, match="part must be"):
        ArrayLoader(numpy.zeros((3, 1)), numpy.zeros(3, int), 2, part=(3, 3))


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_counter_based_numbers_of_a_rows_share(dtype):
    whole = uniform_from_key(numpy, (13, 6), (3, 7, 1), dtype)
    for size in (2, 3):
        for r in range(size):
            rows = part_slice(13, (r, size))
            mine = uniform_from_key(numpy, (rows.stop - rows.start, 6), (3, 7, 1), dtype,
                                    offset=rows.start * 6)
            numpy.testing.assert_array_equal(mine, whole[rows])


def test_dropout_and_random_meprop_masks_of_a_share():
    be = Backend()
    x = numpy.random.default_rng(2).standard_normal((13, 8))
    layer = Dropout(0.4)
    layer.bind(be, numpy.random.default_rng(0), numpy.float64)
    layer.set_random_key(5, 9)
    whole = layer.forward(x)
    whole_rows = random_rows(be, 13, 10, 3, (1, 5, 9, 2, 1))
    for r in range(3):
        rows = part_slice(13, (r, 3))
        layer.set_random_key(5, 9, row_offset=rows.start)
        numpy.testing.assert_array_equal(layer.forward(x[rows]), whole[rows])
        got = random_rows(be, rows.stop - rows.start, 10, 3, (1, 5, 9, 2, 1), rows.start)
        numpy.testing.assert_array_equal(got, whole_rows[rows])
