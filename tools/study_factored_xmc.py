"""The exact factored output as an extreme multi-label output, beside the dense and FFI outputs.

    OPENBLAS_NUM_THREADS=1 python tools/study_factored_xmc.py tools/experiments/factored_xmc.toml \
        --data-dir DATA/xmc --json docs/results/factored_xmc.json \
        --md docs/results/factored_xmc.md
    python tools/study_factored_xmc.py tools/experiments/factored_xmc.toml --quick   # smoke test

The experiment file (tools/experiments/factored_xmc.toml) names the data sets, the shared model
(sparse input -> hidden ReLU layer(s), Adam) and the methods (an output layer and its options
each). For every data set this script:

1. prepares the data (`engine prepare xmc` on --data-dir/NAME/NAME_{train,test}.txt.gz, or a
   synthetic set of a published shape, engine/data/xmc_synthetic.py) into --work-dir, once;
2. trains each method for the set's epochs and evaluates the test split: P@1/3/5, nDCG@5,
   PSP@5 (and the most-frequent-labels ranking as a floor), seconds per epoch;
3. times one training step of each output layer alone (forward, backward, its update: Adam for
   the dense and FFI weights, the exact SGD step for the factored layer) on a real minibatch of
   training labels and a fixed h (B, d), the methods interleaved (two steps of each per round,
   the second timed; `timing_repeats` rounds; the machine is shared, so medians and ratios to
   the squared hinge are what count), beside a floor: the step's matrix-product flops over this machine's
   measured float32 GEMM rate, plus the bytes Adam must stream over the measured copy
   bandwidth;
4. measures the output layer's memory: held = its parameters (+ FFI indices) and optimizer
   moments after a step, plus the peak of the bytes a step allocates on top (tracemalloc: the
   gradients, scores, temporaries), beside the layer's `memory_report` (computed).

At the Amazon-670K shape the two dense outputs (670,091 x d weights) share one weight array and
one Adam state for steps 3-4 (their step costs do not depend on the values), so that the study
needs about 6.5 GB rather than 13.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import numpy

import _path  # noqa: F401  (this checkout's engine first on sys.path)
from _bench_common import Timing, jsonable, matmul_rate, write_json  # noqa: E402
from _bench_memory import TracemallocPeak  # noqa: E402

from engine import Engine  # noqa: E402
from engine.backend import get_backend  # noqa: E402
from engine.data.registry import describe  # noqa: E402
from engine.data.xmc import prepare_xmc, read_split  # noqa: E402
from engine.data.xmc_synthetic import AMAZON_670K, write_synthetic_xmc  # noqa: E402
from engine.models.build import build_model_for  # noqa: E402
from engine.optim import make_optimizer  # noqa: E402
from engine.outputs import make_output  # noqa: E402

MiB = 2.0 ** 20
HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------- experiment
def load_experiment(path):
    import tomllib
    with open(path, "rb") as fh:
        exp = tomllib.load(fh)
    for key in ("study", "model", "dataset", "method"):
        if key not in exp:
            raise SystemExit(f"{path}: missing [{key}]")
    return exp


def methods_for(exp, ds):
    return [m for m in exp["method"] if ds["name"] in m.get("datasets", [ds["name"]])]


def prepare(ds, data_dir, work_dir, seed):
    """The HDF5 file of a data set (made once in work_dir)."""
    out = os.path.join(work_dir, f"{ds['name']}.h5")
    if os.path.exists(out):
        return out
    if "synthetic" in ds:
        shape = {**AMAZON_670K, **ds["synthetic"]}
        tr, te = out + ".train.txt.gz", out + ".test.txt.gz"
        write_synthetic_xmc(tr, te, shape["num_train"], shape["num_test"], shape["num_features"],
                            shape["num_labels"], labels_per_point=shape["labels_per_point"],
                            features_per_point=shape["features_per_point"],
                            label_exponent=shape["label_exponent"], seed=seed)
    else:
        tr, te = (os.path.join(data_dir, ds["name"], f"{ds['name']}_{s}.txt.gz")
                  for s in ("train", "test"))
    prepare_xmc(tr, te, out, valid_fraction=0.1, seed=seed)
    if "synthetic" in ds:
        os.unlink(tr)
        os.unlink(te)
    return out


def label_batch(path, B, split="train"):
    """The first B examples' labels (B, K) int64 padded with -1."""
    _, indptr, labels = read_split(path, split)
    B = min(B, indptr.shape[0] - 1)
    K = int(numpy.diff(indptr[:B + 1]).max())
    y = numpy.full((B, max(K, 1)), -1, dtype=numpy.int64)
    for r in range(B):
        y[r, :indptr[r + 1] - indptr[r]] = labels[indptr[r]:indptr[r + 1]]
    return y


