"""Adaptive softmax step time: ours (hand and auto cutoffs) vs our exact softmax vs PyTorch's
AdaptiveLogSoftmaxWithLoss with the same cutoffs, on the same device, from the same weights.

One step = forward, backward (including dh) and a plain SGD update of every parameter that got
a gradient, float32, B rows of h (d wide) with Zipf-distributed targets (p(rank r) ~ 1/r) over
a frequency-sorted vocabulary of D words. Shapes (PAPERS.md section 2):
    text8  D = 44,000,  d = 512, B = 2,560, cutoffs 2000,10000
    1bw    D = 793,471, d = 512, B = 2,560, cutoffs 4000,40000,200000
Methods: ours-full (engine SoftmaxOutput; whole logits at text8, chunked over 16,384 words at
1bw, where the B x D logits would take 8 GB), ours-adaptive (hand cutoffs), ours-adaptive-auto
(cutoffs="auto" from the Zipf counts and this device's measured cost model; the cutoffs chosen
and the predicted time are printed), torch-adaptive (PyTorch's layer, same cutoffs, same
weights; its first-step loss is checked against ours). The 1bw exact softmax is ~6 TFLOP a step:
on the CPU it is timed once (1 call, no warm-up) and can be left out with --skip-full.
PyTorch on the CPU runs with as many threads as NumPy's BLAS (OPENBLAS_NUM_THREADS or
OMP_NUM_THREADS when set, else every core), printed in the header. Timed steps are interleaved
round-robin across the methods (median per method), so load changes hit every method alike.

    python tools/bench_adaptive.py --device cpu --json bench_adaptive_cpu.json
    python tools/bench_adaptive.py --device cpu --quick            # text8 shape only
    python tools/bench_adaptive.py --device gpu --json bench_adaptive_gpu.json
"""
from __future__ import annotations

import os
import sys
import time

import numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _bench_common as bc  # noqa: E402

DTYPE = numpy.float32
SHAPES = {
    "text8": dict(vocab=44000, d=512, rows=2560, cutoffs=[2000, 10000]),
    "1bw": dict(vocab=793471, d=512, rows=2560, cutoffs=[4000, 40000, 200000]),
    "tiny": dict(vocab=500, d=32, rows=64, cutoffs=[50, 200]),
}
# ours-full last: its big buffers change glibc's heap thresholds for whatever runs after it
METHODS = ("ours-adaptive", "ours-adaptive-auto", "torch-adaptive", "ours-full")
LR = 0.1


def zipf_probs(D):
    p = 1.0 / numpy.arange(1, D + 1, dtype=numpy.float64)
    return p / p.sum()


def make_data(shape, seed):
    rng = numpy.random.default_rng(seed + 1)
    h = rng.standard_normal((shape["rows"], shape["d"])).astype(DTYPE)
    t = rng.choice(shape["vocab"], size=shape["rows"], p=zipf_probs(shape["vocab"])).astype(numpy.int64)
    return h, t


class OursRunner:
    def __init__(self, out, backend, h, t):
        self.out, self.backend = out, backend
        self.h, self.t = backend.asarray(h), backend.asarray(t)

    def step(self):
        out = self.out
        out.zero_grads()
        loss = out.forward(self.h, self.t, train=True)
        out.backward()
        for name, g in out.grads.items():
            g *= -LR
            out.params[name] += g
        return loss


class TorchRunner:
    def __init__(self, torch, dev, ours, h, t):
        self.torch = torch
        D, d = ours.num_classes, ours.in_features
        m = torch.nn.AdaptiveLogSoftmaxWithLoss(d, D, list(ours.cutoffs), div_value=ours.div_value,
                                                head_bias=ours.head_bias).to(dev)
        P = {k: ours.backend.to_host(v) for k, v in ours.params.items()}
        with torch.no_grad():
            m.head.weight.copy_(torch.from_numpy(P["head_W"]))
            if ours.head_bias:
                m.head.bias.copy_(torch.from_numpy(P["head_b"]))
            for i in range(ours.n_clusters):
                m.tail[i][0].weight.copy_(torch.from_numpy(P[f"proj{i}_W"]))
                m.tail[i][1].weight.copy_(torch.from_numpy(P[f"out{i}_W"]))
        self.m = m
        self.h = torch.tensor(h, device=dev).requires_grad_(True)
        self.t = torch.tensor(t, device=dev)
        self.params = list(m.parameters())

    def step(self):
        torch = self.torch
        for p in self.params + [self.h]:
            p.grad = None
        loss = self.m(self.h, self.t).loss
        loss.backward()
        with torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-LR)
        return loss.detach()


