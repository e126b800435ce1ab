"""Benchmark: our exact softmax output layer against PyTorch, one SGD step, side by side.

Shapes: h (B, d) the last hidden layer, W (D, d) and b (D,) the output layer, targets (B,)
uniform over the D classes (the first rows name the classes at the chunk edges, see make_data);
float32 throughout. One *step* is forward, backward (dh too) and a
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
float64 reference step (tools/_references.py: loss, dh, the update of b and of some rows of W;
tolerances in CHECK_TOLERANCES). A method that disagrees is not timed: its row says check
"failed", and the script exits with status 1. The methods are then timed round-robin (median).

Peak memory (`peak_bytes`): the most bytes allocated during one step (after warm-up steps)
minus the bytes allocated just before it; `resident_bytes` is what is held between steps
(parameters, inputs, and the gradients that the method keeps: the sum of the held arrays' sizes);
`total_bytes` = both, the step's whole footprint. On the GPU the peak comes from the allocators
(CuPy pool via a MemoryHook; PyTorch's max_memory_allocated), in the benchmark process. On the
CPU every method is measured alike in a fresh process (same data, a warm-up step, then the
measured step) as the growth of its peak resident set over the step, glibc giving each block
>= 64 KiB its own mapping (see _bench_memory.RssPeak and _bench_harness); ours is cross-checked
there with tracemalloc (`peak_bytes_tracemalloc`, which cannot see the previous step's gradient
being freed). With `--memory inproc`, or where RssPeak cannot work (not Linux/glibc), ours is
measured with tracemalloc and PyTorch's CPU peak is an analytic estimate (3 B x D floats),
labelled `estimated`.

Compute floor: 6 B D d flops (3 products; chunked methods 8 B D d, the logits are recomputed)
at the device's peak float32 matmul rate, measured once with a large square product (NumPy/CuPy
and PyTorch; the faster one counts). `% floor` = floor_ms / ms.

    python tools/bench_softmax.py --device cpu --quick --json /tmp/bench_softmax_quick.json
    python tools/bench_softmax.py --device gpu --json results/bench_softmax_gpu.json
"""
from __future__ import annotations

import math
import os
import sys

import numpy

import _path  # noqa: F401  (this checkout's engine first on sys.path)
import _bench_common as bc
import _bench_harness as harness
import _bench_memory as bm
import _references as refs

METHODS = ("torch", "ours", "ours-chunked-unfused", "ours-chunked")
CHUNKED = ("ours-chunked-unfused", "ours-chunked")
DTYPE = numpy.float32
F = numpy.dtype(DTYPE).itemsize

#: float32 first step vs the float64 reference: loss relative; dh and the updates of W's rows and
#: of b relative to their largest entry (W's update after one float32 epsilon of max |W0|)
CHECK_TOLERANCES = {"loss": 1e-4, "dh": 1e-3, "W_update": 1e-3, "b_update": 1e-3}
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
    """Bytes of one method at one config: held between steps + the step's extra (used to skip
    what cannot fit)."""
    params, inputs = (D * d + D) * F, B * d * F + B * 8
    grads = (D * d + D + B * d) * F
    small = 4 * B * d * F + 8 * B * F + (1 << 20)
    if method == "torch":        # logits, log-softmax (saved), and the logits' gradient
        return params + inputs + grads + 3 * B * D * F + small
    if method == "ours":         # logits/gradient in place, G^T h (+ a D x d temporary, to be safe)
        return params + inputs + grads + B * D * F + 2 * D * d * F + D * F + small
    if method == "ours-chunked-unfused":
        return params + inputs + grads + (D * d + D) * F + 2 * B * C * F + 2 * C * d * F + small
    return params + inputs + 2 * B * C * F + 2 * C * d * F + 2 * C * F + small


