"""Benchmark: the paper's timing figure (Vincent et al. 2015, Fig. 3 left; docs/factored.md).

Time per minibatch of the output layer -- forward, backward (dh) and the SGD update of W -- for
  naive     the dense layer over W (D, d): O = H W^T (B, D), the gradient, W -= lr dW
            (engine "squared" output, or "spherical-dense" with --loss spherical): O(B D d)
  factored  engine/outputs/factored.py (W = V U kept implicitly): forward + backward +
            apply_update, O(B d^2 + B K d + B^2 d + B^3)
as D grows (10,000 ... 793,471, and 2M / 10M where memory allows; --full), for d in
{128, 300, 512} and B = 128, K = 1, float32. The table prints the measured speedup next to the
theoretical D / (4 d). JSON rows: D, d, B, device, loss, naive_ms, factored_ms, speedup, theory,
check / check_ok / check_error (both layers' first step, from the same W, against the float64
dense reference of tools/_references.py: loss, dh and the update of some rows of W, tolerances
in CHECK_TOLERANCES; a layer that disagrees is not timed and the script exits with status 1),
naive_* / factored_* (each layer's own check fields and memory: resident and peak bytes).
The two layers are timed round-robin (medians).

The factored timing is one step with the layer's defaults except the periodic monitors
(check_every=0 while timing; their cost is measured apart: `monitor_ms` for the default probe
monitor, O(D d p), and `monitor_exact_ms` for the exact one, O(D d^2); `amortised_factored_ms`
adds the probe's cost spread over the default cadence, `default_check_every(D, d, B)`) and,
on the GPU, the learning-rate guard (lr_guard=False: it needs a host synchronisation; on the CPU
it stays on, a Cholesky of a B x B matrix). On the CPU both steps run with the same number of
BLAS threads (--threads, default 1). Rows that do not fit in memory (naive W + dW +
factored V + the B x D output, all float32) are skipped with a printed reason.

CUDA graphs are not captured (not implemented): on the GPU every step is a sequence of CuPy
launches; see the README of the factored layer.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy

import _path  # noqa: F401  (this checkout's engine first on sys.path)
import _bench_common as bc
import _bench_harness as harness
import _bench_memory as bm
import _references as refs
from engine.outputs import make_output
from engine.outputs.factored import default_check_every

DTYPE = numpy.float32
LR = 1e-3
DS_FULL = [10_000, 30_000, 100_000, 300_000, 793_471, 2_000_000, 10_000_000]
DS_CPU = [10_000, 30_000, 100_000, 300_000, 793_471]
WIDTHS = [128, 300, 512]
METHODS = ("naive", "factored")
#: float32 first step vs the float64 dense reference (relative to each quantity's largest entry;
#: W's update after one float32 epsilon of max |W0|, its rounding)
CHECK_TOLERANCES = {"loss": 1e-4, "dh": 1e-3, "W_update": 1e-3}


def build_parser():
    p = bc.make_parser(__doc__.split("\n")[0])
    p.add_argument("--loss", choices=("squared", "spherical"), default="squared")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--D", type=int, nargs="+", default=None, help="output sizes to run")
    p.add_argument("--d", type=int, nargs="+", default=None, help="widths to run")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU: BLAS threads for both steps (default 1: on a shared machine "
                        "OpenBLAS's spinning threads make timings erratic; 0 = leave as is)")
    return p


def blas_threads(n, device):
    """A context that limits BLAS threads to n (CPU, threadpoolctl importable, n > 0)."""
    if device != "cpu" or not n:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(n)


def grid(args, device):
    if args.tiny:
        return [(args.batch if args.batch != 128 else 8, 2000, 16), (8, 4000, 16)]
    if args.quick:
        Ds, ws = [10_000, 100_000], [128, 300]
    else:
        Ds = DS_FULL if (args.full or device == "gpu") else DS_CPU
        ws = WIDTHS
    Ds, ws = args.D or Ds, args.d or ws
    return [(args.batch, D, d) for d in ws for D in Ds]


def step_bytes(B, D, d):
    """float32 bytes of naive W, dW, O (B x D) and factored V, plus 20% slack."""
    return int(1.2 * 4 * (3 * D * d + 2 * B * D))


def make_data(B, D, d, seed):
    """h (B, d) standard normal / sqrt(d), targets (B,) uniform over D."""
    rng = numpy.random.default_rng(seed)
    h = (rng.standard_normal((B, d)) / numpy.sqrt(d)).astype(DTYPE)
    t = rng.integers(0, D, size=B).astype(numpy.int64)
    return h, t


def check_rows(t, D):
    return numpy.unique(numpy.concatenate([t[:32], numpy.arange(min(D, 32))])).astype(numpy.int64)


class LayerStep(harness.OutputRunner):
    """The naive dense layer (W -= lr dW) or the factored layer (its exact update), one step."""

    def __init__(self, method, backend, B, D, d, loss, seed):
        super().__init__(backend)
        self.method = method
        if method == "naive":
            layer = make_output("squared" if loss == "squared" else "spherical-dense", d, D)
        else:   # monitors off while timing (measured apart); the GPU skips the lr guard's sync
            layer = make_output(f"factored-{loss}", d, D, check_every=0,
                                lr_guard=(backend.device != "gpu"), deterministic=False)
        self.out = layer.bind(backend, numpy.random.default_rng(seed), DTYPE)
        h, t = make_data(B, D, d, seed)
        self.h, self.t = backend.asarray(h), backend.asarray(t)
        self.rows = check_rows(t, D)
        self.dh = self.loss = None

    def step(self):
        layer = self.out
        if self.method == "naive":
            self.loss = layer.forward(self.h, self.t)
            self.dh = layer.backward()
            g = layer.grads["W"]
            g *= -LR
            layer.params["W"] += g
            layer.zero_grads()
        else:
            layer.prepare_update(LR)
            self.loss = layer.forward(self.h, self.t)
            self.dh = layer.backward()
            layer.apply_update(LR)

    def W_rows(self):
        """Rows of W as float64 on the host (factored: V[rows] U + a, from float64 copies)."""
        idx = self.backend.asarray(self.rows)
        P = self.out.params
        if self.method == "naive":
            return self.to_host64(P["W"][idx])
        W = self.to_host64(P["V"][idx]) @ self.to_host64(P["U"])
        return W + self.to_host64(P["a"]) if "a" in P else W

    def first_step(self):
        self.W0_rows = self.W_rows()
        self.step()
        self.sync()
        return {"loss": float(self.loss), "dh": self.to_host64(self.dh),
                "W_update": self.W_rows() - self.W0_rows}


def initial_W(D, d, seed):
    """W0 (D, d) float32 as both layers draw it at bind with default_rng(seed)."""
    W = make_output("squared", d, D).init_params(numpy.random.default_rng(seed))["W"]
    return W.astype(DTYPE)


def build_runner(p, backend):
    return LayerStep(p["method"], backend, p["B"], p["D"], p["d"], p["loss"], p["seed"])


def run_config(B, D, d, args, backend, device, env):
    row = dict(D=D, d=d, B=B, device=device, loss=args.loss, theory=D / (4.0 * d),
               naive_ms=None, factored_ms=None, speedup=None, check="skipped", check_ok=None,
               check_error=None, monitor_ms=None, skipped=None)
    free = bm.available_memory(backend)
    need = step_bytes(B, D, d)
    if free is not None and need > 0.8 * free:
        row["skipped"] = f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available"
        print(f"[bench] D={D} d={d}: skipped ({row['skipped']})", flush=True)
        return row
    payload = lambda m: dict(method=m, B=B, D=D, d=d, loss=args.loss, seed=args.seed)   # noqa: E731
    values, cache = {}, {}

    def reference_for(runner, vals):
        values[runner.method] = vals
        if "ref" not in cache:          # both layers start from the same W0 and data
            xp = backend.xp
            h, t = make_data(B, D, d, args.seed)
            W0 = initial_W(D, d, args.seed)
            ref = refs.dense_output_sgd_step(xp, W0, backend.asarray(h),
                                             backend.asarray(t), LR, args.loss, runner.rows)
            ref = {k: (v if isinstance(v, float) else numpy.asarray(backend.to_host(v)))
                   for k, v in ref.items()}
            cache["ref"] = harness.Reference(
                ref, harness.update_allowances({"W": W0[runner.rows]}, DTYPE))
        return cache["ref"]

    with blas_threads(args.threads, device):
        res = harness.run_methods(
            list(METHODS), lambda m: build_runner(payload(m), backend), reference_for,
            CHECK_TOLERANCES, args, env, label=f"D={D} d={d} B={B}", payload=payload,
            script=os.path.abspath(__file__),
            repeats={"naive": args.repeats, "factored": max(args.repeats, 5)})
    row.update(harness.combined_fields(res, METHODS))
    for m in METHODS:
        row[f"{m}_ms"] = res[m]["ms"]
        row[f"{m}_loss"] = res[m].get("loss")          # its first-step loss (float32)
    row["check_tolerances"] = dict(CHECK_TOLERANCES)
    row["reference_loss"] = cache["ref"].values["loss"] if "ref" in cache else None
    if "naive" in values and "factored" in values:
        ln, lf = values["naive"]["loss"], values["factored"]["loss"]
        dhn, dhf = values["naive"]["dh"], values["factored"]["dh"]
        row["loss_rel_diff"] = abs(lf - ln) / max(abs(ln), 1e-30)
        row["dh_rel_diff"] = float(numpy.linalg.norm(dhf - dhn) / max(numpy.linalg.norm(dhn), 1e-30))
    if row["naive_ms"] and row["factored_ms"]:
        row["speedup"] = row["naive_ms"] / row["factored_ms"]
    if res["factored"]["check"] == "ok":
        # the periodic monitors, timed apart on a fresh factored layer (O(D d p) probe, O(D d^2) exact)
        fact = build_runner(payload("factored"), backend)
        fact.step()
        tm = bc.time_fn(lambda: fact.out.run_checks(), backend, repeats=1, warmup=0)
        tx = bc.time_fn(lambda: fact.out.run_checks(exact=True), backend, repeats=1, warmup=0)
        every = default_check_every(D, d, B)
        row.update(monitor_ms=tm.median_ms, monitor_exact_ms=tx.median_ms, check_every=every,
                   amortised_factored_ms=(row["factored_ms"] + tm.median_ms / every
                                          if row["factored_ms"] else None))
        fact.close()
    bm.release_memory(backend)
    print(f"[bench] D={D} d={d} B={B}: naive {bc.fmt_num(row['naive_ms'])} ms, factored "
          f"{bc.fmt_num(row['factored_ms'], '{:.3f}')} ms, speedup {bc.fmt_num(row['speedup'], '{:.1f}')} "
          f"(theory {row['theory']:.1f}), check {row['check']}", flush=True)
    return row


def main(argv=None):
    args, env = harness.start(build_parser(), argv, build_runner)
    backend, device, device_name = env["backend"], env["device"], env["device_name"]
    print(f"[bench] device: {device_name}; loss {args.loss}; float32; BLAS threads "
          f"{args.threads or 'default'} (both sides)", flush=True)
    rows = [run_config(B, D, d, args, backend, device, env) for B, D, d in grid(args, device)]
    if args.json:
        print(f"[bench] wrote {bc.write_json(args.json, rows)}", flush=True)
    columns = [("D", lambda r: r["D"]), ("d", lambda r: r["d"]), ("B", lambda r: r["B"]),
               ("naive ms", lambda r: bc.fmt_num(r["naive_ms"], "{:.2f}")),
               ("factored ms", lambda r: bc.fmt_num(r["factored_ms"], "{:.3f}")),
               ("speedup", lambda r: bc.fmt_num(r["speedup"], "{:.1f}")),
               ("theory D/4d", lambda r: bc.fmt_num(r["theory"], "{:.1f}")),
               ("ratio", lambda r: bc.fmt_num(r["speedup"] and r["speedup"] / r["theory"], "{:.2f}")),
               ("naive peak MiB", lambda r: bc.fmt_mib(r.get("naive_peak_bytes"))),
               ("factored peak MiB", lambda r: bc.fmt_mib(r.get("factored_peak_bytes"))),
               ("check", harness.check_cell)]
    status = harness.report_failures(rows, lambda r: f"D={r['D']} d={r['d']} B={r['B']}")
    bc.print_table(f"Output layer step (forward + backward + SGD update), {device_name}, {args.loss}",
                   columns, rows,
                   notes=["speedup = naive ms / factored ms (timed round-robin); theory = D / (4 d)",
                          "factored monitors (O(D d^2)) excluded, see monitor_ms in the JSON",
                          "check: both layers' first step vs the float64 dense reference ("
                          + ", ".join(f"{k} {v:g}" for k, v in CHECK_TOLERANCES.items())
                          + "); FAILED layers are not timed"])
    return status


if __name__ == "__main__":
    sys.exit(main())
