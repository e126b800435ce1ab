"""Label ranges, minibatch rows, initial draws, target mapping, top-k merging, and the checks
of shard_model (no MPI needed)."""
from __future__ import annotations

import numpy
import pytest

from engine import MLPLanguageModel
from engine.backend import Backend
from engine.distributed import SingleProcess
from engine.distributed.shard import (batch_rows, check_shardable, label_range, local_targets,
                                      select_topk, uniform_rows)
from engine.distributed.step import shard_model
from engine.outputs.xmc_metrics import TopK


class _FakeComm(SingleProcess):
    """A communicator that only claims a rank and a size (for checks made at construction)."""

    def __init__(self, rank, size):
        super().__init__()
        self.rank, self.size = rank, size


@pytest.mark.parametrize("labels, size", [(50, 1), (50, 2), (50, 3), (23, 3), (7, 7), (10, 4)])
def test_label_ranges_cover_every_label_once(labels, size):
    ranges = [label_range(labels, size, r) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == labels
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(stop > start for start, stop in ranges)
    widths = [stop - start for start, stop in ranges]
    assert max(widths) - min(widths) <= 1


def test_fewer_labels_than_ranks_is_a_clear_error():
    with pytest.raises(ValueError, match="5 labels cannot be sharded over 8 ranks"):
        check_shardable(5, 8, "softmax")
    model = MLPLanguageModel(5, context=2, embed_dim=4, hidden=[4])
    with pytest.raises(ValueError, match="softmax: 5 labels cannot be sharded over 8 ranks"):
        shard_model(model, _FakeComm(0, 8))


@pytest.mark.parametrize("batch, size", [(13, 2), (13, 3), (2, 3), (256, 8)])
def test_batch_rows_split_the_minibatch_in_order(batch, size):
    rows = numpy.concatenate([numpy.arange(batch)[batch_rows(batch, size, r)] for r in range(size)])
    numpy.testing.assert_array_equal(rows, numpy.arange(batch))


@pytest.mark.parametrize("start, stop", [(0, 1000), (0, 13), (400, 1000), (137, 138), (999, 1000)])
def test_uniform_rows_equal_the_single_draw(start, stop):
    full_rng, shard_rng = numpy.random.default_rng(5), numpy.random.default_rng(5)
    full = full_rng.uniform(-0.3, 0.3, size=(1000, 7))
    part = uniform_rows(shard_rng, 0.3, 1000, 7, start, stop, block_elems=100)
    numpy.testing.assert_array_equal(part, full[start:stop])
    assert full_rng.random() == shard_rng.random()      # the generator ends in the same state


def test_local_targets():
    t = numpy.array([-1, 0, 4, 5, 9, 10, 12])
    numpy.testing.assert_array_equal(local_targets(numpy, t, 5, 10), [-1, 5, 5, 0, 4, 5, 5])


def test_select_topk_orders_as_topk():
    rng = numpy.random.default_rng(0)
    scores = rng.standard_normal((6, 40))
    scores[0, 3] = scores[0, 17] = 5.0                  # a tie: the lower label id first
    top = TopK(Backend(), 6, 5, scores.dtype)
    top.add(scores, 0)
    want_ids, want_vals = top.result()
    ids = numpy.broadcast_to(numpy.arange(40), scores.shape)
    got_ids, got_vals = select_topk(Backend(), ids, scores, 5)
    numpy.testing.assert_array_equal(got_ids, want_ids)
    numpy.testing.assert_array_equal(got_vals, want_vals)
    assert list(got_ids[0, :2]) == [3, 17]


def test_shard_model_keeps_the_configuration():
    model = MLPLanguageModel(30, context=2, embed_dim=4, hidden=[8], output="softmax",
                             output_kwargs={"chunk_size": 4})
    config = model.config()
    sharded = shard_model(MLPLanguageModel(30, context=2, embed_dim=4, hidden=[8],
                                           output="softmax", output_kwargs={"chunk_size": 4}),
                          _FakeComm(1, 3))
    assert sharded.layers[-1] is sharded.output
    assert type(sharded.output).__name__ == "ShardedSoftmaxOutput"
    assert (sharded.output.label_start, sharded.output.label_stop) == (10, 20)
    assert sharded.config() == config


def test_shard_model_refuses_a_bound_model_and_sharded_meprop():
    model = MLPLanguageModel(30, context=2, embed_dim=4, hidden=[8]).bind(Backend(), 0)
    with pytest.raises(RuntimeError, match="before binding"):
        shard_model(model, SingleProcess())
    meprop = MLPLanguageModel(30, context=2, embed_dim=4, hidden=[8],
                              output_kwargs={"meprop": {"k": 3}})
    with pytest.raises(ValueError, match="meprop"):
        shard_model(meprop, SingleProcess())


def test_sharded_ffi_refuses_rewiring():
    from engine import MLPClassifier
    model = MLPClassifier(10, 12, hidden=[8], output="squared-hinge",
                          output_kwargs={"weights": "ffi", "fan_in": 3, "rewire_every": 5})
    with pytest.raises(ValueError, match="rewiring"):
        shard_model(model, SingleProcess())
