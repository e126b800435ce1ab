"""The output bias of the spherical-family layers (`bias=True`): the dense reference's db against
float64 finite differences, and the factored layer (a constant 1 appended to h, state of width
d + 1) equal to the dense layer with a bias over many exact SGD steps, K = 1 and K-hot, with the
bias really learnt (it starts at 0 and ends far from it)."""
from __future__ import annotations

import numpy
import pytest

from devices import make_backend, to_host
from gradcheck import check_output_gradients
from engine.outputs import make_output

DENSE = {"squared": "squared", "spherical": "spherical-dense", "taylor": "taylor-dense",
         "zloss": "zloss-dense"}


@pytest.mark.parametrize("name", ["spherical-dense", "taylor-dense", "zloss-dense"])
@pytest.mark.parametrize("K", [1, 3])
def test_dense_bias_gradients(name, K):
    be = make_backend("numpy")
    out = make_output(name, 6, 40, bias=True).bind(be, numpy.random.default_rng(0), numpy.float64)
    out.params["b"][...] = numpy.random.default_rng(5).standard_normal(40) * 0.3
    rng = numpy.random.default_rng(1)
    h = rng.standard_normal((4, 6))
    t = rng.integers(0, 40, size=(4, K)) if K > 1 else rng.integers(0, 40, size=4)
    check_output_gradients(out, h, t)
    assert "b" in out.grads and float(numpy.abs(out.grads["b"]).max()) > 0


@pytest.mark.parametrize("loss,lr", [("squared", 0.05), ("spherical", 0.02), ("taylor", 0.05),
                                     ("zloss", 0.5)])
@pytest.mark.parametrize("K", [1, 3])
def test_factored_bias_matches_dense_bias(loss, lr, K):
    be = make_backend("numpy")
    B, D, d, steps = 10, 300, 12, 300
    dense = make_output(DENSE[loss], d, D, bias=True).bind(be, numpy.random.default_rng(1),
                                                           numpy.float64)
    fact = make_output(f"factored-{loss}", d, D, bias=True, check_every=50).bind(
        be, numpy.random.default_rng(1), numpy.float64)
    numpy.testing.assert_array_equal(fact.dense_weight(), dense.params["W"])
    numpy.testing.assert_array_equal(fact.dense_bias(), numpy.zeros(D))
    rng = numpy.random.default_rng(0)
    for step in range(steps):
        h = rng.standard_normal((B, d)) * 0.3
        t = rng.integers(0, D // 3, size=(B, K))          # a skewed target set: biases matter
        if K > 1:
            t[0, 1] = t[0, 0]
            t[1, K - 1] = -1
        else:
            t = t[:, 0]
        ld = float(dense.forward(h, t))
        dhd = dense.backward()
        fact.prepare_update(lr)
        lf = float(fact.forward(h, t))
        dhf = fact.backward()
        fact.apply_update(lr)
        assert dhf.shape == (B, d)
        numpy.testing.assert_allclose(lf, ld, rtol=1e-9)
        numpy.testing.assert_allclose(dhf, dhd, rtol=1e-8, atol=1e-11)
        for key in ("W", "b"):
            dense.params[key] -= lr * dense.grads[key]
    numpy.testing.assert_allclose(fact.dense_weight(), dense.params["W"], rtol=1e-9, atol=1e-11)
    numpy.testing.assert_allclose(fact.dense_bias(), dense.params["b"], rtol=1e-9, atol=1e-11)
    assert float(numpy.abs(dense.params["b"]).max()) > 1e-2
    # evaluation paths see the bias too
    h = rng.standard_normal((B, d)) * 0.3
    t = rng.integers(0, D, size=B)
    numpy.testing.assert_allclose(fact.loss_per_example(h, t), dense.loss_per_example(h, t),
                                  rtol=1e-9)
    if loss in ("spherical", "taylor"):
        numpy.testing.assert_allclose(fact.log_prob(h, t), dense.log_prob(h, t), rtol=1e-9)
        ids_f, vals_f = fact.predict_topk(h, 5, chunk_size=64)
        ids_d, vals_d = dense.predict_topk(h, 5)
        numpy.testing.assert_array_equal(to_host(ids_f), to_host(ids_d))


def test_bias_is_saved_and_restored():
    be = make_backend("numpy")
    out = make_output("factored-spherical", 8, 50, bias=True).bind(
        be, numpy.random.default_rng(0), numpy.float64)
    assert out.config()["bias"] is True and out.params["V"].shape == (50, 9)
    again = make_output("factored-spherical", 8, 50, **out.rebuild_kwargs()).bind(
        be, numpy.random.default_rng(3), numpy.float64)
    again.load_state_dict(out.state_dict())
    h = numpy.random.default_rng(1).standard_normal((4, 8))
    numpy.testing.assert_array_equal(again.log_prob(h, numpy.arange(4)), out.log_prob(h, numpy.arange(4)))
