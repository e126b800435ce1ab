"""Element-wise activations: tanh and ReLU (no parameters).

tanh: y = tanh(x), dx = dy * (1 - y^2) (from the cached output).
relu: y = max(x, 0), dx = dy * [x > 0] (from the cached output, y > 0 iff x > 0).
"""
from __future__ import annotations

from .base import Layer


class Tanh(Layer):
    def forward(self, x, train=True):
        y = self.backend.xp.tanh(x)
        self._y = y if train else None
        return y

    def backward(self, dy):
        y = self._y
        self._y = None
        return dy * (1 - y * y)


class ReLU(Layer):
    def forward(self, x, train=True):
        y = self.backend.xp.maximum(x, 0)
        self._y = y if train else None
        return y

    def backward(self, dy):
        y = self._y
        self._y = None
        return dy * (y > 0)


ACTIVATIONS = {"tanh": Tanh, "relu": ReLU}


def make_activation(name: str) -> Layer:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None
