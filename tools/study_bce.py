"""Why BCE learns slower than the squared hinge with Adam on many labels: ablations, one factor
at a time, from the engine's BCE and from a plain PyTorch model.

    OMP_NUM_THREADS=1 python tools/study_bce.py tools/experiments/bce.toml --data-dir DIR
    python tools/study_bce.py tools/experiments/bce.toml --data-dir DIR --only synth24k:bce-prior
    python tools/study_bce.py tools/experiments/bce.toml --data-dir DIR --quick   # smoke test

The experiment file (tools/experiments/bce.toml) names the data sets (engine-xmc files under
--data-dir, made by the `prepare` commands it lists; optionally their first max_train /
max_test rows), the training settings and the runs, each a set of factors (see the file):
kind (engine / torch), loss, init, output bias, Adam mode of the sparse input layer, loss
normalisation. Every run trains the same model, sparse input -> hidden ReLU -> labels, with Adam,
on the same minibatches: one permutation per epoch drawn from the seed (shared by the engine and
PyTorch runs), batches of `batch_size` rows, the last one partial. After every epoch: P@1/3/5
on the test rows (top-5 from the scores, the engine's metric code for both kinds) and the mean
training loss, reported as the mean over examples of the sum over labels whatever the run's
normalisation.

The PyTorch model: x (B, F) a sparse COO tensor, h = relu(x W1^T + b1) (torch.sparse.mm),
s = h W2^T + b2, BCEWithLogitsLoss(reduction="sum") / B ("sum") or the default mean over all
B x L entries ("mean"), torch.optim.Adam (dense: every parameter moves every step, the input
layer's untouched rows included). init "engine" copies the engine's initial parameters, so the
two kinds then differ only by the Adam mode of the input layer and the arithmetic's order.

Results: rows appended to the JSON (default docs/results/<study name>.json, each with the
command that produced it) as they finish; a rerun skips the (data set, run) pairs already there
unless --force. The Markdown table (same name, .md): P@1 after epoch 1 and 2 per run and data
set, and the most-frequent-labels floor.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")          # a fair, single-threaded comparison by default

import numpy  # noqa: E402

import _path  # noqa: F401,E402  (this checkout's engine first on sys.path)

FACTORS = {"kind": ("engine", "torch"), "loss": ("bce", "squared-hinge"),
           "init": ("engine", "torch"), "bias": ("zero", "prior", "init"),
           "adam": ("lazy", "dense"), "normalise": ("sum", "mean")}
KS = (1, 3, 5)


def fail(message):
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"study_bce: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_experiment(path):
    import tomllib
    try:
        with open(path, "rb") as fh:
            exp = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        fail(f"{path}: cannot read the experiment ({exc})")
    for key in ("study", "train", "defaults", "dataset", "run"):
        if key not in exp:
            fail(f"{path}: missing [{key}]")
    for run in exp["run"]:
        f = {**exp["defaults"], **run}
        for key, allowed in FACTORS.items():
            if f.get(key) not in allowed:
                fail(f"{path}: run {run.get('name')!r}: {key} must be one of "
                     f"{', '.join(allowed)}, got {f.get(key)!r}")
        if f["kind"] == "torch" and (f["loss"] != "bce" or run.get("adam", "dense") != "dense"):
            fail(f"{path}: run {run['name']!r}: torch runs are BCE with dense Adam")
    return exp


# ------------------------------------------------------------------------------ data
class Split:
    """x (N, F) scipy CSR float32 and y (N, K) int32 padded with -1, the first `limit` rows."""

    def __init__(self, path, split, limit=None):
        from engine.data.xmc import read_split
        x, yp, yi = read_split(path, split)
        n = x.shape[0] if not limit else min(int(limit), x.shape[0])
        self.x = x[:n]
        lens = numpy.diff(yp[:n + 1])
        K = max(1, int(lens.max()))
        self.y = numpy.full((n, K), -1, dtype=numpy.int32)
        col = numpy.arange(K)
        mask = col[None, :] < lens[:, None]
        self.y[mask] = yi[(yp[:n, None] + col[None, :])[mask]]

    def __len__(self):
        return self.x.shape[0]


def epoch_batches(n, batch, seed, epoch):
    order = numpy.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch] for i in range(0, n, batch)]


def metrics(ids, y, inv_prop):
    from engine.outputs.xmc_metrics import finish_metrics, metric_sums
    sums = metric_sums(numpy, ids, y, inv_prop, KS)
    return finish_metrics({"count": float(y.shape[0]), **{k: float(v) for k, v in sums.items()}})


def most_frequent(counts, test, inv_prop):
    top = numpy.argsort(-counts, kind="stable")[:max(KS)]
    return metrics(numpy.broadcast_to(top, (len(test), top.shape[0])), test.y, inv_prop)


# ------------------------------------------------------------------------------ initial values
def torch_rule(rng, fan_in, shape):
    """PyTorch's nn.Linear default: uniform in +-1/sqrt(fan_in) (weights: kaiming_uniform with
    a = sqrt(5), which is the same bound)."""
    a = 1.0 / numpy.sqrt(fan_in)
    return rng.uniform(-a, a, size=shape)


def prior_bias(loss, counts, num_train):
    """The engine's bias_init="prior" values for this loss (engine/outputs/multilabel.py)."""
    from engine.outputs import make_output
    out = make_output(loss, 1, counts.shape[0], label_counts=counts, num_train=num_train)
    return out.prior_bias()


