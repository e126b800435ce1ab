"""Adaptive softmax step time: ours (hand and auto cutoffs) vs our exact softmax vs PyTorch's
AdaptiveLogSoftmaxWithLoss with the same cutoffs, on the same device, from the same weights.

One step = forward, backward (including dh) and a plain SGD update of every parameter that got
a gradient, float32, B rows of h (d wide) with Zipf-distributed targets (p(rank r) ~ 1/r) over
a frequency-sorted vocabulary of D words. Shapes (the paper's, docs/adaptive-softmax.md):
    text8  D = 44,000,  d = 512, B = 2,560, cutoffs 2000,10000
    1bw    D = 793,471, d = 512, B = 2,560, cutoffs 4000,40000,200000
Methods: ours-full (engine SoftmaxOutput; whole logits at text8, chunked over 16,384 words at
1bw, where the B x D logits would take 8 GB), ours-adaptive (hand cutoffs), ours-adaptive-auto
(cutoffs="auto" from the Zipf counts and this device's measured cost model; the cutoffs chosen
and the predicted time are printed), torch-adaptive (PyTorch's layer, same cutoffs, same
weights). Before timing, every method's first step is compared with the float64 reference
(tools/_references.py: loss, dh and the update of every parameter; for ours-full some rows of W;
tolerances in CHECK_TOLERANCES); a method that disagrees is not timed, its row says check
"failed" and the script exits with status 1. Memory: bytes held between steps and the peak
growth of one step (tools/_bench_harness.py). The 1bw exact softmax is ~6 TFLOP a step:
on the CPU it is timed once (1 call, no warm-up), yet the row costs about six such steps (its
checked first step, the float64 reference at twice the cost, the timed step, and the memory
process's warm-up and measured steps; --memory inproc saves two); --skip-full leaves it out.
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

import _path  # noqa: F401  (this checkout's engine first on sys.path)
import _bench_common as bc
import _bench_harness as harness
import _bench_memory as bm
import _references as refs

DTYPE = numpy.float32
SHAPES = {
    "text8": dict(vocab=44000, d=512, rows=2560, cutoffs=[2000, 10000]),
    "1bw": dict(vocab=793471, d=512, rows=2560, cutoffs=[4000, 40000, 200000]),
    "tiny": dict(vocab=500, d=32, rows=64, cutoffs=[50, 200]),
}
# ours-full last: its big buffers change glibc's heap thresholds for whatever runs after it
METHODS = ("ours-adaptive", "ours-adaptive-auto", "torch-adaptive", "ours-full")
LR = 0.1
#: float32 first step vs the float64 reference (relative to each quantity's largest entry; the
#: parameter updates after one float32 epsilon of the parameter's largest entry, their rounding)
CHECK_TOLERANCES = {"loss": 1e-4, "dh": 1e-3, "updates": 1e-3}


def zipf_probs(D):
    p = 1.0 / numpy.arange(1, D + 1, dtype=numpy.float64)
    return p / p.sum()


def make_data(shape, seed):
    rng = numpy.random.default_rng(seed + 1)
    h = rng.standard_normal((shape["rows"], shape["d"])).astype(DTYPE)
    t = rng.choice(shape["vocab"], size=shape["rows"], p=zipf_probs(shape["vocab"])).astype(numpy.int64)
    return h, t


def full_chunk(shape):
    """ours-full: whole logits at text8, chunks of 16,384 words where B x D would pass 2 GiB."""
    return None if shape["vocab"] * shape["rows"] * 4 <= 2 ** 31 else 16384


def full_check_rows(t, D):
    return numpy.unique(numpy.concatenate([t[:32], numpy.arange(min(D, 32))])).astype(numpy.int64)


def build_ours(method, shape, backend, seed, cutoffs=None, verbose=True):
    """The engine layer of a method; `cutoffs` given: that list (the memory child rebuilds an
    auto-cutoff layer from the cutoffs the parent chose)."""
    from engine.outputs import AdaptiveSoftmaxOutput, SoftmaxOutput
    D, d = shape["vocab"], shape["d"]
    if method == "ours-full":
        out = SoftmaxOutput(d, D, bias=True, chunk_size=full_chunk(shape))
    elif method == "ours-adaptive" or cutoffs is not None:
        out = AdaptiveSoftmaxOutput(d, D, cutoffs=cutoffs or shape["cutoffs"], head_bias=True)
    else:
        counts = numpy.round(zipf_probs(D) * 1e9)
        # the paper's pure cost model (no head-coverage floor): this row measures the DP's speed
        out = AdaptiveSoftmaxOutput(d, D, cutoffs="auto", counts=counts, head_bias=True,
                                    auto_batch=shape["rows"], auto_head_coverage=0.0,
                                    verbose=verbose)
    out.bind(backend, numpy.random.default_rng(seed), DTYPE)
    return out


class OursRunner(harness.OutputRunner):
    """An engine output layer, one forward + backward + plain SGD step per call."""

    def __init__(self, method, out, backend, h, t):
        super().__init__(backend)
        self.method, self.out = method, out
        self.h, self.t = backend.asarray(h), backend.asarray(t)
        self.dh = self.loss = None
        self.rows = full_check_rows(t, out.num_classes) if method == "ours-full" else None

    def step(self):
        out = self.out
        out.zero_grads()
        self.loss = out.forward(self.h, self.t, train=True)
        self.dh = out.backward()
        for name, g in out.grads.items():
            if g is not None:            # a tail no row reached has no gradient
                g *= -LR
                out.params[name] += g

    def _params(self):
        P = self.out.params
        if self.rows is None:
            return {k: self.to_host64(v) for k, v in P.items()}
        return {"W": self.to_host64(P["W"][self.backend.asarray(self.rows)]),
                "b": self.to_host64(P["b"])}

    def first_step(self):
        before = self._params()
        self.initial = before
        self.step()
        self.sync()
        after = self._params()
        values = {"loss": float(self.loss), "dh": self.to_host64(self.dh)}
        values.update({f"{k}_update": after[k] - before[k] for k in before})
        return values

class TorchAdaptive(harness.TorchRunner):
    """torch.nn.AdaptiveLogSoftmaxWithLoss with our initial weights, same step."""

    method = "torch-adaptive"

    def __init__(self, torch, dev, ours, h, t):
        super().__init__(torch, dev)
        D, d = ours.num_classes, ours.in_features
        m = torch.nn.AdaptiveLogSoftmaxWithLoss(d, D, list(ours.cutoffs), div_value=ours.div_value,
                                                head_bias=ours.head_bias).to(dev)
        self.named = {"head_W": m.head.weight}
        if ours.head_bias:
            self.named["head_b"] = m.head.bias
        for i in range(ours.n_clusters):
            self.named[f"proj{i}_W"] = m.tail[i][0].weight
            self.named[f"out{i}_W"] = m.tail[i][1].weight
        P = {k: ours.backend.to_host(v) for k, v in ours.params.items()}
        with torch.no_grad():
            for name, p in self.named.items():
                p.copy_(torch.from_numpy(numpy.ascontiguousarray(P[name])))
        self.m, self.cutoffs = m, list(ours.cutoffs)
        self.h = torch.tensor(h, device=dev).requires_grad_(True)
        self.t = torch.tensor(t, device=dev)
        self.params = list(m.parameters())
        self.loss = None

    def step(self):
        for p in self.params + [self.h]:
            p.grad = None
        loss = self.m(self.h, self.t).loss
        loss.backward()
        with self.torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-LR)
        self.loss = loss.detach()

    def first_step(self):
        before = {k: self.to_host64(p) for k, p in self.named.items()}
        self.step()
        self.sync()
        values = {"loss": float(self.loss), "dh": self.to_host64(self.h.grad)}
        values.update({f"{k}_update": self.to_host64(p) - before[k] for k, p in self.named.items()})
        return values

    def held_arrays(self):
        return self.params + [p.grad for p in self.params] + [self.h, self.t, self.h.grad]

    def close(self):
        self.m = self.params = self.named = self.h = self.t = None


def build_runner(p, backend, torch=None, tdev=None):
    """The runner of payload p = {method, shape, seed, cutoffs} (the memory child's too)."""
    h, t = make_data(p["shape"], p["seed"])
    if p["method"] == "torch-adaptive":
        if torch is None:
            torch, tdev, note = bc.import_torch("cpu")
            if torch is None:
                raise SystemExit(note)
        hand = build_ours("ours-adaptive", p["shape"], backend, p["seed"])   # fresh initial weights
        return TorchAdaptive(torch, tdev, hand, h, t)
    out = build_ours(p["method"], p["shape"], backend, p["seed"], cutoffs=p.get("cutoffs"),
                     verbose=p.get("verbose", False))
    return OursRunner(p["method"], out, backend, h, t)


def reference(runner, shape, h, t, backend, seed):
    """The float64 reference of a runner's first step, from its initial parameters."""
    xp = backend.xp
    if runner.method == "ours-full":
        from engine.outputs import SoftmaxOutput
        W0 = SoftmaxOutput(shape["d"], shape["vocab"]).init_params(numpy.random.default_rng(seed))["W"]
        W0 = W0.astype(DTYPE)                  # on the host: the reference moves it block by block
        ref = refs.softmax_sgd_step(xp, W0, xp.zeros(shape["vocab"], dtype=DTYPE), backend.asarray(h),
                                    backend.asarray(t), LR, runner.rows)
        initial = runner.initial
    else:
        if runner.method == "torch-adaptive":
            ours = build_ours("ours-adaptive", shape, backend, seed)
            initial = {k: numpy.array(backend.to_host(v), dtype=numpy.float64)
                       for k, v in ours.params.items()}
            cutoffs = ours.cutoffs
        else:
            initial, cutoffs = runner.initial, runner.out.cutoffs
        ref = refs.adaptive_sgd_step(xp, initial, cutoffs, shape["vocab"], backend.asarray(h),
                                     backend.asarray(t), LR)
    ref = {k: (v if isinstance(v, float) else numpy.asarray(backend.to_host(v))) for k, v in ref.items()}
    return harness.Reference(ref, harness.update_allowances(initial, DTYPE))


def tolerances_for(keys):
    tol = {"loss": CHECK_TOLERANCES["loss"], "dh": CHECK_TOLERANCES["dh"]}
    tol.update({k: CHECK_TOLERANCES["updates"] for k in keys if k.endswith("_update")})
    return tol


def run_shape(name, shape, args, env):
    backend, device, torch, tdev = env["backend"], env["device"], env["torch"], env["tdev"]
    h, t = make_data(shape, args.seed)
    print(f"[bench] {name}: D={shape['vocab']:,} d={shape['d']} B={shape['rows']} "
          f"cutoffs {shape['cutoffs']}", flush=True)
    methods = [m for m in METHODS if m in args.methods]
    extra = {m: dict(cutoffs=None, predicted_ms=None, skipped=None) for m in methods}
    if "ours-full" in methods and args.skip_full:
        extra["ours-full"]["skipped"] = "--skip-full"
    if "torch-adaptive" in methods and torch is None:
        extra["torch-adaptive"]["skipped"] = env["torch_note"]
    run = [m for m in methods if not extra[m]["skipped"]]
    payload = lambda m: dict(method=m, shape=shape, seed=args.seed,            # noqa: E731
                             cutoffs=extra[m]["cutoffs"] if m == "ours-adaptive-auto" else None)
    keys = {}

    def build(method):
        t0 = time.perf_counter()
        runner = build_runner(dict(payload(method), cutoffs=None, verbose=True), backend, torch, tdev)
        cut = runner.cutoffs if method == "torch-adaptive" else getattr(runner.out, "cutoffs", None)
        extra[method]["cutoffs"] = [int(c) for c in cut] if cut else None
        if method == "ours-adaptive-auto":
            extra[method]["predicted_ms"] = runner.out.auto_report["predicted_ms"]
            extra[method]["auto_seconds"] = time.perf_counter() - t0
        return runner

    def reference_for(runner, values):
        keys[runner.method] = list(values)
        return reference(runner, shape, h, t, backend, args.seed)

    # the CPU 1bw exact softmax (~6 TFLOP a step) is timed once, without warm-up
    once = "ours-full" if shape["vocab"] > 100000 and device == "cpu" else None
    results = harness.run_methods(
        run, build, reference_for, lambda m: tolerances_for(keys[m]), args, env, label=name,
        payload=payload, script=os.path.abspath(__file__),
        repeats={m: (1 if m == once else args.repeats) for m in run},
        warmup={m: (0 if m == once else args.warmup) for m in run})
    if extra.get("ours-adaptive", {}).get("cutoffs") and extra.get("ours-adaptive-auto", {}).get("cutoffs"):
        # the cost model's prediction for the hand cutoffs too (the table is cached by now)
        from engine.outputs import adaptive_cutoffs as ac
        table = ac.measure_cost_model(backend, DTYPE, shape["rows"], shape["d"], 4.0, 4,
                                      vocab=shape["vocab"])
        extra["ours-adaptive"]["predicted_ms"] = 1e3 * ac.expected_cost(
            shape["cutoffs"], zipf_probs(shape["vocab"]), ac.CostModel(table), shape["rows"])
    rows = []
    for m in methods:
        row = dict(shape=name, vocab=shape["vocab"], d=shape["d"], rows=shape["rows"], device=device,
                   device_name=env["device_name"], method=m, loss=None)
        row.update(results.get(m, harness.blank_result(m)))
        row.update({k: v for k, v in extra[m].items() if v is not None or k not in row})
        rows.append(row)
    bm.release_memory(backend, torch)
    by = {r["method"]: r for r in rows}
    full, tr = by.get("ours-full"), by.get("torch-adaptive")
    for r in rows:
        r["x_vs_full"] = full["ms"] / r["ms"] if full and full["ms"] and r["ms"] else None
        r["x_vs_torch"] = tr["ms"] / r["ms"] if tr and tr["ms"] and r["ms"] else None
    return rows


def build_parser():
    p = bc.make_parser(__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", choices=("text8", "1bw"), default=None)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--rows", type=int, default=None, help="override B")
    p.add_argument("--skip-full", action="store_true", help="leave out ours-full (exact softmax)")
    return p


def main(argv=None):
    args, env = harness.start(build_parser(), argv, build_runner)
    device, device_name = env["device"], env["device_name"]
    torch, tdev, torch_note = bc.import_torch(device)
    if torch is not None and device == "cpu":
        # as many threads as NumPy's BLAS: OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, else every core
        torch.set_num_threads(int(os.environ.get("OPENBLAS_NUM_THREADS")
                                  or os.environ.get("OMP_NUM_THREADS") or os.cpu_count()))
        torch_note = f"PyTorch {torch.__version__} (CPU, {torch.get_num_threads()} threads)"
    env.update(torch=torch, tdev=tdev, torch_device=tdev, torch_note=torch_note)
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
               ("peak MiB", lambda r: bc.fmt_mib(r["peak_bytes"])),
               ("first loss", lambda r: bc.fmt_num(r["loss"], "{:.4f}")),
               ("check", harness.check_cell)]
    notes = ["ms: median step (forward + backward + SGD update), methods interleaved round-robin; "
             "x full / x torch: that method's time over this row's (higher = this row faster)",
             "pred ms: the auto-cutoff cost model's prediction for that row's cutoffs",
             "check: first step vs the float64 reference (" + ", ".join(
                 f"{k} {v:g}" for k, v in CHECK_TOLERANCES.items()) + "); FAILED rows are not timed"]
    if torch is None:
        notes.append(f"NOTE: no PyTorch rows ({torch_note})")
    status = harness.report_failures(rows, lambda r: f"{r['shape']} {r['method']}")
    bc.print_table("Adaptive softmax step time (tools/bench_adaptive.py)", columns, rows, notes)
    return status


if __name__ == "__main__":
    sys.exit(main())
