"""The NumPy backend: the executable specification of every shared primitive.

`Backend` implements each primitive once against `self.xp` (NumPy here). `CupyBackend`
(cupy_backend.py and its cupy_*.py mixins) sets `xp = cupy` and overrides the hot primitives
with kernels from `rawkernels/` or cuSPARSE, falling back to these definitions for dtypes or
layouts a kernel does not take. Tests call the primitives directly on both backends and compare
(tests/backend/); tests/backend/test_backend_signatures.py checks that every override keeps the
signature defined here.

The primitives of one technique live in a mixin beside this file, so that a newcomer finds a
technique's NumPy reference, CPU loops and GPU launchers side by side:

    numpy_topk.py      topk (per-row top-k: meProp's selection, every predict_topk)
    numpy_ffi.py       ffi_index, ffi_forward, ffi_backward (fixed fan-in layer; cpu_ffi.py)
    numpy_factored.py  factored_gather_rows, factored_scatter_rows (factored output layer)
    numpy_sparse.py    is_csr, csr_matrix, to_device_csr, csr_matmul, meprop_products
                       (SparseLinear, the XMC loader, meProp per-example; cpu_sparse.py)
    this file          arrays, rows of a table, index utilities (unique_inverse, rank_ids,
                       sort_groups, check_ids_in_range), softmax cross-entropy, Adam, randomness

Dimension letters: B = batch rows, C = columns of one vocabulary chunk, V = rows of a table
(vocabulary or label count), D = feature width, N = number of gathered/scattered rows, G groups.

Layers never sniff array types or devices: they call `backend.<primitive>(...)` and read the
backend's attributes (`sync_every_default`, `ffi_methods`). Passing a device array to the NumPy
backend (or a host array to the CuPy one) fails fast in `check_array`.

Host reads: every device-to-host transfer a primitive or a layer needs goes through `to_host`,
which counts it in `host_reads` on every backend (syncs.py has the table of what a training step
reads, and why). On the NumPy backend nothing is transferred, but the count is the same, so a
CPU test checks the documented numbers and a GPU test checks that nothing else is read.
"""
from __future__ import annotations

import os
import platform
import time

import numpy

from . import cpu_loops
from .numpy_factored import FactoredPrimitives
from .numpy_ffi import FFIPrimitives
from .numpy_sparse import SparsePrimitives
from .numpy_topk import TopKPrimitives
from .random_hash import uniform_from_key