def make_data(B, D, d, C, seed):
    """The inputs of a config: h (B, d) standard normal, targets (B,) uniform over D, except that
    up to B / 2 first rows name the classes at the edges of the chunks of C columns (0, D - 1,
    C - 1, C, 2C - 1, 2C, ...), so that the check sees every chunk boundary it can."""
    rng = numpy.random.default_rng(seed + 1)
    h = rng.standard_normal((B, d)).astype(DTYPE)
    t = rng.integers(0, D, size=B).astype(numpy.int64)
    edges = [0, D - 1] + [c for s in range(C, D, C) for c in (s - 1, s)]
    n = min(len(edges), B // 2)
    t[:n] = edges[:n]
    return h, t


def make_W0(D, d, seed):
    """The initial W, exactly as SoftmaxOutput.bind(rng=default_rng(seed)) draws it (b = 0)."""
    from engine.outputs import SoftmaxOutput
    return SoftmaxOutput(d, D).init_params(numpy.random.default_rng(seed))["W"].astype(DTYPE)


def check_rows(t, D):
    """The rows of W whose update is checked: the first 32 targets and the first 32 classes."""
    return numpy.unique(numpy.concatenate([t[:32], numpy.arange(min(D, 32))])).astype(numpy.int64)


# ---------------------------------------------------------------------------- runners
def build_runner(p, backend, torch=None, torch_device=None):
    """The runner of payload p = {method, B, D, d, C, lr, seed} (the same in the memory child)."""
    h, t = make_data(p["B"], p["D"], p["d"], p["C"], p["seed"])
    rows = check_rows(t, p["D"])
    if p["method"] == "torch":
        if torch is None:
            torch, torch_device, note = bc.import_torch("cpu")
            if torch is None:
                raise SystemExit(note)
        return TorchSoftmax(torch, torch_device, make_W0(p["D"], p["d"], p["seed"]), h, t, p["lr"],
                            rows)
    return OursSoftmax(p["method"], backend, p["d"], p["D"], h, t, p["C"], p["lr"], p["seed"], rows)


class OursSoftmax(harness.OutputRunner):
    """Our SoftmaxOutput driven through one SGD step per `step()` call."""

    def __init__(self, method, backend, d, D, h, t, chunk, lr, seed, rows):
        from engine.outputs import SoftmaxOutput
        super().__init__(backend)
        self.method, self.lr, self.rows = method, lr, rows
        if method == "ours":
            out = SoftmaxOutput(d, D, bias=True, chunk_size=None)
        elif method == "ours-chunked-unfused":
            out = SoftmaxOutput(d, D, bias=True, chunk_size=chunk, update="optimizer")
        else:
            out = SoftmaxOutput(d, D, bias=True, chunk_size=chunk, update="fused-sgd")
        out.bind(backend, numpy.random.default_rng(seed), DTYPE)
        self.out, self.fused = out, out.owns_update
        self.h, self.t = backend.asarray(h), backend.asarray(t)
        self.dh = None
        self.loss = None

    def step(self):
        out = self.out
        out.zero_grads()
        self.dh = None
        self.loss = out.forward(self.h, self.t, train=True)
        if self.fused:
            out.prepare_update(self.lr)
        self.dh = out.backward()
        if not self.fused:
            for name in ("W", "b"):
                g = out.grads[name]
                g *= -self.lr
                out.params[name] += g

    def first_step(self):
        idx = self.backend.asarray(self.rows)
        W0_rows = self.to_host64(self.out.params["W"][idx])
        self.step()
        self.sync()
        return {"loss": float(self.loss), "dh": self.to_host64(self.dh),
                "W_update": self.to_host64(self.out.params["W"][idx]) - W0_rows,
                "b_update": self.to_host64(self.out.params["b"])}          # b starts at 0

class TorchSoftmax(harness.TorchRunner):
    """PyTorch's F.linear + F.cross_entropy + backward + in-place SGD, one step per call."""

    method = "torch"

    def __init__(self, torch, torch_device, W0, h, t, lr, rows):
        super().__init__(torch, torch_device)
        import torch.nn.functional as tF
        self.F, self.lr, self.rows = tF, lr, rows
        self.W = torch.tensor(W0, device=torch_device).requires_grad_(True)
        self.b = torch.zeros(W0.shape[0], dtype=torch.float32, device=torch_device).requires_grad_(True)
        self.h = torch.tensor(h, device=torch_device).requires_grad_(True)
        self.t = torch.tensor(t, dtype=torch.int64, device=torch_device)
        self.loss = None

    def step(self):
        for p in (self.W, self.b, self.h):
            p.grad = None
        loss = self.F.cross_entropy(self.F.linear(self.h, self.W, self.b), self.t)
        loss.backward()
        with self.torch.no_grad():
            self.W.add_(self.W.grad, alpha=-self.lr)
            self.b.add_(self.b.grad, alpha=-self.lr)
        self.loss = loss.detach()

    def first_step(self):
        idx = self.torch.as_tensor(self.rows, device=self.torch_device)
        W0_rows = self.to_host64(self.W[idx])
        self.step()
        self.sync()
        return {"loss": float(self.loss), "dh": self.to_host64(self.h.grad),
                "W_update": self.to_host64(self.W[idx]) - W0_rows, "b_update": self.to_host64(self.b)}

    def held_arrays(self):
        return [self.W, self.b, self.h, self.t] + [p.grad for p in (self.W, self.b, self.h)]

    def estimate_peak(self):
        """Logits, saved log-softmax and the logits' gradient (the .grad buffers it frees and
        reallocates cancel out)."""
        B, D = self.h.shape[0], self.W.shape[0]
        return 3 * B * D * F

    def close(self):
        self.W = self.b = self.h = self.t = None


# ---------------------------------------------------------------------------- one config
def run_config(B, D, d, args, env):
    backend, device, torch = env["backend"], env["device"], env["torch"]
    C = min(args.chunk_size or default_chunk(B, D), D)
    print(f"[bench] B={B} D={D} d={d} chunk={C}", flush=True)
    h, t = make_data(B, D, d, C, args.seed)
    rows = check_rows(t, D)
    xp = backend.xp
    W0 = make_W0(D, d, args.seed)              # on the host: the reference moves it block by block
    ref = refs.softmax_sgd_step(xp, W0, xp.zeros(D, dtype=DTYPE), backend.asarray(h),
                                backend.asarray(t), args.lr, rows)
    ref = {k: (v if isinstance(v, float) else numpy.asarray(backend.to_host(v))) for k, v in ref.items()}
    reference = harness.Reference(ref, harness.update_allowances({"W": W0[rows]}, DTYPE))
    del W0

    methods = [m for m in METHODS if m in args.methods and not (m == "torch" and torch is None)]
    payload = lambda m: dict(method=m, B=B, D=D, d=d, C=C, lr=args.lr, seed=args.seed)   # noqa: E731
    results = harness.run_methods(
        methods, lambda m: build_runner(payload(m), backend, torch, env["torch_device"]),
        lambda runner, values: reference, CHECK_TOLERANCES, args, env, label=f"B={B} D={D} d={d}",
        estimate=lambda m: estimate_bytes(m, B, D, d, C), payload=payload,
        script=os.path.abspath(__file__))

    rows_out = []
    for method in methods:
        r = dict(B=B, D=D, d=d, device=device, device_name=env["device_name"], dtype="float32",
                 method=method, chunk_size=C if method in CHUNKED else None,
                 flops=(8 if method in CHUNKED else 6) * B * D * d, loss=None,
                 reference_loss=ref["loss"])
        r.update(results[method])
        r["floor_ms"] = r["flops"] / env["peak_rate"] * 1e3
        rows_out.append(r)
    by_method = {r["method"]: r for r in rows_out}
    tr = by_method.get("torch")
    for r in rows_out:
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
    return rows_out


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
    return p


def table_notes(env, args):
    dev = env["device"]
    if dev == "gpu":
        peak = ("peak = max bytes allocated during one step minus bytes allocated just before it "
                "(CuPy pool via a MemoryHook; torch.cuda.max_memory_allocated)")
    elif harness.memory_mode(args, dev) == "child":
        peak = ("peak = growth of the peak resident set during one step over the resident set "
                "before it, measured alike for every method in a fresh process (VmHWM reset; "
                "glibc mmaps blocks >= 64 KiB)")
    else:
        peak = ("peak: ours = tracemalloc (NumPy allocations) during one step; torch = "
                "'estimated' analytically (3 B x D float32), not measured")
    tol = ", ".join(f"{k} {v:g}" for k, v in CHECK_TOLERANCES.items())
    return [
        f"device: {env['device_name']}; float32; {env['torch_note']}"
        + (f"; {bc.cupy_tf32_note()}" if dev == "gpu" else ""),
        f"one step = forward + backward (incl. dh) + SGD update of W and b; ms = median of "
        f"{args.repeats}, methods interleaved round-robin, after {args.warmup} warm-up",
        f"floor = 6 B D d flops (chunked: 8 B D d) at the measured peak matmul rate "
        f"{env['peak_rate'] / 1e9:.0f} GFLOP/s; %floor = floor_ms / ms",
        peak + "; resident = bytes of the arrays held between steps",
        "total = resident + peak (the step's whole footprint); x torch = ours / torch",
        f"check = first step vs the float64 reference, relative error < ({tol}); "
        f"FAILED rows are not timed",
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
    ("check", harness.check_cell),
]


def main(argv=None):
    args, env = harness.start(build_parser(), argv, build_runner)
    backend, device, device_name = env["backend"], env["device"], env["device_name"]
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

    n = 256 if args.tiny else (8192 if device == "gpu" else 2048)
    rates = {"engine": bc.matmul_rate(backend, DTYPE, n=n, repeats=3)}
    if torch is not None:
        rates["torch"] = bc.torch_matmul_rate(torch, tdev, n=n, repeats=3)
    bm.release_memory(backend, torch)
    peak_rate = max(rates.values())
    print("[bench] peak float32 matmul rate (n=%d): %s" % (
        n, ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items())), flush=True)

    env.update(torch=torch, torch_device=tdev, torch_note=torch_note, peak_rate=peak_rate)
    rows = []
    for B, D, d in make_grid(args, device):
        rows.extend(run_config(B, D, d, args, env))

    if args.json:
        print(f"[bench] wrote {bc.write_json(args.json, rows)}", flush=True)
    status = harness.report_failures(rows, lambda r: f"B={r['B']} D={r['D']} d={r['d']} {r['method']}")
    bc.print_table("Exact softmax output layer: one SGD step, ours vs PyTorch",
                   TABLE_COLUMNS, rows, table_notes(env, args))
    return status


if __name__ == "__main__":
    sys.exit(main())