def build_ours(method, shape, backend, seed, verbose=True):
    from engine.outputs import AdaptiveSoftmaxOutput, SoftmaxOutput
    D, d = shape["vocab"], shape["d"]
    if method == "ours-full":
        chunk = None if D * shape["rows"] * 4 <= 2 ** 31 else 16384
        out = SoftmaxOutput(d, D, bias=True, chunk_size=chunk)
    elif method == "ours-adaptive":
        out = AdaptiveSoftmaxOutput(d, D, cutoffs=shape["cutoffs"], head_bias=True)
    else:
        counts = numpy.round(zipf_probs(D) * 1e9)
        # the paper's pure cost model (no head-coverage floor): this row measures the DP's speed
        out = AdaptiveSoftmaxOutput(d, D, cutoffs="auto", counts=counts, head_bias=True,
                                    auto_batch=shape["rows"], auto_head_coverage=0.0,
                                    verbose=verbose)
    out.bind(backend, numpy.random.default_rng(seed), DTYPE)
    return out


def run_shape(name, shape, args, env):
    backend, device, torch, tdev = env["backend"], env["device"], env["torch"], env["tdev"]
    h, t = make_data(shape, args.seed)
    print(f"[bench] {name}: D={shape['vocab']:,} d={shape['d']} B={shape['rows']} "
          f"cutoffs {shape['cutoffs']}", flush=True)
    rows, runners = [], {}
    for method in [m for m in METHODS if m in args.methods]:
        row = dict(shape=name, vocab=shape["vocab"], d=shape["d"], rows=shape["rows"], device=device,
                   device_name=env["device_name"], method=method, ms=None, repeats=None,
                   cutoffs=None, predicted_ms=None, loss=None, check=None, skipped=None)
        rows.append(row)
        if method == "ours-full" and args.skip_full:
            row["skipped"] = "--skip-full"
            continue
        if method == "torch-adaptive":
            if torch is None:
                row["skipped"] = env["torch_note"]
                continue
            hand = build_ours("ours-adaptive", shape, backend, args.seed)   # fresh initial weights
            runner = TorchRunner(torch, tdev, hand, h, t)
            sync = bc.torch_sync(torch, tdev)
            row["cutoffs"] = list(hand.cutoffs)
            del hand
        else:
            t0 = time.perf_counter()
            out = build_ours(method, shape, backend, args.seed)
            if method == "ours-adaptive-auto":
                row["predicted_ms"] = out.auto_report["predicted_ms"]
                row["auto_seconds"] = time.perf_counter() - t0
            row["cutoffs"] = list(getattr(out, "cutoffs", []) or [])
            runner = OursRunner(out, backend, h, t)
            sync = backend.synchronize
        # first step from the initial weights: the loss, compared across methods
        row["loss"] = float(runner.step())
        sync()
        runners[method] = (runner, sync, row)
    if "ours-adaptive" in runners and "ours-adaptive-auto" in runners:
        # the cost model's prediction for the hand cutoffs too (the table is cached by now)
        from engine.outputs import adaptive_cutoffs as ac
        table = ac.measure_cost_model(backend, DTYPE, shape["rows"], shape["d"], 4.0, 4,
                                      vocab=shape["vocab"])
        runners["ours-adaptive"][2]["predicted_ms"] = 1e3 * ac.expected_cost(
            shape["cutoffs"], zipf_probs(shape["vocab"]), ac.CostModel(table), shape["rows"])
    # timed steps interleaved round-robin across the methods (median per method), so a change in
    # the machine's load during the run hits every method alike; the CPU 1bw exact softmax
    # (~6 TFLOP a step) is timed once, in the first round
    once = [m for m in runners if m == "ours-full" and shape["vocab"] > 100000 and device == "cpu"]
    loop = [m for m in runners if m not in once]
    times = {m: [] for m in runners}
    for m in loop:
        for _ in range(args.warmup):
            runners[m][0].step()
        runners[m][1]()
    for r in range(args.repeats):
        for m in loop + (once if r == 0 else []):
            runner, sync, _row = runners[m]
            sync()
            t0 = time.perf_counter()
            runner.step()
            sync()
            times[m].append((time.perf_counter() - t0) * 1e3)
    for m, ts in times.items():
        row = runners[m][2]
        row["ms"], row["repeats"] = float(numpy.median(ts)), len(ts)
        row["ms_all"] = ts
        print(f"[bench]   {m}: {row['ms']:.1f} ms (first loss {row['loss']:.4f}, cutoffs "
              f"{row['cutoffs']})", flush=True)
    runners.clear()
    bc.release_memory(backend, torch)
    by = {r["method"]: r for r in rows}
    ref = by.get("ours-adaptive")
    for r in rows:
        if r["ms"] is None:
            continue
        if ref and r["method"] == "torch-adaptive" and ref["loss"] is not None:
            rel = abs(r["loss"] - ref["loss"]) / abs(ref["loss"])
            r["check"] = f"loss vs ours-adaptive {rel:.1e}" + ("" if rel < 1e-4 else " MISMATCH")
        full = by.get("ours-full")
        r["x_vs_full"] = full["ms"] / r["ms"] if full and full["ms"] else None
        tr = by.get("torch-adaptive")
        r["x_vs_torch"] = tr["ms"] / r["ms"] if tr and tr["ms"] else None
    return rows


