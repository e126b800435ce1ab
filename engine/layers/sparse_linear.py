"""Affine layer over a sparse (CSR) input: y = x W + b, with a row-sparse weight gradient.

Shapes: x (B, I) CSR (scipy.sparse.csr_matrix on the CPU, cupyx.scipy.sparse.csr_matrix on the
GPU), W (I, O), b (O,), y (B, O) dense. Dimension letters: B batch rows, I input features
(bag-of-words vocabulary, e.g. 135,909 for Amazon-670K), O output units, U features present in
the minibatch (distinct column ids of x).

Layout: unlike `Linear` (W (O, I), one row per output unit), W here is stored as (I, O), one row
per *input feature*, so that the gradient over the features of a minibatch is a set of rows:
    dW = x^T dy  is zero except on the U rows of the features present in x,
and is returned as `RowSparseGrad(rows (U,), values (U, O))` (rows unique and ascending), which
the optimizers update lazily (Adam/SGD on those rows only). A dense I x O gradient never exists.
The equivalent `Linear` has W_linear = W.T.

How (backend primitives, engine/backend/numpy_sparse.py and cupy_sparse.py): forward is one
sparse x dense product `backend.csr_matmul(x, W)` (SciPy on the CPU; cuSPARSE SpMM on the GPU,
W read in place, never copied). Backward compacts x's column ids to 0..U-1
(`backend.unique_inverse`: one host read, U), builds the (B, U) CSR with the same data (still
canonical: the compaction is monotone) and computes values = x_c^T dy (U, O), again one sparse x
dense product. There is no input gradient: backward returns None (the input is data, and a
sparse input layer is always the first layer).

Input values are cast to the layer's dtype when they differ (a float32 file into a float64 model).
"""
from __future__ import annotations

import numpy

from .base import Layer, RowSparseGrad


def to_backend_csr(backend, x, dtype=None):
    """A host (SciPy) or device CSR matrix -> a canonical CSR matrix of `backend` (cast to
    `dtype`); see `Backend.to_device_csr`."""
    return backend.to_device_csr(x, dtype)


class SparseLinear(Layer):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: str = "glorot"):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"SparseLinear: widths must be positive, got {in_features} -> "
                             f"{out_features}")
        if init not in ("glorot", "lecun"):
            raise ValueError(f"SparseLinear: unknown init {init!r} (glorot, lecun)")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.use_bias = bool(bias)
        self.init = init
        self._x = None

    def init_params(self, rng):
        fan_in, fan_out = self.in_features, self.out_features
        a = numpy.sqrt(6.0 / (fan_in + fan_out)) if self.init == "glorot" else numpy.sqrt(3.0 / fan_in)
        params = {"W": rng.uniform(-a, a, size=(fan_in, fan_out))}      # (I, O): see docstring
        if self.use_bias:
            params["b"] = numpy.zeros(fan_out)
        return params

    def _check_input(self, x):
        if not self.backend.is_csr(x):
            raise TypeError(f"SparseLinear: expected a CSR minibatch of the {self.backend.name} "
                            f"backend (backend.to_device_csr), got "
                            f"{type(x).__module__}.{type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"SparseLinear: expected input (B, {self.in_features}), got "
                             f"{tuple(x.shape)}")
        if x.dtype != self.dtype:
            x = self.backend.to_device_csr(x, self.dtype)
        return x

    def forward(self, x, train=True):
        x = self._check_input(x)
        self._x = x if train else None
        y = self.backend.csr_matmul(x, self.params["W"])      # (B, O)
        if self.use_bias:
            y += self.params["b"]
        return y

    def backward(self, dy):
        x = self._x
        if x is None:
            raise RuntimeError("SparseLinear.backward called without a forward(train=True)")
        self._x = None
        be = self.backend
        rows, inverse = be.unique_inverse(x.indices)              # the U features present
        compact = be.csr_matrix(x.data, inverse.astype(x.indices.dtype), x.indptr,
                                (x.shape[0], int(rows.shape[0])))
        values = be.xp.ascontiguousarray(be.csr_matmul(compact, dy, transpose_a=True))  # (U, O)
        self.grads["W"] = RowSparseGrad(rows.astype(be.xp.int64), values,
                                        (self.in_features, self.out_features), unique=True)
        if self.use_bias:
            self.grads["b"] = dy.sum(axis=0)
        return None

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.use_bias, "init": self.init}
