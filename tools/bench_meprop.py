"""Benchmark: meProp's backward and training step against the dense ones (Sun et al. 2017,
Table 7 shape; PAPERS.md section 3).

One linear layer y = x W^T + b, W (h, h), batch B = 1024, float32, a random output gradient dy:
  dense backward   dW = dy^T x, db = sum dy, dx = dy W          (BLAS / cuBLAS)
  meProp backward  top-k of dy (per-example or unified), the products over the k selected
                   rows of W (engine/layers/meprop.py), db from the full dy
  step             forward + backward + SGD update (dense update for the dense step, the lazy
                   row-sparse update of the selected rows for meProp)
for k in 8, 16, 32, 64, 128, 256, 512. The methods are timed interleaved (dense, meProp,
dense, ...), medians reported. `amdahl` = dense step / forward: the best a step can gain when
only the backward and the update shrink (the forward is unchanged). `select ms` is the top-k
selection alone (part of the meProp backward). `check` compares the meProp gradients with the
masked dense reference (dy * mask through the dense products).

Paper figures (GTX 1080, unified, h = 8192, B = 1024, their own CUDA baseline): backward
308.00 ms dense; 8.37 / 9.16 / 11.20 / 14.38 / 21.28 / 38.57 / 69.95 ms for k = 8 ... 512.

CPU default: h = 2048 (h = 8192 costs seconds per dense backward on one core; pass
`--h 8192 --k 8 512` for the paper's shape). GPU default: h = 8192.
JSON rows: h, batch, k, mode, device, dense_backward_ms, meprop_backward_ms, dense_step_ms,
meprop_step_ms, plus forward_ms, select_ms, backward_speedup, step_speedup, amdahl, paper_*,
check_ok.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _bench_common as bc  # noqa: E402
from engine.layers import Linear  # noqa: E402
from engine.layers import meprop as mp  # noqa: E402
from engine.optim import SGD  # noqa: E402

DTYPE = numpy.float32
KS = [8, 16, 32, 64, 128, 256, 512]
PAPER_DENSE_MS = 308.00
PAPER_MS = {8: 8.37, 16: 9.16, 32: 11.20, 64: 14.38, 128: 21.28, 256: 38.57, 512: 69.95}
MODES = ["unified", "per-example"]


def build_parser():
    p = bc.make_parser(__doc__.split("\n")[0], default_repeats_cpu=3, default_repeats_gpu=20)
    p.add_argument("--h", type=int, default=None, help="layer width (default 2048 CPU, 8192 GPU)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--k", type=int, nargs="+", default=None, help="k values (default 8..512)")
    p.add_argument("--modes", nargs="+", choices=MODES + ["random"], default=MODES)
    return p


def interleaved(fns, backend, repeats, warmup):
    """Median ms of each fn, timed round-robin so that machine noise hits all alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    backend.synchronize()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            backend.synchronize()
            t0 = time.perf_counter()
            fn()
            backend.synchronize()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def make_case(backend, h, B, k, mode, seed):
    rng = numpy.random.default_rng(seed)
    dense = Linear(h, h).bind(backend, numpy.random.default_rng(seed), DTYPE)
    sparse = Linear(h, h, meprop={"k": k, "mode": mode, "seed": seed})
    sparse.bind(backend, numpy.random.default_rng(seed), DTYPE)
    x = backend.asarray(rng.standard_normal((B, h)).astype(DTYPE))
    dy = backend.asarray((rng.standard_normal((B, h)) / B).astype(DTYPE))
    return dense, sparse, x, dy


def backward_fn(layer, x, dy):
    def run():
        layer._x = x                 # the forward's cache, without timing the forward
        layer.backward(dy)
        layer.grads = {}
    return run


def step_fn(layer, opt, x, dy):
    def run():
        layer.forward(x, train=True)
        layer.backward(dy)           # dy stands in for the loss gradient of the forward's y
        opt.step([("W", layer.params["W"], layer.grads["W"]),
                  ("b", layer.params["b"], layer.grads["b"])])
        layer.grads = {}
    return run


def check(backend, layer, x, dy):
    """meProp gradients vs the masked dense reference (float64 on the host)."""
    cfg = dict(layer.meprop)
    key = (cfg["seed"], 0, 0, 0, 1)
    kind, pattern = mp.select(backend, dy, cfg, key)
    g, dx = mp.meprop_backward(backend, dy, x, layer.params["W"], cfg, key)
    ref_dW, ref_dx = mp.masked_reference(backend, dy, x, layer.params["W"], kind, pattern)
    dW = g.to_dense(backend)
    ok = True
    for a, r in ((dW, ref_dW), (dx, ref_dx)):
        a, r = backend.to_host(a).astype(numpy.float64), backend.to_host(r).astype(numpy.float64)
        ok &= bool(numpy.linalg.norm(a - r) <= 1e-4 * max(numpy.linalg.norm(r), 1e-30))
    return ok


