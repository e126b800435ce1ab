"""Dynamic rewiring of FixedFanInLinear (engine/layers/fixed_fanin.py, fixed_fanin_rewire.py):
fan-in stays exactly K with distinct indices, the globally smallest |w| are pruned, regrown
weights start at 0 with their optimizer slots zeroed, the schedule, reproducibility, and the
Model.after_step hook with its key prefix."""
from __future__ import annotations

import numpy
import pytest

from devices import BACKEND_PARAMS, make_backend, to_host

from engine.layers import fixed_fanin_rewire as rw
from engine.layers.fixed_fanin import FixedFanInLinear
from engine.models.base import Model
from engine.optim import SGD, Adam


def make_layer(backend, I, L, K, seed=0, dtype="float64", **kw):
    return FixedFanInLinear(I, L, K, **kw).bind(backend, numpy.random.default_rng(seed), dtype)


def assert_rows_distinct(idx, I, K):
    assert idx.shape[1] == K and idx.min() >= 0 and idx.max() < I
    s = numpy.sort(idx, axis=1)
    assert not (s[:, 1:] == s[:, :-1]).any()


@pytest.mark.parametrize("I,K", [(1000, 8), (12, 10), (12, 12), (40, 21)])
def test_fan_in_stays_k_without_duplicates_over_many_rewires(I, K):
    be = make_backend("numpy")
    layer = make_layer(be, I, 300, K, rewire_fraction=0.3)
    for step in range(1, 9):
        before = layer.indices.copy()
        flat = layer.rewire(step)
        idx = layer.indices
        assert_rows_distinct(idx, I, K)
        keep = numpy.ones(idx.size, dtype=bool)
        keep[flat] = False
        assert numpy.array_equal(idx.reshape(-1)[keep], before.reshape(-1)[keep])
        assert flat.size == round(0.3 * idx.size)
        # give the regrown weights some magnitude so that the next prune picks others too
        layer.params["weights"].reshape(-1)[flat] = numpy.random.default_rng(step).standard_normal(flat.size)
    if I > 2 * K:
        assert not numpy.array_equal(layer.indices, make_layer(be, I, 300, K).indices)


@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_prunes_the_globally_smallest_and_regrows_at_zero(backend_name):
    be = make_backend(backend_name)
    I, L, K = 50, 40, 6
    layer = make_layer(be, I, L, K, rewire_fraction=0.1)
    w = numpy.random.default_rng(1).permutation(L * K).astype(numpy.float64) - L * K / 2
    w[w == 0] = 0.5                                 # all |w| distinct
    layer.params["weights"][...] = be.asarray(w.reshape(L, K))
    old_idx = to_host(layer.indices).copy()
    flat = layer.rewire(step=7)
    expected = numpy.sort(numpy.argsort(numpy.abs(w), kind="stable")[:round(0.1 * L * K)])
    assert numpy.array_equal(flat, expected)
    w_new = to_host(layer.params["weights"]).reshape(-1)
    assert (w_new[flat] == 0).all()
    others = numpy.setdiff1d(numpy.arange(L * K), flat)
    assert numpy.array_equal(w_new[others], w[others])
    idx = to_host(layer.indices)
    assert_rows_distinct(idx, I, K)
    assert numpy.array_equal(idx.reshape(-1)[others], old_idx.reshape(-1)[others])
    # same seed and step: the same draw on every backend
    cpu = make_layer(make_backend("numpy"), I, L, K, rewire_fraction=0.1)
    cpu.params["weights"][...] = w.reshape(L, K)
    cpu.rewire(step=7)
    assert numpy.array_equal(cpu.indices, idx)


def test_prune_ties_go_to_the_lowest_positions():
    a = numpy.array([3.0, 1.0, 1.0, 0.5, 1.0, 2.0])
    assert rw.prune_smallest(a, 3).tolist() == [1, 2, 3]
    assert rw.prune_smallest(a, 0).size == 0
    assert rw.prune_smallest(a, 10).tolist() == list(range(6))


@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
@pytest.mark.parametrize("make_opt", [lambda: Adam(lr=1e-2), lambda: SGD(lr=0.1, momentum=0.9)])
def test_regrown_slots_have_their_optimizer_state_reset(backend_name, make_opt):
    be = make_backend(backend_name)
    layer = make_layer(be, 30, 50, 5, rewire_every=2, rewire_fraction=0.2)
    opt = make_opt().bind(be)
    rng = numpy.random.default_rng(2)
    key = "0.FixedFanInLinear."
    for _ in range(2):
        layer.forward(be.asarray(rng.standard_normal((4, 30))))
        layer.backward(be.asarray(rng.standard_normal((4, 50))))
        opt.step([(key + n, layer.params[n], layer.grads[n]) for n in ("weights", "bias")])
    before = {s: to_host(opt.state[s][key + "weights"]).copy() for s in opt.slots}
    assert all((b != 0).all() for b in before.values())
    assert layer.after_step(1, opt, key) is None          # not a multiple of rewire_every
    flat = layer.after_step(2, opt, key)
    assert flat is not None and flat.size == 50
    others = numpy.setdiff1d(numpy.arange(250), flat)
    for s in opt.slots:
        after = to_host(opt.state[s][key + "weights"]).reshape(-1)
        assert (after[flat] == 0).all()
        assert numpy.array_equal(after[others], before[s].reshape(-1)[others])
    bias_state = to_host(opt.state[opt.slots[0]][key + "bias"])
    assert (bias_state != 0).all()


def test_schedule_and_reproducibility():
    be = make_backend("numpy")
    never = make_layer(be, 100, 20, 4)
    assert all(never.after_step(s, None) is None for s in range(1, 50))
    a = make_layer(be, 100, 20, 4, seed=3, rewire_every=5)
    b = make_layer(be, 100, 20, 4, seed=3, rewire_every=5)
    c = make_layer(be, 100, 20, 4, seed=3, rewire_every=5)
    c.seed = 4                                       # a different rewiring seed
    results = [[layer.after_step(s, None) for s in range(1, 11)] for layer in (a, b, c)]
    assert [r is None for r in results[0]] == [s % 5 != 0 for s in range(1, 11)]
    assert numpy.array_equal(a.indices, b.indices)
    assert not numpy.array_equal(a.indices, c.indices)


def test_model_after_step_passes_the_optimizer_key_prefix():
    be = make_backend("numpy")

    class Tiny(Model):
        def __init__(self):
            super().__init__()
            self.layers = [FixedFanInLinear(20, 30, 4, rewire_every=1, rewire_fraction=0.5)]

    model = Tiny().bind(be, seed=0, dtype="float64")
    layer = model.layers[0]
    opt = Adam().bind(be)
    items = model.param_items()
    layer.forward(numpy.ones((2, 20)))
    layer.backward(numpy.ones((2, 30)))
    opt.step([(key, lay.params[name], lay.grads[name]) for key, lay, name in items])
    key = items[0][0]
    assert key == "0.FixedFanInLinear.weights" and "indices" not in [n for _, _, n in items]
    old = layer.indices.copy()
    model.after_step(1, opt)
    assert not numpy.array_equal(old, layer.indices)
    zeroed = (opt.state["m"][key] == 0).reshape(-1)
    assert zeroed.sum() == 60 and (layer.params["weights"].reshape(-1)[zeroed] == 0).all()
