"""Benchmark: the output layer trained over N ranks (engine/distributed) at an Amazon-670K-like
XMC shape and a language model with a 793,471-word vocabulary.

    python tools/bench_distributed.py --device cpu --json rows.json       # N = 1 and 2
    python tools/bench_distributed.py --quick                              # a tenth of the labels

Configurations (float32, Adam):
    xmc  squared hinge over dense weights, 670,091 labels, d = 512, B = 128, 5 labels per row
    lm   exact softmax chunked by 65,536 words over 793,471 words, d = 512, B = 128
(--quick: a tenth of the labels, d = 128, B = 64, softmax chunks of 8,192 words, so that the
shards stay chunked as at full size; --labels, --vocab, --d, --batch override.)
For each configuration and each N of --ranks (default 1, 2): N processes (`mpiexec -n N` for
N > 1; a fresh process for N = 1), each holding its share of the output layer (rows
[r L / N, (r + 1) L / N) of the weights and their Adam state) and its rows [r B / N, (r + 1) B
/ N) of a fixed minibatch h (B, d) with its targets. One step: forward (the sharded layer
gathers h), backward (dh of the rank's rows), the Adam update of the rank's weight rows. With
one BLAS thread per rank (set here), N = 1 and N = 2 compare the same compute per rank.

Check before timing: the first step's loss, dh (every row, gathered) and the weight gradient of
8 label rows spread over [0, L) (from the rank that owns each): N = 1 against the float64
reference (tools/_references.py softmax_sgd_step for the softmax; the squared hinge's
`hinge_reference` here, written from its equation), N > 1 against the N = 1 run's first step
(the same computation summed in another order: float32 tolerances). A failed check leaves the
row unchecked and the script exits with status 1.

Measured, for the job (the largest over its ranks):
    ms                   median over --repeats of the slowest rank's step (a barrier starts
                         each step on every rank)
    comm_bytes           bytes one rank handed to the collectives and got back in one step
                         (the communicator's `stats`, rank 0; 0 for N = 1), next to
                         comm_formula (below)
    resident_bytes       what the rank holds between steps: output weights and bias, Adam's
                         m and v, its rows of h and the targets
    step_peak_bytes      growth of the resident set during one step (RssPeak, glibc told to
                         map every block of 64 KiB or more on its own; CuPy's pool on the GPU)
    peak_bytes_per_rank  resident_bytes + step_peak_bytes
    goal                 peak_bytes_per_rank(N) <= peak_bytes_per_rank(1) / N + 3 B d s (the
                         B x d buffers: the gathered h, the partial dh, and the MPI library's
                         reduce-scatter scratch) + (1 - 1 / N) B c s for a softmax in chunks
                         of c words (each rank keeps its own B x c logits block, as one
                         process does): "ok" or "missed"
    model_ms             the roofline model of one rank's step, from the N = 1 job's measured
                         matmul rate F (flops/s, one thread on the CPU) and copy bandwidth W
                         (bytes/s): f B L_r d / F + (28 L_r d + 12 B L_r) / W, f = 6 (forward,
                         weight and input gradients; 8 for the chunked softmax, which computes
                         its logits twice), 28 L_r d the Adam update's bytes (read W, g, m, v,
                         write W, m, v, float32), 12 B L_r three passes over the scores;
                         measured / model (`model_ratio`) calibrates projections to other sizes

Bytes one rank hands in plus gets back per step (s = 4: float32; t: the targets' itemsize; K:
targets per row, 1 for the softmax; B_r: the rank's rows):
    both outputs   2 (B + B_r) d s   all-gather of h, reduce-scatter of dh
                   + (B + B_r) K t   all-gather of the targets
                   + 16 (1 + N)      all-gather of every rank's (rows, K)
    softmax        + 2 B s + 32 B    all-reduce of the shards' log-sum-exp maxima (float32),
                                     then of the sums of exponentials and target logits (float64)
    squared hinge  + 16              all-reduce of the loss sum (float64)

Options: --device cpu|gpu|auto, --quick, --json FILE, --ranks 1,2, --outputs xmc,lm,
--repeats, --warmup, --seed, --labels, --vocab, --d, --batch, --mpiexec PATH.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy

import _path  # noqa: F401  (this checkout's engine first on sys.path)
import _bench_common as bc
import _bench_harness as harness
import _bench_memory as bm
import _references as refs

DTYPE = numpy.dtype(numpy.float32)
FULL = {"xmc": dict(output="squared-hinge", labels=670_091, d=512, batch=128, k=5),
        "lm": dict(output="softmax", labels=793_471, d=512, batch=128, k=1, chunk=65_536)}
QUICK = {"xmc": dict(labels=67_009, d=128, batch=64),
         "lm": dict(labels=79_347, d=128, batch=64, chunk=8_192)}
TINY = {"xmc": dict(labels=503, d=16, batch=13), "lm": dict(labels=611, d=16, batch=13,
                                                            chunk=128)}
#: float32 first step vs the reference, relative to each quantity's largest entry
TOLERANCES = {"loss": 1e-5, "dh": 1e-4, "dW": 1e-4}
CHECK_ROWS = 8
JOB_MARKER = "BENCH-DISTRIBUTED-JOB "
THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "NUMBA_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------- formulas
def comm_formula(output, n, batch, d, k, rank_rows, target_bytes, s=4):
    """Bytes rank r hands in plus gets back in one step (module docstring); 0 for N = 1."""
    if n == 1:
        return 0
    total = 2 * (batch + rank_rows) * d * s + (batch + rank_rows) * k * target_bytes
    total += 16 * (1 + n)
    if output == "softmax":
        total += 2 * batch * s + 32 * batch
    else:
        total += 16
    return total


def hinge_reference(W, b, h, t, rows):
    """Float64 squared hinge sum_l max(0, 1 - y s)^2 (mean over B) of s = h W^T + b, y = +1 at
    the targets t (B, K) (-1 padding) and -1 elsewhere: {loss, dh (B, d), dW (rows, d)}."""
    h = numpy.asarray(h, dtype=numpy.float64)
    B, L = h.shape[0], W.shape[0]
    rows = numpy.asarray(rows)
    loss, dh = 0.0, numpy.zeros_like(h)
    dW = numpy.zeros((rows.size, h.shape[1]))
    step = max(1, (8 << 20) // B)
    for s in range(0, L, step):
        e = min(L, s + step)
        Wc = numpy.asarray(W[s:e], dtype=numpy.float64)
        z = h @ Wc.T + numpy.asarray(b[s:e], dtype=numpy.float64)
        y = -numpy.ones_like(z)
        r, c = numpy.nonzero((t >= s) & (t < e))
        y[r, t[r, c] - s] = 1.0
        m = numpy.maximum(0.0, 1.0 - y * z)
        loss += float((m * m).sum())
        G = -2.0 * y * m / B
        dh += G @ Wc
        pick = numpy.nonzero((rows >= s) & (rows < e))[0]
        if pick.size:
            dW[pick] = G[:, rows[pick] - s].T @ h
    return {"loss": loss / B, "dh": dh, "dW": dW}


def flops_factor(cfg, local_labels):
    """f of model_ms: 6, or 8 for a softmax whose shard is done in chunks."""
    chunked = cfg["output"] == "softmax" and cfg.get("chunk") and cfg["chunk"] < local_labels
    return 8 if chunked else 6


def model_ms(cfg, local_labels, flops_rate, copy_rate):
    """The roofline model of one rank's step (module docstring), milliseconds."""
    B, d = cfg["batch"], cfg["d"]
    flops = flops_factor(cfg, local_labels) * B * local_labels * d
    moved = 28 * local_labels * d + 12 * B * local_labels
    return (flops / flops_rate + moved / copy_rate) * 1e3