def main(argv=None):
    p = bc.make_parser(__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", choices=("text8", "1bw"), default=None)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--rows", type=int, default=None, help="override B")
    p.add_argument("--skip-full", action="store_true", help="leave out ours-full (exact softmax)")
    args = p.parse_args(argv)
    backend, device, device_name = bc.resolve_backend(args.device)
    bc.finish_args(args, device)
    torch, tdev, torch_note = bc.import_torch(device)
    if torch is not None and device == "cpu":
        # as many threads as NumPy's BLAS: OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, else every core
        torch.set_num_threads(int(os.environ.get("OPENBLAS_NUM_THREADS")
                                  or os.environ.get("OMP_NUM_THREADS") or os.cpu_count()))
        torch_note = f"PyTorch {torch.__version__} (CPU, {torch.get_num_threads()} threads)"
    env = dict(backend=backend, device=device, device_name=device_name, torch=torch, tdev=tdev,
               torch_note=torch_note)
    if args.tiny:
        shapes = ["tiny"]
    else:
        shapes = args.shapes or (["text8"] if args.quick else ["text8", "1bw"])
    print(f"[bench] device {device_name}; {torch_note}; float32; repeats {args.repeats} "
          f"(median), warm-up {args.warmup}", flush=True)
    rows = []
    for name in shapes:
        shape = dict(SHAPES[name])
        if args.rows:
            shape["rows"] = args.rows
        rows += run_shape(name, shape, args, env)
    if args.json:
        bc.write_json(args.json, rows)
    columns = [("shape", lambda r: r["shape"]), ("D", lambda r: f"{r['vocab']:,}"),
               ("d", lambda r: r["d"]), ("B", lambda r: r["rows"]), ("device", lambda r: r["device"]),
               ("method", lambda r: r["method"]),
               ("cutoffs", lambda r: ",".join(map(str, r["cutoffs"])) if r["cutoffs"] else "-"),
               ("ms", lambda r: bc.fmt_num(r["ms"], "{:.1f}") if r["ms"] else (r["skipped"] or "-")),
               ("pred ms", lambda r: bc.fmt_num(r["predicted_ms"], "{:.1f}")),
               ("x full", lambda r: bc.fmt_num(r.get("x_vs_full"))),
               ("x torch", lambda r: bc.fmt_num(r.get("x_vs_torch"))),
               ("first loss", lambda r: bc.fmt_num(r["loss"], "{:.4f}"))]
    notes = ["ms: median step (forward + backward + SGD update); x full / x torch: that method's "
             "time over this row's (higher = this row faster)",
             "pred ms: the auto-cutoff cost model's prediction for that row's cutoffs"]
    if torch is None:
        notes.append(f"NOTE: no PyTorch rows ({torch_note})")
    for r in rows:
        if r.get("check") and "MISMATCH" in r["check"]:
            notes.append(f"WARNING {r['shape']} {r['method']}: {r['check']}")
    bc.print_table("Adaptive softmax step time (tools/bench_adaptive.py)", columns, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
