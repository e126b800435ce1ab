"""Peak-memory meters of the benchmarks (tools/bench_*.py), and the fresh process they run in.

Each meter is a context manager around one step; it gives `peak_bytes` (the most bytes in use
during the block minus the bytes in use when it began), `before_bytes` and `method` (its name):
    CupyPeak        CuPy's default memory pool, via a `cupy.cuda.MemoryHook` that records the
                    pool's used bytes after every allocation (CuPy keeps no peak counter);
    TorchCudaPeak   torch.cuda.reset_peak_memory_stats / max_memory_allocated;
    RssPeak         the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)
                    over its resident set at the start. Run it in a fresh process started by
                    `run_child`, with glibc told (RSS_CHILD_ENV) to give every block of 64 KiB or
                    more its own mapping, so that a freed buffer leaves the resident set at once
                    and the high-water mark follows the live bytes. Linux/glibc only; it measures
                    every allocator (NumPy, PyTorch, numba, BLAS scratch) alike, so CPU ratios
                    compare like with like;
    TracemallocPeak the bytes NumPy (and Python) report to tracemalloc; no PyTorch allocations.
`available_memory`, `release_memory`: what fits, and handing cached blocks back between runs.
`run_child`, `child_reply`: run one measurement in a fresh process and read its result.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import json
import os
import sys

from _bench_common import jsonable

def release_memory(backend=None, torch=None):
    """Collect garbage and hand cached device blocks back (CuPy pool, PyTorch cache)."""
    gc.collect()
    if backend is not None and backend.device == "gpu":
        backend.synchronize()
        backend.xp.get_default_memory_pool().free_all_blocks()
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def available_memory(backend) -> int:
    """Bytes that a run could still allocate: free device memory, or MemAvailable on the CPU."""
    if backend.device == "gpu":
        free, _total = backend.xp.cuda.runtime.memGetInfo()
        pool = backend.xp.get_default_memory_pool()
        return int(free + pool.free_bytes())
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62


class CupyPeak:
    """Peak bytes of CuPy's default pool during the `with` block, above its use at the start."""

    def __init__(self, backend):
        self.cupy = backend.xp
        self.pool = self.cupy.get_default_memory_pool()
        self.backend = backend
        outer = self

        class _Hook(self.cupy.cuda.MemoryHook):
            name = "bench_peak_bytes"

            def malloc_postprocess(self, **kwargs):
                outer._peak = max(outer._peak, outer.pool.used_bytes())

        self._hook = _Hook()
        self.peak_bytes = self.before_bytes = None
        self.method = "cupy-pool"

    def __enter__(self):
        self.backend.synchronize()
        self.before_bytes = int(self.pool.used_bytes())
        self._peak = self.before_bytes
        self._hook.__enter__()
        return self

    def __exit__(self, *exc):
        self.backend.synchronize()
        self._hook.__exit__(*exc)
        self.peak_bytes = int(max(self._peak, self.pool.used_bytes()) - self.before_bytes)
        return False


class TorchCudaPeak:
    """Peak bytes of PyTorch's CUDA allocator during the block, above its use at the start."""

    def __init__(self, torch):
        self.torch = torch
        self.peak_bytes = self.before_bytes = None
        self.method = "torch-cuda"

    def __enter__(self):
        self.torch.cuda.synchronize()
        self.before_bytes = int(self.torch.cuda.memory_allocated())
        self.torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        self.torch.cuda.synchronize()
        self.peak_bytes = int(self.torch.cuda.max_memory_allocated() - self.before_bytes)
        return False


#: Environment for a child process whose resident set follows its live bytes: glibc serves
#: every block of 64 KiB or more with its own mmap (and unmaps it on free) from the start, so
#: no large freed block lingers, resident, in the heap (tunable read by glibc at start-up).
RSS_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def _libc():
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


def _proc_status_bytes(keys=("VmRSS", "VmHWM")):
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in keys:
                out[key] = int(line.split()[1]) * 1024
    return out


@functools.lru_cache(maxsize=None)
def rss_peak_supported():
    """(True, "") when RssPeak works here (Linux, glibc, a resettable VmHWM), else (False, why)."""
    if not sys.platform.startswith("linux"):
        return False, f"not Linux ({sys.platform})"
    if _libc() is None:
        return False, "no glibc (malloc_trim)"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        if "VmHWM" not in _proc_status_bytes():
            return False, "/proc/self/status has no VmHWM"
    except OSError as exc:
        return False, f"cannot reset the peak resident set ({exc})"
    return True, ""


class RssPeak:
    """Growth of the process's peak resident set during the block, over its value at the start.

    Exact (to the page) only in a process started with RSS_CHILD_ENV (see run_child): there every
    large buffer is its own mapping, resident from first touch until freed. In a process with
    glibc's default heap, freed blocks may stay resident and be counted again."""

    def __init__(self):
        self.libc = _libc()
        self.peak_bytes = self.before_bytes = None
        self.method = "rss-hwm"

    def __enter__(self):
        gc.collect()
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.before_bytes = _proc_status_bytes()["VmRSS"]
        return self

    def __exit__(self, *exc):
        hwm = _proc_status_bytes()["VmHWM"]
        self.peak_bytes = int(max(0, hwm - self.before_bytes))
        return False


CHILD_MARKER = "BENCH-CHILD-RESULT "


def run_child(script, payload: dict, flag="--_child", timeout=None):
    """Run `python script flag JSON(payload)` in a fresh process with RSS_CHILD_ENV and return
    the dict it printed with `child_reply` (a clear error with its output when it fails)."""
    import subprocess
    env = dict(os.environ, **RSS_CHILD_ENV)
    proc = subprocess.run([sys.executable, script, flag, json.dumps(payload)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_MARKER):
            return json.loads(line[len(CHILD_MARKER):])
    raise RuntimeError(f"measurement subprocess failed (status {proc.returncode}):\n"
                       + proc.stdout[-4000:])


def child_reply(result: dict):
    """Print the child's result where run_child finds it."""
    print(CHILD_MARKER + json.dumps(jsonable(result)), flush=True)


class TracemallocPeak:
    """Peak bytes traced by tracemalloc (NumPy reports its buffers) during the block."""

    def __init__(self):
        self.peak_bytes = self.before_bytes = None
        self.method = "tracemalloc"

    def __enter__(self):
        import tracemalloc
        self._tm = tracemalloc
        self._was_tracing = tracemalloc.is_tracing()
        if not self._was_tracing:
            tracemalloc.start()
        self.before_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc):
        _cur, peak = self._tm.get_traced_memory()
        if not self._was_tracing:
            self._tm.stop()
        self.peak_bytes = int(max(0, peak - self.before_bytes))
        return False
