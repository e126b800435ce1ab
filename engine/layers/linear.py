"""Dense affine layer y = x W^T + b.

Shapes: x (B, I), W (O, I) (one row per output unit, as in the meProp paper), b (O,), y (B, O).
Backward: dW = dy^T x (O, I), db = sum_b dy (O,), dx = dy W (B, I); the products go through
the backend's matmul (BLAS on the CPU, cuBLAS on the GPU).
"""
from __future__ import annotations

import numpy

from .base import Layer


class Linear(Layer):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str = "glorot"):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear: widths must be positive, got {in_features} -> {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.use_bias = bool(bias)
        self.init = init
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
        self.grads["W"] = dy.T @ x
        if self.use_bias:
            self.grads["b"] = dy.sum(axis=0)
        dx = dy @ self.params["W"]
        self._x = None
        return dx

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.use_bias, "init": self.init}