def copy_rate(backend, nbytes=256 << 20, repeats=3):
    """Bytes read + written per second by a copy of `nbytes` (best of `repeats`)."""
    a = backend.asarray(numpy.ones(nbytes // 4, dtype=numpy.float32))
    best = None
    for _ in range(repeats):
        backend.synchronize()
        t0 = time.perf_counter()
        b = a.copy()
        backend.synchronize()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
        del b
    return 2 * nbytes / best


# ------------------------------------------------------------------------------- one rank
def _build(cfg, comm, backend):
    """(layer, optimizer, h_r, t_r, H, T): the output layer of this rank (sharded for N > 1),
    Adam, this rank's rows of the fixed minibatch, and the whole minibatch."""
    from engine.distributed.shard import batch_rows
    from engine.distributed.step import shard_output
    from engine.optim import Adam
    from engine.outputs.multilabel import SquaredHingeOutput
    from engine.outputs.softmax import SoftmaxOutput
    L, d, B, k = cfg["labels"], cfg["d"], cfg["batch"], cfg["k"]
    if cfg["output"] == "softmax":
        layer = SoftmaxOutput(d, L, chunk_size=cfg["chunk"])
    else:
        layer = SquaredHingeOutput(d, L)
    if comm.size > 1:
        layer = shard_output(layer, comm)
    layer.bind(backend, numpy.random.default_rng(cfg["seed"]), DTYPE)
    rng = numpy.random.default_rng(cfg["seed"] + 1)
    H = rng.standard_normal((B, d)).astype(DTYPE)
    if cfg["output"] == "softmax":
        T = rng.integers(0, L, size=B).astype(numpy.int64)
    else:
        T = numpy.stack([rng.choice(L, size=k, replace=False) for _ in range(B)]).astype(
            numpy.int32)
    rows = batch_rows(B, comm.size, comm.rank)
    optimizer = Adam(lr=1e-3)
    optimizer.bind(backend)
    return layer, optimizer, backend.asarray(H[rows]), backend.asarray(T[rows]), H, T


class RankStep:
    """One training step of this rank's output layer (forward, backward, Adam)."""

    def __init__(self, layer, optimizer, h, t):
        self.layer, self.optimizer, self.h, self.t = layer, optimizer, h, t
        self.loss = self.dh = None

    def forward_backward(self):
        self.loss = self.layer.forward(self.h, self.t, train=True)
        self.dh = self.layer.backward()

    def update(self):
        items = [(f"out.{name}", p, self.layer.grads.get(name))
                 for name, p in self.layer.params.items()]
        self.optimizer.step(items)
        self.layer.zero_grads()

    def __call__(self):
        self.forward_backward()
        self.update()

    def held_bytes(self):
        arrays = list(self.layer.params.values()) + [self.h, self.t]
        for slot in self.optimizer.slots:
            arrays += list(self.optimizer.state[slot].values())
        return sum(harness.nbytes(a) for a in arrays)


def _first_step_values(step, comm, backend, cfg, rows):
    """Loss, dh of every row, and the weight gradient of the global label `rows` (host
    float64; every rank gets them)."""
    step.forward_backward()
    layer = step.layer
    start = getattr(layer, "label_start", 0)
    stop = start + layer.params["W"].shape[0]
    dh = numpy.asarray(backend.to_host(comm.allgatherv(step.dh)), dtype=numpy.float64)
    grad = backend.to_host(layer.grads["W"])
    mine = {int(r): numpy.asarray(grad[r - start], dtype=numpy.float64).tolist()
            for r in rows if start <= r < stop}
    found = {}
    for part in comm.allgather_object(mine):
        found.update(part)
    return {"loss": float(backend.to_host(step.loss)), "dh": dh,
            "dW": numpy.array([found[int(r)] for r in rows])}


def _reference(cfg, layer, backend, H, T, rows):
    W, b = backend.to_host(layer.params["W"]), backend.to_host(layer.params["b"])
    if cfg["output"] == "softmax":
        ref = refs.softmax_sgd_step(numpy, W, b, H, T, 1.0, rows)
        return {"loss": ref["loss"], "dh": ref["dh"], "dW": -ref["W_update"]}
    return hinge_reference(W, b, H, T, rows)


def _errors(values, want):
    return {key: harness.relative_error(numpy.asarray(values[key]), numpy.asarray(want[key]))
            for key in TOLERANCES}


def rank_job(cfg):
    """One rank of a job (cfg: the configuration, N, repeats, the files): check, comm bytes,
    memory, time; rank 0 writes the job's result to cfg["result"]."""
    from engine.distributed.run import attach
    backend, comm = attach(None if cfg["ranks"] == 1 else "auto", cfg["device"], False)
    layer, optimizer, h, t, H, T = _build(cfg, comm, backend)
    step = RankStep(layer, optimizer, h, t)
    rows = harness.spread_rows(cfg["labels"], CHECK_ROWS)
    values = _first_step_values(step, comm, backend, cfg, rows)
    if comm.size == 1:
        want = _reference(cfg, layer, backend, H, T, rows)
        numpy.savez(cfg["first_step"], loss=values["loss"], dh=values["dh"], dW=values["dW"])
    else:
        with numpy.load(cfg["first_step"]) as f:
            want = {k: f[k] for k in f.files}
    errors = _errors(values, want)
    if not all(e <= TOLERANCES[k] for k, e in errors.items()):   # every rank decides alike
        if comm.rank == 0:
            with open(cfg["result"], "w") as f:
                json.dump({"ranks": None, "errors": errors, "device": backend.device}, f)
        comm.barrier()
        return 0
    step.update()
    comm.barrier()
    comm.stats.reset()
    step()
    backend.synchronize()
    counted = comm.stats.total_bytes()
    per_op = comm.stats.as_dict()
    for _ in range(max(0, cfg["warmup"] - 1)):
        step()
    meter = bm.CupyPeak(backend) if backend.device == "gpu" else (
        bm.RssPeak() if bm.rss_peak_supported()[0] else bm.TracemallocPeak())
    held = step.held_bytes()
    comm.barrier()
    with meter:
        step()
        backend.synchronize()
    times = []
    for _ in range(cfg["repeats"]):
        comm.barrier()
        t0 = time.perf_counter()
        step()
        backend.synchronize()
        times.append(time.perf_counter() - t0)
    mine = {"rank": comm.rank, "rows": int(h.shape[0]), "labels": int(layer.params["W"].shape[0]),
            "times": times, "comm_bytes": counted, "comm_ops": per_op, "resident_bytes": held,
            "step_peak_bytes": meter.peak_bytes, "peak_method": meter.method}
    ranks = comm.allgather_object(mine)
    rates = {}
    if comm.size == 1:              # the per-rank roofline (one thread), for model_ms
        step = layer = optimizer = None
        small = cfg.get("tiny", False)
        rates = {"flops_rate": bc.matmul_rate(backend, DTYPE, n=256 if small else 2048,
                                              repeats=3),
                 "copy_rate": copy_rate(backend, (8 if small else 256) << 20)}
    if comm.rank == 0:
        with open(cfg["result"], "w") as f:
            json.dump({"ranks": ranks, "errors": errors, "device": backend.device, **rates}, f)
    comm.barrier()
    return 0


# ------------------------------------------------------------------------------- launcher
def _launch(cfg, n, mpiexec, timeout=3600):
    env = dict(os.environ, **THREADS, **bm.RSS_CHILD_ENV)
    env.pop("ENGINE_DISTRIBUTED", None)
    me = [sys.executable, os.path.abspath(__file__), "--_job", json.dumps(cfg)]
    cmd = me if n == 1 else [mpiexec, "-n", str(n)] + me
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if proc.returncode != 0 or not os.path.exists(cfg["result"]):
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (status {proc.returncode}):\n"
                           + proc.stdout[-4000:])
    with open(cfg["result"]) as f:
        return json.load(f)


def _row(cfg, n, job, single_peak, rates):
    check = harness.Check(all(e <= TOLERANCES[k] for k, e in job["errors"].items()),
                          max(job["errors"].values()), job["errors"], TOLERANCES,
                          [f"{k} error {e:.2e} > {TOLERANCES[k]:g}"
                           for k, e in job["errors"].items() if not e <= TOLERANCES[k]])
    head = {"ranks": n, "output": cfg["output"], "labels": cfg["labels"], "d": cfg["d"],
            "batch": cfg["batch"], "device": job["device"]}
    if not check.ok:                    # not timed
        return {**head, "ms": None, "comm_bytes": None, "comm_formula": None,
                "peak_bytes_per_rank": None, "goal_bytes": None, "goal": None, **check.fields()}
    ranks = job["ranks"]
    per_repeat = numpy.max(numpy.array([r["times"] for r in ranks]), axis=0)
    peak = max(r["resident_bytes"] + r["step_peak_bytes"] for r in ranks)
    target_bytes = 8 if cfg["output"] == "softmax" else 4
    rank0 = ranks[0]
    formula = comm_formula(cfg["output"], n, cfg["batch"], cfg["d"], cfg["k"], rank0["rows"],
                           target_bytes)
    buffers = 3 * cfg["batch"] * cfg["d"] * DTYPE.itemsize
    if cfg["output"] == "softmax" and cfg["chunk"] < rank0["labels"]:
        buffers += (1 - 1 / n) * cfg["batch"] * cfg["chunk"] * DTYPE.itemsize
    goal_bytes = None if single_peak is None else single_peak / n + buffers
    row = {**head, "ms": float(numpy.median(per_repeat)) * 1e3,
           "ms_min": float(per_repeat.min()) * 1e3, "repeats": len(per_repeat),
           "comm_bytes": rank0["comm_bytes"], "comm_formula": formula,
           "comm_ops": rank0["comm_ops"], "peak_bytes_per_rank": peak,
           "resident_bytes": max(r["resident_bytes"] for r in ranks),
           "step_peak_bytes": max(r["step_peak_bytes"] for r in ranks),
           "peak_method": rank0["peak_method"], "labels_per_rank": [r["labels"] for r in ranks],
           "rows_per_rank": [r["rows"] for r in ranks], "goal_bytes": goal_bytes,
           "goal": None if goal_bytes is None else ("ok" if peak <= goal_bytes else "missed")}
    if rates:
        model = model_ms(cfg, max(r["labels"] for r in ranks), rates["flops_rate"],
                         rates["copy_rate"])
        row.update(flops_rate=rates["flops_rate"], copy_rate=rates["copy_rate"],
                   model_ms=model, model_ratio=row["ms"] / model)
    row.update(check.fields())
    if cfg["output"] == "softmax":
        row["chunk"] = cfg["chunk"]
    return row


def configurations(args):
    out = []
    for name in args.outputs:
        cfg = dict(FULL[name])
        if args.tiny:
            cfg.update(TINY[name])
        elif args.quick:
            cfg.update(QUICK[name])
        for key in ("d", "batch"):
            if getattr(args, key) is not None:
                cfg[key] = getattr(args, key)
        if name == "xmc" and args.labels is not None:
            cfg["labels"] = args.labels
        if name == "lm" and args.vocab is not None:
            cfg["labels"] = args.vocab
        cfg["name"] = name
        out.append(cfg)
    return out


def parse_args(argv):
    p = bc.make_parser(__doc__.split("\n")[0], default_repeats_cpu=3, default_repeats_gpu=10,
                       measures_memory=False)
    p.add_argument("--ranks", default="1,2", help="numbers of ranks, comma-separated (1 first: "
                   "the others are checked against it; default 1,2)")
    p.add_argument("--outputs", default="xmc,lm", help="xmc, lm or both (default)")
    p.add_argument("--labels", type=int, default=None, help="labels of the xmc output")
    p.add_argument("--vocab", type=int, default=None, help="words of the lm output")
    p.add_argument("--d", type=int, default=None, help="width of h")
    p.add_argument("--batch", type=int, default=None, help="the global minibatch B")
    p.add_argument("--mpiexec", default=None, help="the launcher (default: mpiexec on PATH)")
    p.add_argument("--_job", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.ranks = [int(n) for n in args.ranks.split(",")]
    args.outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
    if args.ranks[0] != 1 or any(n < 1 for n in args.ranks):
        p.error("--ranks must start with 1 (the reference of the others) and be positive")
    if set(args.outputs) - set(FULL):
        p.error(f"--outputs: choose among {sorted(FULL)}")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._job is not None:
        return rank_job(json.loads(args._job))
    _, device, device_name = bc.resolve_backend(args.device)
    bc.finish_args(args, device)
    mpiexec = args.mpiexec or shutil.which("mpiexec")
    if any(n > 1 for n in args.ranks) and mpiexec is None:
        raise SystemExit("bench_distributed: no mpiexec on PATH (pip install \".[distributed]\")")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in configurations(args):
            cfg.update(device=device, seed=args.seed, repeats=args.repeats, warmup=args.warmup,
                       tiny=bool(args.tiny),
                       first_step=os.path.join(tmp, f"{cfg['name']}-first.npz"))
            single_peak, rates = None, {}
            for n in args.ranks:
                result = os.path.join(tmp, f"{cfg['name']}-{n}.json")
                job = _launch(dict(cfg, ranks=n, result=result), n, mpiexec)
                if n == 1:
                    rates = {k: job[k] for k in ("flops_rate", "copy_rate") if k in job}
                row = _row(cfg, n, job, single_peak, rates)
                if n == 1:
                    single_peak = row["peak_bytes_per_rank"]
                rows.append(row)
                print(f"[bench] {cfg['name']} N={n}: check {row['check']} (largest error "
                      f"{row['check_error']:.1e})" + ("" if row["ms"] is None else
                      f", {row['ms']:.1f} ms, {bc.fmt_mib(row['peak_bytes_per_rank'])} MiB "
                      f"per rank"), flush=True)
    columns = [("output", lambda r: r["output"]), ("labels", lambda r: f"{r['labels']:,}"),
               ("d", lambda r: r["d"]), ("batch", lambda r: r["batch"]),
               ("ranks", lambda r: r["ranks"]), ("ms", lambda r: bc.fmt_num(r["ms"], "{:.1f}")),
               ("comm MiB", lambda r: bc.fmt_mib(r["comm_bytes"], 3)),
               ("formula MiB", lambda r: bc.fmt_mib(r["comm_formula"], 3)),
               ("peak MiB/rank", lambda r: bc.fmt_mib(r["peak_bytes_per_rank"])),
               ("goal MiB", lambda r: bc.fmt_mib(r["goal_bytes"])),
               ("goal", lambda r: r["goal"] or "-"),
               ("model ms", lambda r: bc.fmt_num(r.get("model_ms"), "{:.1f}")),
               ("check", harness.check_cell)]
    bc.print_table(f"Output layer over N ranks, {device_name}, float32, Adam, one BLAS thread per "
                   f"rank", columns, rows,
                   notes=["ms: median of the slowest rank's step; comm: bytes handed in + got "
                          "back by rank 0 per step (counted) vs the formula",
                          "goal: peak per rank <= peak(N=1) / N + the B x d buffers (3 B d s) "
                          "+ a chunked softmax's own B x chunk logits block",
                          "model ms: f B L_r d / F + (28 L_r d + 12 B L_r) / W from the N = 1 "
                          "job's matmul rate F and copy bandwidth W (one thread)"])
    if args.json:
        bc.write_json(args.json, rows)
    return harness.report_failures(rows, lambda r: f"{r['output']} N={r['ranks']}")


if __name__ == "__main__":
    sys.exit(main())
