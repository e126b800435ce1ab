"""Benchmark: the fixed fan-in (FFI) layer at the Amazon-670K shape (docs/fixed-fanin.md).

Forward + backward (dy -> dweights, dbias, dx) of a layer from a 32,768-wide input to 670,091
labels, k in {32, 64}, batch 32..256, float32, for
  ffi-kernel    our kernels: rawkernels/ffi.cu on the GPU, the numba loops on the CPU
  ffi-cusparse  cuSPARSE SpMM over a CSR view of the same storage (GPU only)
  dense         Linear (cuBLAS / BLAS) where W and dW fit; otherwise its memory is computed
JSON rows: labels, input, k, batch, device, method, ms (median), peak_bytes, peak_kind
("measured": the arrays held (layer storage, x, dy: resident_bytes) + the measured peak growth
of one step (step_peak_bytes, tools/_bench_harness.py); "computed": from the shapes), floor_ms
and floor_ratio (FFI rows), check / check_error (below).

Before timing, every method's first forward + backward is compared with the float64 reference
(tools/_references.py): y and dx for 8 batch rows, the weight gradient for 64 labels, the bias
gradient of every label, and the sketches y s and r^T dx (random +-1 vectors: every entry of y
and dx counts), relative to each quantity's largest entry (CHECK_TOLERANCES). A method
that disagrees is not timed, and the script exits with status 1. The methods of one shape are
timed round-robin (medians).

Memory-bandwidth floor of one FFI forward + backward, s = 4 bytes (float32), idx int32:
  reads   weights and indices twice (forward, backward): 2 L k (s + 4); bias L s;
          x twice (forward, backward gathers, each input element once): 2 B I s; dy B L s
  writes  y B L s; dweights L k s; dbias L s; dx B I s
  total   L k (3 s + 8) + 2 L s + 2 B L s + 3 B I s;  floor_ms = total / bandwidth.
The gathers of x (B L k elements) are assumed to hit the cache (x is 4-32 MiB). Bandwidth:
--bandwidth (bytes/s); default on the GPU 4.8e12 for an H200, 3.35e12 for an H100 (by device
name), else a measured device copy; on the CPU a measured copy (numpy, one thread).

Also the paper's memory configuration (768-wide dense input -> 32,768-wide ReLU layer -> FFI
k = 32 over 670,091 labels, Adam, batch 32, squared hinge): the bytes computed from the layers'
memory reports and the activations, next to the paper's 1.45 GiB, and the peak measured over two
training steps (CuPy pool on the GPU; tracemalloc on the CPU, which sees NumPy's buffers only).

Options: --device cpu|gpu|auto, --quick (a small shape, a minute on a CPU), --json FILE,
--labels/--input/--k/--batch to override the grid, --bandwidth, --no-paper, --memory.
"""
from __future__ import annotations

import os
import sys

import numpy

import _path  # noqa: F401  (this checkout's engine first on sys.path)
import _bench_common as bc
import _bench_harness as harness
import _bench_memory as bm
import _references as refs
from engine.layers import Linear, ReLU
from engine.layers.fixed_fanin import FixedFanInLinear

DTYPE = numpy.dtype(numpy.float32)
GiB = float(2 ** 30)
PAPER = dict(labels=670_091, input=32_768, embed=768, k=32, batch=32, paper_gib=1.45,
             dense_768_weights_gib=1.9, dense_768_adam_gib=7.7, ffi_everything_gib=0.4)
BANDWIDTHS = {"H200": 4.8e12, "H100": 3.35e12}
METHODS = ("ffi-kernel", "ffi-cusparse", "dense")
#: float32 first step vs the float64 reference, relative to each quantity's largest entry
#: (y and dx on 8 batch rows, dw on 64 labels, dbias on all; the sketches y s and r^T dx cover
#: every row and column of y and dx: tools/_references.sketch_vectors)
CHECK_TOLERANCES = {"y": 1e-4, "dx": 1e-4, "dw": 1e-4, "dbias": 1e-4, "y_sketch": 1e-4,
                    "dx_sketch": 1e-4}
DENSE_TOLERANCES = {"y": 1e-4, "dx": 1e-4, "dW": 1e-4, "db": 1e-4, "y_sketch": 1e-4,
                    "dx_sketch": 1e-4}


