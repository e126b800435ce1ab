"""Benchmark: our exact softmax output layer against PyTorch, one SGD step, side by side.

Shapes: h (B, d) the last hidden layer, W (D, d) and b (D,) the output layer, targets (B,)
uniform over the D classes; float32 throughout. One *step* is forward, backward (dh too) and a
plain SGD update of W and b:

  torch                 F.linear + F.cross_entropy, loss.backward(), then W.add_(W.grad,
                        alpha=-lr) and the same for b (= torch.optim.SGD without momentum); the
                        .grad buffers are set to None at the start of the step (zero_grad's
                        default), so between steps they stay allocated, as in a training loop.
  ours                  SoftmaxOutput(d, D) whole: the B x D logits once, the fused softmax-xent
                        kernel turns them into the gradient in place; then W -= lr dW, in place
                        (dW *= -lr; W += dW: no temporary). zero_grads() at the start of the step.
  ours-chunked-unfused  SoftmaxOutput(chunk_size=C): one B x C chunk at a time, logits recomputed
                        in backward (8 B D d flops instead of 6), the D x d gradient stored, then
                        the same SGD update. Shows what chunking alone saves.
  ours-chunked          SoftmaxOutput(chunk_size=C, update="fused-sgd"): the SGD update applied
                        chunk by chunk inside backward: neither B x D nor a D x d gradient exists.

Before timing, every method's first step (from the same weights and data) is compared with the
first method's (PyTorch when importable): loss (relative difference < 1e-4), dh, the update of
b and of some rows of W; and, when small enough, the loss with a float64 NumPy reference. A
failure is printed loudly, marked in the table and JSON, and the script exits with status 1.

Peak memory (`peak_bytes`): the most bytes allocated during one step (after warm-up steps)
minus the bytes allocated just before it; `resident_bytes` is what is held between steps
(parameters, inputs, and the gradients that the method keeps); `total_bytes` = both, the step's
whole footprint. On the GPU both come from the allocators (CuPy pool via a MemoryHook; PyTorch's
max_memory_allocated), in the benchmark process. On the CPU every method is measured alike in a
fresh process (same data, a warm-up step, then the measured step) as the growth of its peak
resident set over the step, glibc giving each block >= 64 KiB its own mapping (see
_bench_common.RssPeak/run_child); ours is cross-checked there with tracemalloc
(`peak_bytes_tracemalloc`, which cannot see the previous step's gradient being freed), and
`resident_bytes` is the sum of the held arrays' sizes. Where RssPeak cannot work (not
Linux/glibc), ours falls back to tracemalloc and PyTorch's CPU peak is an analytic estimate
(3 B x D floats), labelled `estimated`.

Compute floor: 6 B D d flops (3 products; chunked methods 8 B D d, the logits are recomputed)
at the device's peak float32 matmul rate, measured once with a large square product (NumPy/CuPy
and PyTorch; the faster one counts). `% floor` = floor_ms / ms.

    python tools/bench_softmax.py --device cpu --quick --json /tmp/bench_softmax_quick.json
    python tools/bench_softmax.py --device gpu --json results/bench_softmax_gpu.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_common as bc  # noqa: E402

METHODS = ("torch", "ours", "ours-chunked-unfused", "ours-chunked")
CHUNKED = ("ours-chunked-unfused", "ours-chunked")
DTYPE = numpy.float32
F = numpy.dtype(DTYPE).itemsize

LOSS_RTOL = 1e-4      # the brief: loss relative difference in float32
ARRAY_RTOL = 2e-3     # dh and parameter updates: max |a - ref| / max |ref|
FLOAT64_CHECK_MAX_BDd = 4e9

CHUNK_TARGET_BYTES = 64 * 2 ** 20


# ---------------------------------------------------------------------------- grid
def default_chunk(B, D):
    """Columns per chunk: a B x C float32 chunk of about 64 MiB (C a power of two in
    [1024, 65536]); when that covers all D classes, C = ceil(D / 4), so chunking still happens."""
    c = CHUNK_TARGET_BYTES // (B * F)
    c = 1 << int(math.floor(math.log2(max(c, 1))))
    c = min(max(c, 1024), 65536)
    if c >= D:
        c = max(1, -(-D // 4))
    return int(c)


def make_grid(args, device):
    if args.tiny:
        Bs, ds, Ds = [8], [16], [100]
    elif args.quick:
        if device == "gpu":
            Bs, ds, Ds = [256, 4096], [512], [50000, 256000]
        else:
            Bs, ds, Ds = [256], [256], [10000, 50000]
    elif device == "cpu" and not args.full:
        Bs, ds, Ds = [256], [256, 512], [10000, 50000, 100000, 256000]
    else:
        Bs, ds, Ds = [256, 4096], [256, 512, 1024], [10000, 50000, 100000, 256000, 793471]
    Bs = args.B or Bs
    ds = args.d or ds
    Ds = args.D or Ds
    return [(B, D, d) for B in Bs for d in ds for D in Ds]


def estimate_bytes(method, B, D, d, C):
    """(resident, extra) bytes of one step, from the shapes (used to skip what cannot fit)."""
    params, inputs = (D * d + D) * F, B * d * F + B * 8
    grads = (D * d + D + B * d) * F
    small = 4 * B * d * F + 8 * B * F + (1 << 20)
    if method == "torch":        # logits, log-softmax (saved), and the logits' gradient
        return params + inputs + grads, 3 * B * D * F + small
    if method == "ours":         # logits/gradient in place, G^T h (+ a D x d temporary, to be safe)
        return params + inputs + grads, B * D * F + 2 * D * d * F + D * F + small
    if method == "ours-chunked-unfused":
        return params + inputs + grads, (D * d + D) * F + 2 * B * C * F + 2 * C * d * F + small
    return params + inputs, 2 * B * C * F + 2 * C * d * F + 2 * C * F + small


def torch_cpu_estimate(B, D, d):
    """Analytic peak of the PyTorch step above resident (only where RssPeak cannot measure):
    logits, saved log-softmax and the logits' gradient; the .grad buffers it frees and
    reallocates cancel out."""
    return 3 * B * D * F


def make_data(B, D, d, seed):
    """The inputs of a config: h (B, d) standard normal, targets (B,) uniform over D."""
    rng = numpy.random.default_rng(seed + 1)
    h = rng.standard_normal((B, d)).astype(DTYPE)
    t = rng.integers(0, D, size=B).astype(numpy.int64)
    return h, t


def make_W0(D, d, seed):
    """The initial W, exactly as SoftmaxOutput.bind(rng=default_rng(seed)) draws it (b = 0)."""
    from engine.outputs import SoftmaxOutput
    return SoftmaxOutput(d, D).init_params(numpy.random.default_rng(seed))["W"].astype(DTYPE)


def make_runner(method, backend, torch, torch_device, B, D, d, C, lr, seed, h, t, W0=None):
    if method == "torch":
        return TorchRunner(torch, torch_device, make_W0(D, d, seed) if W0 is None else W0,
                           (h, t), lr)
    return OursRunner(method, backend, B, D, d, (h, t), C, lr, seed)


# ---------------------------------------------------------------------------- runners
class OursRunner:
    """Our SoftmaxOutput driven through one SGD step per `step()` call."""

    def __init__(self, method, backend, B, D, d, data, chunk, lr, seed):
        from engine.outputs import SoftmaxOutput
        self.method, self.backend, self.lr = method, backend, lr
        if method == "ours":
            out = SoftmaxOutput(d, D, bias=True, chunk_size=None)
        elif method == "ours-chunked-unfused":
            out = SoftmaxOutput(d, D, bias=True, chunk_size=chunk, update="optimizer")
        else:
            out = SoftmaxOutput(d, D, bias=True, chunk_size=chunk, update="fused-sgd")
        out.bind(backend, numpy.random.default_rng(seed), DTYPE)
        self.out = out
        self.fused = out.owns_update
        h, t = data
        self.h, self.t = backend.asarray(h), backend.asarray(t)
        self.dh = None

    def step(self):
        out = self.out
        out.zero_grads()
        self.dh = None
        loss = out.forward(self.h, self.t, train=True)
        if self.fused:
            out.prepare_update(self.lr)
        self.dh = out.backward()
        if not self.fused:
            for name in ("W", "b"):
                g = out.grads[name]
                g *= -self.lr
                out.params[name] += g
        return loss

    def sync(self):
        self.backend.synchronize()

    def held_bytes(self):
        arrays = list(self.out.params.values()) + list(self.out.grads.values()) + [self.h, self.t]
        if self.dh is not None:
            arrays.append(self.dh)
        return int(sum(a.nbytes for a in arrays))

    def check_values(self, loss, rows):
        be = self.backend
        copy = lambda x: numpy.array(be.to_host(x), dtype=numpy.float64)  # noqa: E731 (own copy)
        return {"loss": float(loss), "dh": copy(self.dh),
                "W_rows": copy(self.out.params["W"][be.asarray(rows)]),
                "b": copy(self.out.params["b"])}

    def meters(self, rss=False):
        if self.backend.device == "gpu":
            return [bc.CupyPeak(self.backend)]
        meters = [bc.TracemallocPeak()]          # entered first, so RssPeak's baseline includes it
        if rss:
            meters.append(bc.RssPeak())
        return meters

    def close(self):
        self.out = self.h = self.t = self.dh = None


class TorchRunner:
    """PyTorch's F.linear + F.cross_entropy + backward + in-place SGD, one step per call."""

    def __init__(self, torch, torch_device, W0, data, lr):
        self.torch, self.dev, self.lr = torch, torch_device, lr
        import torch.nn.functional as tF
        self.F = tF
        h, t = data
        D = W0.shape[0]
        self.W = torch.tensor(W0, device=torch_device).requires_grad_(True)
        self.b = torch.zeros(D, dtype=torch.float32, device=torch_device).requires_grad_(True)
        self.h = torch.tensor(h, device=torch_device).requires_grad_(True)
        self.t = torch.tensor(t, dtype=torch.int64, device=torch_device)
        self._sync = bc.torch_sync(torch, torch_device)

    def step(self):
        torch = self.torch
        for p in (self.W, self.b, self.h):
            p.grad = None
        loss = self.F.cross_entropy(self.F.linear(self.h, self.W, self.b), self.t)
        loss.backward()
        with torch.no_grad():
            self.W.add_(self.W.grad, alpha=-self.lr)
            self.b.add_(self.b.grad, alpha=-self.lr)
        return loss.detach()

    def sync(self):
        self._sync()

    def held_bytes(self):
        ts = [self.W, self.b, self.h, self.t] + [p.grad for p in (self.W, self.b, self.h)
                                                  if p.grad is not None]
        return int(sum(x.element_size() * x.numel() for x in ts))

    def check_values(self, loss, rows):
        torch = self.torch
        idx = torch.as_tensor(rows, device=self.dev)
        copy = lambda x: numpy.array(x.detach().cpu().numpy(), dtype=numpy.float64)  # noqa: E731
        return {"loss": float(loss), "dh": copy(self.h.grad), "W_rows": copy(self.W[idx]),
                "b": copy(self.b)}

    def meters(self, rss=False):
        if self.dev.type == "cuda":
            return [bc.TorchCudaPeak(self.torch)]
        return [bc.RssPeak()] if rss else []

    def close(self):
        self.W = self.b = self.h = self.t = None


