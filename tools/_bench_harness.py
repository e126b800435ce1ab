"""The benchmark harness: each method is checked against the reference, then timed, then its
memory is measured.

A configuration (one shape) has several methods (ours, ours chunked, PyTorch, ...), and each is
a `Runner` built from the same seed, so every method starts from the same weights and data.
`run_methods` takes them through three stages:

1. Check. Each method takes its first step (`Runner.first_step`), and what it produced (loss,
   input gradient, parameter updates, ...) is compared with the float64 reference of that
   step (tools/_references.py: NumPy formulas, run with the device's array module so that GPU
   sizes stay fast). The methods run in float32, which is the precision they are timed in, so the
   comparison uses stated tolerances. For each quantity the error is
   (max |value - reference| - allowance) / max |reference|, where the allowance is zero except
   for quantities that are the difference of two float32 arrays: a parameter update W1 - W0 is
   rounded at the ulp of W, so one float32 epsilon of max |W0| is allowed before the relative
   error counts. A method that disagrees is not timed. Its row says check "failed",
   and the script exits with status 1 after printing its table.
2. Time. The checked methods run round-robin (`bc.time_round_robin`): warm-up calls first,
   then rounds with one call of each timed function. The median and the minimum are reported
   for each method. Methods that do not fit in memory together are split into groups, one after
   another (`timed_with` names a method's group).
3. Memory. `resident_bytes` counts the arrays the runner holds between steps (`held_arrays`).
   `peak_bytes` is how much the bytes in use grow during one more step. On the GPU the
   allocators give it (CuPy pool, PyTorch's CUDA allocator), in this process. On the CPU with
   `--memory child` (the default where Linux/glibc allow it), a fresh process for each method
   rebuilds the runner from a JSON payload, takes one warm-up step, and measures one step as
   the growth of its peak resident set. That counts every allocator (NumPy, PyTorch, numba,
   BLAS), with tracemalloc beside it (`peak_bytes_tracemalloc`). With `--memory inproc`,
   tracemalloc here counts NumPy buffers only, and a PyTorch CPU step then gets the runner's
   analytic estimate ("estimated") or nothing ("not measured").

Fields each method's result gets: the scalar values of its first step (e.g. loss), check ("ok",
"failed" or "skipped"), check_ok, check_error
(the largest relative error over the compared quantities), check_errors and check_tolerances
(per quantity), ms, ms_min, ms_all, repeats, `<label>_ms` for each further timed function,
timed_with, resident_bytes, resident_method, peak_bytes, peak_method, peak_bytes_tracemalloc,
skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy

import _bench_common as bc
import _bench_memory as bm


# ---------------------------------------------------------------------------- runners
def spread_rows(n, count=8):
    """Up to `count` distinct indices in [0, n) that include both ends and are spread between them."""
    return numpy.unique(numpy.linspace(0, n - 1, min(n, count)).round().astype(numpy.int64))


def nbytes(array):
    """Bytes of a NumPy/CuPy array or a PyTorch tensor (0 for None)."""
    if array is None:
        return 0
    if hasattr(array, "nbytes"):
        return int(array.nbytes)
    return int(array.element_size() * array.numel())


class Runner:
    """One method at one configuration, built with its initial state. Subclasses define `step`
    (the timed unit), `check_values` and `held_arrays`. Override `timed` to time more functions
    than the step (their results become `<label>_ms`)."""

    method = None

    def step(self):
        raise NotImplementedError

    def sync(self):
        pass

    def timed(self):
        return {"step": self.step}

    def first_step(self):
        """Take the first step; return what the check compares ({name: float or host array})."""
        self.step()
        self.sync()
        return self.check_values()

    def check_values(self):
        raise NotImplementedError

    def held_arrays(self):
        return []

    def held_bytes(self):
        return int(sum(nbytes(a) for a in self.held_arrays()))

    def meters(self, rss=False):
        return []

    def estimate_peak(self):
        """Analytic peak growth of a step, used only where no meter can see the method."""
        return None

    def close(self):
        pass


class EngineRunner(Runner):
    """A method built on an engine backend: synchronised and metered through it."""

    def __init__(self, backend):
        self.backend = backend

    def sync(self):
        self.backend.synchronize()

    def to_host64(self, array):
        return numpy.array(self.backend.to_host(array), dtype=numpy.float64)

    def _column_blocks(self, a):
        step = max(1, (8 << 20) // max(1, a.shape[0]))        # about 64 MiB of float64
        return [(s, min(a.shape[1], s + step)) for s in range(0, a.shape[1], step)]

    def host_matvec(self, a, v):
        """a @ v (m,) in float64 on the host for a device matrix a (m, n), by column blocks."""
        return sum(self.to_host64(a[:, s:e]) @ v[s:e] for s, e in self._column_blocks(a))

    def host_vecmat(self, r, a):
        """r @ a (n,) in float64 on the host for a device matrix a (m, n), by column blocks."""
        return numpy.concatenate([r @ self.to_host64(a[:, s:e]) for s, e in self._column_blocks(a)])

    def meters(self, rss=False):
        if self.backend.device == "gpu":
            return [bm.CupyPeak(self.backend)]
        return [bm.TracemallocPeak()] + ([bm.RssPeak()] if rss else [])   # RssPeak entered last


class OutputRunner(EngineRunner):
    """An engine output layer `out` trained on fixed inputs `h`, targets `t` (dh: the last
    input gradient): what it holds between steps, and how it lets go."""

    out = h = t = dh = None

    def held_arrays(self):
        return (list(self.out.params.values()) + list(self.out.grads.values())
                + [self.h, self.t, self.dh])

    def close(self):
        self.out = self.h = self.t = self.dh = None


class TorchRunner(Runner):
    """A PyTorch method: synchronised through torch.cuda on the GPU."""

    def __init__(self, torch, torch_device):
        self.torch, self.torch_device = torch, torch_device
        self.sync = bc.torch_sync(torch, torch_device)

    @staticmethod
    def to_host64(tensor):
        return numpy.array(tensor.detach().cpu().numpy(), dtype=numpy.float64)

    def meters(self, rss=False):
        if self.torch_device.type == "cuda":
            return [bm.TorchCudaPeak(self.torch)]
        return [bm.RssPeak()] if rss else []


# ---------------------------------------------------------------------------- checks
@dataclass
class Reference:
    """The float64 reference of a first step: `values` ({name: float or array}); `allowances`,
    absolute errors allowed before the relative error counts ({name: float}, see the module
    docstring); `errors`, relative errors the reference computed itself (e.g. how far a
    selection is from a true top-k)."""
    values: dict
    allowances: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)


@dataclass
class Check:
    ok: bool
    error: float
    errors: dict
    tolerances: dict
    problems: list

    def fields(self):
        return dict(check="ok" if self.ok else "failed", check_ok=self.ok, check_error=self.error,
                    check_errors=dict(self.errors), check_tolerances=dict(self.tolerances))

    def describe(self):
        if self.problems:
            return "; ".join(self.problems)
        return ", ".join(f"{k} {e:.1e}" for k, e in self.errors.items())


def relative_error(value, reference, allowance=0.0):
    """max(0, max |value - reference| - allowance) / max |reference|; inf when the shapes differ
    or the value is not finite (0 / 0 counts as 0)."""
    a = numpy.asarray(value, dtype=numpy.float64)
    r = numpy.asarray(reference, dtype=numpy.float64)
    if a.shape != r.shape or not numpy.isfinite(a).all():
        return math.inf
    excess = max(0.0, float(numpy.abs(a - r).max(initial=0.0)) - float(allowance))
    if excess == 0.0:
        return 0.0
    return excess / max(float(numpy.abs(r).max(initial=0.0)), 1e-300)


def compare(values, reference: Reference, tolerances) -> Check:
    """Check of a method's first-step `values` against `reference`, quantity by quantity."""
    errors, problems = {}, []
    for key, tol in tolerances.items():
        if key in reference.errors:
            err = float(reference.errors[key])
        elif key not in values:
            err = math.inf
            problems.append(f"{key}: not produced")
        else:
            err = relative_error(values[key], reference.values[key],
                                 reference.allowances.get(key, 0.0))
        errors[key] = err
        if not err <= tol:
            problems.append(f"{key} error {err:.2e} > {tol:g}")
    worst = max(errors.values(), default=0.0)
    return Check(not problems, worst, errors, dict(tolerances), problems)