# ------------------------------------------------------------------------------ engine runs
def build_engine(f, info, train_cfg):
    from engine import Engine
    from engine.models.build import build_model_for
    from engine.optim import make_optimizer
    model = build_model_for(info, {"hidden": [train_cfg["hidden"]], "output": f["loss"],
                                   "output_kwargs": {"bias_init": "zero"}})
    opt = make_optimizer("adam", lr=train_cfg["lr"], sparse_mode=f["adam"])
    return Engine(model, opt, device="cpu", seed=train_cfg["seed"], dtype=train_cfg["dtype"],
                  verbose=False)


def engine_initial(engine):
    """[(layer, {name: host array})] of the engine model's layers with parameters."""
    return [(layer, {k: engine.backend.to_host(v) for k, v in layer.params.items()})
            for layer in engine.model.layers if layer.params]


def set_initial(engine, f, info, seed):
    """Apply the run's init and bias factors to a freshly built engine model."""
    be, dtype = engine.backend, engine.dtype
    model = engine.model
    sparse, out = model.layers[0], model.output
    if f["init"] == "torch":
        rng = numpy.random.default_rng([seed, 99])
        I, O = sparse.in_features, sparse.out_features
        sparse.params["W"] = be.asarray(torch_rule(rng, I, (I, O)).astype(dtype))   # (I, O)
        sparse.params["b"] = be.asarray(torch_rule(rng, I, (O,)).astype(dtype))
        L, d = out.num_classes, out.in_features
        out.params["W"] = be.asarray(torch_rule(rng, d, (L, d)).astype(dtype))
        out.params["b"] = be.asarray(torch_rule(rng, d, (L,)).astype(dtype))
    if f["bias"] == "zero":
        out.params["b"] = be.xp.zeros_like(out.params["b"])
    elif f["bias"] == "prior":
        out.params["b"] = be.asarray(prior_bias(f["loss"], info.label_counts,
                                                info.num_train).astype(dtype))


def scale_loss(out, factor):
    """The output's loss and gradient times `factor` (normalise = "mean": 1 / L)."""
    inner = out._loss_grad

    def scaled(s, y, want_grad):
        loss, grad = inner(s, y, want_grad)
        if grad is not None:
            grad *= grad.dtype.type(factor)
        return loss * loss.dtype.type(factor), grad
    out._loss_grad = scaled


def run_engine(f, info, train, test, cfg, inv_prop, epochs, max_steps):
    engine = build_engine(f, info, cfg)
    set_initial(engine, f, info, cfg["seed"])
    L = info.num_classes
    if f["normalise"] == "mean":
        scale_loss(engine.model.output, 1.0 / L)
    be = engine.backend
    unscale = L if f["normalise"] == "mean" else 1.0
    history = []
    for epoch in range(epochs):
        t0, total, n = time.perf_counter(), 0.0, 0
        for i, rows in enumerate(epoch_batches(len(train), cfg["batch_size"], cfg["seed"], epoch)):
            if max_steps and i >= max_steps:
                break
            x, y = be.to_device_csr(train.x[rows]), be.asarray(train.y[rows])
            total += float(engine.train_step(x, y)) * unscale * rows.shape[0]
            n += rows.shape[0]
        seconds = time.perf_counter() - t0
        ids = []
        for s in range(0, len(test), cfg["eval_batch"]):
            h = engine.model.hidden_forward(be.to_device_csr(test.x[s:s + cfg["eval_batch"]]),
                                            False)
            ids.append(be.to_host(engine.model.output.predict_topk(h, max(KS))[0]))
        bias = be.to_host(engine.model.output.params["b"])
        history.append({"epoch": epoch + 1, "train_loss": total / n, "seconds": seconds,
                        "mean_output_bias": float(bias.mean()),
                        **metrics(numpy.concatenate(ids), test.y, inv_prop)})
        print(f"    epoch {epoch + 1}: P@1 {history[-1]['p@1']:.4f} loss "
              f"{history[-1]['train_loss']:.3f} ({seconds:.0f} s)", flush=True)
    return history


