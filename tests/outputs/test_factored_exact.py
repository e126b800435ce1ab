"""Exactness of the factored output layer (engine/outputs/factored.py) over many SGD steps.

The factored layer and the naive dense layer (the foundation's `squared` output, or the dense
spherical-family reference) start from the same W and see the same minibatches; after every
step the losses and dh must match, and after the last step V U + 1 a^T must equal the dense W
(relative error <= 1e-9 in float64, <= 1e-3 in float32 with the monitors on, measured against
a float64 dense run on the same inputs). dh is compared in relative Frobenius norm per step.
Minibatches include a row named many times, K > 1 with a duplicate label, and -1 padding.
"""
from __future__ import annotations

import numpy
import pytest

from devices import make_backend, to_host
from engine.outputs import make_output
from engine.outputs.factored_state import SingularStepError

DENSE = {"squared": "squared", "spherical": "spherical-dense", "taylor": "taylor-dense",
         "zloss": "zloss-dense"}


def _targets(rng, step, B, K, D):
    t = rng.integers(0, D, size=(B, K))
    if step % 3 == 0:
        t[: B // 2, 0] = 7                        # one row repeated many times
    if K > 1:
        t[0, 1] = t[0, 0]                         # a label named twice in one example
        t[1, K - 1] = -1                          # padding
    return t if K > 1 else t[:, 0]


def _run(loss, dtype, B, K, D=400, d=16, steps=500, lr=0.05, wd=0.0, schedule=None, seed=0,
         check_every=50, backend="numpy", **kw):
    be = make_backend(backend)
    rng = numpy.random.default_rng(seed)
    # the reference runs in float64 on the same (rounded) inputs: it measures the factored
    # layer's error, not the dense layer's own float32 rounding
    lkw = {"loss_kwargs": kw["loss_kwargs"]} if "loss_kwargs" in kw else {}
    dense = make_output(DENSE[loss], d, D, **lkw).bind(be, numpy.random.default_rng(1), numpy.float64)
    fact = make_output(f"factored-{loss}", d, D, check_every=check_every, weight_decay=wd,
                       **kw).bind(be, numpy.random.default_rng(1), dtype)
    assert numpy.array_equal(to_host(dense.params["W"]).astype(dtype), fact.dense_weight())
    worst = {"loss": 0.0, "dh": 0.0}
    for step in range(steps):
        h = be.asarray((rng.standard_normal((B, d)) * 0.3).astype(dtype))
        t = be.asarray(_targets(rng, step, B, K, D))
        eta = lr if schedule is None else schedule(step)
        ld = float(dense.forward(h.astype(numpy.float64), t))
        dhd = to_host(dense.backward())
        fact.prepare_update(eta)
        lf = float(fact.forward(h, t))
        dhf = to_host(fact.backward())
        fact.apply_update(eta)
        W = dense.params["W"]
        W -= eta * (dense.grads["W"] + wd * W)
        worst["loss"] = max(worst["loss"], abs(lf - ld) / max(abs(ld), 1e-30))
        worst["dh"] = max(worst["dh"], float(numpy.linalg.norm(dhf - dhd) / numpy.linalg.norm(dhd)))
    Wd, Wf = to_host(dense.params["W"]), fact.dense_weight()
    rel = float(numpy.linalg.norm(Wf - Wd) / numpy.linalg.norm(Wd))
    return rel, worst, fact


@pytest.mark.parametrize("loss,lr", [("squared", 0.05), ("spherical", 0.02), ("taylor", 0.05),
                                     ("zloss", 0.5)])
@pytest.mark.parametrize("B,K", [(12, 1), (8, 3)])
def test_factored_matches_dense_float64(loss, lr, B, K):
    rel, worst, fact = _run(loss, numpy.float64, B, K, lr=lr)
    assert rel <= 1e-9, (rel, worst)
    assert worst["loss"] <= 1e-9 and worst["dh"] <= 1e-9, worst
    # the layer really moved W away from its start (by far more than the agreement above)
    assert fact.updates == 500
    W0 = make_output(DENSE[loss], 16, 400).bind(make_backend("numpy"), numpy.random.default_rng(1),
                                                numpy.float64).params["W"]
    moved = float(numpy.linalg.norm(fact.dense_weight() - W0) / numpy.linalg.norm(W0))
    assert moved > 1e-2, moved


@pytest.mark.parametrize("loss,lr,kw", [("squared", 0.05, {}), ("zloss", 0.5, {}),
                                        ("spherical", 0.02, {"loss_kwargs": {"eps": 1e-2}})])
def test_factored_matches_dense_float32_with_monitors(loss, lr, kw):
    # spherical with eps = 1e-3 is ill-conditioned near o_c = 0 (dL/do_c changes by 1/eps per
    # unit of o_c): the dense float32 layer itself is 1e-3 away from float64 there, so the
    # float32 check uses eps = 1e-2 (the float64 checks use the default eps)
    rel, worst, fact = _run(loss, numpy.float32, 12, 2, lr=lr, check_every=25, **kw)
    assert rel <= 1e-3, (rel, worst)
    assert worst["loss"] <= 1e-3 and worst["dh"] <= 1e-3, worst
    assert fact.last_monitors is not None and fact.last_monitors["q_rel_err"] < 1e-3


@pytest.mark.parametrize("inverse", ["woodbury", "solve"])
def test_online_sherman_morrison_and_solve(inverse):
    rel, worst, _ = _run("squared", numpy.float64, 1, 1, steps=300, lr=0.1, inverse=inverse)
    assert rel <= 1e-9 and worst["dh"] <= 1e-9, (rel, worst)


def test_weight_decay_and_schedule_stay_exact():
    sched = lambda step: 0.05 * (0.5 if step >= 100 else 1.0) * (1.0 + 0.1 * numpy.sin(step))
    for loss in ("squared", "taylor"):
        rel, worst, _ = _run(loss, numpy.float64, 8, 2, steps=200, lr=None, wd=0.01, schedule=sched)
        assert rel <= 1e-9 and worst["dh"] <= 1e-9, (loss, rel, worst)


def test_band_fixes_and_unfactorize_keep_w():
    """A narrow band forces rank-1 fixes / unfactorize; W and the dense run still agree."""
    rel, worst, fact = _run("squared", numpy.float64, 8, 1, steps=200, lr=0.2, check_every=10,
                            band=(0.97, 1.03))
    assert rel <= 1e-9, (rel, worst)
    kinds = {e[1].split(":")[0] for e in fact.events}
    assert kinds & {"fixed", "unfactorized"}, fact.events


def test_learning_rate_guard_refuses_and_changes_nothing():
    be = make_backend("numpy")
    layer = make_output("factored-squared", 8, 50).bind(be, numpy.random.default_rng(0), numpy.float64)
    before = {k: v.copy() for k, v in layer.params.items()}
    h = numpy.random.default_rng(1).standard_normal((4, 8))
    layer.prepare_update(10.0)
    layer.forward(h, numpy.array([1, 2, 3, 4]))
    with pytest.raises(SingularStepError, match="singular"):
        layer.backward()
    for k, v in layer.params.items():
        assert numpy.array_equal(v, before[k]), k


def test_shrinking_guard_takes_exact_smaller_steps():
    """guard_action="shrink": where the requested rate would make U singular, the step is taken
    with the rate halved until safe. It stays an exact SGD step: a dense layer stepped with the
    same per-step rates (`last_step_lr`) ends at the same W. With "refuse" the first such step
    stops training, as before."""
    be = make_backend("numpy")
    D, d, B, lr = 60, 8, 6, 2.0
    rng = numpy.random.default_rng(0)
    batches = [(rng.standard_normal((B, d)) * (0.3 if s % 4 else 1.5), rng.integers(0, D, size=B))
               for s in range(40)]
    refuse = make_output("factored-squared", d, D).bind(be, numpy.random.default_rng(1),
                                                        numpy.float64)
    with pytest.raises(SingularStepError):
        for h, t in batches:
            refuse.prepare_update(lr)
            refuse.forward(h, t)
            refuse.backward()
            refuse.apply_update(lr)
    fact = make_output("factored-squared", d, D, guard_action="shrink", check_every=10).bind(
        be, numpy.random.default_rng(1), numpy.float64)
    dense = make_output("squared", d, D).bind(be, numpy.random.default_rng(1), numpy.float64)
    taken = []
    for h, t in batches:
        fact.prepare_update(lr)
        lf = float(fact.forward(h, t))
        fact.backward()
        fact.apply_update(lr)
        taken.append(fact.last_step_lr)
        ld = float(dense.forward(h, t))
        dense.backward()
        dense.params["W"] -= fact.last_step_lr * dense.grads["W"]
        numpy.testing.assert_allclose(lf, ld, rtol=1e-9)
    numpy.testing.assert_allclose(fact.dense_weight(), dense.params["W"], rtol=1e-9, atol=1e-12)
    shrunk = [x for x in taken if x < lr]
    assert fact.shrunk_steps == len(shrunk) > 0 and len(shrunk) < len(taken)
    assert all(x == lr / 2 ** round(numpy.log2(lr / x)) for x in shrunk)   # halvings of lr
    assert fact.config()["guard_action"] == "shrink"
