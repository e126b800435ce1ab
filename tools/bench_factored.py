"""Benchmark: the paper's timing figure (Vincent et al. 2015, Fig. 3 left; PAPERS.md s.1.5).

Time per minibatch of the output layer -- forward, backward (dh) and the SGD update of W -- for
  naive     the dense layer over W (D, d): O = H W^T (B, D), the gradient, W -= lr dW
            (engine "squared" output, or "spherical-dense" with --loss spherical): O(B D d)
  factored  engine/outputs/factored.py (W = V U kept implicitly): forward + backward +
            apply_update, O(B d^2 + B K d + B^2 d + B^3)
as D grows (10,000 ... 793,471, and 2M / 10M where memory allows; --full), for d in
{128, 300, 512} and B = 128, K = 1, float32. The table prints the measured speedup next to the
theoretical D / (4 d). JSON rows: D, d, B, device, loss, naive_ms, factored_ms, speedup, theory,
check_ok (the first step of both layers from the same W agree: loss and dh within 1e-3).

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

import os
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _bench_common as bc  # noqa: E402
from engine.outputs import make_output  # noqa: E402
from engine.outputs.factored import default_check_every  # noqa: E402

DTYPE = numpy.float32
LR = 1e-3
DS_FULL = [10_000, 30_000, 100_000, 300_000, 793_471, 2_000_000, 10_000_000]
DS_CPU = [10_000, 30_000, 100_000, 300_000, 793_471]
WIDTHS = [128, 300, 512]


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
    import contextlib
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




def make_layers(backend, B, D, d, loss, device, seed):
    rng = numpy.random.default_rng(seed)
    naive_name = "squared" if loss == "squared" else "spherical-dense"
    naive = make_output(naive_name, d, D).bind(backend, numpy.random.default_rng(seed), DTYPE)
    fact = make_output(f"factored-{loss}", d, D, check_every=0, lr_guard=(device != "gpu"),
                       deterministic=False).bind(backend, numpy.random.default_rng(seed), DTYPE)
    h = backend.asarray((rng.standard_normal((B, d)) / numpy.sqrt(d)).astype(DTYPE))
    t = backend.asarray(rng.integers(0, D, size=B).astype(numpy.int64))
    return naive, fact, h, t


def naive_step(layer, h, t):
    loss = layer.forward(h, t)
    dh = layer.backward()
    g = layer.grads["W"]
    g *= -LR
    layer.params["W"] += g
    layer.zero_grads()
    return loss, dh


def factored_step(layer, h, t):
    layer.prepare_update(LR)
    loss = layer.forward(h, t)
    dh = layer.backward()
    layer.apply_update(LR)
    return loss, dh


def run_config(B, D, d, args, backend, device):
    row = dict(D=D, d=d, B=B, device=device, loss=args.loss, theory=D / (4.0 * d),
               naive_ms=None, factored_ms=None, speedup=None, check_ok=None, monitor_ms=None,
               skipped=None)
    free = bc.available_memory(backend)
    need = step_bytes(B, D, d)
    if free is not None and need > 0.8 * free:
        row["skipped"] = f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available"
        print(f"[bench] D={D} d={d}: skipped ({row['skipped']})", flush=True)
        return row
    naive, fact, h, t = make_layers(backend, B, D, d, args.loss, device, args.seed)
    # correctness: the first step of both from the same W
    ln, dhn = naive_step(naive, h, t)
    lf, dhf = factored_step(fact, h, t)
    ln, lf = float(ln), float(lf)
    dhn, dhf = backend.to_host(dhn), backend.to_host(dhf)
    rel_dh = float(numpy.linalg.norm(dhf - dhn) / max(numpy.linalg.norm(dhn), 1e-30))
    row["check_ok"] = bool(abs(lf - ln) <= 1e-3 * max(abs(ln), 1e-30) and rel_dh <= 1e-3)
    row["loss_rel_diff"], row["dh_rel_diff"] = abs(lf - ln) / max(abs(ln), 1e-30), rel_dh
    with blas_threads(args.threads, device):
        tn = bc.time_fn(lambda: naive_step(naive, h, t), backend, repeats=args.repeats,
                        warmup=args.warmup)
    naive = None                                   # free the D x d naive W first
    bc.release_memory(backend)
    with blas_threads(args.threads, device):
        tf = bc.time_fn(lambda: factored_step(fact, h, t), backend, repeats=max(args.repeats, 5),
                        warmup=args.warmup)
    tm = bc.time_fn(lambda: fact.run_checks(), backend, repeats=1, warmup=0)
    tx = bc.time_fn(lambda: fact.run_checks(exact=True), backend, repeats=1, warmup=0)
    row.update(naive_ms=tn.median_ms, factored_ms=tf.median_ms, speedup=tn.median_ms / tf.median_ms,
               monitor_ms=tm.median_ms, monitor_exact_ms=tx.median_ms,
               check_every=default_check_every(D, d, B),
               amortised_factored_ms=tf.median_ms + tm.median_ms / default_check_every(D, d, B))
    print(f"[bench] D={D} d={d} B={B}: naive {tn.median_ms:.2f} ms, factored {tf.median_ms:.3f} ms, "
          f"speedup {row['speedup']:.1f} (theory {row['theory']:.1f}), check "
          f"{'ok' if row['check_ok'] else 'FAILED'}", flush=True)
    fact = None
    bc.release_memory(backend)
    return row


def main(argv=None):
    args = build_parser().parse_args(argv)
    backend, device, device_name = bc.resolve_backend(args.device)
    bc.finish_args(args, device)
    print(f"[bench] device: {device_name}; loss {args.loss}; float32; BLAS threads "
          f"{args.threads or 'default'} (both sides)", flush=True)
    rows = [run_config(B, D, d, args, backend, device) for B, D, d in grid(args, device)]
    if args.json:
        print(f"[bench] wrote {bc.write_json(args.json, rows)}", flush=True)
    columns = [("D", lambda r: r["D"]), ("d", lambda r: r["d"]), ("B", lambda r: r["B"]),
               ("naive ms", lambda r: bc.fmt_num(r["naive_ms"], "{:.2f}")),
               ("factored ms", lambda r: bc.fmt_num(r["factored_ms"], "{:.3f}")),
               ("speedup", lambda r: bc.fmt_num(r["speedup"], "{:.1f}")),
               ("theory D/4d", lambda r: bc.fmt_num(r["theory"], "{:.1f}")),
               ("ratio", lambda r: bc.fmt_num(None if r["speedup"] is None else r["speedup"] / r["theory"], "{:.2f}")),
               ("check", lambda r: "skip" if r["skipped"] else ("ok" if r["check_ok"] else "FAIL"))]
    bc.print_table(f"Output layer step (forward + backward + SGD update), {device_name}, {args.loss}",
                   columns, rows,
                   notes=["speedup = naive ms / factored ms; theory = D / (4 d) (PAPERS.md 1.2);",
                          "factored monitors (O(D d^2)) excluded, see monitor_ms in the JSON"])
    failed = [r for r in rows if r["check_ok"] is False]
    if failed:
        print(f"[bench] {len(failed)} CORRECTNESS FAILURE(S)", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