def build_parser():
    p = bc.make_parser(__doc__.split("\n")[0])
    p.add_argument("--labels", type=int, default=None)
    p.add_argument("--input", type=int, default=None)
    p.add_argument("--k", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    p.add_argument("--bandwidth", type=float, default=None,
                   help="memory bandwidth in bytes/s for the floor (GPU: H200 4.8e12, H100 3.35e12)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU: numba threads (0 = numba's default)")
    p.add_argument("--no-paper", action="store_true", help="skip the paper memory table")
    return p


def grid(args, device):
    """[(L, I, k, B, [methods])], one entry per shape."""
    if args.tiny:
        L, I, ks, bs = 3000, 256, [8], [8]
    elif args.quick:
        L, I, ks, bs = 20_000, 2048, [32], [32]
    elif device == "gpu" or args.full:
        L, I, ks, bs = PAPER["labels"], PAPER["input"], [32, 64], [32, 64, 128, 256]
    else:
        L, I, ks, bs = PAPER["labels"], PAPER["input"], [32], [32, 128]
    L, I = args.labels or L, args.input or I
    ks, bs = args.k or ks, args.batch or bs
    methods = args.methods or (["ffi-kernel", "ffi-cusparse", "dense"] if device == "gpu"
                               else ["ffi-kernel", "dense"])
    methods = [m for m in methods if m != "ffi-cusparse" or device == "gpu"]
    return [(L, I, k, B, methods) for k in ks for B in bs]


# ------------------------------------------------------------------ byte counts
def floor_bytes(L, I, k, B, s=4):
    return L * k * (3 * s + 8) + 2 * L * s + 2 * B * L * s + 3 * B * I * s


def dense_bytes(L, I, B, s=4):
    """W, dW, bias, dbias, x, dx, y, dy."""
    return (2 * L * I + 2 * L + 2 * B * I + 2 * B * L) * s


def ffi_bytes(L, I, k, B, s=4):
    """weights, indices, dweights (+ a CSC/CSR copy on the GPU), bias, x, dx, its transpose, y, dy."""
    return 4 * L * k * (s + 4) + 2 * L * s + 3 * B * I * s + 2 * B * L * s


def bandwidth(args, backend, device, device_name):
    if args.bandwidth:
        return float(args.bandwidth), "given"
    if device == "gpu":
        for key, bw in BANDWIDTHS.items():
            if key in device_name:
                return bw, f"{key} spec"
    xp = backend.xp
    n = 64 << 20 if not (args.quick or args.tiny) else 8 << 20
    a = backend.asarray(numpy.ones(n // 4, dtype=numpy.float32))
    b = xp.empty_like(a)
    t = bc.time_fn(lambda: xp.copyto(b, a), backend=backend, repeats=5, warmup=1)
    return 2.0 * n / (t.min_ms * 1e-3), "measured copy"


# ------------------------------------------------------------------ one shape
class LayerRunner(harness.EngineRunner):
    """Forward + backward (dy -> dweights, dbias, dx) of the FFI layer or the dense Linear."""

    def __init__(self, method, backend, L, I, k, B, seed):
        super().__init__(backend)
        self.method = method
        rng = numpy.random.default_rng(seed)
        if method == "dense":
            self.layer = Linear(I, L).bind(backend, rng, DTYPE)
        else:
            self.layer = FixedFanInLinear(I, L, k, method="kernel" if method == "ffi-kernel"
                                          else "cusparse").bind(backend, rng, DTYPE)
        self.x = backend.asarray(numpy.maximum(rng.standard_normal((B, I)), 0).astype(DTYPE))
        self.dy = backend.asarray(rng.standard_normal((B, L)).astype(DTYPE) * 1e-3)
        self.batch_rows = harness.spread_rows(B)
        self.label_rows = numpy.unique(numpy.concatenate([numpy.arange(min(L, 32)),
                                                          harness.spread_rows(L, 32)]))
        self.sketch = refs.sketch_vectors(B, L, I, seed)
        self.y = self.dx = None

    def step(self):
        self.y = self.layer.forward(self.x)
        self.dx = self.layer.backward(self.dy)

    def first_step(self):
        self.step()
        self.sync()
        be, g = self.backend, self.layer.grads
        br, lr = be.asarray(self.batch_rows), be.asarray(self.label_rows)
        r, s, _ = self.sketch
        values = {"y": self.to_host64(self.y[br]), "dx": self.to_host64(self.dx[br]),
                  "y_sketch": self.host_matvec(self.y, s), "dx_sketch": self.host_vecmat(r, self.dx)}
        if self.method == "dense":
            values.update(dW=self.to_host64(g["W"][lr]), db=self.to_host64(g["b"]))
        else:
            values.update(dw=self.to_host64(g["weights"][lr]), dbias=self.to_host64(g["bias"]))
        return values

    def reference(self):
        be, P = self.backend, self.layer.params
        x, dy = be.to_host(self.x), be.to_host(self.dy)
        if self.method == "dense":
            ref = refs.linear_step(be.to_host(P["W"]), be.to_host(P["b"]), x, dy, self.batch_rows,
                                   self.label_rows, sketch=self.sketch)
            ref.pop("dW_sketch")
        else:
            ref = refs.ffi_step(be.to_host(P["weights"]), be.to_host(self.layer.indices),
                                be.to_host(P["bias"]), x, dy, self.batch_rows, self.label_rows,
                                sketch=self.sketch)
        return harness.Reference(ref)

    def held_arrays(self):
        indices = [] if self.method == "dense" else [self.layer.indices]
        return list(self.layer.params.values()) + indices + [self.x, self.dy]

    def close(self):
        self.layer = self.x = self.dy = self.y = self.dx = None


def build_runner(p, backend):
    if p.get("threads") and backend.device == "cpu":
        import numba
        numba.set_num_threads(p["threads"])
    return LayerRunner(p["method"], backend, p["L"], p["I"], p["k"], p["B"], p["seed"])


def run_shape(L, I, k, B, methods, args, env, bw):
    backend, device = env["backend"], env["device"]
    rows = {m: dict(labels=L, input=I, k=k, batch=B, device=device, method=m, ms=None,
                    peak_bytes=None, peak_kind=None, floor_ms=None, floor_ratio=None, note="")
            for m in methods}
    run = list(methods)
    if "dense" in run:
        need = dense_bytes(L, I, B, DTYPE.itemsize)
        if need > 0.7 * bm.available_memory(backend):
            rows["dense"].update(harness.blank_result("dense"), peak_bytes=need,
                                 peak_kind="computed",
                                 note=f"does not fit ({need / GiB:.1f} GiB: W, dW, x, dx, y, dy)")
            print(f"[bench] dense L={L} I={I} B={B}: {rows['dense']['note']}", flush=True)
            run.remove("dense")
    payload = lambda m: dict(method=m, L=L, I=I, k=k, B=B, seed=args.seed,   # noqa: E731
                             threads=args.threads)
    res = harness.run_methods(
        run, lambda m: build_runner(payload(m), backend), lambda runner, values: runner.reference(),
        lambda m: DENSE_TOLERANCES if m == "dense" else CHECK_TOLERANCES, args, env,
        label=f"L={L} I={I} k={k} B={B}",
        estimate=lambda m: dense_bytes(L, I, B) if m == "dense" else ffi_bytes(L, I, k, B),
        payload=payload, script=os.path.abspath(__file__))
    for m in run:
        r = rows[m]
        r.update(res[m])
        r["step_peak_bytes"] = r["peak_bytes"]
        if r["ms"] is not None and r["peak_bytes"] is not None:
            r["peak_bytes"] = int(r["resident_bytes"] + r["step_peak_bytes"])
            r["peak_kind"] = "measured"
        if m != "dense" and r["ms"]:
            r["floor_ms"] = floor_bytes(L, I, k, B, DTYPE.itemsize) / bw * 1e3
            r["floor_ratio"] = r["ms"] / r["floor_ms"]
    bm.release_memory(backend)
    return [rows[m] for m in methods]


# ------------------------------------------------------------------ paper memory table
def paper_layers(L, I, E, k):
    return (Linear(E, I), ReLU(), FixedFanInLinear(I, L, k, method="kernel"))


def paper_computed(L, I, E, k, B, s=4):
    """Bytes per component of one training step of the paper's configuration (fp32, Adam)."""
    ffi = FixedFanInLinear(I, L, k).memory_report("adam", dtype=DTYPE)
    lin_params = E * I + I
    comp = {
        "intermediate params (E x I + b)": lin_params * s,
        "intermediate grads": lin_params * s,
        "intermediate Adam m, v": 2 * lin_params * s,
        "FFI weights + bias": ffi["weights"] + ffi["bias"],
        "FFI indices (int32)": ffi["indices"],
        "FFI grads": ffi["grads"],
        "FFI Adam m, v": ffi["optimizer"],
        # x (B, E); pre-activation and ReLU output (B, I) cached; the FFI's transposed input
        # copy (B, I); scores y and dy (B, L); dh and dx (B, I)
        "activations (batch)": (B * E + 3 * B * I + 2 * B * L + 2 * B * I) * s,
    }
    comp["total (all at once: an upper bound)"] = sum(comp.values())
    return comp


def squared_hinge_grad(xp, scores, pos_rows, pos_cols):
    """d/ds of mean over (B, L) of relu(1 - t s)^2 with t = +1 at the positives, -1 elsewhere:
    2 relu(1 + s) / (B L) at negatives, -2 relu(1 - s) / (B L) at positives; one (B, L) buffer."""
    grad = scores + 1
    grad[pos_rows, pos_cols] = 1 - scores[pos_rows, pos_cols]
    xp.maximum(grad, 0, out=grad)
    grad *= 2.0 / scores.size
    grad[pos_rows, pos_cols] *= -1
    return grad


def paper_measured(backend, L, I, E, k, B, seed, steps=2):
    """Peak bytes of `steps` training steps: resident layers + input + the step's measured peak
    (initialisation temporaries, e.g. of the index draw, are not counted)."""
    from engine.optim import Adam
    xp = backend.xp
    rng = numpy.random.default_rng(seed)
    layers = paper_layers(L, I, E, k)
    for layer in layers:
        layer.bind(backend, rng, DTYPE)
    opt = Adam(lr=1e-3).bind(backend)
    x = backend.asarray(rng.standard_normal((B, E)).astype(DTYPE))
    pos_rows = backend.asarray(numpy.repeat(numpy.arange(B), 5))
    pos_cols = backend.asarray(numpy.concatenate([rng.choice(L, 5, replace=False) for _ in range(B)]))
    resident = (x.nbytes + pos_rows.nbytes + pos_cols.nbytes + layers[2].indices.nbytes
                + sum(p.nbytes for layer in layers for p in layer.params.values()))
    bm.release_memory(backend)
    with (bm.CupyPeak(backend) if backend.device == "gpu" else bm.TracemallocPeak()) as m:
        for _ in range(steps):
            h = x
            for layer in layers:
                h = layer.forward(h)
            dy = squared_hinge_grad(xp, h, pos_rows, pos_cols)
            del h
            for layer in reversed(layers):
                dy = layer.backward(dy)
            items = [(f"{i}.{n}", layer.params[n], layer.grads[n])
                     for i, layer in enumerate(layers) for n in layer.params]
            opt.step(items)
            for layer in layers:
                layer.zero_grads()
            del dy, items
        backend.synchronize()
    del layers, opt, x
    bm.release_memory(backend)
    return int(resident + m.peak_bytes), m.method


def paper_table(args, backend, device):
    L, I, E, k, B = (PAPER[n] for n in ("labels", "input", "embed", "k", "batch"))
    if args.tiny:
        L, I, E = 2000, 128, 64
    elif args.quick:
        L, I, E = 20_000, 2048, 768
    comp = paper_computed(L, I, E, k, B)
    full = (L, I, E) == (PAPER["labels"], PAPER["input"], PAPER["embed"])
    measured, how = paper_measured(backend, L, I, E, k, B, args.seed)
    rows = [dict(component=n, ours_gib=v / GiB, paper_gib=None) for n, v in comp.items()]
    rows[-1]["paper_gib"] = PAPER["paper_gib"] if full else None
    rows.append(dict(component=f"measured peak, 2 training steps ({device}, {how})",
                     ours_gib=measured / GiB, paper_gib=PAPER["paper_gib"] if full else None))
    ffi = FixedFanInLinear(E, L, k).memory_report("adam", dtype=DTYPE)
    dense_w = E * L * 4
    rows += [dict(component="memory example: dense E x L weights", ours_gib=dense_w / GiB,
                  paper_gib=PAPER["dense_768_weights_gib"] if full else None),
             dict(component="memory example: dense E x L + grad + Adam",
                  ours_gib=4 * dense_w / GiB, paper_gib=PAPER["dense_768_adam_gib"] if full else None),
             dict(component="memory example: FFI k=32 over E, everything",
                  ours_gib=ffi["total"] / GiB, paper_gib=PAPER["ffi_everything_gib"] if full else None)]
    shape = dict(labels=L, input=I, embed=E, k=k, batch=B, device=device)
    return [dict(r, table="paper-memory", **shape) for r in rows]


# ------------------------------------------------------------------ main
def main(argv=None):
    args, env = harness.start(build_parser(), argv, build_runner)
    backend, device, device_name = env["backend"], env["device"], env["device_name"]
    if device == "cpu" and args.threads:
        import numba
        numba.set_num_threads(args.threads)
    bw, bw_how = bandwidth(args, backend, device, device_name)
    print(f"[bench] device: {device_name}; float32; bandwidth {bw / 1e9:.1f} GB/s ({bw_how})",
          flush=True)
    rows = []
    for L, I, k, B, methods in grid(args, device):
        for row in run_shape(L, I, k, B, methods, args, env, bw):
            row["bandwidth"] = bw
            rows.append(row)
    mem_rows = [] if args.no_paper else paper_table(args, backend, device)
    if args.json:
        print(f"[bench] wrote {bc.write_json(args.json, rows + mem_rows)}", flush=True)
    if mem_rows:
        bc.print_table("Paper configuration memory (768 -> 32k ReLU -> FFI k=32, Adam, B=32), "
                       "paper vs ours", [
                           ("component", lambda r: r["component"]),
                           ("paper GiB", lambda r: bc.fmt_num(r["paper_gib"])),
                           ("ours GiB", lambda r: bc.fmt_num(r["ours_gib"], "{:.3f}"))],
                       mem_rows, notes=[f"shape: L={mem_rows[0]['labels']} I={mem_rows[0]['input']} "
                                        f"E={mem_rows[0]['embed']} (paper column only at the paper's shape)"])
    status = harness.report_failures(rows, lambda r: f"L={r['labels']} k={r['k']} B={r['batch']} "
                                                     f"{r['method']}")
    kinds = {"ffi-kernel": "ffi-kernel (numba)" if device == "cpu" else "ffi-kernel"}
    bc.print_table(f"FFI forward + backward, {device_name}, float32", [
        ("labels", lambda r: r["labels"]), ("input", lambda r: r["input"]),
        ("k", lambda r: r["k"]), ("batch", lambda r: r["batch"]),
        ("method", lambda r: kinds.get(r["method"], r["method"])),
        ("ms", lambda r: bc.fmt_num(r["ms"])),
        ("floor ms", lambda r: bc.fmt_num(r["floor_ms"], "{:.3f}")),
        ("x floor", lambda r: bc.fmt_num(r["floor_ratio"], "{:.1f}")),
        ("peak MiB", lambda r: bc.fmt_mib(r["peak_bytes"])),
        ("check", harness.check_cell),
        ("peak", lambda r: r["peak_kind"] or "-")], rows,
        notes=[f"floor = bytes moved / {bw / 1e9:.0f} GB/s ({bw_how}): L k (3s+8) + 2Ls + 2BLs + 3BIs",
               "peak 'measured' = arrays held + the peak growth of one step "
               f"({harness.memory_mode(args, device)}); 'computed' = dense W, dW, x, dx, y, dy "
               "where dense does not fit",
               "methods timed round-robin; check: first step vs the float64 reference ("
               + ", ".join(f"{k} {v:g}" for k, v in CHECK_TOLERANCES.items()) + "); FAILED rows "
               "are not timed"])
    return status


if __name__ == "__main__":
    sys.exit(main())
