"""Dense affine layer y = x W^T + b.

Shapes: x (B, I), W (O, I) (one row per output unit, as in the meProp paper), b (O,), y (B, O).
Backward: dW = dy^T x (O, I), db = sum_b dy (O,), dx = dy W (B, I); the products go through
the backend's matmul (BLAS on the CPU, cuBLAS on the GPU).

meProp (`meprop={"k": K, "mode": "per-example"|"unified"|"random", "seed": s}`, see
meprop.py): when K < O the backward keeps K entries of each row of dy, dW becomes a
RowSparseGrad over the selected rows and dx reads only those rows of W; db still uses the full
dy. With K >= O (or meprop=None) the backward is the plain one above, bit for bit. The random
mode's pattern is keyed by (seed, self.key = (model seed, step) set by Model.set_random_key,
layer_id, backward calls since the key last changed).

`input_grad=False` (the first layer of a model, whose input needs no gradient) skips the dx
product, the larger half of a dense backward's work for a wide input; backward returns None.
"""
from __future__ import annotations

import numpy

from .base import Layer
from .meprop import check_config, meprop_backward


class Linear(Layer):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str = "glorot", meprop: dict | None = None, input_grad: bool = True):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear: widths must be positive, got {in_features} -> {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.use_bias = bool(bias)
        self.init = init
        self.meprop = check_config(meprop)
        self.input_grad = bool(input_grad)   # False: backward returns None (first layer of a
        #                                      model: no one needs d loss / d input)
        self.key = (0, 0)                # (model seed, step), set by Model.set_random_key
        self._meprop_calls = 0           # backward calls under the current key (random mode)
        self._meprop_key = None
        self._x = None

    def init_params(self, rng):
        fan_in, fan_out = self.in_features, self.out_features
        if self.init == "glorot":
            a = numpy.sqrt(6.0 / (fan_in + fan_out))
        elif self.init == "lecun":
            a = numpy.sqrt(3.0 / fan_in)
        else:
            raise ValueError(f"Linear: unknown init {self.init!r} (glorot, lecun)")
        params = {"W": rng.uniform(-a, a, size=(fan_out, fan_in))}
        if self.use_bias:
            params["b"] = numpy.zeros(fan_out)
        return params

    def forward(self, x, train=True):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear: expected input (B, {self.in_features}), got {tuple(x.shape)}")
        self._x = x if train else None
        y = x @ self.params["W"].T
        if self.use_bias:
            y += self.params["b"]
        return y

    def backward(self, dy):
        x = self._x
        if x is None:
            raise RuntimeError("Linear.backward called without a forward(train=True)")
        if self.meprop is not None and self.meprop["k"] < self.out_features:
            # a rank's share of a minibatch draws its rows' random selections (engine/distributed)
            shared = {"row_offset": self.row_offset} if self.row_offset else {}
            self.grads["W"], dx = meprop_backward(self.backend, dy, x, self.params["W"],
                                                  self.meprop, self._meprop_random_key(),
                                                  need_dx=self.input_grad, **shared)
        else:
            self.grads["W"] = dy.T @ x
            dx = dy @ self.params["W"] if self.input_grad else None
        if self.use_bias:
            self.grads["b"] = dy.sum(axis=0)     # the full dy, also under meProp
        self._x = None
        return dx

    def _meprop_random_key(self):
        key = tuple(int(v) for v in self.key)
        if key != self._meprop_key:
            self._meprop_key, self._meprop_calls = key, 0
        self._meprop_calls += 1
        return (self.meprop["seed"],) + key + (self.layer_id, self._meprop_calls)

    def config(self):
        cfg = {"in_features": self.in_features, "out_features": self.out_features,
               "bias": self.use_bias, "init": self.init}
        if self.meprop is not None:
            cfg["meprop"] = dict(self.meprop)
        if not self.input_grad:
            cfg["input_grad"] = False
        return cfg
