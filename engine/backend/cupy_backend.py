"""The CuPy backend: NumPy's primitives on the GPU, hot ones replaced by rawkernels/ kernels.

`CupyBackend(Backend)` sets `xp = cupy` and overrides the shared hot primitives with the CUDA
kernels of `rawkernels/` (loaded by `kernels.get_kernel`, one module per (file, dtype)) or with
cuSPARSE. This file holds the shared ones; each technique's launchers are a mixin beside it:

    gather_rows, scatter_add_rows                      rawkernels/scatter_rows.cu     (here)
    softmax_xent_fused, logsumexp_chunk_update,
    softmax_xent_grad_chunk                            rawkernels/softmax_xent.cu     (here)
    adam_step, adam_step_rows                          rawkernels/adam.cu             (here)
    topk                                               rawkernels/topk_rows.cu        cupy_topk.py
    ffi_forward, ffi_backward                          rawkernels/ffi.cu, cuSPARSE    cupy_ffi.py
    factored_gather_rows, factored_scatter_rows        rawkernels/factored_rows.cu    cupy_factored.py
    to_device_csr, csr_matrix, csr_matmul,
    meprop_products                                    cuSPARSE SpMM                  cupy_sparse.py
    coalesce_rows, unique_inverse, rank_ids,
    sort_groups, uniform                               NumPy's definitions on CuPy arrays

Each override takes the kernel path for float32/float64 arrays of one dtype in the layout the
kernel reads (C-contiguous; for the softmax kernels a 2-D matrix with unit column stride, so a
column slice of a wider logits matrix runs in place), and otherwise falls back to the NumPy
definition (`super()`), which runs on CuPy arrays through `self.xp` — except scatter_add_rows,
whose NumPy definition is a host (numba) loop: it runs the kernel on a contiguous float32/64
copy instead. Index arrays (targets, ids, rows) of any integer dtype are converted to int64 on
the device.

No primitive here waits for the device or copies to the host, except through `to_host`, where
each documents why (unique_inverse: the number of distinct ids; syncs.py has the per-step table).
Consequently out-of-range indices cannot raise as they do on the CPU (`check_ids_in_range` is a
no-op here): scatter_add_rows skips them, gather_rows returns NaN rows, a target >= C gets a NaN
loss (see the headers of the .cu files).

Dimension letters: B batch rows, C columns of a vocabulary chunk, V table rows, D features,
N gathered/scattered rows.
"""
from __future__ import annotations

import numpy

from . import kernels
from .cupy_factored import CupyFactored
from .cupy_ffi import CupyFFI
from .cupy_sparse import CupySparse
from .cupy_topk import CupyTopK
from .numpy_backend import Backend

_KERNEL_DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
_i64 = numpy.int64


def _row_stride(a):
    """Row stride, in elements, of a 2-D array whose columns are adjacent; None otherwise."""
    if a.ndim != 2:
        return None
    rows, cols = a.shape
    item = a.itemsize
    s_row, s_col = a.strides
    if cols > 1 and s_col != item:
        return None
    if rows <= 1:
        return int(cols)
    if s_row <= 0 or s_row % item:
        return None
    ld = s_row // item
    return int(ld) if ld >= cols else None