# ------------------------------------------------------------------------------ torch runs
def to_torch_csr(torch, x):
    coo = x.tocoo()
    idx = numpy.vstack([coo.row, coo.col]).astype(numpy.int64)
    return torch.sparse_coo_tensor(torch.from_numpy(idx), torch.from_numpy(coo.data),
                                   size=coo.shape, check_invariants=False).coalesce()


def run_torch(f, info, train, test, cfg, inv_prop, epochs, max_steps):
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(cfg["seed"])
    tdtype = {"float32": torch.float32, "float64": torch.float64}[cfg["dtype"]]
    F, L, d = info.num_features, info.num_classes, cfg["hidden"]
    lin1, lin2 = torch.nn.Linear(F, d, dtype=tdtype), torch.nn.Linear(d, L, dtype=tdtype)
    if f["init"] == "engine":                     # the engine's draw, copied
        engine = build_engine({**f, "loss": "bce", "adam": "lazy"}, info, cfg)
        (sp, p1), (_, p2) = engine_initial(engine)[0], engine_initial(engine)[-1]
        with torch.no_grad():
            lin1.weight.copy_(torch.from_numpy(p1["W"].T.copy()))     # engine W (I, O)
            lin1.bias.copy_(torch.from_numpy(p1["b"]))
            lin2.weight.copy_(torch.from_numpy(p2["W"]))
            lin2.bias.copy_(torch.from_numpy(p2["b"]))
        del engine
    if f["bias"] != "init":
        value = (numpy.zeros(L) if f["bias"] == "zero"
                 else prior_bias("bce", info.label_counts, info.num_train))
        with torch.no_grad():
            lin2.bias.copy_(torch.from_numpy(value))
    # the input layer's weight held as (F, d), so that x W1 is one sparse x dense product
    W1 = torch.nn.Parameter(lin1.weight.detach().t().contiguous())
    b1 = lin1.bias
    del lin1
    params = [W1, b1] + list(lin2.parameters())
    # fused: the same Adam arithmetic in one kernel (the default foreach path is ~5x slower on
    # one CPU thread at these sizes)
    opt = torch.optim.Adam(params, lr=cfg["lr"], fused=True)
    bce = torch.nn.BCEWithLogitsLoss(reduction="sum")

    def scores(xs):
        x = to_torch_csr(torch, xs).to(tdtype)
        h = torch.relu(torch.sparse.mm(x, W1) + b1)
        return lin2(h)

    def dense_targets(y):
        t = torch.zeros((y.shape[0], L), dtype=tdtype)
        r, c = numpy.nonzero(y >= 0)
        t[torch.from_numpy(r), torch.from_numpy(y[r, c].astype(numpy.int64))] = 1.0
        return t

    history = []
    for epoch in range(epochs):
        t0, total, n = time.perf_counter(), 0.0, 0
        for i, rows in enumerate(epoch_batches(len(train), cfg["batch_size"], cfg["seed"], epoch)):
            if max_steps and i >= max_steps:
                break
            s = scores(train.x[rows])
            summed = bce(s, dense_targets(train.y[rows]))
            loss = summed / rows.shape[0] if f["normalise"] == "sum" else summed / s.numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(summed.detach())
            n += rows.shape[0]
        seconds = time.perf_counter() - t0
        ids = []
        with torch.no_grad():
            for st in range(0, len(test), cfg["eval_batch"]):
                ids.append(torch.topk(scores(test.x[st:st + cfg["eval_batch"]]), max(KS),
                                      dim=1).indices.numpy())
        history.append({"epoch": epoch + 1, "train_loss": total / n, "seconds": seconds,
                        "mean_output_bias": float(lin2.bias.detach().mean()),
                        **metrics(numpy.concatenate(ids), test.y, inv_prop)})
        print(f"    epoch {epoch + 1}: P@1 {history[-1]['p@1']:.4f} loss "
              f"{history[-1]['train_loss']:.3f} ({seconds:.0f} s)", flush=True)
    return history


