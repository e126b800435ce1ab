"""Embedding lookup with a row-sparse gradient.

Shapes: ids (B, N) int (N context positions), table E (V, D), y (B, N, D).
Backward returns nothing (ids are not differentiable) and stores the gradient of E as a
`RowSparseGrad(rows=ids.ravel(), values=dy.reshape(-1, D))`: only the rows named in the
minibatch, duplicates summed later by `coalesced()` (the scatter-add kernel on the GPU, a numba
loop on the CPU). A dense V x D zero matrix is never formed.
"""
from __future__ import annotations

from .base import Layer, RowSparseGrad


class Embedding(Layer):
    def __init__(self, num_embeddings: int, dim: int, init_scale: float = 0.1):
        super().__init__()
        if num_embeddings < 1 or dim < 1:
            raise ValueError(f"Embedding: sizes must be positive, got {num_embeddings} x {dim}")
        self.num_embeddings, self.dim, self.init_scale = int(num_embeddings), int(dim), init_scale
        self._ids = None

    def init_params(self, rng):
        s = self.init_scale
        return {"E": rng.uniform(-s, s, size=(self.num_embeddings, self.dim))}

    def forward(self, ids, train=True):
        self._ids = ids if train else None
        return self.backend.gather_rows(self.params["E"], ids.reshape(-1)).reshape(
            tuple(ids.shape) + (self.dim,))

    def backward(self, dy):
        ids = self._ids
        if ids is None:
            raise RuntimeError("Embedding.backward called without a forward(train=True)")
        self.grads["E"] = RowSparseGrad(ids.reshape(-1), dy.reshape(-1, self.dim),
                                        (self.num_embeddings, self.dim))
        self._ids = None
        return None

    def config(self):
        return {"num_embeddings": self.num_embeddings, "dim": self.dim,
                "init_scale": self.init_scale}