# ---------------------------------------------------------------------------- training
def train_method(path, info, exp, ds, method, device, seed, max_steps):
    model_opts = {"hidden": list(exp["model"]["hidden"]),
                  "activation": method.get("activation", exp["model"]["activation"]),
                  "output": method["output"], "output_kwargs": dict(method.get("output_kwargs", {}))}
    model = build_model_for(info, model_opts)
    engine = Engine(model, make_optimizer(exp["model"]["optimizer"], lr=exp["model"]["lr"]),
                    device=device, seed=seed, dtype="float32", verbose=False)
    t0 = time.perf_counter()
    history = engine.train(path, epochs=ds["epochs"], batch_size=ds["batch_size"], valid=None,
                           progress=False, max_steps_per_epoch=max_steps)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = engine.evaluate(path, split="test", batch_size=512)
    row = {"dataset": ds["name"], "method": method["name"], "output": method["output"],
           "activation": model_opts["activation"], "output_kwargs": model_opts["output_kwargs"],
           "epochs": len(history), "steps": engine.step, "batch_size": ds["batch_size"],
           "seconds_per_epoch": statistics.median(h["seconds"] for h in history),
           "train_seconds": train_s, "eval_seconds": time.perf_counter() - t0,
           "train_loss": history[-1]["train_loss"],
           **{k: test[k] for k in test if "@" in k}, "test_loss": test["loss"]}
    del engine, model
    gc.collect()
    return row


def train_key(exp, ds, method, seed):
    """The settings a training row depends on (its cache file name in --work-dir)."""
    import hashlib
    what = {"model": exp["model"], "method": method, "seed": seed,
            "dataset": {k: ds[k] for k in ("name", "epochs", "batch_size", "synthetic") if k in ds}}
    digest = hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
    return f"train-{ds['name']}-{method['name']}-{digest}.json"


def most_frequent(path):
    from repro_xmc import most_frequent_row
    row = most_frequent_row(path)
    row["method"] = row.pop("config")
    return row


# ---------------------------------------------------------------------------- one output step
class OutputStep:
    """One training step of an output layer alone, on a fixed h (B, d) and label batch."""

    def __init__(self, method, d, L, h, y, backend, lr, share=None):
        kw = dict(method.get("output_kwargs", {}))
        self.name, self.backend = method["name"], backend
        self.layer = make_output(method["output"], d, L, **kw)
        if share is not None:          # same weights and optimizer as another dense layer
            self.layer.inner = share.layer.inner
            self.layer.backend, self.layer.dtype = backend, numpy.dtype(numpy.float32)
            self.optimizer = share.optimizer
        else:
            self.layer.bind(backend, numpy.random.default_rng(0), numpy.float32)
            self.optimizer = make_optimizer("adam", lr=lr)
            self.optimizer.bind(backend)
        self.h, self.y, self.lr = h, y, lr
        self.shared_with = share.name if share is not None else None

    def step(self):
        out = self.layer
        if out.owns_update:
            out.prepare_update(self.lr)
        out.forward(self.h, self.y, train=True)
        out.backward()
        if out.owns_update:
            out.apply_update(self.lr)
        else:
            self.optimizer.step([(f"out.{n}", out.params[n], out.grads.get(n))
                                 for n in out.params])
        out.zero_grads()

    def held_bytes(self):
        """Parameters (+ FFI indices) and the optimizer's moments of this layer."""
        out = self.layer
        total = sum(int(p.nbytes) for p in out.params.values())
        inner = getattr(out, "inner", None)
        if getattr(inner, "indices", None) is not None:
            total += int(inner.indices.nbytes)
        if not out.owns_update:
            total += sum(int(b.nbytes) for slot in self.optimizer.state.values()
                         for key, b in slot.items() if key.startswith("out."))
        return total

    def computed(self, B, K):
        out = self.layer
        if out.owns_update:
            return out.memory_report(batch=B, dtype=numpy.float32, targets=K)
        return out.memory_report("adam", batch=B, dtype=numpy.float32)


