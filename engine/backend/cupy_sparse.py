"""GPU sparse products (numpy_sparse.py has the reference): cuSPARSE SpMM on transposed views.

cupyx's `csr @ dense` copies the dense operand to Fortran order and calls `sum_duplicates()`
(a kernel and a host read) on every product: for meProp on a 670,091 x 512 softmax that is the
whole weight copied per backward. Here instead:

  * every CSR the engine builds is canonical by construction (sorted column indices within a
    row, no duplicates: the loader sorts on the host, meProp's top-k ids come out ascending, a
    compaction of column ids is monotone), and is marked so (`has_canonical_format`), so cuSPARSE
    never re-checks it on the device; it is assembled with cupyx's `_from_parts` where CuPy has it
    (14.x: no host read), else with the public constructor (one read of indptr's ends);
  * `csr_matmul(a, b)` hands cuSPARSE SpMM the dense operand as it lies: b itself when it is
    F-contiguous, else b^T (an F-contiguous view of a C-contiguous b) with op(B) = transpose. No
    copy of b: a product with a weight matrix reads only the rows the sparse side selects.
    The result is F-ordered (cuSPARSE writes column-major C).

Syncs: none in csr_matrix, to_device_csr and csr_matmul; meprop_products reads one number (U,
the distinct selected rows, which sizes the row-sparse gradient; in `unique_inverse`).
"""
from __future__ import annotations

import numpy

_INT32_MAX = 2 ** 31 - 1


def _index_dtype(*sizes):
    """int32 when every size fits (cuSPARSE's fastest), else int64."""
    return numpy.int32 if max(int(s) for s in sizes) <= _INT32_MAX else numpy.int64


class CupySparse:
    """Mixin of `CupyBackend`: cupyx CSR matrices and cuSPARSE SpMM."""

    def is_csr(self, x):
        import cupyx.scipy.sparse
        return cupyx.scipy.sparse.issparse(x) and x.format == "csr"

    def csr_matrix(self, data, indices, indptr, shape):
        xp = self.xp
        rows, cols = (int(s) for s in shape)
        it = _index_dtype(rows, cols, data.shape[0])
        data = xp.ascontiguousarray(data)
        if data.dtype not in (numpy.float32, numpy.float64):
            data = data.astype(numpy.float64)
        indices = xp.ascontiguousarray(indices.astype(it, copy=False))
        indptr = xp.ascontiguousarray(indptr.astype(it, copy=False))
        return self._csr_from_parts(data, indices, indptr, (rows, cols))

    def _csr_from_parts(self, data, indices, indptr, shape):
        """A canonical cupyx CSR over the arrays (no copy), flagged canonical."""
        from cupyx.scipy import sparse
        make = getattr(sparse.csr_matrix, "_from_parts", None)
        if make is not None:        # CuPy 14: validates shapes and dtypes only, no host read
            return make(data, indices, indptr, tuple(shape), has_canonical_format=True)
        matrix = sparse.csr_matrix((data, indices, indptr), shape=tuple(shape))  # reads indptr
        matrix.has_canonical_format = True
        return matrix

    def to_device_csr(self, x, dtype=None):
        if self.is_csr(x):
            if not x.has_canonical_format:      # ours are flagged; a foreign one is checked once
                x = x.copy()
                x.sum_duplicates()
            if dtype is not None and x.dtype != dtype:
                x = self._csr_from_parts(x.data.astype(dtype), x.indices, x.indptr, x.shape)
            return x
        if getattr(x, "format", None) != "csr" or not hasattr(x, "indptr"):
            raise TypeError(f"expected a CSR matrix for the {self.name} backend (a "
                            f"scipy.sparse or cupyx.scipy.sparse csr_matrix), got "
                            f"{type(x).__module__}.{type(x).__name__}")
        if not x.has_canonical_format:          # SciPy checks on the host: no device involved
            x = x.copy()
            x.sum_duplicates()
        it = _index_dtype(x.shape[0], x.shape[1], x.nnz)
        data = numpy.asarray(x.data, dtype=dtype if dtype is not None else None)
        if data.dtype not in (numpy.float32, numpy.float64):
            data = data.astype(numpy.float64)
        return self._csr_from_parts(self.asarray(data),
                                    self.asarray(numpy.asarray(x.indices, dtype=it)),
                                    self.asarray(numpy.asarray(x.indptr, dtype=it)), x.shape)

    def csr_matmul(self, a, b, transpose_a=False):
        from cupyx import cusparse
        self.check_array(b, "csr_matmul: b")
        if a.dtype != b.dtype:                   # cast the (small) sparse side, never b
            a = self._csr_from_parts(a.data.astype(b.dtype), a.indices, a.indptr, a.shape)
        if b.flags.f_contiguous:
            return cusparse.spmm(a, b, transa=bool(transpose_a))
        if b.flags.c_contiguous:                 # b^T is an F-contiguous view: no copy
            return cusparse.spmm(a, b.T, transa=bool(transpose_a), transb=True)
        return cusparse.spmm(a, self.xp.asfortranarray(b), transa=bool(transpose_a))

    def meprop_products(self, idx_bk, vals_bk, x_bi, W_oi, need_dx=True):
        """cuSPARSE: dx = CSR(dy~) (B, O) @ W (reads only the selected rows of W, no copy of W);
        dW_u = CSR(dy~ with columns renumbered to the U distinct ids)^T (U, B) @ x. One host read
        (U)."""
        xp = self.xp
        n_b, n_k = idx_bk.shape
        n_o = W_oi.shape[0]
        dt = W_oi.dtype
        flat = idx_bk.reshape(-1)
        data = xp.ascontiguousarray(vals_bk.reshape(-1), dtype=dt)
        it = _index_dtype(n_b, n_o, flat.shape[0])
        indptr = xp.arange(0, n_b * n_k + 1, n_k, dtype=it)
        dx = None
        if need_dx:        # each row's ids ascend (topk order="index"): canonical
            A = self._csr_from_parts(data, xp.ascontiguousarray(flat.astype(it)), indptr,
                                     (n_b, n_o))
            dx = xp.ascontiguousarray(self.csr_matmul(A, W_oi))
        rows_u, inverse = self.unique_inverse(flat)                  # one host read: U
        compact = self._csr_from_parts(data, inverse.astype(it), indptr,
                                       (n_b, int(rows_u.shape[0])))  # monotone: still canonical
        dW_u = xp.ascontiguousarray(self.csr_matmul(compact, x_bi, transpose_a=True))
        return rows_u.astype(xp.int64, copy=False), dW_u, dx
