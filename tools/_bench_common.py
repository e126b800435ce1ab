"""Helpers shared by the benchmark scripts of tools/ (bench_*.py).

- `make_parser`: the options every script takes (DESIGN.md, verification discipline 5-6):
  `--device {cpu,gpu,auto}`, `--quick`, `--full`, `--json PATH`, `--repeats`, `--warmup`, `--seed`,
  and a hidden `--tiny` (an even smaller run, for the tests of the scripts).
- `resolve_backend`: the engine backend for `--device`, and a line that says which it is.
- `import_torch`: PyTorch on the same device (float32 matmuls without TF32), or the reason not.
- `time_fn`: median (and min) wall time of N calls after warm-up, synchronising the device
  before and after each call so that queued GPU work is counted.
- `matmul_rate`: the device's peak float matmul rate (large square product), for compute floors.
- Peak memory meters, used as context managers around one step; each gives `peak_bytes` (the
  most bytes in use during the block minus the bytes in use when it began) and `before_bytes`:
    CupyPeak        CuPy's default memory pool, via a `cupy.cuda.MemoryHook` that records the
                    pool's used bytes after every allocation (CuPy keeps no peak counter);
    TorchCudaPeak   torch.cuda.reset_peak_memory_stats / max_memory_allocated;
    RssPeak         the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)
                    over its resident set at the start. Run it in a fresh process started by
                    `run_child`, with glibc told (RSS_CHILD_ENV) to give every block of 64 KiB or
                    more its own mapping, so that a freed buffer leaves the resident set at once
                    and the high-water mark follows the live bytes. Linux/glibc only; it measures
                    every allocator (NumPy, PyTorch, BLAS scratch) alike, so CPU ratios compare
                    like with like;
    TracemallocPeak the bytes NumPy (and Python) report to tracemalloc; no PyTorch allocations.
- `available_memory`, `release_memory`: what fits, and handing cached blocks back between runs.
- `run_child`, `child_reply`: run one measurement in a fresh process and read its result.
- `print_table`, `write_json`: the table every script prints last, and its rows as JSON.

Dimension letters are the calling script's (bench_softmax: B batch, d features, D classes).
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time

import numpy

MiB = float(2 ** 20)


# ---------------------------------------------------------------------------- options
def make_parser(description: str, default_repeats_cpu: int = 3, default_repeats_gpu: int = 10):
    """An ArgumentParser with the options shared by every bench script."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto",
                   help="where to run (auto: the GPU when CuPy sees one, else the CPU)")
    p.add_argument("--quick", action="store_true",
                   help="a reduced run that ends in about a minute on a CPU")
    p.add_argument("--full", action="store_true",
                   help="the whole grid, also on the CPU (slow there)")
    p.add_argument("--json", metavar="PATH", default=None, help="write the result rows as JSON")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed calls per measurement, median reported "
                        f"(default {default_repeats_cpu} on the CPU, {default_repeats_gpu} on the GPU; "
                        f"fewer with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls before timing (default 1 on the CPU, 2 on the GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random data and weights")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(_repeats_cpu=default_repeats_cpu, _repeats_gpu=default_repeats_gpu)
    return p