def time_back_to_back(steps, backend, repeats, warmup):
    """{name: Timing}: `repeats` rounds; in each, every method in turn takes two steps and the
    second is timed. Interleaving spreads the machine's changing load over all methods alike;
    the untimed step before each timed one makes it a step that follows a step, as in training
    (on this shared CPU a lone step pays for waking numba's and BLAS's threads: measured 2.6 vs
    42 ms for the same dense step depending on its place in the round)."""
    for s in steps.values():
        for _ in range(warmup):
            s.step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, s in steps.items():
            s.step()
            backend.synchronize()
            t0 = time.perf_counter()
            s.step()
            backend.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: Timing(ts) for name, ts in times.items()}


def step_flops_bytes(method, B, L, d, K):
    """(matrix-product flops, bytes Adam streams) of one output-layer step."""
    kw = method.get("output_kwargs", {})
    if method["output"].startswith("factored-"):
        # ten (B, d) x (d, d) products (forward 2, backward 1, update 7), about ten B x B x d
        # ones (H H^T, h Q h^T, h R^T, GG H, the Woodbury solve's right side, ...), the target
        # rows (gather, dot, scatter: 4 B K d) and the B x B solve
        return 20.0 * B * d * d + 10.0 * B * B * d + 4.0 * B * K * d + B ** 3, 0.0
    width = kw.get("fan_in", d) if kw.get("weights") == "ffi" else d
    # scores, weight gradient, input gradient; Adam: the gradient written and read, W, m, v
    # read and written (8 passes over L x width floats)
    return 6.0 * B * L * width, 8.0 * 4 * L * width