class CupyBackend(CupyTopK, CupyFFI, CupyFactored, CupySparse, Backend):
    """GPU backend (CuPy + the kernels of rawkernels/ + cuSPARSE)."""

    name = "cupy"
    device = "gpu"
    xp = None  # cupy, set in __init__ so that importing this module never imports CuPy
    #: check the loss for NaN every 20 steps: each check is a host synchronisation
    sync_every_default = 20
    #: reading a device array on the host waits for the device: no per-call host checks
    host_checks_are_free = False

    def __init__(self):
        import cupy
        self.xp = cupy
        self.device_id = cupy.cuda.Device().id   # the device current when the backend was made

    # ------------------------------------------------------------------ arrays
    def asarray(self, x, dtype=None):
        """Host data or a CuPy array -> a CuPy array on this backend's device (no copy when it
        already is one). The device is selected explicitly: the loaders call this from their
        prefetch thread, whose current device is CuPy's default, not the caller's."""
        with self.xp.cuda.Device(self.device_id):
            return self.xp.asarray(x, dtype=dtype)

    def to_host(self, x):
        """A device array -> a NumPy array: a device-to-host transfer (counted in host_reads)."""
        self.host_reads += 1
        return self.xp.asnumpy(x)

    def synchronize(self):
        self.xp.cuda.Device().synchronize()

    def is_array(self, x):
        return isinstance(x, self.xp.ndarray)

    def memory_in_use(self):
        return int(self.xp.get_default_memory_pool().used_bytes())

    def device_description(self):
        props = self.xp.cuda.runtime.getDeviceProperties(self.device_id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"gpu-{name}"

    # ----------------------------------------------------------------- helpers
    def _common_dtype(self, *arrays):
        """The dtype shared by `arrays` when a kernel exists for it, else None."""
        dt = arrays[0].dtype
        if dt not in _KERNEL_DTYPES or any(a.dtype != dt for a in arrays[1:]):
            return None
        return dt

    def _index(self, ids, what):
        """Any integer device array -> a C-contiguous flat int64 copy (or the array itself)."""
        self.check_array(ids, what)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{what}: expected an integer array, got dtype {ids.dtype}")
        flat = ids.reshape(-1).astype(self.xp.int64, copy=False)
        return self.xp.ascontiguousarray(flat)

    # ------------------------------------------------------- rows of a table
    def gather_rows(self, table_vd, ids_n):
        self.check_array(table_vd, "gather_rows: table_vd")
        self.check_array(ids_n, "gather_rows: ids_n")
        if (self._common_dtype(table_vd) is None or table_vd.ndim != 2
                or not table_vd.flags.c_contiguous or ids_n.dtype.kind not in "iu"):
            return super().gather_rows(table_vd, ids_n)
        dt = table_vd.dtype
        ids = self._index(ids_n, "gather_rows: ids_n")
        n_rows, width = table_vd.shape
        n = ids.size
        out = self.xp.empty((n, width), dtype=dt)
        if n * width > 0:
            grid, block = kernels.launch_1d(n * width)
            kernels.get_kernel("scatter_rows.cu", "gather_rows", dt)(
                grid, block, (out, table_vd, ids, _i64(n), _i64(width), _i64(n_rows)))
        return out.reshape(tuple(ids_n.shape) + (width,))

    def scatter_add_rows(self, out_vd, ids_n, rows_nd):
        self.check_array(out_vd, "scatter_add_rows: out_vd")
        self.check_array(ids_n, "scatter_add_rows: ids_n")
        self.check_array(rows_nd, "scatter_add_rows: rows_nd")
        if ids_n.dtype.kind not in "iu":
            raise TypeError(f"scatter_add_rows: ids must be integers, got dtype {ids_n.dtype}")
        if out_vd.ndim < 1:
            raise ValueError("scatter_add_rows: out_vd must have at least one dimension")
        if self._common_dtype(out_vd) is None or not out_vd.flags.c_contiguous:
            # no NumPy fallback on device arrays: run the kernel on a C-contiguous float32/64
            # copy (float16 accumulates in float32) and write the result back
            work = numpy.float64 if out_vd.dtype == numpy.float64 else numpy.float32
            tmp = self.xp.ascontiguousarray(out_vd, dtype=work)
            self.scatter_add_rows(tmp, ids_n, rows_nd)
            out_vd[...] = tmp.astype(out_vd.dtype, copy=False)
            return out_vd
        dt = out_vd.dtype
        ids = self._index(ids_n, "scatter_add_rows: ids_n")
        n_rows = out_vd.shape[0]
        width = int(numpy.prod(out_vd.shape[1:], dtype=numpy.int64))
        n = ids.size
        if rows_nd.size != n * width:
            raise ValueError(f"scatter_add_rows: {n} ids of rows of width {width} need "
                             f"{n * width} values, got rows of shape {tuple(rows_nd.shape)}")
        if n * width == 0:
            return out_vd
        rows = self.xp.ascontiguousarray(rows_nd.astype(dt, copy=False))
        grid, block = kernels.launch_1d(n * width)
        kernels.get_kernel("scatter_rows.cu", "scatter_add_rows", dt)(
            grid, block, (out_vd, ids, rows, _i64(n), _i64(width), _i64(n_rows)))
        return out_vd

    def _rank_width(self, rank_n):
        """An upper bound of the ranks without reading them: N (see Backend.rank_ids)."""
        return int(rank_n.shape[0])

    # ------------------------------------------------- softmax cross-entropy
    def softmax_xent_fused(self, logits_bc, targets_b, scale):
        self.check_array(logits_bc, "softmax_xent_fused: logits_bc")
        self.check_array(targets_b, "softmax_xent_fused: targets_b")
        ld = _row_stride(logits_bc)
        if (self._common_dtype(logits_bc) is None or ld is None or targets_b.ndim != 1
                or targets_b.dtype.kind not in "iu" or logits_bc.size == 0):
            return super().softmax_xent_fused(logits_bc, targets_b, scale)
        dt = logits_bc.dtype
        n_b, n_c = logits_bc.shape
        targets = self._index(targets_b, "softmax_xent_fused: targets_b")
        if targets.size != n_b:
            raise ValueError(f"softmax_xent_fused: {n_b} rows but {targets.size} targets")
        loss_b = self.xp.empty((n_b,), dtype=dt)
        grid, block = kernels.launch_rows(n_b)
        kernels.get_kernel("softmax_xent.cu", "softmax_xent_fused", dt)(
            grid, block, (loss_b, logits_bc, targets, dt.type(scale), _i64(n_b), _i64(n_c),
                          _i64(ld)))
        return loss_b

    def logsumexp_chunk_update(self, logits_bc, col_offset, targets_b, run_max_b, run_sum_b,
                               target_logit_b):
        for arr, what in ((logits_bc, "logits_bc"), (targets_b, "targets_b"),
                          (run_max_b, "run_max_b"), (run_sum_b, "run_sum_b"),
                          (target_logit_b, "target_logit_b")):
            self.check_array(arr, f"logsumexp_chunk_update: {what}")
        ld = _row_stride(logits_bc)
        vectors = (run_max_b, run_sum_b, target_logit_b)
        if (self._common_dtype(logits_bc, *vectors) is None or ld is None
                or logits_bc.size == 0 or targets_b.ndim != 1
                or targets_b.dtype.kind not in "iu"
                or any(a.ndim != 1 or a.shape[0] != logits_bc.shape[0]
                       or not a.flags.c_contiguous for a in vectors)):
            return super().logsumexp_chunk_update(logits_bc, col_offset, targets_b, run_max_b,
                                                  run_sum_b, target_logit_b)
        dt = logits_bc.dtype
        n_b, n_c = logits_bc.shape
        targets = self._index(targets_b, "logsumexp_chunk_update: targets_b")
        if targets.size != n_b:
            raise ValueError(f"logsumexp_chunk_update: {n_b} rows but {targets.size} targets")
        grid, block = kernels.launch_rows(n_b)
        kernels.get_kernel("softmax_xent.cu", "logsumexp_chunk_update", dt)(
            grid, block, (run_max_b, run_sum_b, target_logit_b, logits_bc, targets,
                          _i64(col_offset), _i64(n_b), _i64(n_c), _i64(ld)))

    def softmax_xent_grad_chunk(self, logits_bc, col_offset, targets_b, lse_b, scale):
        self.check_array(logits_bc, "softmax_xent_grad_chunk: logits_bc")
        self.check_array(targets_b, "softmax_xent_grad_chunk: targets_b")
        self.check_array(lse_b, "softmax_xent_grad_chunk: lse_b")
        ld = _row_stride(logits_bc)
        if (self._common_dtype(logits_bc, lse_b) is None or ld is None or logits_bc.size == 0
                or targets_b.ndim != 1 or targets_b.dtype.kind not in "iu"
                or lse_b.ndim != 1 or lse_b.shape[0] != logits_bc.shape[0]
                or not lse_b.flags.c_contiguous):
            return super().softmax_xent_grad_chunk(logits_bc, col_offset, targets_b, lse_b,
                                                   scale)
        dt = logits_bc.dtype
        n_b, n_c = logits_bc.shape
        targets = self._index(targets_b, "softmax_xent_grad_chunk: targets_b")
        if targets.size != n_b:
            raise ValueError(f"softmax_xent_grad_chunk: {n_b} rows but {targets.size} targets")
        grid, block = kernels.launch_1d(n_b * n_c)
        kernels.get_kernel("softmax_xent.cu", "softmax_xent_grad_chunk", dt)(
            grid, block, (logits_bc, lse_b, targets, dt.type(scale), _i64(col_offset),
                          _i64(n_b), _i64(n_c), _i64(ld)))

    # ------------------------------------------------------- optimizer steps
    @staticmethod
    def _adam_scalars(dt, lr, beta1, beta2, eps, step, weight_decay):
        """The kernels' scalars, computed in double and rounded once to the element type."""
        t = dt.type
        c1 = 1.0 - float(beta1) ** step
        c2 = 1.0 - float(beta2) ** step
        return (t(beta1), t(1.0 - float(beta1)), t(beta2), t(1.0 - float(beta2)),
                t(float(lr) / c1), t(c2), t(eps), t(1.0 - float(lr) * float(weight_decay)))

    def adam_step(self, param, grad, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0):
        arrays = (param, grad, m, v)
        for arr, what in zip(arrays, ("param", "grad", "m", "v")):
            self.check_array(arr, f"adam_step: {what}")
        if (self._common_dtype(*arrays) is None
                or any(a.shape != param.shape or not a.flags.c_contiguous for a in arrays)):
            return super().adam_step(param, grad, m, v, lr, beta1, beta2, eps, step,
                                     weight_decay)
        dt = param.dtype
        n = param.size
        if n == 0:
            return None
        grid, block = kernels.launch_1d(n)
        kernels.get_kernel("adam.cu", "adam_step", dt)(
            grid, block, (param, m, v, grad)
            + self._adam_scalars(dt, lr, beta1, beta2, eps, step, weight_decay)
            + (_i64(n),))
        return None

    def adam_step_rows(self, param, rows_n, grad_nd, m, v, lr, beta1, beta2, eps, step,
                       weight_decay=0.0):
        """Lazy Adam on the given rows; `rows_n` must be unique (repeats would race)."""
        for arr, what in ((param, "param"), (rows_n, "rows_n"), (grad_nd, "grad_nd"),
                          (m, "m"), (v, "v")):
            self.check_array(arr, f"adam_step_rows: {what}")
        tables = (param, m, v)
        if (self._common_dtype(param, grad_nd, m, v) is None or param.ndim < 1
                or rows_n.dtype.kind not in "iu"
                or any(a.shape != param.shape or not a.flags.c_contiguous for a in tables)):
            return super().adam_step_rows(param, rows_n, grad_nd, m, v, lr, beta1, beta2, eps,
                                          step, weight_decay)
        dt = param.dtype
        rows = self._index(rows_n, "adam_step_rows: rows_n")
        n_rows = param.shape[0]
        width = int(numpy.prod(param.shape[1:], dtype=numpy.int64))
        n = rows.size
        if grad_nd.size != n * width:
            raise ValueError(f"adam_step_rows: {n} rows of width {width} need {n * width} "
                             f"gradient values, got shape {tuple(grad_nd.shape)}")
        if n * width == 0:
            return None
        grad = self.xp.ascontiguousarray(grad_nd)
        grid, block = kernels.launch_1d(n * width)
        kernels.get_kernel("adam.cu", "adam_step_rows", dt)(
            grid, block, (param, m, v, rows, grad)
            + self._adam_scalars(dt, lr, beta1, beta2, eps, step, weight_decay)
            + (_i64(n), _i64(width), _i64(n_rows)))
        return None


__all__ = ["CupyBackend"]
