"""The factored output (engine/outputs/factored.py) as a multi-label output: K-hot targets
(B, K) padded with -1, dh against float64 finite differences for every loss of the family,
the ranking sums (P@k, nDCG@k, PSP@k) against the same sums from the dense scores of the
exported W, the label counts and the numerical-care counters in the state, and one-line
errors for loss arguments that do not exist."""
from __future__ import annotations

import numpy
import pytest

from engine.backend import Backend
from engine.outputs import make_output
from engine.outputs.spherical_family import make_loss
from engine.outputs.xmc_metrics import finish_metrics, inverse_propensity, metric_sums
from gradcheck import assert_directional_match

LOSSES = ["squared", "spherical", "taylor", "zloss"]
LR = {"squared": 0.05, "spherical": 0.02, "taylor": 0.05, "zloss": 0.5}
D, d = 70, 9


def _khot(rng, B, K=4):
    t = rng.integers(0, D, size=(B, K))
    t[rng.random((B, K)) < 0.3] = -1
    t[:, 0] = numpy.abs(t[:, 0])
    return t


def _trained(loss, steps=30, **kw):
    """A layer moved away from its start by `steps` exact SGD steps on K-hot targets."""
    layer = make_output(f"factored-{loss}", d, D, **kw).bind(
        Backend(), numpy.random.default_rng(0), numpy.float64)
    rng = numpy.random.default_rng(1)
    for _ in range(steps):
        h = rng.standard_normal((8, d)) * 0.3
        layer.prepare_update(LR[loss])
        layer.forward(h, _khot(rng, 8))
        layer.backward()
        layer.apply_update(LR[loss])
    return layer


@pytest.mark.parametrize("loss", LOSSES)
def test_dh_matches_finite_differences_with_khot_targets(loss):
    layer = _trained(loss)
    rng = numpy.random.default_rng(2)
    h = rng.standard_normal((6, d)) * 0.5
    t = _khot(rng, 6)
    layer.forward(h, t, train=True)
    dh = layer.backward()
    layer._pending = None                                 # no update: only dh is checked
    for trial in range(3):
        u = rng.standard_normal(h.shape)
        eps = 1e-6
        lp = float(layer.forward(h + eps * u, t, train=False))
        lm = float(layer.forward(h - eps * u, t, train=False))
        assert_directional_match(float((dh * u).sum()), (lp - lm) / (2 * eps), rtol=1e-6,
                                 what=f"{loss} dh trial {trial}")


def _scores(layer, h):
    o = h @ layer.dense_weight().T
    return {"squared": o, "zloss": o, "spherical": o * o, "taylor": 1 + o + 0.5 * o * o}[
        layer.loss_name]


@pytest.mark.parametrize("loss", LOSSES)
def test_ranking_sums_match_the_dense_scores(loss):
    """eval_sums with K-hot targets: P@k, nDCG@k, PSP@k of the chunked top-k equal those of
    a full sort of the dense scores (the loss's ranking score of W = V U + 1 a^T); the loss is
    the mean of the per-example losses."""
    rng = numpy.random.default_rng(5)
    counts = rng.integers(0, 50, size=D)
    layer = _trained(loss, topk_chunk=16, label_counts=counts, num_train=400)
    h = rng.standard_normal((11, d))
    t = _khot(rng, 11)
    sums = layer.eval_sums(h, t)
    got = finish_metrics({k: float(v) for k, v in sums.items()})
    order = numpy.argsort(-_scores(layer, h), axis=1, kind="stable")[:, :5]
    ref = metric_sums(numpy, order, t, inverse_propensity(counts, 400))
    want = finish_metrics({"count": 11.0, **{k: float(v) for k, v in ref.items()},
                           "loss": float(layer.loss_per_example(h, t).sum())})
    assert set(got) == set(want) and {"p@1", "p@3", "p@5", "ndcg@5", "psp@5"} <= set(got)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key
    assert 0 < got["p@5"] <= 1


def test_state_keeps_label_counts_and_the_care_counters():
    """label_counts for PSP@k, and the update count and probe generator that decide when and
    how the numerical care runs (a resumed run takes the same decisions)."""
    counts = numpy.arange(D)
    layer = _trained("squared", steps=12, check_every=5, label_counts=counts, num_train=99)
    state = layer.state_dict()
    fresh = make_output("factored-squared", d, D, check_every=5).bind(
        Backend(), numpy.random.default_rng(9), numpy.float64)
    fresh.load_state_dict(state)
    assert fresh.updates == 12 and fresh.num_train == 99
    numpy.testing.assert_array_equal(fresh.label_counts, counts)
    assert (fresh._probe_rng.standard_normal(4) == layer._probe_rng.standard_normal(4)).all()
    # one more identical step on both: the same bits, including the care at update 15
    rng = numpy.random.default_rng(3)
    for _ in range(3):
        h, t = rng.standard_normal((8, d)), _khot(rng, 8)
        for lay in (layer, fresh):
            lay.prepare_update(0.05)
            lay.forward(h, t)
            lay.backward()
            lay.apply_update(0.05)
    for key, value in layer.state_dict().items():
        numpy.testing.assert_array_equal(fresh.state_dict()[key], value, err_msg=key)


def test_unknown_loss_arguments_are_one_line():
    with pytest.raises(ValueError, match="the squared loss takes no arguments; got eps"):
        make_loss("squared", eps=0.1)
    with pytest.raises(ValueError, match="the zloss loss takes a, b; got c"):
        make_loss("zloss", c=1.0)
    with pytest.raises(ValueError, match="takes no arguments"):
        make_output("factored-squared", d, D, loss_kwargs={"eps": 1e-3})