# ---------------------------------------------------------------------------- memory
def memory_mode(args, device):
    """"child", "inproc" or "gpu": how this run measures a step's memory."""
    if device == "gpu":
        return "gpu"
    if args.memory == "inproc" or not bm.rss_peak_supported()[0]:
        return "inproc"
    return "child"


def measure_step_memory(runner, rss=False):
    """The memory fields of one more step of `runner`, under its meters."""
    meters = runner.meters(rss=rss)
    runner.sync()
    held = runner.held_bytes()
    for m in meters:
        m.__enter__()
    try:
        runner.step()
        runner.sync()
    finally:
        for m in reversed(meters):
            m.__exit__(None, None, None)
    by = {m.method: m for m in meters}
    main = next((by[k] for k in ("rss-hwm", "cupy-pool", "torch-cuda", "tracemalloc") if k in by),
                None)
    out = dict(resident_bytes=held, resident_method="held-arrays",
               peak_bytes_tracemalloc=by["tracemalloc"].peak_bytes if "tracemalloc" in by else None)
    if main is not None:
        out.update(peak_bytes=main.peak_bytes, peak_method=main.method)
    else:
        estimate = runner.estimate_peak()
        out.update(peak_bytes=estimate, peak_method="estimated" if estimate is not None
                   else "not measured")
    return out