# ---------------------------------------------------------------------------- checks
def _rel_max(a, ref):
    a, ref = numpy.asarray(a, numpy.float64), numpy.asarray(ref, numpy.float64)
    scale = max(float(numpy.abs(ref).max(initial=0.0)), 1e-30)
    return float(numpy.abs(a - ref).max(initial=0.0)) / scale


def compare(vals, ref, W0_rows):
    """(ok, detail) of one method's first step against the reference method's."""
    problems, parts = [], []
    r = abs(vals["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-30)
    parts.append(f"loss {r:.1e}")
    if not (r < LOSS_RTOL):
        problems.append(f"loss {vals['loss']!r} vs {ref['loss']!r} (rel {r:.2e} >= {LOSS_RTOL})")
    for key, a, b in (("dh", vals["dh"], ref["dh"]),
                      ("dW", vals["W_rows"] - W0_rows, ref["W_rows"] - W0_rows),
                      ("db", vals["b"], ref["b"])):
        e = _rel_max(a, b)
        parts.append(f"{key} {e:.1e}")
        if not (e < ARRAY_RTOL):
            problems.append(f"{key} max rel {e:.2e} >= {ARRAY_RTOL}")
    return (not problems), ", ".join(problems or parts)


def float64_loss(W0, h, t):
    """Reference mean cross-entropy in float64 on the host (b = 0)."""
    h64, W64 = h.astype(numpy.float64), W0.astype(numpy.float64)
    total = 0.0
    step = max(1, int(2e7 // max(W0.shape[0], 1)))
    for s in range(0, h.shape[0], step):
        logits = h64[s:s + step] @ W64.T
        m = logits.max(axis=1, keepdims=True)
        lse = m[:, 0] + numpy.log(numpy.exp(logits - m).sum(axis=1))
        total += float((lse - logits[numpy.arange(logits.shape[0]), t[s:s + step]]).sum())
    return total / h.shape[0]


# ---------------------------------------------------------------------------- memory
def measure_step_memory(runner, rss=False):
    """One step under the runner's meters: ({meter.method: meter}, bytes held before it)."""
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
    return {m.method: m for m in meters}, held


def memory_fields(by, held, B, D, d):
    """The row's memory fields from the meters of one step (see the module docstring)."""
    main = next((by[k] for k in ("rss-hwm", "cupy-pool", "torch-cuda", "tracemalloc") if k in by),
                None)
    out = dict(peak_bytes_tracemalloc=by["tracemalloc"].peak_bytes if "tracemalloc" in by else None)
    if main is None:                     # PyTorch on a CPU where RssPeak cannot work
        out.update(peak_bytes=torch_cpu_estimate(B, D, d), peak_method="estimated")
    else:
        out.update(peak_bytes=main.peak_bytes, peak_method=main.method)
    if main is not None and main.method in ("cupy-pool", "torch-cuda"):
        out.update(resident_bytes=main.before_bytes, resident_method=main.method)
    else:
        out.update(resident_bytes=held, resident_method="held-arrays")
    return out


def child_main(payload):
    """Entry of the measurement subprocess (CPU): build the method's step from the same seeds,
    one warm-up step, then one step under RssPeak (and tracemalloc for ours); reply."""
    from engine.backend import get_backend
    p = payload
    backend = get_backend("cpu")
    torch = tdev = None
    if p["method"] == "torch":
        torch, tdev, note = bc.import_torch("cpu")
        if torch is None:
            raise SystemExit(note)
    h, t = make_data(p["B"], p["D"], p["d"], p["seed"])
    runner = make_runner(p["method"], backend, torch, tdev, p["B"], p["D"], p["d"], p["C"],
                         p["lr"], p["seed"], h, t)
    runner.step()              # warm-up: persistent gradients, BLAS buffers, then steady state
    fields = memory_fields(*measure_step_memory(runner, rss=True), p["B"], p["D"], p["d"])
    bc.child_reply(fields)
    return 0


# ---------------------------------------------------------------------------- one config
def run_config(B, D, d, args, env):
    backend, device, torch, tdev = env["backend"], env["device"], env["torch"], env["torch_device"]
    C = args.chunk_size or default_chunk(B, D)
    C = min(C, D)
    h, t = make_data(B, D, d, args.seed)
    rows = numpy.unique(numpy.concatenate([t[:32], numpy.arange(min(D, 32))])).astype(numpy.int64)
    print(f"[bench] B={B} D={D} d={d} chunk={C}", flush=True)

    W0 = make_W0(D, d, args.seed)
    W0_rows = W0[rows].astype(numpy.float64)
    f64 = None
    if B * D * d <= FLOAT64_CHECK_MAX_BDd:
        f64 = float64_loss(W0, h, t)

    methods = [m for m in METHODS if m in args.methods]
    if torch is None and "torch" in methods:
        methods.remove("torch")
    results, ref, ref_name = [], None, None
    for method in methods:
        bc.release_memory(backend, torch)
        row = dict(B=B, D=D, d=d, device=device, device_name=env["device_name"], dtype="float32",
                   method=method, chunk_size=C if method in CHUNKED else None,
                   flops=(8 if method in CHUNKED else 6) * B * D * d, ms=None, ms_min=None,
                   repeats=args.repeats, peak_bytes=None, peak_method=None, resident_bytes=None,
                   resident_method=None, peak_bytes_tracemalloc=None, loss=None,
                   check_ok=None, check=None, skipped=None)
        row["floor_ms"] = row["flops"] / env["peak_rate"] * 1e3
        resident, extra = estimate_bytes(method, B, D, d, C)
        avail = bc.available_memory(backend)
        if resident + extra > 0.9 * avail:
            row["skipped"] = (f"needs about {bc.fmt_mib(resident + extra, 0)} MiB, "
                              f"{bc.fmt_mib(avail, 0)} MiB available")
            print(f"[bench]   {method}: skipped ({row['skipped']})", flush=True)
            results.append(row)
            continue
        runner = None
        try:
            runner = make_runner(method, backend, torch, tdev, B, D, d, C, args.lr, args.seed,
                                 h, t, W0)
            # first step, from the initial weights: the correctness check
            loss = runner.step()
            runner.sync()
            vals = runner.check_values(loss, rows)
            row["loss"] = vals["loss"]
            ok, detail = True, []
            if f64 is not None:
                r = abs(vals["loss"] - f64) / abs(f64)
                detail.append(f"loss vs float64 {r:.1e}")
                if not (r < LOSS_RTOL):
                    ok = False
                    detail.append(f"FAILED: loss {vals['loss']!r} vs float64 {f64!r}")
            if ref is None:
                ref, ref_name = vals, method
                detail.append("reference")
            else:
                ok_ref, d_ref = compare(vals, ref, W0_rows)
                ok = ok and ok_ref
                detail.append(f"vs {ref_name}: {d_ref}")
            row["check_ok"], row["check"] = ok, "; ".join(detail)
            if not ok:
                bar = "!" * 78
                print(f"{bar}\n[bench] CORRECTNESS FAILURE: B={B} D={D} d={d} {method}: "
                      f"{row['check']}\n{bar}", flush=True)
            vals = None
            # timing (after the remaining warm-up steps)
            timing = bc.time_fn(runner.step, sync=runner.sync, repeats=args.repeats,
                                warmup=args.warmup - 1)
            row["ms"], row["ms_min"] = timing.median_ms, timing.min_ms
            # memory: one more step under the meters (on the CPU: in a fresh process)
            if device == "cpu" and bc.rss_peak_supported()[0]:
                runner.close()
                runner = None
                bc.release_memory(backend, torch)
                payload = dict(method=method, B=B, D=D, d=d, C=C, lr=args.lr, seed=args.seed)
                try:
                    row.update(bc.run_child(os.path.abspath(__file__), payload))
                except RuntimeError as exc:
                    row["peak_method"] = "failed"
                    print(f"[bench] MEMORY MEASUREMENT FAILED: B={B} D={D} d={d} {method}: {exc}",
                          flush=True)
            else:
                row.update(memory_fields(*measure_step_memory(runner), B, D, d))
            print(f"[bench]   {method}: {row['ms']:.2f} ms, peak {bc.fmt_mib(row['peak_bytes'])} MiB "
                  f"({row['peak_method']}), check {'ok' if ok else 'FAILED'}", flush=True)
        except MemoryError as exc:
            row["skipped"] = f"out of memory ({exc})"
            print(f"[bench]   {method}: skipped ({row['skipped']})", flush=True)
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
                row["skipped"] = f"out of memory ({type(exc).__name__})"
                print(f"[bench]   {method}: skipped ({row['skipped']})", flush=True)
            else:
                raise
        finally:
            if runner is not None:
                runner.close()
            runner = None
        results.append(row)

    del W0
    by_method = {r["method"]: r for r in results}
    tr = by_method.get("torch")
    for r in results:
        r["pct_floor"] = 100.0 * r["floor_ms"] / r["ms"] if r["ms"] else None
        r["total_bytes"] = (r["peak_bytes"] + r["resident_bytes"]
                            if r["peak_bytes"] is not None and r["resident_bytes"] is not None else None)
        r["ms_vs_torch"] = r["peak_vs_torch"] = r["total_vs_torch"] = None
        if tr is not None and r["method"] != "torch":
            if r["ms"] and tr["ms"]:
                r["ms_vs_torch"] = r["ms"] / tr["ms"]
            if r["peak_bytes"] is not None and tr["peak_bytes"]:
                r["peak_vs_torch"] = r["peak_bytes"] / tr["peak_bytes"]
            if r["total_bytes"] is not None and tr["total_bytes"]:
                r["total_vs_torch"] = r["total_bytes"] / tr["total_bytes"]
        r["peak_rate_gflops"] = env["peak_rate"] / 1e9
        r["torch_note"] = env["torch_note"]
    return results


# ---------------------------------------------------------------------------- main
def build_parser():
    p = bc.make_parser(__doc__.split("\n", 1)[0], default_repeats_cpu=3, default_repeats_gpu=10)
    p.add_argument("--chunk-size", type=int, default=None,
                   help="columns per chunk for the chunked methods (default: a B x C chunk of "
                        "about 64 MiB, C a power of two in [1024, 65536], or D/4 when that covers D)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    p.add_argument("--B", type=int, nargs="+", default=None, metavar="N",
                   help="batch sizes (override the grid's)")
    p.add_argument("--d", type=int, nargs="+", default=None, metavar="N",
                   help="feature widths (override the grid's)")
    p.add_argument("--D", type=int, nargs="+", default=None, metavar="N",
                   help="class counts (override the grid's)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="methods to run (default: all)")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)   # measurement subprocess
    return p


def table_notes(env, args):
    dev = env["device"]
    if dev == "gpu":
        peak = ("peak = max bytes allocated during one step minus bytes allocated just before it "
                "(CuPy pool via a MemoryHook; torch.cuda.max_memory_allocated); "
                "resident = bytes allocated before the step")
    else:
        peak = ("peak = growth of the peak resident set during one step over the resident set "
                "before it, measured alike for every method in a fresh process (VmHWM reset; "
                "glibc mmaps blocks >= 64 KiB); resident = bytes of the arrays held between steps")
        if not bc.rss_peak_supported()[0]:
            peak = ("peak: ours = tracemalloc (NumPy allocations) during one step; torch = "
                    "'estimated' analytically (3 B x D float32), not measured; "
                    "resident = bytes of the arrays held between steps")
    return [
        f"device: {env['device_name']}; float32; {env['torch_note']}"
        + (f"; {bc.cupy_tf32_note()}" if dev == "gpu" else ""),
        f"one step = forward + backward (incl. dh) + SGD update of W and b; ms = median of "
        f"{args.repeats} after {args.warmup} warm-up",
        f"floor = 6 B D d flops (chunked: 8 B D d) at the measured peak matmul rate "
        f"{env['peak_rate'] / 1e9:.0f} GFLOP/s; %floor = floor_ms / ms",
        peak,
        "total = resident + peak (the step's whole footprint); x torch = ours / torch",
        f"check = first step vs the reference method (loss rel < {LOSS_RTOL:g}; dh, dW rows, db "
        f"< {ARRAY_RTOL:g} of max) and loss vs float64 where small",
    ]


TABLE_COLUMNS = [
    ("B", lambda r: r["B"]),
    ("D", lambda r: r["D"]),
    ("d", lambda r: r["d"]),
    ("method", lambda r: r["method"]),
    ("chunk", lambda r: r["chunk_size"] or "-"),
    ("ms", lambda r: bc.fmt_num(r["ms"], "{:.2f}") if not r["skipped"] else "skipped"),
    ("ms x torch", lambda r: bc.fmt_num(r["ms_vs_torch"])),
    ("%floor", lambda r: bc.fmt_num(r["pct_floor"], "{:.0f}")),
    ("peak MiB", lambda r: bc.fmt_mib(r["peak_bytes"])
     + ("(est)" if r["peak_method"] == "estimated" else "")),
    ("peak x torch", lambda r: bc.fmt_num(r["peak_vs_torch"], "{:.3f}")),
    ("resident MiB", lambda r: bc.fmt_mib(r["resident_bytes"])),
    ("total MiB", lambda r: bc.fmt_mib(r["total_bytes"])),
    ("total x torch", lambda r: bc.fmt_num(r["total_vs_torch"], "{:.3f}")),
    ("check", lambda r: "-" if r["check_ok"] is None else ("ok" if r["check_ok"] else "FAILED")),
]


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args._child is not None:
        return child_main(json.loads(args._child))
    backend, device, device_name = bc.resolve_backend(args.device)
    bc.finish_args(args, device)
    print(f"[bench] device: {device_name}", flush=True)

    torch, tdev, torch_note = (None, None, "PyTorch left out (--no-torch)")
    if not args.no_torch:
        torch, tdev, torch_note = bc.import_torch(device)
    if torch is None:
        print(f"[bench] NOTE: no PyTorch rows: {torch_note}", flush=True)
    else:
        print(f"[bench] {torch_note}", flush=True)
    if device == "gpu":
        print(f"[bench] {bc.cupy_tf32_note()}", flush=True)

    n = 1024 if args.tiny else (8192 if device == "gpu" else 2048)
    rate = bc.matmul_rate(backend, DTYPE, n=n, repeats=3)
    rates = {"engine": rate}
    if torch is not None:
        rates["torch"] = bc.torch_matmul_rate(torch, tdev, n=n, repeats=3)
    bc.release_memory(backend, torch)
    peak_rate = max(rates.values())
    print("[bench] peak float32 matmul rate (n=%d): %s" % (
        n, ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items())), flush=True)

    env = dict(backend=backend, device=device, device_name=device_name, torch=torch,
               torch_device=tdev, torch_note=torch_note, peak_rate=peak_rate)
    rows = []
    for B, D, d in make_grid(args, device):
        rows.extend(run_config(B, D, d, args, env))

    if args.json:
        path = bc.write_json(args.json, rows)
        print(f"[bench] wrote {path}", flush=True)
    failed = [r for r in rows if r["check_ok"] is False]
    if failed:
        print(f"[bench] {len(failed)} CORRECTNESS FAILURE(S): "
              + "; ".join(f"B={r['B']} D={r['D']} d={r['d']} {r['method']}" for r in failed),
              flush=True)
    bc.print_table("Exact softmax output layer: one SGD step, ours vs PyTorch",
                   TABLE_COLUMNS, rows, table_notes(env, args))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
