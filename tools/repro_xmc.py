"""Reproduce Schultheis & Babbar 2023 (fixed fan-in output layers, docs/fixed-fanin.md) at the
scale this machine allows: Bibtex and Delicious, dense output vs FFI vs FFI after an intermediate
layer (P@1/3/5, PSP@k, memory, time per epoch); and the Amazon-670K memory table beside the paper's.

    python tools/repro_xmc.py --device cpu --epochs 10 --json xmc.json
    python tools/repro_xmc.py --quick                   # 1 epoch of 60 steps per run (smoke test)

Part 1, Bibtex and Delicious (Extreme Classification Repository text files, from a folder given
with --data-dir, by default a shared/data/xmc folder beside the checkout; converted with
engine.data.xmc.prepare_xmc, 10% of the training file held out as valid, unused here).
Model: sparse bag-of-words input -> SparseLinear(F, hidden) + ReLU (the stand-in for the paper's
frozen 768-d embedding) -> [intermediate dense ReLU layer] -> output, squared hinge loss, Adam
(lr 1e-3, batch 32, as in the paper). Rows:
    dense             h -> dense output layer (L x hidden weights)
    ffi               h -> FFI output, fan-in k, rewiring every 1000 steps (10% of weights)
    ffi+intermediate  h -> dense ReLU layer of --intermediate units -> FFI output, fan-in k
    most-frequent     every test point gets the k most frequent training labels (a floor)
Memory columns are measured on the trained model: output = the output layer's weights, bias and
FFI indices plus its Adam moments (bytes of the arrays the optimizer holds); model = the same for
every layer. Time = median seconds per training epoch. The paper gives no Bibtex/Delicious
figures, so there is no paper column in part 1.

Part 2, Amazon-670K shapes (670,091 labels, 768-d input, batch 32, Adam, float32): bytes of the
weights, gradients, Adam moments, FFI indices and the batch's activations of the output layer and
of the intermediate layer, computed with the layers' memory_report() (no training: the data set
cannot be downloaded here, and a dense 670k-label layer does not fit a CPU run's time), beside
the paper's measured peak GPU memory (which also holds the framework's workspace).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy

HERE = os.path.dirname(os.path.abspath(__file__))
import _path  # noqa: F401  (this checkout's engine first on sys.path)
from _bench_common import print_table, write_json  # noqa: E402


def _cols(headers):
    """print_table's (header, row -> cell) columns for rows given as lists."""
    return [(h, (lambda row, i=i: row[i])) for i, h in enumerate(headers)]

from engine import Engine  # noqa: E402
from engine.data.xmc import prepare_xmc, read_label_frequencies, read_split  # noqa: E402
from engine.models.build import build_model_for  # noqa: E402
from engine.optim import make_optimizer  # noqa: E402
from engine.outputs.xmc_metrics import inverse_propensity, metric_sums, finish_metrics  # noqa: E402

DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "xmc"))
MiB = 2.0 ** 20
GiB = 2.0 ** 30

#: the paper's Amazon-670K table (docs/fixed-fanin.md#reported-figures): (P@1, P@3, P@5, peak
#: GPU memory GiB, s/epoch)
PAPER_AMAZON = {
    "dense": (47.52, 42.26, 38.28, 13.43, 624),
    "ffi k=32": (37.09, 31.62, 27.56, 0.97, 234),
    "ffi k=32, 32k intermediate": (42.59, 37.12, 33.13, 1.45, 271),
    "ffi k=32, 100k intermediate": (44.71, 39.30, 35.29, 2.38, 334),
    "ffi k=64, 100k intermediate": (45.65, 40.33, 36.39, 2.91, 435),
}


def find_files(data_dir, name):
    """{data_dir}/{name}/{name}_{train,test}.txt[.gz]."""
    found = []
    for split in ("train", "test"):
        for ext in (".txt.gz", ".txt"):
            path = os.path.join(data_dir, name, f"{name}_{split}{ext}")
            if os.path.exists(path):
                found.append(path)
                break
        else:
            raise FileNotFoundError(f"no {name}_{split}.txt[.gz] in {os.path.join(data_dir, name)}")
    return found


def layer_bytes(engine, layers):
    """(params + FFI indices bytes, optimizer state bytes) of `layers` of the engine's model."""
    model, opt = engine.model, engine.optimizer
    wanted = {id(layer) for layer in layers}
    params = indices = 0
    keys = set()
    for key, layer, name in model.param_items():
        if id(layer) in wanted:
            params += int(layer.params[name].nbytes)
            keys.add(key)
    for layer in layers:
        inner = getattr(layer, "inner", layer)
        if getattr(inner, "indices", None) is not None:
            indices += int(inner.indices.nbytes)
    state = sum(int(buf.nbytes) for slot in opt.state.values() for key, buf in slot.items()
                if key in keys)
    return params + indices, state


