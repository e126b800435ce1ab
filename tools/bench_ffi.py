"""Benchmark: the fixed fan-in (FFI) layer at the Amazon-670K shape (PAPERS.md section 4).

Forward + backward (dy -> dweights, dbias, dx) of a layer from a 32,768-wide input to 670,091
labels, k in {32, 64}, batch 32..256, float32, for
  ffi-kernel    our kernels: rawkernels/ffi.cu on the GPU, the numba loops on the CPU
  ffi-cusparse  cuSPARSE SpMM over a CSR view of the same storage (GPU only)
  dense         Linear (cuBLAS / BLAS) where W and dW fit; otherwise its memory is computed
JSON rows: labels, input, k, batch, device, method, ms (median), peak_bytes, peak_kind
("measured": layer storage + x + dy + the measured peak of the step; "computed": from the
shapes), floor_ms and floor_ratio (FFI rows).

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
--labels/--input/--k/--batch to override the grid, --bandwidth, --no-paper.
"""
from __future__ import annotations

import os
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _bench_common as bc  # noqa: E402
from engine.layers import Linear, ReLU  # noqa: E402
from engine.layers.fixed_fanin import FixedFanInLinear  # noqa: E402

DTYPE = numpy.dtype(numpy.float32)
GiB = float(2 ** 30)
PAPER = dict(labels=670_091, input=32_768, embed=768, k=32, batch=32, paper_gib=1.45,
             dense_768_weights_gib=1.9, dense_768_adam_gib=7.7, ffi_everything_gib=0.4)
BANDWIDTHS = {"H200": 4.8e12, "H100": 3.35e12}


def build_parser():
    p = bc.make_parser(__doc__.split("\n")[0])
    p.add_argument("--labels", type=int, default=None)
    p.add_argument("--input", type=int, default=None)
    p.add_argument("--k", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None,
                   choices=("ffi-kernel", "ffi-cusparse", "dense"))
    p.add_argument("--bandwidth", type=float, default=None,
                   help="memory bandwidth in bytes/s for the floor (GPU: H200 4.8e12, H100 3.35e12)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU: numba threads (0 = numba's default)")
    p.add_argument("--no-paper", action="store_true", help="skip the paper memory table")
    return p


def grid(args, device):
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
    return [(L, I, k, B, m) for k in ks for B in bs for m in methods]


# ------------------------------------------------------------------ byte counts
def floor_bytes(L, I, k, B, s=4):
    return L * k * (3 * s + 8) + 2 * L * s + 2 * B * L * s + 3 * B * I * s


def dense_bytes(L, I, B, s=4):
    """W, dW, bias, dbias, x, dx, y, dy."""
    return (2 * L * I + 2 * L + 2 * B * I + 2 * B * L) * s


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


# ------------------------------------------------------------------ one row
def meter(backend):
    return bc.CupyPeak(backend) if backend.device == "gpu" else bc.TracemallocPeak()


def run_row(L, I, k, B, method, args, backend, device, bw):
    row = dict(labels=L, input=I, k=k, batch=B, device=device, method=method, ms=None,
               peak_bytes=None, peak_kind=None, floor_ms=None, floor_ratio=None, note="")
    s = DTYPE.itemsize
    if method == "ffi-cusparse" and device != "gpu":
        return None
    if method == "dense":
        need = dense_bytes(L, I, B, s)
        if need > 0.7 * bc.available_memory(backend):
            row.update(peak_bytes=need, peak_kind="computed",
                       note=f"does not fit ({need / GiB:.1f} GiB: W, dW, x, dx, y, dy)")
            print(f"[bench] dense L={L} I={I} B={B}: {row['note']}", flush=True)
            return row
    rng = numpy.random.default_rng(args.seed)
    if method == "dense":
        layer = Linear(I, L).bind(backend, rng, DTYPE)
        resident = layer.params["W"].nbytes + layer.params["b"].nbytes
    else:
        layer = FixedFanInLinear(I, L, k, method="kernel" if method == "ffi-kernel" else "cusparse")
        layer.bind(backend, rng, DTYPE)
        resident = sum(p.nbytes for p in layer.params.values()) + layer.indices.nbytes
    x = backend.asarray(numpy.maximum(rng.standard_normal((B, I)), 0).astype(DTYPE))
    dy = backend.asarray(rng.standard_normal((B, L)).astype(DTYPE) * 1e-3)
    resident += x.nbytes + dy.nbytes

    def step():
        layer.forward(x)
        return layer.backward(dy)

    step()                                     # compile / plan once, outside the meter
    bc.release_memory(backend)
    with meter(backend) as m:
        step()
    layer.zero_grads()
    t = bc.time_fn(step, backend=backend, repeats=args.repeats, warmup=args.warmup)
    row.update(ms=t.median_ms, peak_bytes=int(resident + m.peak_bytes), peak_kind="measured")
    if method != "dense":
        row["floor_ms"] = floor_bytes(L, I, k, B, s) / bw * 1e3
        row["floor_ratio"] = row["ms"] / row["floor_ms"]
    print(f"[bench] {method} L={L} I={I} k={k} B={B}: {row['ms']:.2f} ms, peak "
          f"{row['peak_bytes'] / 2**20:.1f} MiB", flush=True)
    return row                                 # the caller releases the memory


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
    bc.release_memory(backend)
    with meter(backend) as m:
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
    bc.release_memory(backend)
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
    args = build_parser().parse_args(argv)
    backend, device, device_name = bc.resolve_backend(args.device)
    bc.finish_args(args, device)
    if device == "cpu" and args.threads:
        import numba
        numba.set_num_threads(args.threads)
    bw, bw_how = bandwidth(args, backend, device, device_name)
    print(f"[bench] device: {device_name}; float32; bandwidth {bw / 1e9:.1f} GB/s ({bw_how})",
          flush=True)
    rows = []
    for L, I, k, B, method in grid(args, device):
        row = run_row(L, I, k, B, method, args, backend, device, bw)
        bc.release_memory(backend)
        if row is not None:
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
    kinds = {"ffi-kernel": "ffi-kernel (numba)" if device == "cpu" else "ffi-kernel"}
    bc.print_table(f"FFI forward + backward, {device_name}, float32", [
        ("labels", lambda r: r["labels"]), ("input", lambda r: r["input"]),
        ("k", lambda r: r["k"]), ("batch", lambda r: r["batch"]),
        ("method", lambda r: kinds.get(r["method"], r["method"])),
        ("ms", lambda r: bc.fmt_num(r["ms"])),
        ("floor ms", lambda r: bc.fmt_num(r["floor_ms"], "{:.3f}")),
        ("x floor", lambda r: bc.fmt_num(r["floor_ratio"], "{:.1f}")),
        ("peak MiB", lambda r: bc.fmt_mib(r["peak_bytes"])),
        ("peak", lambda r: r["peak_kind"] or "-")], rows,
        notes=[f"floor = bytes moved / {bw / 1e9:.0f} GB/s ({bw_how}): L k (3s+8) + 2Ls + 2BLs + 3BIs",
               "peak 'computed' = dense W, dW, x, dx, y, dy where dense does not fit"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
