"""The spherical-family losses (engine/outputs/spherical_family.py) and the dense reference
(engine/outputs/spherical_dense.py): float64 finite differences of g_q, g_s, g_c and of the dense
layer's dh and dW, the squared member against the foundation's `squared` output, likelihoods."""
from __future__ import annotations

import numpy
import pytest

from devices import make_backend
from gradcheck import check_output_gradients
from engine.outputs import make_output
from engine.outputs.spherical_family import LOSSES, make_loss, targets_and_mask

MEMBERS = [("squared", {}), ("spherical", {}), ("spherical", {"eps": 0.1}), ("taylor", {}),
           ("zloss", {}), ("zloss", {"a": 1.0, "b": 2.0})]


@pytest.mark.parametrize("name,kw", MEMBERS)
def test_partials_match_finite_differences(name, kw):
    rng = numpy.random.default_rng(0)
    B, K, D = 5, 3, 50
    loss = make_loss(name, **kw)
    O = rng.standard_normal((B, D))
    t = rng.integers(0, D, size=(B, K))
    t[0, 1] = t[0, 0]
    t[2, 2] = -1
    t2, valid = targets_and_mask(numpy, t, B, D)
    q, s = (O * O).sum(1), O.sum(1)
    oc = numpy.take_along_axis(O, t2, 1)
    extra = loss.prepare(numpy, t2, valid)
    f = lambda q_, s_, oc_: loss.value_and_grads(numpy, q_, s_, oc_, valid, D, extra)[0].sum()
    _, gq, gs, gc = loss.value_and_grads(numpy, q, s, oc, valid, D, extra)
    e = 1e-6
    dq, ds, dc = rng.standard_normal(B), rng.standard_normal(B), rng.standard_normal((B, K))
    num = (f(q + e * dq, s + e * ds, oc + e * dc) - f(q - e * dq, s - e * ds, oc - e * dc)) / (2 * e)
    ana = (gq * dq).sum() + (0.0 if gs is None else (gs * ds).sum()) + (gc * dc).sum()
    assert abs(num - ana) <= 1e-6 * max(1.0, abs(ana)), (num, ana)
    assert (gs is not None) == loss.uses_s
    assert numpy.all(gc[~valid] == 0)


@pytest.mark.parametrize("name", ["spherical-dense", "taylor-dense", "zloss-dense"])
@pytest.mark.parametrize("K", [1, 3])
def test_dense_reference_gradients(name, K):
    be = make_backend("numpy")
    out = make_output(name, 6, 40).bind(be, numpy.random.default_rng(0), numpy.float64)
    rng = numpy.random.default_rng(1)
    h = rng.standard_normal((4, 6))
    t = rng.integers(0, 40, size=(4, K)) if K > 1 else rng.integers(0, 40, size=4)
    check_output_gradients(out, h, t)


def test_squared_member_equals_foundation_squared_output():
    be = make_backend("numpy")
    rng = numpy.random.default_rng(2)
    t = rng.integers(0, 30, size=(6, 3))
    t[1, 2] = t[1, 0]
    t[3, 1] = -1
    h = rng.standard_normal((6, 5))
    ref = make_output("squared", 5, 30).bind(be, numpy.random.default_rng(0), numpy.float64)
    fact = make_output("factored-squared", 5, 30).bind(be, numpy.random.default_rng(0), numpy.float64)
    numpy.testing.assert_allclose(float(fact.forward(h, t)), float(ref.forward(h, t)), rtol=1e-12)
    numpy.testing.assert_allclose(fact.backward(), ref.backward(), rtol=1e-11, atol=1e-13)
    numpy.testing.assert_allclose(fact.loss_per_example(h, t), ref.loss_per_example(h, t), rtol=1e-12)


@pytest.mark.parametrize("loss", ["spherical", "taylor"])
def test_likelihood_is_normalised(loss):
    D = 25
    rng = numpy.random.default_rng(3)
    O = rng.standard_normal((3, D))
    member = make_loss(loss)
    lp = numpy.stack([member.log_prob(numpy, (O * O).sum(1), O.sum(1), O[:, c], D) for c in range(D)], 1)
    numpy.testing.assert_allclose(numpy.exp(lp).sum(1), 1.0, rtol=1e-12)


def test_unknown_member_and_bad_parameters():
    with pytest.raises(ValueError, match="unknown spherical-family loss"):
        make_loss("softmax")
    with pytest.raises(ValueError, match="eps"):
        make_loss("spherical", eps=0.0)
    for a in (0.0, -0.5):          # a scales z: a = 0 makes the Z-loss constant
        with pytest.raises(ValueError, match="a must be > 0"):
            make_loss("zloss", a=a)
    with pytest.raises(ValueError, match="targets"):
        targets_and_mask(numpy, numpy.zeros((2, 2, 2), int), 2, 10)
    assert set(LOSSES) >= {"squared", "spherical", "taylor", "zloss"}
