"""Options, devices, timing and output shared by the benchmark scripts of tools/ (bench_*.py).

- `make_parser`: the options every script takes: `--device {cpu,gpu,auto}`, `--quick`, `--full`,
  `--json PATH`, `--repeats`, `--warmup`, `--seed`, `--memory {auto,child,inproc}`, and two
  hidden ones: `--tiny` (an even smaller run, for the tests of the scripts) and `--_child`
  (the memory-measurement subprocess, see _bench_harness.py).
- `resolve_backend`: the engine backend for `--device`, and a line that says which it is.
- `import_torch`: PyTorch on the same device (float32 matmuls without TF32), or the reason not.
- `time_fn`: median (and min) wall time of N calls after warm-up; `time_round_robin`: the same
  for several functions called in turn (one call of each per round), so that a change in the
  machine's load hits every method alike. Both synchronise the device before and after each
  timed call, so that queued GPU work is counted.
- `matmul_rate`: the device's peak float matmul rate (large square product), for compute floors.
- `print_table`, `write_json`: the table every script prints last, and its rows as JSON.

The check / time / measure-memory flow itself is in _bench_harness.py, the memory meters in
_bench_memory.py. Dimension letters are the calling script's.
"""
from __future__ import annotations

import _path  # noqa: F401  (this checkout's engine first on sys.path)

import argparse
import json
import math
import os
import statistics
import tempfile
import time

import numpy

MiB = float(2 ** 20)


# ---------------------------------------------------------------------------- options
def make_parser(description: str, default_repeats_cpu: int = 3, default_repeats_gpu: int = 10,
                measures_memory: bool = True):
    """An ArgumentParser with the options shared by every bench script (`measures_memory`:
    also --memory and the memory subprocess's --_child)."""
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
    if measures_memory:
        add_memory_options(p)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(_repeats_cpu=default_repeats_cpu, _repeats_gpu=default_repeats_gpu)
    return p


def add_memory_options(p):
    p.add_argument("--memory", choices=("auto", "child", "inproc"), default="auto",
                   help="how the CPU peak memory of a step is measured: child = in a fresh process "
                        "per method (resident-set high-water mark, every allocator counted), "
                        "inproc = tracemalloc here (NumPy buffers only, quicker); auto = child "
                        "where Linux/glibc allow it. The GPU always measures in-process (allocators)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)


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


def time_round_robin(fns, repeats, warmup):
    """{name: Timing} of several functions timed in turn.

    fns: {name: (fn, sync)}; repeats and warmup: an int, or {name: int} (a function with fewer
    repeats drops out of the later rounds; 0 warm-up calls is allowed per name). The warm-up
    calls come first; then each round calls every function still due once, in order, each
    between two synchronisations of its device."""
    reps = repeats if isinstance(repeats, dict) else {n: repeats for n in fns}
    warm = warmup if isinstance(warmup, dict) else {n: warmup for n in fns}
    for name, (fn, sync) in fns.items():
        for _ in range(warm.get(name, 0)):
            fn()
        sync()
    times = {name: [] for name in fns}
    for r in range(max(reps.values(), default=0)):
        for name, (fn, sync) in fns.items():
            if r >= reps[name]:
                continue
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: Timing(ts) for name, ts in times.items() if ts}


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


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
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
            json.dump(jsonable(list(rows)), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