# ------------------------------------------------------------------------------ report
def write_markdown(exp, result, path):
    rows, floors = result["rows"], result["most_frequent"]
    datasets = [d["name"] for d in exp["dataset"] if d["name"] in floors]
    lines = [f"# {exp['study']['name']}", "", exp["study"]["description"], "",
             "P@1 on the test split after epoch 1 / epoch 2 (fractions). Commands: "
             + "; ".join(sorted({f"`{r['command']}`" for r in rows})), "",
             "| run | what changes | " + " | ".join(datasets) + " |",
             "|---|---|" + "---|" * len(datasets)]
    sizes = {d: result["datasets"][d] for d in datasets}
    lines.insert(4, "Data (train rows used / test rows / labels / features): " + "; ".join(
        f"{d} {s['train']} / {s['test']} / {s['labels']} / {s['features']}"
        for d, s in sizes.items()) + ".")
    lines.insert(5, "")
    by = {(r["dataset"], r["run"]): r for r in rows}
    for run in exp["run"]:
        cells = []
        for d in datasets:
            r = by.get((d, run["name"]))
            cells.append("-" if r is None else
                         " / ".join(f"{h['p@1']:.3f}" for h in r["history"]))
        if any(c != "-" for c in cells):
            lines.append(f"| {run['name']} | {run.get('note', '')} | " + " | ".join(cells) + " |")
    lines.append("| most-frequent | the same 5 most frequent labels for every point | "
                 + " | ".join(f"{floors[d]['p@1']:.3f}" for d in datasets) + " |")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("experiment", help="TOML file (tools/experiments/bce.toml)")
    p.add_argument("--data-dir", default=".", help="folder with the experiment's data files")
    p.add_argument("--only", nargs="*", default=None,
                   help="DATASET, RUN or DATASET:RUN entries to run (default: all)")
    p.add_argument("--force", action="store_true", help="rerun pairs already in the JSON")
    p.add_argument("--json", default=None, help="results (default docs/results/<name>.json)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 epoch of 5 steps per run, results not saved")
    args = p.parse_args(argv)
    exp = load_experiment(args.experiment)
    cfg = exp["train"]
    out_json = args.json or os.path.join("docs", "results", exp["study"]["name"] + ".json")
    command = "python tools/study_bce.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"study": exp["study"], "train": cfg, "defaults": exp["defaults"], "rows": [],
              "most_frequent": {}, "datasets": {}}
    if os.path.exists(out_json) and not args.quick:
        with open(out_json) as fh:
            result.update({k: v for k, v in json.load(fh).items()
                           if k in ("rows", "most_frequent", "datasets")})
    done = {(r["dataset"], r["run"]) for r in result["rows"]}
    plan = []                                   # (data set, its path, the runs to do there)
    for ds in exp["dataset"]:
        path = os.path.join(args.data_dir, ds["file"])
        wanted = [r for r in exp["run"] if r["name"] in ds.get("runs", [r["name"]])
                  and (args.only is None or any(o in (ds["name"], r["name"],
                                                      f"{ds['name']}:{r['name']}")
                                                for o in args.only))]
        wanted = [r for r in wanted if args.force or args.quick
                  or (ds["name"], r["name"]) not in done]
        if wanted:
            if not os.path.exists(path):      # checked before anything runs
                fail(f"{path} not found (made by one of [study].prepare in {args.experiment})")
            plan.append((ds, path, wanted))
    for ds, path, wanted in plan:
        from engine.data.registry import describe
        from engine.outputs.xmc_metrics import inverse_propensity
        info = describe(path)
        train = Split(path, "train", ds.get("max_train"))
        test = Split(path, "test", ds.get("max_test"))
        inv_prop = inverse_propensity(info.label_counts, info.num_train)
        result["most_frequent"][ds["name"]] = most_frequent(info.label_counts, test, inv_prop)
        result["datasets"][ds["name"]] = {"file": ds["file"], "train": len(train),
                                          "test": len(test), "labels": info.num_classes,
                                          "features": info.num_features,
                                          "labels_per_point": float((train.y >= 0).sum()
                                                                    / len(train))}
        for run in wanted:
            f = {**exp["defaults"], **{k: v for k, v in run.items() if k in FACTORS}}
            if f["kind"] == "torch":
                f["adam"] = "dense"                      # torch.optim.Adam: every row moves
            print(f"[study_bce] {ds['name']} {run['name']}: {f}", flush=True)
            runner = run_torch if f["kind"] == "torch" else run_engine
            t0 = time.perf_counter()
            history = runner(f, info, train, test, cfg, inv_prop,
                             1 if args.quick else cfg["epochs"], 5 if args.quick else None)
            row = {"dataset": ds["name"], "run": run["name"], "factors": f,
                   "note": run.get("note", ""), "history": history,
                   "wall_seconds": time.perf_counter() - t0, "command": command}
            result["rows"] = [r for r in result["rows"]
                              if (r["dataset"], r["run"]) != (ds["name"], run["name"])] + [row]
            if not args.quick:
                os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
                with open(out_json + ".tmp", "w") as fh:       # whole files only
                    json.dump(result, fh, indent=1, default=float)
                write_markdown(exp, result, os.path.splitext(out_json)[0] + ".md.tmp")
                os.replace(out_json + ".tmp", out_json)
                os.replace(os.path.splitext(out_json)[0] + ".md.tmp",
                           os.path.splitext(out_json)[0] + ".md")
    if not args.quick and os.path.exists(os.path.splitext(out_json)[0] + ".md"):
        print(open(os.path.splitext(out_json)[0] + ".md").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
