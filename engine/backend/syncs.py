"""Host synchronisations of a training step: the table, and a counter of real device reads.

On the GPU every device-to-host transfer waits for all the queued work, so a read in the middle
of a step stalls the pipeline. The engine reads only where the table below says, each for a
reason, and always through `backend.to_host`, which counts it in `backend.host_reads` on every
backend (nothing is transferred on the CPU, but the count is the same, so a CPU test checks the
documented numbers). `count_device_reads()` counts what CuPy really transfers, so the GPU test
(tests/backend/test_host_syncs.py) checks that nothing else is read.

Reads per training step (`Engine.train_step(x, y, check_finite=False)`, steady state: after
the first step of a shape, which may build caches or measure), GPU, before -> after this change:

| output / layer                         | before | after | the reads, and why                  |
|----------------------------------------|--------|-------|-------------------------------------|
| softmax (whole, chunked, fused SGD)    | 0      | 0     | -                                   |
| squared, spherical / Taylor / Z-loss   | 0      | 0     | -                                   |
|   dense references                     |        |       |                                     |
| multi-label, dense weights             | 0      | 0     | -                                   |
| multi-label, FFI "kernel" path         | 0      | 0     | -                                   |
| multi-label, FFI "cusparse" path       | 2      | 0     | (the CSR view was rebuilt twice; now|
|                                        |        |       | cached per index version)           |
| adaptive softmax                       | 3      | 1     | the (J + 2,) offsets of the rows of |
|                                        |        |       | each cluster: they size the tails'  |
|                                        |        |       | products (bincount's 2 are gone)    |
| factored, K = 1 target                 | 2      | 2     | the learning-rate guard: A (B,) and |
|                                        |        |       | C or Mb (B x B), eigen-tested on the|
|                                        |        |       | host before anything changes (3 when|
|                                        |        |       | its Cholesky test fails; 0 with     |
|                                        |        |       | lr_guard=False)                     |
| factored, K > 1 targets                | 5      | 2     | the guard; the compaction of the    |
|                                        |        |       | named ids needs no count any more   |
| factored, monitor steps                | +      | +     | every check_every updates: the      |
|                                        |        |       | monitors (a few floats) and fixes   |
| Linear / softmax with meProp unified   | 0      | 0     | -                                   |
| ... meProp per-example or random       | 5      | 1     | U, the distinct selected rows (it   |
|   (per meProp layer)                   |        |       | sizes the row-sparse gradient)      |
| Embedding (row-sparse gradient)        | +1     | +1    | U, the distinct ids of the batch    |
|                                        |        |       | (coalescing, `unique_inverse`)      |
| SparseLinear (CSR input)               | +4     | +1    | U, the distinct features of the     |
|                                        |        |       | batch; and +1 -> 0 in the loader's  |
|                                        |        |       | prefetch thread (CSR conversion)    |
| FixedFanInLinear rewiring steps        | +2     | +2    | |w| and the indices, drawn on the   |
|                                        |        |       | host (every rewire_every steps)     |
| Engine loss check                      | +1     | +1    | every sync_every steps (20 on the   |
|                                        |        |       | GPU) and before a checkpoint        |

`READS_PER_STEP` holds the "after" column for the cases the test builds. Where the numbers
come from: each primitive's docstring says what it reads (engine/backend/*.py), the layers
above call only those primitives.
"""
from __future__ import annotations

import contextlib
import threading
import traceback

#: documented reads of one steady-state training step (the "after" column), per case of
#: tests/backend/test_host_syncs.py
READS_PER_STEP = {
    "softmax": 0,
    "softmax-chunked": 0,
    "softmax-fused-sgd": 0,
    "squared": 0,
    "spherical-dense": 0,
    "squared-hinge-dense": 0,
    "squared-hinge-ffi-kernel": 0,
    "squared-hinge-ffi-cusparse": 0,
    "adaptive": 1,
    "factored-squared": 2,
    "factored-squared-no-guard": 0,
    "factored-squared-k3": 2,
    "meprop-unified": 0,
    "meprop-per-example": 1,
    "meprop-random": 1,
    "sparse-input": 1,
    "embedding-lm": 1,
}

_PATCHED_METHODS = ("get", "item", "tolist", "__int__", "__float__", "__bool__", "__index__",
                    "__complex__")


class DeviceReads:
    """What `count_device_reads` saw: `count`, and `where` (the call sites, for debugging)."""

    def __init__(self):
        self.count = 0
        self.where = []
        self._lock = threading.Lock()
        self._depth = threading.local()

    def __repr__(self):
        return f"DeviceReads(count={self.count}, where={self.where})"


@contextlib.contextmanager
def count_device_reads():
    """Count CuPy's device-to-host reads in this block: every outermost call of cupy.asnumpy
    and of the cupy.ndarray methods that return host values (get, item, tolist, int(), float(),
    bool(), index(), complex()), from any thread. Needs CuPy (a GPU to do anything useful)."""
    import cupy
    reads = DeviceReads()
    saved = []

    def wrap(owner, name):
        original = getattr(owner, name)
        saved.append((owner, name, owner.__dict__.get(name, None), name in owner.__dict__))

        def counted(*args, **kwargs):
            depth = getattr(reads._depth, "n", 0)
            if depth == 0:
                with reads._lock:
                    reads.count += 1
                    reads.where.append("".join(traceback.format_stack(limit=6)[:-1]))
            reads._depth.n = depth + 1
            try:
                return original(*args, **kwargs)
            finally:
                reads._depth.n = depth
        setattr(owner, name, counted)

    try:
        for name in _PATCHED_METHODS:
            wrap(cupy.ndarray, name)
        wrap(cupy, "asnumpy")
        yield reads
    finally:
        for owner, name, value, had in reversed(saved):
            if had:
                setattr(owner, name, value)
            else:
                delattr(owner, name)


__all__ = ["READS_PER_STEP", "DeviceReads", "count_device_reads"]
