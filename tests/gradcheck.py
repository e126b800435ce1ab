"""Float64 finite-difference checks shared by the tests.

`check_layer_gradients(layer, x, ...)` checks a layer's backward against a central-difference
directional derivative of L = sum(forward(x) * R) for a random R, along a random direction in
every parameter (and the input, when it is differentiable). `check_model_gradients` does the
same for a model's mean loss. Row-sparse gradients are densified for the comparison.
"""
from __future__ import annotations

import numpy

from engine.layers.base import RowSparseGrad


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

    def f():
        return (layer.forward(x, train=False, **forward_kwargs) * R).sum()

    for t in range(trials):
        arrays, dirs, analytic = [], [], 0.0
        for name, p in layer.params.items():
            d = be.asarray(rng.standard_normal(tuple(p.shape)))
            arrays.append(p), dirs.append(d)
            analytic += float((be.asarray(grads[name]) * d).sum())
        if differentiable_input and dx is not None:
            d = be.asarray(rng.standard_normal(tuple(x.shape)))
            arrays.append(x), dirs.append(d)
            analytic += float((dx * d).sum())
        numeric = _directional(f, arrays, dirs, eps)
        assert_directional_match(analytic, numeric, rtol=rtol, what=f"{type(layer).__name__} trial {t}")


def check_output_gradients(output, h, targets, seed=0, eps=1e-6, trials=3, rtol=1e-6):
    be = output.backend
    rng = numpy.random.default_rng(seed)
    output.forward(h, targets, train=True)
    dh = output.backward()
    grads = {k: dense_grad(be, g) for k, g in output.grads.items()}
    assert set(grads) == set(output.params)

    def f():
        return output.forward(h, targets, train=False)

    for t in range(trials):
        arrays, dirs, analytic = [], [], 0.0
        for name, p in output.params.items():
            d = be.asarray(rng.standard_normal(tuple(p.shape)))
            arrays.append(p), dirs.append(d)
            analytic += float((be.asarray(grads[name]) * d).sum())
        d = be.asarray(rng.standard_normal(tuple(h.shape)))
        arrays.append(h), dirs.append(d)
        analytic += float((dh * d).sum())
        numeric = _directional(f, arrays, dirs, eps)
        assert_directional_match(analytic, numeric, rtol=rtol, what=f"{type(output).__name__} trial {t}")


def check_model_gradients(model, x, targets, seed=0, eps=1e-6, trials=3, rtol=1e-6, key=(0, 1)):
    be = model.backend
    rng = numpy.random.default_rng(seed)
    model.set_random_key(*key)
    model.forward(x, targets, train=True)
    model.backward()
    items = model.param_items()
    grads = [dense_grad(be, layer.grads[name]) for _, layer, name in items]

    def f():
        model.set_random_key(*key)       # same dropout mask as the analytic pass
        return model.forward(x, targets, train=True)

    for t in range(trials):
        arrays, dirs, analytic = [], [], 0.0
        for (_, layer, name), g in zip(items, grads):
            p = layer.params[name]
            d = be.asarray(rng.standard_normal(tuple(p.shape)))
            arrays.append(p), dirs.append(d)
            analytic += float((be.asarray(g) * d).sum())
        numeric = _directional(f, arrays, dirs, eps)
        assert_directional_match(analytic, numeric, rtol=rtol, what=f"model trial {t}")
