"""The NumPy backend: the executable specification of every shared primitive.

`Backend` implements each primitive once against `self.xp` (NumPy here). `CupyBackend`
(cupy_backend.py) sets `xp = cupy` and overrides only the hot primitives with kernels from
`rawkernels/`, falling back to these definitions for dtypes or layouts a kernel does not take.
Tests call the primitives directly on both backends and compare.

Dimension letters: B = batch rows, C = columns of one vocabulary chunk, V = rows of a table
(vocabulary or label count), D = feature width, N = number of gathered/scattered rows.

Layers never sniff array types: they call `backend.<primitive>(...)`. Passing a device array to
the NumPy backend (or a host array to the CuPy one) fails fast in `check_array`.
"""
from __future__ import annotations

import numpy

from . import cpu_loops
from .random_hash import uniform_from_key


class Backend:
    """Reference backend on the CPU (NumPy, numba for the loops NumPy does badly)."""

    name = "numpy"
    device = "cpu"
    xp = numpy

    def __repr__(self):
        return f"{type(self).__name__}(device={self.device!r})"

    # ------------------------------------------------------------------ arrays
    def asarray(self, x, dtype=None):
        """Host data (or an array of this backend) -> an array of this backend."""
        return numpy.asarray(x, dtype=dtype)

    def to_host(self, x):
        """An array of this backend -> a NumPy array (a copy only when needed)."""
        return numpy.asarray(x)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def synchronize(self):
        """Wait for queued device work (a no-op on the CPU)."""

    def is_array(self, x):
        return isinstance(x, numpy.ndarray)

    def check_array(self, x, what="array"):
        """Fail fast, with a clear message, when an array of the other backend is passed in."""
        if not self.is_array(x):
            raise TypeError(
                f"{what}: expected a {self.name} array on device {self.device!r}, "
                f"got {type(x).__module__}.{type(x).__name__}; move it with backend.asarray()"
            )
        return x

    def memory_in_use(self):
        """Bytes held by this backend's allocator (None where it cannot be measured)."""
        return None

    # ------------------------------------------------------- rows of a table
    def gather_rows(self, table_vd, ids_n):
        """rows[n] = table[ids[n]]  -> (N, D)."""
        return table_vd[ids_n]

    def scatter_add_rows(self, out_vd, ids_n, rows_nd):
        """out[ids[n]] += rows[n], in place; duplicate ids accumulate every contribution.

        NumPy's fancy-index `+=` keeps only one contribution per duplicate id; `np.add.at` is
        correct but slow, so the CPU uses a numba loop.
        """
        if self.xp is not numpy:
            raise TypeError(f"{type(self).__name__}.scatter_add_rows must not fall back to the "
                            f"NumPy loop (device arrays)")
        cpu_loops.scatter_add_rows(out_vd, ids_n, rows_nd)
        return out_vd

    def coalesce_rows(self, ids_n, rows_nd):
        """Sum the rows that share an id: -> (unique_ids (U,), summed (U, D)), ids ascending."""
        unique_ids, inverse = self.xp.unique(ids_n, return_inverse=True)
        inverse = inverse.reshape(-1)
        summed = self.zeros((unique_ids.shape[0],) + tuple(rows_nd.shape[1:]), rows_nd.dtype)
        self.scatter_add_rows(summed, inverse, rows_nd)
        return unique_ids, summed

    # ------------------------------------------------- softmax cross-entropy
    def softmax_xent_fused(self, logits_bc, targets_b, scale):
        """Loss and gradient of the softmax cross-entropy in one pass, in place.

        On return `logits_bc` holds `scale * (softmax(logits) - onehot(target))` and the
        function returns the per-row loss `logsumexp(logits) - logits[target]` (B,), float of
        the logits' dtype. Rows whose target is negative (ignored) get loss 0 and gradient 0.
        """
        xp = self.xp
        rows = xp.arange(logits_bc.shape[0])
        valid = targets_b >= 0
        safe_t = xp.where(valid, targets_b, 0)
        row_max = logits_bc.max(axis=1, keepdims=True)
        logits_bc -= row_max
        target_logit = logits_bc[rows, safe_t].copy()
        xp.exp(logits_bc, out=logits_bc)
        sumexp = logits_bc.sum(axis=1, keepdims=True)
        loss = xp.log(sumexp[:, 0]) - target_logit
        logits_bc /= sumexp
        logits_bc[rows, safe_t] -= 1
        logits_bc *= xp.where(valid, scale, 0).astype(logits_bc.dtype)[:, None]
        return xp.where(valid, loss, 0).astype(logits_bc.dtype)

    def logsumexp_chunk_update(self, logits_bc, col_offset, targets_b, run_max_b, run_sum_b,
                               target_logit_b):
        """Fold one vocabulary chunk into a running log-sum-exp, in place.

        `run_max`/`run_sum` hold, per row, the running maximum and the sum of exp(logit - max)
        over the chunks seen so far (start them at -inf and 0). `target_logit[b]` is set when
        the row's target falls in columns [col_offset, col_offset + C). The final log-sum-exp
        is `run_max + log(run_sum)`. `logits_bc` is scratch: it may be overwritten (this
        reference does, to need no B x C temporary; the kernel leaves it intact).
        """
        xp = self.xp
        local = targets_b - col_offset
        inside = (local >= 0) & (local < logits_bc.shape[1])
        rows = xp.nonzero(inside)[0]
        target_logit_b[rows] = logits_bc[rows, local[rows]]
        new_max = xp.maximum(run_max_b, logits_bc.max(axis=1))
        run_sum_b *= xp.exp(run_max_b - new_max)
        logits_bc -= new_max[:, None]
        xp.exp(logits_bc, out=logits_bc)
        run_sum_b += logits_bc.sum(axis=1)
        run_max_b[...] = new_max

    def softmax_xent_grad_chunk(self, logits_bc, col_offset, targets_b, lse_b, scale):
        """In place: logits <- scale * (exp(logits - lse) - onehot(target - col_offset)).

        Rows with a negative target (ignored) get a zero gradient.
        """
        xp = self.xp
        logits_bc -= lse_b[:, None]
        xp.exp(logits_bc, out=logits_bc)
        local = targets_b - col_offset
        inside = (local >= 0) & (local < logits_bc.shape[1])
        rows = xp.nonzero(inside)[0]
        logits_bc[rows, local[rows]] -= 1
        logits_bc *= xp.where(targets_b >= 0, scale, 0).astype(logits_bc.dtype)[:, None]

    # ------------------------------------------------------- optimizer steps
    def adam_step(self, param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0):
        """One fused Adam(W) step in place (decoupled weight decay, bias-corrected moments).

        m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
        p <- p - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) - lr * wd * p
        """
        if self.xp is numpy and cpu_loops.adam_fast_path(param, grad, m, v):   # one numba pass
            return cpu_loops.adam_step(param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay)
        xp = self.xp
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * (grad * grad)
        c1 = 1 - beta1 ** step
        c2 = 1 - beta2 ** step
        if weight_decay:
            param *= (1 - lr * weight_decay)
        param -= (lr / c1) * m / (xp.sqrt(v / c2) + eps)

    def adam_step_rows(self, param, rows_n, grad_nd, m, v, lr, beta1, beta2, eps, step,
                       weight_decay=0.0):
        """Lazy Adam on the given (unique) rows only; untouched rows and their moments stay put."""
        if (self.xp is numpy and param.ndim >= 1 and cpu_loops.adam_fast_path(param, m, v)
                and grad_nd.dtype == param.dtype and grad_nd.size == rows_n.size * param[0].size
                and rows_n.dtype.kind in "iu"):
            return cpu_loops.adam_step_rows(param, rows_n, grad_nd, m, v, lr, beta1, beta2, eps,
                                            step, weight_decay)
        p, mm, vv = param[rows_n], m[rows_n], v[rows_n]
        self.adam_step(p, grad_nd, mm, vv, lr, beta1, beta2, eps, step, weight_decay)
        param[rows_n], m[rows_n], v[rows_n] = p, mm, vv

    # ------------------------------------------------------------ randomness
    def uniform(self, shape, key, dtype):
        """Counter-based uniform [0, 1) numbers: the same key gives the same numbers on every
        backend (dropout masks are identical on CPU and GPU, and need no saved RNG state)."""
        return uniform_from_key(self.xp, shape, key, dtype)