class Backend(TopKPrimitives, FFIPrimitives, FactoredPrimitives, SparsePrimitives):
    """Reference backend on the CPU (NumPy, numba for the loops NumPy does badly)."""

    name = "numpy"
    device = "cpu"
    xp = numpy
    #: the device this backend computes on (0: the host; the GPU ordinal on CupyBackend)
    device_id = 0
    #: default `Engine.train(sync_every=...)`: check the loss for NaN every step on the CPU,
    #: where reading it costs nothing
    sync_every_default = 1
    #: True where reading an array on the host costs nothing (no device synchronisation), so
    #: that cheap host-side checks (ids in range) can run on every call
    host_checks_are_free = True
    #: device-to-host reads through `to_host` since the backend was made (see syncs.py)
    host_reads = 0

    def __repr__(self):
        return f"{type(self).__name__}(device={self.device!r})"

    # ------------------------------------------------------------------ arrays
    def asarray(self, x, dtype=None):
        """Host data (or an array of this backend) -> an array of this backend."""
        return numpy.asarray(x, dtype=dtype)

    def to_host(self, x):
        """An array of this backend -> a NumPy array (a copy only when needed). Counted in
        `host_reads`: on a device backend this is a device-to-host transfer and a sync."""
        self.host_reads += 1
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

    def device_description(self):
        """A string naming this device for on-disk caches of measurements (cost models)."""
        return f"cpu-{platform.machine()}-{platform.processor() or 'x'}-{os.cpu_count()}"

    def time_call(self, fn, repeats=3):
        """Best wall time in seconds of `fn()` over `repeats` calls after one untimed call, the
        device synchronised around each (for choosing between equivalent paths)."""
        fn()
        self.synchronize()
        best = float("inf")
        for _ in range(int(repeats)):
            t0 = time.perf_counter()
            fn()
            self.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    # ------------------------------------------------------- rows of a table
    def gather_rows(self, table_vd, ids_n):
        """rows[n] = table[ids[n]]  -> (N, D)."""
        return table_vd[ids_n]

    def scatter_add_rows(self, out_vd, ids_n, rows_nd):
        """out[ids[n]] += rows[n], in place; duplicate ids accumulate every contribution.

        NumPy's fancy-index `+=` keeps only one contribution per duplicate id; `np.add.at` is
        correct but slow, so the CPU uses a numba loop.
        """
        cpu_loops.scatter_add_rows(out_vd, ids_n, rows_nd)
        return out_vd

    def coalesce_rows(self, ids_n, rows_nd):
        """Sum the rows that share an id: -> (unique_ids (U,), summed (U, D)), ids ascending.
        One host read (U, in `unique_inverse`)."""
        unique_ids, inverse = self.unique_inverse(ids_n)
        summed = self.zeros((unique_ids.shape[0],) + tuple(rows_nd.shape[1:]), rows_nd.dtype)
        self.scatter_add_rows(summed, inverse, rows_nd)
        return unique_ids, summed

    # ------------------------------------------------------- index utilities
    def unique_inverse(self, ids_n):
        """(unique (U,) ascending, inverse (N,) int64) with unique[inverse] == ids (flattened),
        as numpy.unique(ids, return_inverse=True). One host read: U, which sizes the result."""
        xp = self.xp
        flat = ids_n.reshape(-1)
        n = flat.shape[0]
        order = xp.argsort(flat, kind="stable")
        ordered = flat[order]
        starts = xp.empty((n,), dtype=bool)
        starts[:1] = True
        starts[1:] = ordered[1:] != ordered[:-1]
        rank_sorted = xp.cumsum(starts, dtype=xp.int64) - 1
        inverse = xp.empty((n,), dtype=xp.int64)
        inverse[order] = rank_sorted
        n_unique = int(self.to_host(rank_sorted[-1:]).sum()) + 1 if n else 0
        unique = xp.empty((n_unique,), dtype=flat.dtype)
        unique[rank_sorted] = ordered          # repeated positions all write the same value
        return unique, inverse

    def rank_ids(self, ids_n):
        """(rank (N,) int64, width): rank[n] = the position of ids[n] among the distinct ids,
        ascending (a dense rank, so equal ids share a rank). `width` bounds the ranks from above:
        the number of distinct ids on the host backend, N on a device backend, where counting
        them would cost a host read (no transfer here or there)."""
        xp = self.xp
        flat = ids_n.reshape(-1)
        n = flat.shape[0]
        order = xp.argsort(flat, kind="stable")
        ordered = flat[order]
        starts = xp.empty((n,), dtype=bool)
        starts[:1] = True
        starts[1:] = ordered[1:] != ordered[:-1]
        rank = xp.empty((n,), dtype=xp.int64)
        rank[order] = xp.cumsum(starts, dtype=xp.int64) - 1
        return rank, self._rank_width(rank)

    def _rank_width(self, rank_n):
        """Columns a rank table needs: here the exact count (reading a host array is free)."""
        return int(rank_n.max()) + 1 if rank_n.shape[0] else 0

    def sort_groups(self, group_ids_n, n_groups):
        """(order (N,) int64, offsets (G + 1,) int64, both arrays of this backend): `order`
        sorts the rows by group, stably, and the rows of group g are order[offsets[g]:
        offsets[g + 1]]. Ids must lie in [0, G). Counts built without bincount and without a
        host read (the caller reads `offsets` if it needs them on the host)."""
        xp = self.xp
        order = xp.argsort(group_ids_n, kind="stable")
        bounds = xp.arange(int(n_groups) + 1, dtype=group_ids_n.dtype)
        offsets = xp.searchsorted(group_ids_n[order], bounds, side="left")
        return order.astype(xp.int64, copy=False), offsets.astype(xp.int64, copy=False)

    def check_ids_in_range(self, ids, low, high, message):
        """ValueError(message) when some id is below `low` (None: no lower bound) or at least
        `high`. `message` may use {min}, {max}, {low}, {high}. Runs where host checks are free
        (the CPU); a no-op on a device backend, where it would cost a host read per call
        (models check the data once, on the host, before training)."""
        if not self.host_checks_are_free or ids.size == 0:
            return
        lo, hi = ids.min(), ids.max()
        if hi >= high or (low is not None and lo < low):
            raise ValueError(message.format(min=int(lo), max=int(hi), low=low, high=high))

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
        if cpu_loops.adam_fast_path(param, grad, m, v):   # one numba pass (NumPy arrays only)
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
        if (param.ndim >= 1 and cpu_loops.adam_fast_path(param, m, v)
                and grad_nd.dtype == param.dtype and grad_nd.size == rows_n.size * param[0].size
                and rows_n.dtype.kind in "iu"):
            return cpu_loops.adam_step_rows(param, rows_n, grad_nd, m, v, lr, beta1, beta2, eps,
                                            step, weight_decay)
        p, mm, vv = param[rows_n], m[rows_n], v[rows_n]
        self.adam_step(p, grad_nd, mm, vv, lr, beta1, beta2, eps, step, weight_decay)
        param[rows_n], m[rows_n], v[rows_n] = p, mm, vv

    # ------------------------------------------------------------ randomness
    def uniform(self, shape, key, dtype, offset=0):
        """Counter-based uniform [0, 1) numbers: the same key gives the same numbers on every
        backend (dropout masks are identical on CPU and GPU, and need no saved RNG state);
        `offset` numbers the elements from there (a rank's rows of a global minibatch)."""
        return uniform_from_key(self.xp, shape, key, dtype, offset)
