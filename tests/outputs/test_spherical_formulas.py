"""Every member of the spherical family against its definition, written out here from a dense W.

The factored layers (engine/outputs/factored.py) and their dense references
(engine/outputs/spherical_dense.py, and the `squared` output) all compute the loss through
engine/outputs/spherical_family.py, so comparing them with each other cannot find a wrong
formula there. This file computes O = h W^T (B, D) in float64 and each loss from its
definition, term by term, without q or s:

    squared    l = sum_j (o_j - y_j)^2                         y K-hot, with multiplicities
    spherical  p_c = (o_c^2 + eps) / sum_j (o_j^2 + eps)       l = -sum_k log p_{t_k}
    taylor     p_c = f(o_c) / sum_j f(o_j), f(o) = 1 + o + o^2/2,  l = -sum_k log p_{t_k}
    zloss      mu = mean_j o_j, sigma = sqrt(mean_j (o_j - mu)^2), z_c = (o_c - mu) / sigma,
               l = sum_k softplus(a (b - z_{t_k})) / a          (de Brebisson & Vincent 2016)

and checks, for the dense reference and for the factored layer (after a few exact SGD steps, so
V U + 1 a^T is a general W): the mean loss, the per-example loss, `log_prob`, -log_prob = loss for
one-hot targets, K-hot targets with a repeated label and -1 padding, the top-k ranking, and the
gradients (dh, and dW of the dense layer) against central differences of these formulas.
"""
from __future__ import annotations

import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from engine.backend import Backend
from engine.outputs import make_output

D, d, B = 40, 6, 7
RTOL = 1e-10

# (member, its keyword arguments); eps = 0.1 makes D eps comparable to q
MEMBERS = [("squared", {}), ("spherical", {}), ("spherical", {"eps": 0.1}), ("taylor", {}),
           ("zloss", {}), ("zloss", {"a": 1.0, "b": 2.0})]
DENSE = {"squared": "squared", "spherical": "spherical-dense", "taylor": "taylor-dense",
         "zloss": "zloss-dense"}
LIKELIHOOD = {"spherical", "taylor"}


# ------------------------------------------------------------------ the definitions
def per_target_terms(member, kw, O, t2):
    """(B, K) loss term of each target column t2[b, k] (no validity applied); squared excluded."""
    oc = numpy.take_along_axis(O, t2, axis=1)
    if member == "spherical":
        eps = kw.get("eps", 1e-3)
        num = oc ** 2 + eps
        den = numpy.array([sum(o_j ** 2 + eps for o_j in row) for row in O])
        return -numpy.log(num / den[:, None])
    if member == "taylor":
        def f(o):
            return 1.0 + o + o ** 2 / 2.0
        den = numpy.array([sum(f(o_j) for o_j in row) for row in O])
        return -numpy.log(f(oc) / den[:, None])
    if member == "zloss":
        a, b = kw.get("a", 0.1), kw.get("b", 10.0)
        mu = O.mean(axis=1)
        sigma = numpy.sqrt(((O - mu[:, None]) ** 2).mean(axis=1))
        z = (oc - mu[:, None]) / sigma[:, None]
        return numpy.log1p(numpy.exp(a * (b - z))) / a
    raise ValueError(member)


def loss_per_example(member, kw, W, h, targets):
    """(B,) loss of each example from the definitions above; targets (B,) or (B, K), -1 = none."""
    O = h @ W.T
    t = targets.reshape(len(targets), -1)
    valid = t >= 0
    t2 = numpy.where(valid, t, 0)
    if member == "squared":
        Y = numpy.zeros_like(O)
        for b_, row in enumerate(t):
            for c in row:
                if c >= 0:
                    Y[b_, c] += 1.0
        return ((O - Y) ** 2).sum(axis=1)
    return (per_target_terms(member, kw, O, t2) * valid).sum(axis=1)


def log_prob(member, kw, W, h, targets):
    O = h @ W.T
    return -per_target_terms(member, kw, O, targets.reshape(-1, 1))[:, 0]