def run_config(path, label, args, hidden, intermediate, output_kwargs):
    from engine.data.registry import describe
    info = describe(path)                       # sizes and training label counts (PSP@k)
    model = build_model_for(info, {"hidden": [hidden], "intermediate": intermediate,
                                   "output": "squared-hinge", "output_kwargs": output_kwargs})
    engine = Engine(model, make_optimizer("adam", lr=args.lr), device=args.device, seed=args.seed,
                    dtype=args.dtype, verbose=False)
    history = engine.train(path, epochs=args.epochs, batch_size=args.batch_size, valid=None,
                           run_dir=None, progress=False,
                           max_steps_per_epoch=args.max_steps_per_epoch)
    test = engine.evaluate(path, split="test", batch_size=512)
    out_mem = layer_bytes(engine, [model.output])
    all_mem = layer_bytes(engine, model.layers)
    return {"config": label, "epochs": len(history), "device": engine.device,
            "seconds_per_epoch": statistics.median(h["seconds"] for h in history),
            "output_param_bytes": out_mem[0], "output_optimizer_bytes": out_mem[1],
            "model_param_bytes": all_mem[0], "model_optimizer_bytes": all_mem[1],
            "train_loss": history[-1]["train_loss"],
            **{k: test[k] for k in test if "@" in k}, "test_loss": test["loss"]}


def most_frequent_row(path):
    counts, n_train = read_label_frequencies(path)
    _, yp, yi = read_split(path, "test")
    rows = yp.shape[0] - 1
    top = numpy.argsort(-counts, kind="stable")[:5]
    y = numpy.full((rows, max(1, int(numpy.diff(yp).max()))), -1, dtype=numpy.int64)
    for r in range(rows):
        labs = yi[yp[r]:yp[r + 1]]
        y[r, :labs.shape[0]] = labs
    sums = metric_sums(numpy, numpy.broadcast_to(top, (rows, 5)), y,
                       inverse_propensity(counts, n_train))
    m = finish_metrics({"count": float(rows), **{k: float(v) for k, v in sums.items()}})
    return {"config": "most-frequent", **m}


def xmc_part(args):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            train, test = find_files(args.data_dir, name)
            path = os.path.join(tmp, f"{name}.h5")
            prepare_xmc(train, test, path, valid_fraction=0.1, seed=args.seed)
            ffi = {"weights": "ffi", "fan_in": args.fan_in, "rewire_every": args.rewire_every,
                   "rewire_fraction": 0.1}
            configs = [("dense", None, {}), (f"ffi k={args.fan_in}", None, ffi),
                       (f"ffi k={args.fan_in} + {args.intermediate} intermediate",
                        args.intermediate, ffi)]
            for label, inter, kw in configs:
                t0 = time.perf_counter()
                row = run_config(path, label, args, args.hidden, inter, kw)
                row.update(dataset=name, wall_seconds=time.perf_counter() - t0)
                rows.append(row)
                print(f"[repro_xmc] {name} {label}: P@1 {row['p@1']:.4f} P@3 {row['p@3']:.4f} "
                      f"P@5 {row['p@5']:.4f}, {row['seconds_per_epoch']:.1f} s/epoch", flush=True)
            rows.append({"dataset": name, **most_frequent_row(path)})
    return rows


def amazon_part(batch=32):
    """Computed training-state bytes of the paper's Amazon-670K configurations."""
    from engine.layers.fixed_fanin import FixedFanInLinear
    from engine.outputs import make_output
    L, d = 670_091, 768
    rows = []
    configs = [("dense", None, None), ("ffi k=32", None, 32), ("ffi k=32, 32k intermediate", 32768, 32),
               ("ffi k=32, 100k intermediate", 100_000, 32), ("ffi k=64, 100k intermediate", 100_000, 64)]
    for label, inter, k in configs:
        width = inter or d
        if k is None:
            out = make_output("squared-hinge", width, L).memory_report("adam", batch=batch)
        else:
            out = FixedFanInLinear(width, L, k).memory_report("adam", batch=batch)
        inter_bytes = 0
        if inter:   # dense d x inter + bias: weights, grads, 2 Adam moments, activations (B inter x 2)
            inter_bytes = (d * inter + inter) * 4 * 4 + batch * inter * 2 * 4
        p1, p3, p5, mem, sec = PAPER_AMAZON[label]
        rows.append({"dataset": "amazon-670k (computed)", "config": label, "labels": L, "input": d,
                     "intermediate": inter, "fan_in": k, "batch": batch,
                     "output_bytes": out["total"], "intermediate_bytes": inter_bytes,
                     "total_bytes": out["total"] + inter_bytes,
                     "output_weight_bytes": out["weights"] + out.get("indices", 0),
                     "paper_peak_gib": mem, "paper_p@1": p1, "paper_s_per_epoch": sec})
    return rows


