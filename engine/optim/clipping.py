"""Global gradient-norm clipping, on the device and without a host synchronisation.

The global norm is the L2 norm of all gradients seen as one vector: dense gradients count every
element, row-sparse gradients count their *coalesced* values (duplicate rows already summed, so
the norm is that of the dense gradient they stand for). Everything stays a 0-d float64 array of
the backend: the clip factor `min(1, clip_norm / (norm + 1e-6))` is multiplied into the
gradients in place as a device scalar, so a step never waits for the device to report the norm.

Shapes: any; a row-sparse gradient's values are (U, D...) with U unique rows.
No kernel: plain array expressions on `backend.xp`.
"""
from __future__ import annotations

from ..row_sparse import RowSparseGrad

#: Elements per partial sum: bounds the temporary that squaring a huge gradient needs.
CHUNK = 1 << 24


def _grad_array(grad):
    return grad.values if isinstance(grad, RowSparseGrad) else grad


def sum_of_squares(xp, array):
    """sum(array ** 2) as a 0-d float64 array of `xp` (squares in the array's dtype, sum in
    float64; processed in chunks of CHUNK elements so no full-size temporary is made)."""
    flat = array.reshape(-1)
    total = xp.zeros((), dtype=xp.float64)
    for start in range(0, flat.shape[0], CHUNK):
        part = flat[start:start + CHUNK]
        total = total + xp.sum(part * part, dtype=xp.float64)
    return total


def global_grad_norm(backend, grads):
    """L2 norm over every gradient (dense arrays, coalesced RowSparseGrad values): 0-d float64."""
    xp = backend.xp
    total = xp.zeros((), dtype=xp.float64)
    for grad in grads:
        total = total + sum_of_squares(xp, _grad_array(grad))
    return xp.sqrt(total)


def clip_factor(backend, norm, clip_norm: float):
    """min(1, clip_norm / (norm + 1e-6)) as a 0-d float64 array (no host sync)."""
    xp = backend.xp
    return xp.minimum(xp.asarray(1.0, dtype=xp.float64), float(clip_norm) / (norm + 1e-6))


def scale_grads_(backend, grads, factor):
    """Multiply every gradient (dense arrays, RowSparseGrad values) by `factor`, in place."""
    cast = {}
    for grad in grads:
        array = _grad_array(grad)
        if array.dtype not in cast:
            cast[array.dtype] = factor.astype(array.dtype)
        array *= cast[array.dtype]


def clip_grads_(backend, grads, clip_norm: float):
    """Scale `grads` in place so their global norm is at most clip_norm; returns the pre-clip
    norm (0-d float64 array of the backend)."""
    norm = global_grad_norm(backend, grads)
    scale_grads_(backend, grads, clip_factor(backend, norm, clip_norm))
    return norm


__all__ = ["sum_of_squares", "global_grad_norm", "clip_factor", "scale_grads_", "clip_grads_"]
