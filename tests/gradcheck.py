"""Float64 finite-difference checks shared by the tests.

`check_layer_gradients(layer, x, ...)` checks a layer's backward against a central-difference
directional derivative of L = sum(forward(x) * R) for a random R, along a random direction in
every parameter (and the input, when it is differentiable). `check_model_gradients` does the
same for a model's mean loss. Row-sparse gradients are densified for the comparison.
"""
from __future__ import annotations

import numpy

from engine.row_sparse import RowSparseGrad


def dense_grad(backend, g):
    if isinstance(g, RowSparseGrad):
        return backend.to_host(g.to_dense(backend))
    return backend.to_host(g)


def _directional(f, arrays, directions, eps):
    """(f(a + eps d) - f(a - eps d)) / (2 eps), perturbing every array in place and restoring it."""
    for a, d in zip(arrays, directions):
        a += eps * d
    fp = float(f())
    for a, d in zip(arrays, directions):
        a -= 2 * eps * d
    fm = float(f())
    for a, d in zip(arrays, directions):
        a += eps * d
    return (fp - fm) / (2 * eps)


def assert_directional_match(analytic, numeric, rtol=1e-6, atol=1e-9, what=""):
    assert numpy.isfinite(analytic) and numpy.isfinite(numeric), (what, analytic, numeric)
    assert abs(analytic - numeric) <= atol + rtol * max(abs(analytic), abs(numeric)), (
        f"{what}: analytic {analytic!r} vs finite-difference {numeric!r}")


def _check_directions(be, rng, f, pairs, trials, eps, rtol, what):
    """For `trials` random directions d over every (array, analytic gradient) pair, compare
    sum <grad, d> with the central difference of f along d."""
    for t in range(trials):
        dirs = [be.asarray(rng.standard_normal(tuple(a.shape))) for a, _ in pairs]
        analytic = sum(float((be.asarray(g) * d).sum()) for (_, g), d in zip(pairs, dirs))
        numeric = _directional(f, [a for a, _ in pairs], dirs, eps)
        assert_directional_match(analytic, numeric, rtol=rtol, what=f"{what} trial {t}")


def check_layer_gradients(layer, x, seed=0, eps=1e-6, differentiable_input=True, trials=3,
                          rtol=1e-6, forward_kwargs=None):
    be = layer.backend
    rng = numpy.random.default_rng(seed)
    forward_kwargs = forward_kwargs or {}
    y = layer.forward(x, train=True, **forward_kwargs)
    R = be.asarray(rng.standard_normal(tuple(y.shape)))
    dx = layer.backward(R)
    grads = {k: dense_grad(be, g) for k, g in layer.grads.items()}
    assert set(grads) == set(layer.params), f"grads {sorted(grads)} vs params {sorted(layer.params)}"
    pairs = [(p, grads[name]) for name, p in layer.params.items()]
    if differentiable_input and dx is not None:
        pairs.append((x, dx))
    _check_directions(be, rng, lambda: (layer.forward(x, train=False, **forward_kwargs) * R).sum(),
                      pairs, trials, eps, rtol, type(layer).__name__)


def check_output_gradients(output, h, targets, seed=0, eps=1e-6, trials=3, rtol=1e-6):
    be = output.backend
    rng = numpy.random.default_rng(seed)
    output.forward(h, targets, train=True)
    dh = output.backward()
    grads = {k: dense_grad(be, g) for k, g in output.grads.items()}
    assert set(grads) == set(output.params)
    pairs = [(p, grads[name]) for name, p in output.params.items()] + [(h, dh)]
    _check_directions(be, rng, lambda: output.forward(h, targets, train=False),
                      pairs, trials, eps, rtol, type(output).__name__)


def check_model_gradients(model, x, targets, seed=0, eps=1e-6, trials=3, rtol=1e-6, key=(0, 1)):
    be = model.backend
    rng = numpy.random.default_rng(seed)
    model.set_random_key(*key)
    model.forward(x, targets, train=True)
    model.backward()
    pairs = [(layer.params[name], dense_grad(be, layer.grads[name]))
             for _, layer, name in model.param_items()]

    def f():
        model.set_random_key(*key)       # same dropout mask as the analytic pass
        return model.forward(x, targets, train=True)

    _check_directions(be, rng, f, pairs, trials, eps, rtol, "model")