def child_main(payload_json, build):
    """Entry of the memory subprocess (`--_child JSON`): build(payload, backend) the runner on
    the CPU backend, one warm-up step, then one step under RssPeak; reply with its fields."""
    import json
    from engine.backend import get_backend
    runner = build(json.loads(payload_json), get_backend("cpu"))
    runner.step()              # warm-up: persistent gradients, BLAS buffers, JIT, then steady state
    bm.child_reply(measure_step_memory(runner, rss=True))
    runner.close()
    return 0


# ---------------------------------------------------------------------------- the flow
def blank_result(method):
    """The fields of a method that was not run (check \"skipped\")."""
    return dict(method=method, check="skipped", check_ok=None, check_error=None, check_errors=None,
                check_tolerances=None, ms=None, ms_min=None, ms_all=None, repeats=None,
                timed_with=None, resident_bytes=None, resident_method=None, peak_bytes=None,
                peak_method=None, peak_bytes_tracemalloc=None, skipped=None)


def _is_oom(exc):
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or \
        "out of memory" in str(exc).lower()


def run_methods(methods, build, reference_for, tolerances, args, env, *, label="",
                estimate=None, payload=None, script=None, repeats=None, warmup=None):
    """{method: result fields} of one configuration, through check, time and memory.

    build(method) -> Runner; reference_for(runner, values) -> Reference (called after the
    runner's first step); tolerances: {quantity: relative tolerance}, or a function of the
    method giving one; estimate(method) -> (bytes) for the memory-fit test; payload(method) ->
    JSON-able dict from which the script's `--_child` entry rebuilds the runner (CPU memory in a
    fresh process; `script` is the script's path); repeats / warmup: an int or {method: int}
    (default args.repeats / args.warmup). `env` holds backend, device and torch (or None)."""
    backend, device, torch = env["backend"], env["device"], env.get("torch")
    mode = memory_mode(args, device)
    if mode == "child" and (payload is None or script is None):
        mode = "inproc"
    reps = repeats if repeats is not None else args.repeats
    warm = warmup if warmup is not None else args.warmup
    results = {m: blank_result(m) for m in methods}
    bm.release_memory(backend, torch)
    budget = 0.9 * bm.available_memory(backend)
    group = []                                      # [(method, runner, bytes)]

    def say(method, text):
        print(f"[bench] {label}{' ' if label else ''}{method}: {text}", flush=True)

    def flush():
        if not group:
            return
        names = [m for m, _r, _b in group]
        fns = {(m, k): (fn, r.sync) for m, r, _b in group for k, fn in r.timed().items()}
        pick = (lambda v, m, default: v.get(m, default) if isinstance(v, dict) else v)
        try:
            timings = bc.time_round_robin(fns, {key: pick(reps, key[0], args.repeats) for key in fns},
                                          {key: pick(warm, key[0], args.warmup) for key in fns})
        except Exception as exc:
            if not _is_oom(exc):
                raise
            for m, runner, _b in group:
                results[m]["skipped"] = f"out of memory while timed with {names}"
                runner.close()
                say(m, f"skipped ({results[m]['skipped']})")
            group.clear()
            bm.release_memory(backend, torch)
            return
        for (m, k), t in timings.items():
            res = results[m]
            if k == "step":
                res.update(ms=t.median_ms, ms_min=t.min_ms, ms_all=t.times_ms,
                           repeats=len(t.times_ms))
            else:
                res[f"{k}_ms"] = t.median_ms
        for m, runner, _b in group:
            results[m]["timed_with"] = names
            if mode != "child":
                results[m].update(measure_step_memory(runner))
        for _m, runner, _b in group:
            runner.close()
        group.clear()
        bm.release_memory(backend, torch)
        if mode == "child":
            for m in names:
                try:
                    results[m].update(bm.run_child(script, payload(m)))
                except RuntimeError as exc:
                    results[m]["peak_method"] = "failed"
                    say(m, f"MEMORY MEASUREMENT FAILED: {exc}")
        for m in names:
            r = results[m]
            say(m, f"{bc.fmt_num(r['ms'], '{:.3f}')} ms, peak {bc.fmt_mib(r['peak_bytes'])} MiB "
                   f"({r['peak_method']}), check ok (error {r['check_error']:.1e})")

    for method in methods:
        res = results[method]
        need = int(estimate(method)) if estimate else 0
        if need > budget:
            res["skipped"] = (f"needs about {bc.fmt_mib(need, 0)} MiB, {bc.fmt_mib(budget / 0.9, 0)} "
                              f"MiB available")
            say(method, f"skipped ({res['skipped']})")
            continue
        if group and sum(b for _m, _r, b in group) + need > budget:
            flush()
        runner = None
        try:
            runner = build(method)
            values = runner.first_step()
            ref = reference_for(runner, values)
            tol = tolerances(method) if callable(tolerances) else tolerances
            check = compare(values, ref, tol)
        except Exception as exc:
            if runner is not None:
                runner.close()
            if not _is_oom(exc):
                raise
            res["skipped"] = f"out of memory ({type(exc).__name__})"
            say(method, f"skipped ({res['skipped']})")
            bm.release_memory(backend, torch)
            continue
        res.update(check.fields())
        res.update({k: v for k, v in values.items() if isinstance(v, float)})   # e.g. the loss
        if check.ok:
            group.append((method, runner, need))
            continue
        runner.close()
        bar = "!" * 78
        print(f"{bar}\n[bench] CORRECTNESS FAILURE, not timed: {label} {method}: "
              f"{check.describe()}\n{bar}", flush=True)
    flush()
    return results