def amazon_steps(path, steps, args):
    """Measured training steps on a synthetic Amazon-670K-shape file (engine prepare
    xmc-synthetic --amazon-670k): sparse input -> 768 ReLU -> 32k ReLU -> FFI k = 32, Adam."""
    import resource
    from engine.data.registry import describe
    from engine.data.xmc import make_loader
    info = describe(path)
    model = build_model_for(info, {"hidden": [768], "intermediate": 32768, "output": "squared-hinge",
                                   "output_kwargs": {"weights": "ffi", "fan_in": 32,
                                                     "rewire_every": 1000}})
    engine = Engine(model, make_optimizer("adam", lr=args.lr), device=args.device, seed=args.seed,
                    verbose=False)
    loader = make_loader(path, "train", 32, True, args.seed, engine.backend)
    times, batches = [], loader.iter_from(0)
    for _ in range(steps + 2):                      # the first two steps warm up (JIT, caches)
        x, y = next(batches)
        t0 = time.perf_counter()
        float(engine.train_step(x, y))              # (synchronises the device)
        times.append(time.perf_counter() - t0)
    loader.close()
    s = statistics.median(times[2:])
    return {"dataset": "amazon-670k (synthetic, measured)", "config": "ffi k=32, 32k intermediate",
            "device": engine.device, "steps": steps, "seconds_per_step": s,
            "seconds_per_epoch_estimate": s * -(-info.num_train // 32),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=DEFAULT_DATA,
                   help="folder with NAME/NAME_train.txt[.gz] and NAME/NAME_test.txt[.gz]")
    p.add_argument("--datasets", nargs="*", default=["bibtex", "delicious"],
                   help="names under --data-dir (none: only the Amazon-670K part)")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=512, help="width of the sparse input layer")
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--fan-in", type=int, default=32)
    p.add_argument("--rewire-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float64: the CPU reference numbers the golden tests pin")
    p.add_argument("--amazon-data", default=None,
                   help="a synthetic Amazon-670K-shape file (engine prepare xmc-synthetic "
                        "--amazon-670k): also time --amazon-steps training steps on it")
    p.add_argument("--amazon-steps", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="1 epoch of 60 steps per run (smoke test)")
    p.add_argument("--json", default=None, help="write every row as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.max_steps_per_epoch = 1, args.max_steps_per_epoch or 60
    rows = xmc_part(args) if args.datasets else []
    amazon = amazon_part()
    measured = amazon_steps(args.amazon_data, args.amazon_steps, args) if args.amazon_data else None
    if measured:
        print(f"[repro_xmc] synthetic Amazon-670K, {measured['config']}, batch 32, {measured['device']}: "
              f"{measured['seconds_per_step']:.2f} s/step (median of {measured['steps']}), "
              f"about {measured['seconds_per_epoch_estimate'] / 3600:.1f} h per epoch; peak RSS "
              f"{measured['peak_rss_bytes'] / GiB:.2f} GiB")

    cols = ["dataset", "config", "P@1", "P@3", "P@5", "PSP@5", "nDCG@5", "out MiB", "model MiB",
            "s/epoch"]
    table = []
    for r in rows:
        pct = lambda k: f"{100 * r[k]:.2f}" if k in r else "-"   # noqa: E731
        mem = lambda a, b: (f"{(r[a] + r[b]) / MiB:.2f}" if a in r else "-")   # noqa: E731
        table.append([r["dataset"], r["config"], pct("p@1"), pct("p@3"), pct("p@5"), pct("psp@5"),
                      pct("ndcg@5"), mem("output_param_bytes", "output_optimizer_bytes"),
                      mem("model_param_bytes", "model_optimizer_bytes"),
                      f"{r['seconds_per_epoch']:.1f}" if "seconds_per_epoch" in r else "-"])
    if rows:
        print_table(f"XMC data sets, {rows[0]['device'] if 'device' in rows[0] else args.device}, "
                    f"{args.epochs} epoch(s), batch {args.batch_size}, Adam lr {args.lr}, hidden "
                    f"{args.hidden}", _cols(cols), table,
                    notes=["P@k, PSP@k (normalised by the best achievable), nDCG@k in %; MiB = params "
                           "(+FFI indices) + Adam moments, measured on the trained model",
                           "the paper gives no Bibtex/Delicious figures; 'most-frequent' is a floor"])
    cols2 = ["config", "ours: output GiB", "ours: + intermediate GiB", "paper: peak GiB",
             "paper P@1", "paper s/epoch"]
    print_table("Amazon-670K shape (670,091 labels, 768-d input, batch 32, Adam, float32): "
                "computed training state vs the paper's measured peak", _cols(cols2),
                [[r["config"], f"{r['output_bytes'] / GiB:.2f}", f"{r['total_bytes'] / GiB:.2f}",
                  f"{r['paper_peak_gib']:.2f}", f"{r['paper_p@1']:.2f}",
                  f"{r['paper_s_per_epoch']}"] for r in amazon],
                notes=["ours = weights + grads + 2 Adam moments + FFI indices + batch activations "
                       "(memory_report); the paper's is the whole process's peak GPU memory"])
    if args.json:
        write_json(args.json, rows + amazon + ([measured] if measured else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