def run_row(backend, device, h, B, k, mode, args):
    dense, sparse, x, dy = make_case(backend, h, B, k, mode, args.seed)
    row = dict(h=h, batch=B, k=k, mode=mode, device=device, check_ok=check(backend, sparse, x, dy))
    select = lambda: mp.select(backend, dy, sparse.meprop, (0, 0, 0, 0, 1))   # noqa: E731
    fwd = lambda: dense.forward(x, train=False)                              # noqa: E731
    t = interleaved([backward_fn(dense, x, dy), backward_fn(sparse, x, dy), select],
                    backend, args.repeats, args.warmup)
    row.update(dense_backward_ms=t[0], meprop_backward_ms=t[1], select_ms=t[2])
    opt_d, opt_s = SGD(1e-3).bind(backend), SGD(1e-3).bind(backend)
    # the forward is timed in the same round-robin as the steps, so `amdahl` compares like
    # with like on a noisy machine
    t = interleaved([step_fn(dense, opt_d, x, dy), step_fn(sparse, opt_s, x, dy), fwd], backend,
                    args.repeats, args.warmup)
    row.update(dense_step_ms=t[0], meprop_step_ms=t[1], forward_ms=t[2])
    row["backward_speedup"] = row["dense_backward_ms"] / row["meprop_backward_ms"]
    row["step_speedup"] = row["dense_step_ms"] / row["meprop_step_ms"]
    row["amdahl"] = row["dense_step_ms"] / row["forward_ms"]
    paper = PAPER_MS.get(k) if (h, B, mode) == (8192, 1024, "unified") else None
    row["paper_backward_ms"] = paper
    row["paper_dense_backward_ms"] = PAPER_DENSE_MS if paper else None
    row["paper_speedup"] = PAPER_DENSE_MS / paper if paper else None
    print(f"[bench] h={h} B={B} k={k} {mode}: backward {row['dense_backward_ms']:.2f} -> "
          f"{row['meprop_backward_ms']:.2f} ms ({row['backward_speedup']:.1f}x), step "
          f"{row['dense_step_ms']:.2f} -> {row['meprop_step_ms']:.2f} ms "
          f"({row['step_speedup']:.2f}x, Amdahl {row['amdahl']:.2f}x), check "
          f"{'ok' if row['check_ok'] else 'FAILED'}", flush=True)
    return row


def main(argv=None):
    args = build_parser().parse_args(argv)
    backend, device, device_name = bc.resolve_backend(args.device)
    bc.finish_args(args, device)
    if args.tiny:
        h, B, ks = 64, 32, [4, 16]
    elif args.quick:
        h, B, ks = 512, 256, [8, 64, 256]
    else:
        h, B, ks = (8192 if device == "gpu" else 2048), args.batch, KS
    h = args.h or h
    ks = [k for k in (args.k or ks) if k < h]
    if not args.tiny and not args.quick:
        B = args.batch
    print(f"[bench] device: {device_name}; float32; h={h}, batch {B}; numba threads "
          f"{os.environ.get('NUMBA_NUM_THREADS', 'default')}", flush=True)
    rows = [run_row(backend, device, h, B, k, mode, args) for mode in args.modes for k in ks]
    if args.json:
        print(f"[bench] wrote {bc.write_json(args.json, rows)}", flush=True)
    columns = [("mode", lambda r: r["mode"]), ("h", lambda r: r["h"]), ("k", lambda r: r["k"]),
               ("dense bwd ms", lambda r: bc.fmt_num(r["dense_backward_ms"], "{:.2f}")),
               ("meProp bwd ms", lambda r: bc.fmt_num(r["meprop_backward_ms"], "{:.2f}")),
               ("select ms", lambda r: bc.fmt_num(r["select_ms"], "{:.2f}")),
               ("bwd speedup", lambda r: bc.fmt_num(r["backward_speedup"], "{:.1f}")),
               ("paper bwd ms", lambda r: bc.fmt_num(r["paper_backward_ms"], "{:.2f}")),
               ("paper speedup", lambda r: bc.fmt_num(r["paper_speedup"], "{:.1f}")),
               ("dense step ms", lambda r: bc.fmt_num(r["dense_step_ms"], "{:.2f}")),
               ("meProp step ms", lambda r: bc.fmt_num(r["meprop_step_ms"], "{:.2f}")),
               ("step speedup", lambda r: bc.fmt_num(r["step_speedup"], "{:.2f}")),
               ("amdahl", lambda r: bc.fmt_num(r["amdahl"], "{:.2f}")),
               ("check", lambda r: "ok" if r["check_ok"] else "FAIL")]
    bc.print_table(f"meProp vs dense, one {h}x{h} linear layer, batch {B}, {device_name}", columns,
                   rows, notes=["paper: GTX 1080, unified top-k, h=8192, B=1024, dense 308.00 ms "
                                "(their baseline, not cuBLAS-verified)",
                                "amdahl = dense step / forward (only backward and update shrink)"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
