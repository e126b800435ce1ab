"""Sparse (CSR) primitives: the NumPy/SciPy reference of SparseLinear's products, the loaders'
CSR conversion and meProp's per-example products.

Dimension letters: B batch rows, I input features, O outputs, U distinct selected rows/features,
K entries kept per row (meProp).

    is_csr(x)                       True for a CSR matrix of this backend
    csr_matrix(data, indices, indptr, shape)
                                    a CSR of this backend from its three arrays, which the caller
                                    guarantees canonical (indices sorted within a row, no
                                    duplicates): the GPU then never re-checks them (no host read)
    to_device_csr(x, dtype)         a host (SciPy) or own CSR -> this backend's canonical CSR
    csr_matmul(a, b, transpose_a)   op(a) @ b, dense (rows, cols); b is never copied on the GPU
    meprop_products(idx, vals, x, W, need_dx)
                                    dy~ = the (B, O) matrix with vals (B, K) at idx (B, K)
                                    (ascending per row): (rows_u (U,), dW_u = dy~[:, rows_u]^T x
                                    (U, I), dx = dy~ W (B, I) or None); reads only the selected
                                    rows of W

SciPy is imported inside the methods (it is a test extra; the engine without sparse data does not
need it). GPU: cupy_sparse.py (cuSPARSE SpMM on transposed views of the dense operands).
"""
from __future__ import annotations

import numpy

from . import cpu_sparse


class SparsePrimitives:
    """Mixin of `Backend`: CSR matrices and their products."""

    def is_csr(self, x):
        """True when `x` is a CSR matrix of this backend (scipy.sparse here)."""
        import scipy.sparse
        return scipy.sparse.issparse(x) and x.format == "csr"

    def csr_matrix(self, data, indices, indptr, shape):
        """A (rows, cols) CSR of this backend over the given arrays (no copy where avoidable);
        they must be canonical: sorted column indices within each row, no duplicates."""
        import scipy.sparse
        return scipy.sparse.csr_matrix((data, indices, indptr), shape=tuple(shape))

    def to_device_csr(self, x, dtype=None):
        """A CSR minibatch as this backend's CSR (cast to `dtype` when given); TypeError for
        anything else. Here: a scipy.sparse CSR, returned as it is."""
        if not self.is_csr(x):
            raise TypeError(f"expected a CSR matrix for the {self.name} backend "
                            f"(scipy.sparse.csr_matrix), got {type(x).__module__}."
                            f"{type(x).__name__}")
        if dtype is not None and x.dtype != dtype:
            x = x.astype(dtype)
        return x

    def csr_matmul(self, a, b, transpose_a=False):
        """op(a) @ b as a dense array (op = transpose when `transpose_a`); a a CSR of this
        backend, b a dense 2-D array."""
        return numpy.asarray((a.T if transpose_a else a) @ b)

    def meprop_products(self, idx_bk, vals_bk, x_bi, W_oi, need_dx=True):
        """meProp per-example backward products of a linear layer y = x W^T (see the module
        docstring): (rows_u (U,) int64 ascending, dW_u (U, I), dx (B, I) or None). One host
        read: U, which sizes dW_u (a device backend transfers it; counted here alike, so that
        both backends declare the same reads)."""
        self.host_reads += 1
        return cpu_sparse.products(idx_bk, vals_bk, x_bi, W_oi, need_dx)
