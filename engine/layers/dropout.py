"""Inverted dropout: y = x * mask / (1 - p) while training, identity otherwise.

The mask is drawn from counter-based random numbers keyed by (seed, step, layer_id)
(`backend.uniform`), so it is the same on CPU and GPU and a resumed run draws the masks the
uninterrupted run would have drawn. The model sets `self.key` (seed, step) before each forward,
and `self.row_offset`: x's rows are rows row_offset ... of the global minibatch (a rank's share
in a distributed run draws exactly those rows of the single-process mask).
"""
from __future__ import annotations

import numpy

from .base import Layer


class Dropout(Layer):
    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        self.key = (0, 0)
        self._mask = None

    def forward(self, x, train=True):
        if not train or self.p == 0.0:
            self._mask = None
            return x
        per_row = int(numpy.prod(x.shape[1:], dtype=numpy.int64))
        u = self.backend.uniform(tuple(x.shape), tuple(self.key) + (self.layer_id,), x.dtype,
                                 offset=self.row_offset * per_row)
        self._mask = (u >= self.p).astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self._mask

    def backward(self, dy):
        if self._mask is None:
            return dy
        dx = dy * self._mask
        self._mask = None
        return dx

    def config(self):
        return {"p": self.p}