def finish_args(args, device: str):
    """Fill the defaults that depend on the device (repeats, warm-up) once it is known."""
    if args.repeats is None:
        base = args._repeats_gpu if device == "gpu" else args._repeats_cpu
        args.repeats = 1 if args.tiny else (max(3, base // 2) if args.quick else base)
    if args.warmup is None:
        args.warmup = 2 if device == "gpu" else 1
    if args.repeats < 1 or args.warmup < 1:
        raise SystemExit("--repeats and --warmup must be at least 1")
    return args


# ---------------------------------------------------------------------------- devices
def resolve_backend(device: str):
    """(backend, "cpu" | "gpu", description) for --device."""
    from engine.backend import get_backend, gpu_available
    backend = get_backend(device)
    if backend.device == "gpu":
        ok, name = gpu_available()
        return backend, "gpu", f"gpu ({name})"
    import platform
    threads = ", ".join(f"{k}={os.environ[k]}" for k in
                        ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    return backend, "cpu", (f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores"
                            + (f", {threads}" if threads else "") + ")")


def import_torch(device: str):
    """(torch, torch_device, note) or (None, None, reason). On CUDA, TF32 is switched off."""
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install
        return None, None, f"PyTorch is not importable ({type(exc).__name__}: {exc})"
    if device == "gpu":
        if not torch.cuda.is_available():
            return None, None, f"PyTorch {torch.__version__} sees no CUDA device"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        return torch, torch.device("cuda"), f"PyTorch {torch.__version__} (CUDA, TF32 off)"
    return torch, torch.device("cpu"), f"PyTorch {torch.__version__} (CPU, {torch.get_num_threads()} threads)"


def cupy_tf32_note():
    """A warning when CuPy was asked to use TF32 for float32 matmuls (it does not by default)."""
    if os.environ.get("CUPY_TF32", "0") not in ("", "0"):
        return "WARNING: CUPY_TF32 is set: CuPy float32 matmuls may use TF32"
    return "CuPy float32 matmuls use full float32 (CUPY_TF32 unset)"


def torch_sync(torch, torch_device):
    if torch_device is not None and torch_device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


# ---------------------------------------------------------------------------- timing
class Timing:
    def __init__(self, times_s):
        self.times_ms = [t * 1e3 for t in times_s]
        self.median_ms = statistics.median(self.times_ms)
        self.min_ms = min(self.times_ms)

    def __repr__(self):
        return f"Timing(median={self.median_ms:.3f} ms, min={self.min_ms:.3f} ms, n={len(self.times_ms)})"


def time_fn(fn, backend=None, sync=None, repeats: int = 5, warmup: int = 1) -> Timing:
    """Median wall time of `repeats` calls of fn() after `warmup` untimed ones.

    The device is synchronised (`sync`, else `backend.synchronize`) before and after every timed
    call, so each time covers the work fn queued and nothing else."""
    if sync is None:
        sync = backend.synchronize if backend is not None else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return Timing(times)


def matmul_rate(backend, dtype=numpy.float32, n: int = 4096, repeats: int = 3) -> float:
    """Best measured rate (flop/s) of an n x n x n product on the backend, in `dtype`."""
    xp = backend.xp
    rng = numpy.random.default_rng(0)
    a = backend.asarray(rng.standard_normal((n, n)).astype(dtype))
    b = backend.asarray(rng.standard_normal((n, n)).astype(dtype))
    c = xp.empty((n, n), dtype=dtype)
    t = time_fn(lambda: xp.matmul(a, b, out=c), backend=backend, repeats=repeats, warmup=1)
    del a, b, c
    return 2.0 * n ** 3 / (t.min_ms * 1e-3)


def torch_matmul_rate(torch, torch_device, n: int = 4096, repeats: int = 3) -> float:
    """Best measured float32 rate (flop/s) of an n x n x n product in PyTorch."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(torch_device)
    b = torch.randn(n, n, generator=g).to(torch_device)
    c = torch.empty(n, n, device=torch_device)
    t = time_fn(lambda: torch.matmul(a, b, out=c), sync=torch_sync(torch, torch_device),
                repeats=repeats, warmup=1)
    del a, b, c
    return 2.0 * n ** 3 / (t.min_ms * 1e-3)


# ---------------------------------------------------------------------------- memory
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
    print(CHILD_MARKER + json.dumps(_jsonable(result)), flush=True)


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


# ---------------------------------------------------------------------------- output
def fmt_mib(nbytes, digits=1):
    return "-" if nbytes is None else f"{nbytes / MiB:.{digits}f}"


def fmt_num(x, fmt="{:.2f}"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return fmt.format(x)


def format_table(columns, rows):
    """columns: list of (header, function row -> str); text with right-aligned columns."""
    cells = [[str(fn(row)) for _h, fn in columns] for row in rows]
    headers = [h for h, _fn in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


def print_table(title, columns, rows, notes=()):
    """Print a title, notes (what the columns mean) and the table; call it last."""
    print()
    print(title)
    for note in notes:
        print(f"  {note}")
    print(format_table(columns, rows), flush=True)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, numpy.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path, rows):
    """Write the rows (a list of dicts) to `path`, atomically (temporary file, then rename)."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(list(rows)), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