def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar f at x, entry by entry (small arrays only)."""
    g = numpy.zeros_like(x)
    for i in numpy.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f()
        x[i] = old - eps
        down = f()
        x[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


# ------------------------------------------------------------------ the layers under test
def dense_layer(member, kw, W):
    lkw = {"loss_kwargs": kw} if kw and member != "squared" else {}
    layer = make_output(DENSE[member], d, D, **lkw).bind(Backend(), numpy.random.default_rng(0),
                                                        numpy.float64)
    layer.params["W"][...] = W
    return layer


def factored_layer(member, kw, steps=12):
    """A factored layer after `steps` exact SGD steps (U != I, and a != 0 where s is used)."""
    layer = make_output(f"factored-{member}", d, D, check_every=0, loss_kwargs=kw).bind(
        Backend(), numpy.random.default_rng(1), numpy.float64)
    rng = numpy.random.default_rng(2)
    for _ in range(steps):
        h = rng.standard_normal((5, d)) * 0.3
        layer.forward(h, rng.integers(0, D, size=(5, 2)))
        layer.backward()
        layer.apply_update(0.05)
    assert not numpy.allclose(layer.params["U"], numpy.eye(d))
    return layer


def data(seed=3, K=3):
    rng = numpy.random.default_rng(seed)
    h = rng.standard_normal((B, d))
    t1 = rng.integers(0, D, size=B)
    tk = rng.integers(0, D, size=(B, K))
    tk[0, 1] = tk[0, 0]            # a label named twice counts twice
    tk[1, 2] = -1                  # padding
    tk[2, :] = [5, -1, -1]
    return h, t1, tk


def _ids(member):
    return [f"{m}-{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'default'}" for m, kw in member]


@pytest.mark.parametrize("member,kw", MEMBERS, ids=_ids(MEMBERS))
@pytest.mark.parametrize("kind", ["dense", "factored"])
def test_loss_and_log_prob_match_the_definition(member, kw, kind):
    if kind == "dense":
        W = numpy.random.default_rng(4).uniform(-0.5, 0.5, size=(D, d))
        layer = dense_layer(member, kw, W)
    else:
        layer = factored_layer(member, kw)
        W = layer.dense_weight()
    h, t1, tk = data()
    for t in (t1, tk):
        ref = loss_per_example(member, kw, W, h, t)
        assert_allclose(layer.loss_per_example(h, t), ref, rtol=RTOL)
        assert float(layer.forward(h, t, train=False)) == pytest.approx(ref.mean(), rel=RTOL)
    assert layer.has_likelihood == (member in LIKELIHOOD)
    if member in LIKELIHOOD:
        lp = layer.log_prob(h, t1)
        assert_allclose(lp, log_prob(member, kw, W, h, t1), rtol=RTOL)
        # one-hot targets: the loss is exactly the negative log-likelihood
        assert_allclose(layer.loss_per_example(h, t1), -lp, rtol=RTOL)
        # a distribution: the probabilities of all D classes sum to one
        every = numpy.stack([layer.log_prob(h, numpy.full(B, c)) for c in range(D)], axis=1)
        assert_allclose(numpy.exp(every).sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("member,kw", MEMBERS, ids=_ids(MEMBERS))
@pytest.mark.parametrize("kind", ["dense", "factored"])
def test_top_k_ranks_by_the_definition(member, kw, kind):
    if kind == "dense":
        W = numpy.random.default_rng(5).uniform(-0.5, 0.5, size=(D, d))
        layer = dense_layer(member, kw, W)
    else:
        layer = factored_layer(member, kw)
        W = layer.dense_weight()
    h, _, _ = data(seed=6)
    O = h @ W.T
    if member in LIKELIHOOD:    # the most probable classes
        score = numpy.stack([log_prob(member, kw, W, h, numpy.full(B, c)) for c in range(D)], 1)
    else:                       # the largest outputs (z grows with o; squared error is a score)
        score = O
    ids, _ = layer.predict_topk(h, 4)
    assert_array_equal(numpy.asarray(ids), numpy.argsort(-score, axis=1, kind="stable")[:, :4])


@pytest.mark.parametrize("member,kw", MEMBERS, ids=_ids(MEMBERS))
@pytest.mark.parametrize("K", [1, 3])
def test_dense_gradients_match_differences_of_the_definition(member, kw, K):
    """dh and dW of the dense reference = central differences of the mean loss written above."""
    W = numpy.random.default_rng(7).uniform(-0.5, 0.5, size=(D, d))
    layer = dense_layer(member, kw, W)
    h, t1, tk = data(seed=8)
    t = t1 if K == 1 else tk
    layer.forward(h.copy(), t)
    dh = layer.backward()
    dW = layer.grads["W"]
    mean = lambda: loss_per_example(member, kw, W, h, t).mean()
    assert_allclose(dh, numeric_grad(mean, h), rtol=1e-6, atol=1e-8)
    assert_allclose(dW, numeric_grad(mean, W), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("member,kw", MEMBERS, ids=_ids(MEMBERS))
def test_factored_dh_matches_differences_of_the_definition(member, kw):
    layer = factored_layer(member, kw)
    W = layer.dense_weight()
    h, _, tk = data(seed=9)
    layer.forward(h, tk)
    dh = layer.backward()
    layer._pending = None                       # no update: only the gradient is checked
    mean = lambda: loss_per_example(member, kw, W, h, tk).mean()
    assert_allclose(dh, numeric_grad(mean, h), rtol=1e-6, atol=1e-8)


def test_zloss_docstring_matches_the_paper_definition():
    """The implementation's sigma^2 = q/D - (s/D)^2 is the population variance of o."""
    O = numpy.random.default_rng(10).standard_normal((3, D))
    q, s = (O ** 2).sum(axis=1), O.sum(axis=1)
    assert_allclose(q / D - (s / D) ** 2, O.var(axis=1), rtol=1e-12)
