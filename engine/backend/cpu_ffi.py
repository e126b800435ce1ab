"""CPU loops (numba) of the fixed fan-in (FFI) layer: what `Backend.ffi_forward` / `ffi_backward`
run for method="numba" (engine/backend/numpy_ffi.py holds the NumPy reference they are tested
against).

Shapes: B batch, L labels (outputs), K fan-in, I inputs; idx (L, K) int32, w (L, K), bias (L,).

    forward        y[b, l]  = sum_k w[l, k] x[b, idx[l, k]] + bias[l]            (B, L)
    grad_weights   dw[l, k] = sum_b dy[b, l] x[b, idx[l, k]]                      (L, K)
    grad_input     dx[b, i] = sum over (l, k) with idx[l, k] = i of w[l, k] dy[b, l]  (B, I)

The loops read the input transposed, xt (I, B) C-contiguous (made once per forward and kept for
backward), so a gathered input column x[:, i] is B adjacent numbers. Measured on the 2-core test
machine at the Amazon-670K shape (tools/bench_ffi.py): label-parallel `prange` loops for the
forward and the weight gradient; the input gradient is a scatter over the indices: a fixed
number of label ranges (`input_grad_parts`: up to 8, within 256 MiB of private (I, B) buffers)
scatter in parallel, each in label order into its own buffer, and the buffers are summed in
order, so the sums do not depend on the thread count (deterministic by construction; at the
Amazon-670K shape, batch 32, on 2 cores: 450 -> about 230 ms). Rows of dy that are all zero
(the squared hinge gives many) are skipped when `skip_zero` is set: their dw row is 0 and they
scatter nothing.
"""
from __future__ import annotations

import numpy

try:  # numba is a declared dependency; without it the NumPy reference runs instead
    import numba
except Exception:  # pragma: no cover - exercised only where numba cannot be imported
    numba = None

#: Labels per parallel work item (amortises numba's per-item cost and the scratch vector).
CHUNK = 256


# ------------------------------------------------------------------ numba loops
if numba is not None:
    @numba.njit(cache=True, nogil=True, parallel=True)
    def _forward(y_bl, xt_ib, idx_lk, w_lk, bias_l, has_bias):
        B = xt_ib.shape[1]
        L, K = idx_lk.shape
        n_chunks = (L + CHUNK - 1) // CHUNK
        for c in numba.prange(n_chunks):
            acc = numpy.empty(B, dtype=y_bl.dtype)
            for l in range(c * CHUNK, min(L, (c + 1) * CHUNK)):
                for b in range(B):
                    acc[b] = 0
                for k in range(K):
                    i = idx_lk[l, k]
                    wv = w_lk[l, k]
                    for b in range(B):
                        acc[b] += wv * xt_ib[i, b]
                if has_bias:
                    for b in range(B):
                        y_bl[b, l] = acc[b] + bias_l[l]
                else:
                    for b in range(B):
                        y_bl[b, l] = acc[b]

    # reassoc lets LLVM vectorise the dot product over the batch (a float reduction); the
    # order is then fixed by the vector width: the same on every run on one machine
    @numba.njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc"})
    def _grad_weights(dw_lk, dy_bl, xt_ib, idx_lk, skip_zero, zero):
        B = xt_ib.shape[1]
        L, K = idx_lk.shape
        n_chunks = (L + CHUNK - 1) // CHUNK
        for c in numba.prange(n_chunks):
            d = numpy.empty(B, dtype=dw_lk.dtype)
            for l in range(c * CHUNK, min(L, (c + 1) * CHUNK)):
                nonzero = False
                for b in range(B):
                    d[b] = dy_bl[b, l]
                    if d[b] != 0:
                        nonzero = True
                if skip_zero and not nonzero:
                    for k in range(K):
                        dw_lk[l, k] = 0
                    continue
                for k in range(K):
                    i = idx_lk[l, k]
                    acc = zero                    # a scalar of the array's dtype
                    for b in range(B):
                        acc += d[b] * xt_ib[i, b]
                    dw_lk[l, k] = acc

    @numba.njit(cache=True, nogil=True, parallel=True)
    def _grad_input(parts_pib, dy_bl, idx_lk, w_lk, skip_zero):
        """Part p scatters labels [p L / P, (p + 1) L / P) into its own buffer parts[p], in
        label order; the caller sums the parts in order: the same sums for any thread count."""
        P, _, B = parts_pib.shape
        L, K = idx_lk.shape
        for p in numba.prange(P):
            dxt_ib = parts_pib[p]
            d = numpy.empty(B, dtype=parts_pib.dtype)
            for l in range(p * L // P, (p + 1) * L // P):
                nonzero = False
                for b in range(B):
                    d[b] = dy_bl[b, l]
                    if d[b] != 0:
                        nonzero = True
                if skip_zero and not nonzero:
                    continue
                for k in range(K):
                    i = idx_lk[l, k]
                    wv = w_lk[l, k]
                    for b in range(B):
                        dxt_ib[i, b] += wv * d[b]


#: The input gradient is scattered by up to this many label ranges in parallel, each into its own
#: (I, B) buffer, summed in a fixed order afterwards (deterministic whatever the thread count).
INPUT_GRAD_PARTS = 8
#: ... as long as the buffers stay under this many bytes (else fewer parts).
INPUT_GRAD_PARTS_BYTES = 256 * 2 ** 20


def input_grad_parts(xt_shape, dtype, num_labels):
    """How many label ranges the CPU input gradient uses (1 = the plain sequential scatter)."""
    one = int(numpy.prod(xt_shape)) * numpy.dtype(dtype).itemsize
    fit = max(1, INPUT_GRAD_PARTS_BYTES // max(one, 1))
    return int(max(1, min(INPUT_GRAD_PARTS, fit, num_labels // CHUNK or 1)))


def forward(xt_ib, idx_lk, w_lk, bias_l=None):
    """y (B, L) from the transposed input (numba)."""
    B, L = xt_ib.shape[1], idx_lk.shape[0]
    y = numpy.empty((B, L), dtype=w_lk.dtype)
    bias = bias_l if bias_l is not None else numpy.zeros(1, dtype=w_lk.dtype)
    _forward(y, xt_ib, idx_lk, w_lk, bias, bias_l is not None)
    return y


def backward(dy_bl, xt_ib, idx_lk, w_lk, skip_zero=True, need_input_grad=True):
    """(dw (L, K), dx (B, I) or None) from dy (B, L) and the transposed input (numba)."""
    dy_bl = numpy.ascontiguousarray(dy_bl, dtype=w_lk.dtype)
    dw = numpy.empty(idx_lk.shape, dtype=w_lk.dtype)
    _grad_weights(dw, dy_bl, xt_ib, idx_lk, bool(skip_zero), w_lk.dtype.type(0))
    dx = None
    if need_input_grad:
        parts = numpy.zeros((input_grad_parts(xt_ib.shape, w_lk.dtype, idx_lk.shape[0]),)
                            + xt_ib.shape, dtype=w_lk.dtype)
        _grad_input(parts, dy_bl, idx_lk, w_lk, bool(skip_zero))
        dxt = parts[0]
        for p in range(1, parts.shape[0]):     # in order: deterministic
            dxt += parts[p]
        dx = numpy.ascontiguousarray(dxt.T)
    return dw, dx
