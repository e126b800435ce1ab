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

How: forward is one sparse x dense product (SciPy's CSR matmul on the CPU; cuSPARSE SpMM via
cupyx on the GPU). Backward compacts x's column ids to 0..U-1 (unique with inverse), builds the
(B, U) CSR with the same data, and computes values = x_c^T dy (U, O), again a sparse x dense
product (cuSPARSE on the GPU). There is no input gradient: backward returns None (the input is
data, and a sparse input layer is always the first layer).

Input values are cast to the layer's dtype when they differ (a float32 file into a float64 model).
"""
from __future__ import annotations

import numpy

from .base import Layer, RowSparseGrad


def sparse_module(backend):
    """scipy.sparse for the NumPy backend, cupyx.scipy.sparse for the CuPy one."""
    if backend.xp is numpy:
        import scipy.sparse
        return scipy.sparse
    import cupyx.scipy.sparse
    return cupyx.scipy.sparse


def to_backend_csr(backend, x, dtype=None):
    """A host (SciPy) or device CSR matrix -> a CSR matrix of `backend` (cast to `dtype`)."""
    sp = sparse_module(backend)
    if sp.issparse(x) and x.format == "csr":
        out = x
    elif backend.xp is not numpy and hasattr(x, "tocsr") and hasattr(x, "indptr"):
        # cuSPARSE (through cupyx) takes int32 index arrays
        out = sp.csr_matrix((backend.asarray(x.data), backend.asarray(x.indices, numpy.int32),
                             backend.asarray(x.indptr, numpy.int32)), shape=x.shape)
    else:
        raise TypeError(f"expected a CSR matrix for the {backend.name} backend "
                        f"({sp.__name__}.csr_matrix), got {type(x).__module__}.{type(x).__name__}")
    if dtype is not None and out.dtype != dtype:
        out = out.astype(dtype)
    return out


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
        sp = sparse_module(self.backend)
        if not (sp.issparse(x) and x.format == "csr"):
            raise TypeError(f"SparseLinear: expected a CSR minibatch ({sp.__name__}.csr_matrix) "
                            f"for the {self.backend.name} backend, got "
                            f"{type(x).__module__}.{type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"SparseLinear: expected input (B, {self.in_features}), got "
                             f"{tuple(x.shape)}")
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        return x

    def forward(self, x, train=True):
        x = self._check_input(x)
        self._x = x if train else None
        y = x @ self.params["W"]                  # CSR x dense: SciPy / cuSPARSE SpMM
        y = self.backend.xp.asarray(y)            # (scipy may hand back a matrix subclass)
        if self.use_bias:
            y += self.params["b"]
        return y

    def backward(self, dy):
        x = self._x
        if x is None:
            raise RuntimeError("SparseLinear.backward called without a forward(train=True)")
        self._x = None
        xp = self.backend.xp
        rows, inverse = xp.unique(x.indices, return_inverse=True)   # the U features present
        inverse = inverse.reshape(-1).astype(x.indices.dtype)
        sp = sparse_module(self.backend)
        compact = sp.csr_matrix((x.data, inverse, x.indptr), shape=(x.shape[0], int(rows.shape[0])))
        values = xp.asarray(compact.T @ dy)      # (U, O)
        self.grads["W"] = RowSparseGrad(rows.astype(xp.int64), values,
                                        (self.in_features, self.out_features), unique=True)
        if self.use_bias:
            self.grads["b"] = dy.sum(axis=0)
        return None

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.use_bias, "init": self.init}