def copy_bandwidth(nbytes=2 ** 28, repeats=3):
    a = numpy.ones(nbytes // 4, dtype=numpy.float32)
    b = numpy.empty_like(a)
    best = min(_timed(lambda: numpy.copyto(b, a)) for _ in range(repeats))
    return 2.0 * nbytes / best                        # read + write


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def output_layer_part(path, info, exp, ds, backend, rates, repeats, warmup):
    d = exp["model"]["hidden"][-1]
    L, B = info.num_classes, ds["batch_size"]
    y = label_batch(path, B)
    K = y.shape[1]
    rng = numpy.random.default_rng(0)
    h = numpy.abs(rng.standard_normal((y.shape[0], d))).astype(numpy.float32) / numpy.sqrt(d)
    h, yb = backend.asarray(h), backend.asarray(y)
    steps, dense = {}, None
    for m in methods_for(exp, ds):
        if m.get("activation", "relu") != exp["model"]["activation"]:
            continue                                   # same output layer as another row
        share = dense if (dense is not None and m["output"] in ("squared-hinge", "bce")
                          and "weights" not in m.get("output_kwargs", {})) else None
        steps[m["name"]] = OutputStep(m, d, L, h, yb, backend, exp["model"]["lr"], share)
        if share is None and m["output"] in ("squared-hinge", "bce") and \
                "weights" not in m.get("output_kwargs", {}):
            dense = steps[m["name"]]
    timings = time_back_to_back(steps, backend, repeats, warmup)
    rows = []
    base = timings["squared-hinge"].median_ms / 1e3 if "squared-hinge" in timings else None
    for name, s in steps.items():
        m = next(x for x in exp["method"] if x["name"] == name)
        with TracemallocPeak() as meter:
            s.step()
        held = s.held_bytes()
        comp = s.computed(y.shape[0], K)
        flops, nbytes = step_flops_bytes(m, y.shape[0], L, d, K)
        floor = flops / rates["gemm_flops"] + nbytes / rates["copy_bytes_per_s"]
        med = timings[name].median_ms / 1e3
        rows.append({"dataset": ds["name"], "method": name, "labels": L, "d": d,
                     "batch": int(y.shape[0]), "targets_per_row": int(K),
                     "step_ms": 1e3 * med, "step_ms_all": timings[name].times_ms,
                     "x_squared_hinge": (med / base) if base else None,
                     "floor_ms": 1e3 * floor, "x_floor": med / floor, "step_flops": flops,
                     "adam_bytes": nbytes, "measured_held_bytes": held,
                     "measured_step_peak_bytes": meter.peak_bytes,
                     "measured_bytes": held + meter.peak_bytes,
                     "computed_bytes": comp["total"], "computed": comp,
                     "shares_weights_with": s.shared_with})
    del steps, dense
    gc.collect()
    return rows


# ---------------------------------------------------------------------------- report
def markdown(result):
    lines = [f"# {result['study']}: the factored output as an XMC output", "",
             f"Command: `{result['command']}`", "", result["description"], "",
             f"Machine: {result['machine']}", "",
             "| data | method | epochs | P@1 | P@3 | P@5 | PSP@5 | s/epoch | output step ms | "
             "x hinge | floor ms | x floor | output MiB computed | output MiB measured |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    step_rows = {(r["dataset"], r["method"]): r for r in result["output_steps"]}
    names = []
    for r in result["training"] + result["output_steps"]:
        key = (r["dataset"], r["method"])
        if key not in names:
            names.append(key)
    train_rows = {(r["dataset"], r["method"]): r for r in result["training"]}
    pct = lambda r, k: f"{100 * r[k]:.2f}" if r and k in r else "-"       # noqa: E731
    for key in names:
        t, s = train_rows.get(key), step_rows.get(key)
        lines.append("| " + " | ".join([
            key[0], key[1], str(t["epochs"]) if t and "epochs" in t else "-",
            pct(t, "p@1"), pct(t, "p@3"), pct(t, "p@5"), pct(t, "psp@5"),
            f"{t['seconds_per_epoch']:.1f}" if t and "seconds_per_epoch" in t else "-",
            f"{s['step_ms']:.1f}" if s else "-",
            f"{s['x_squared_hinge']:.3f}" if s and s["x_squared_hinge"] else "-",
            f"{s['floor_ms']:.2f}" if s else "-", f"{s['x_floor']:.1f}" if s else "-",
            f"{s['computed_bytes'] / MiB:.1f}" if s else "-",
            f"{s['measured_bytes'] / MiB:.1f}" if s else "-"]) + " |")
    lines += ["", "P@k, PSP@5 in % on the test split (PSP normalised by the best achievable, "
              "pyxclib's convention); s/epoch: median training epoch of the whole model; output "
              "step: one forward + backward + update of the output layer alone (Adam for dense "
              "and FFI, the exact SGD step for factored), median of the interleaved rounds; "
              "floor: its matrix-product flops over the measured GEMM rate plus Adam's bytes "
              "over the measured copy bandwidth; output MiB: weights (+ FFI indices) + "
              "optimizer moments + the step's temporaries, computed by memory_report and "
              "measured (held arrays + tracemalloc peak of a step)."]
    cached = [r for r in result["training"] if r.get("cached")]
    if cached:
        lines += ["", f"The training rows ({len(cached)}) come from an earlier run of the same "
                  f"settings, kept in --work-dir (trained at: "
                  f"{', '.join(sorted({r.get('trained_at', '?') for r in cached}))}); the output "
                  f"steps and memory were measured by this run."]
    lines += ["", "The machine is shared (2 cores, other jobs): the output-step times of the small "
              "sets (Bibtex, Delicious: a few ms of work) are dominated by thread scheduling and "
              "vary by 10x or more between runs and places in a round; only their order of "
              "magnitude counts. At 670,091 labels the work dominates and the ratios hold."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("experiment", nargs="?",
                   default=os.path.join(HERE, "experiments", "factored_xmc.toml"))
    p.add_argument("--data-dir", default=os.path.normpath(os.path.join(HERE, "..", "..", "shared",
                                                                       "data", "xmc")))
    p.add_argument("--work-dir", help="prepared data and finished training rows (reused by a "
                   "later run with the same settings)", default=os.path.join(os.path.expanduser("~"), ".cache", "engine",
                                                      "study_factored_xmc"))
    p.add_argument("--only", nargs="*", default=None, help="data set names to run")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu")
    p.add_argument("--quick", action="store_true", help="1 epoch of 20 steps, 2 timing rounds, "
                   "small rate measurements (a smoke test)")
    p.add_argument("--retrain", action="store_true", help="train again even when --work-dir "
                   "holds a training row with the same settings")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    args = p.parse_args(argv)
    exp = load_experiment(args.experiment)
    seed = int(exp["study"].get("seed", 0))
    os.makedirs(args.work_dir, exist_ok=True)
    backend = get_backend(args.device)
    rates = {"gemm_flops": matmul_rate(backend, numpy.float32, n=512 if args.quick else 2048),
             "copy_bytes_per_s": copy_bandwidth(2 ** 24 if args.quick else 2 ** 28)}
    print(f"[study] GEMM {rates['gemm_flops'] / 1e9:.1f} GFLOP/s, copy "
          f"{rates['copy_bytes_per_s'] / 1e9:.1f} GB/s, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}", flush=True)
    training, steps = [], []
    t_start = time.perf_counter()
    for ds in exp["dataset"]:
        if args.only and ds["name"] not in args.only:
            continue
        ds = dict(ds)
        if args.quick:
            ds["epochs"] = 1
        path = prepare(ds, args.data_dir, args.work_dir, seed)
        info = describe(path)
        print(f"[study] {ds['name']}: {info.splits}, {info.num_features} features, "
              f"{info.num_classes} labels", flush=True)
        for m in methods_for(exp, ds):
            if "train" in ds and m["name"] not in ds["train"]:
                continue
            cache = os.path.join(args.work_dir, train_key(exp, ds, m, seed))
            if os.path.exists(cache) and not args.quick and not args.retrain:
                with open(cache) as f:          # trained before with the same settings
                    row = dict(json.load(f), cached=True)
            else:
                try:
                    row = train_method(path, info, exp, ds, m, args.device, seed,
                                       20 if args.quick else None)
                    row["trained_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
                    if not args.quick:
                        with open(cache + ".tmp", "w") as f:
                            json.dump(jsonable(row), f)
                        os.replace(cache + ".tmp", cache)
                except Exception as exc:       # e.g. the factored layer's learning-rate guard
                    row = {"dataset": ds["name"], "method": m["name"], "error": str(exc)}
            training.append(row)
            print(f"[study] {ds['name']} {m['name']}: " + (row.get("error") or
                  f"P@1 {row['p@1']:.4f} P@3 {row['p@3']:.4f} P@5 {row['p@5']:.4f} PSP@5 "
                  f"{row['psp@5']:.4f}, {row['seconds_per_epoch']:.1f} s/epoch"), flush=True)
        training.append({"dataset": ds["name"], **most_frequent(path)})
        reps = 2 if args.quick else int(ds.get("timing_repeats", exp["study"]["timing_repeats"]))
        rows = output_layer_part(path, info, exp, ds, backend, rates, reps,
                                 int(ds.get("timing_warmup", exp["study"].get("timing_warmup", 1))))
        for r in rows:
            print(f"[study] {ds['name']} {r['method']} output step {r['step_ms']:.1f} ms "
                  f"(floor {r['floor_ms']:.2f}), {r['measured_bytes'] / MiB:.1f} MiB measured, "
                  f"{r['computed_bytes'] / MiB:.1f} computed", flush=True)
        steps += rows
    result = {"study": exp["study"]["name"], "description": exp["study"]["description"],
              "command": "OPENBLAS_NUM_THREADS=" + os.environ.get("OPENBLAS_NUM_THREADS", "")
                         + " python tools/study_factored_xmc.py " + " ".join(sys.argv[1:]),
              "experiment": exp,
              "machine": f"{os.cpu_count()} CPU cores (shared), {backend.device}, GEMM "
                         f"{rates['gemm_flops'] / 1e9:.1f} GFLOP/s float32, copy "
                         f"{rates['copy_bytes_per_s'] / 1e9:.1f} GB/s",
              "rates": rates, "wall_seconds": time.perf_counter() - t_start,
              "training": training, "output_steps": steps}
    if args.json:
        write_json(args.json, [result])          # a list of one object, written atomically
    md = markdown(result)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