def report_failures(rows, describe):
    """Print one line naming the rows whose check failed; the script's exit status (1 or 0)."""
    failed = [r for r in rows if r.get("check") == "failed"]
    if failed:
        print(f"[bench] {len(failed)} CORRECTNESS FAILURE(S), not timed: "
              + "; ".join(describe(r) for r in failed), flush=True)
    return 1 if failed else 0


def check_cell(row):
    """The table's check column: ok, FAILED (not timed) or - (skipped)."""
    return {"ok": "ok", "failed": "FAILED"}.get(row.get("check"), "-")


def update_allowances(initial, dtype):
    """{<name>_update: eps(dtype) * max |P0|} for initial parameters {name: array}: the rounding
    of an update measured as P1 - P0 in `dtype`."""
    eps = float(numpy.finfo(dtype).eps)
    return {f"{k}_update": eps * float(numpy.abs(numpy.asarray(v)).max(initial=0.0))
            for k, v in initial.items()}


def start(parser, argv, build):
    """Parse a bench script's options. In the memory subprocess (`--_child`), measure and exit;
    otherwise return (args, env): env holds backend, device ("cpu" | "gpu"), device_name, and
    torch / torch_device (None until the script imports PyTorch)."""
    args = parser.parse_args(argv)
    if getattr(args, "_child", None) is not None:
        raise SystemExit(child_main(args._child, build))
    backend, device, device_name = bc.resolve_backend(args.device)
    bc.finish_args(args, device)
    return args, dict(backend=backend, device=device, device_name=device_name, torch=None,
                      torch_device=None)


PREFIXED = ("check", "check_error", "check_errors", "check_tolerances", "ms_min", "repeats",
            "resident_bytes", "peak_bytes", "peak_method", "peak_bytes_tracemalloc")


def combined_fields(results, methods):
    """The fields of a row that holds several methods (e.g. naive and factored): each method's
    fields prefixed with its name (`naive_check`, `factored_peak_bytes`, ...), and the row's
    check: "failed" if any failed, "ok" if all passed (else "skipped"), with the largest error."""
    row = {}
    for m in methods:
        row.update({f"{m}_{k}": results[m][k] for k in PREFIXED})
    checks = [results[m]["check"] for m in methods]
    row["check"] = "failed" if "failed" in checks else (
        "ok" if all(c == "ok" for c in checks) else "skipped")
    row["check_ok"] = {"ok": True, "failed": False}.get(row["check"])
    row["check_error"] = max((results[m]["check_error"] for m in methods
                              if results[m]["check_error"] is not None), default=None)
    return row
