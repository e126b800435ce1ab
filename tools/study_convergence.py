"""Train language models to convergence, one run per output layer, and compare them.

The experiment (corpus, model, optimizer, stopping rule and the runs: one output layer each, with
its options) lives in a TOML file under tools/experiments/; this script runs it and writes one
JSON of results (with the command that produced it), a Markdown table and a PNG plot of
validation perplexity against wall-clock time, one curve per run.

    python tools/study_convergence.py tools/experiments/vincent_ptb.toml --data-dir DIR
    python tools/study_convergence.py tools/experiments/adaptive_ptb.toml --data-dir DIR --only adaptive-2000
    python tools/study_convergence.py tools/experiments/vincent_ptb.toml --quick   # smoke test

Stopping: early stopping on the validation split. After every epoch the validation loss is
compared with the best so far; training stops after `patience` epochs without improvement, or
at `max_epochs`. The test split is evaluated once, with the parameters of the best epoch
(`best.h5` of the run folder). Runs resume from their checkpoint when the script is started
again (each run has its own folder under --runs-dir), so a study can be stopped and continued.

Perplexity: exact for the softmax, adaptive softmax and the spherical / Taylor softmax (their
normalisers are exact in O(d^2) per word). Squared error and the Z-loss define no likelihood;
their rows give two perplexities, both computed densely over the exported W and both marked as
such (the first also on the validation split after every epoch, the dashed curves of the plot): "normalised-outputs", p_c = max(o_c, floor) / sum_k max(o_k, floor)
(floor 1e-5: the squared-error regression estimates p(c | context) by o_c), and
"softmax-of-scores", p = softmax(o / T) with the temperature T chosen on the validation split
from a grid (the Z-loss scores are shift and scale invariant, so some T is needed).

Output-layer share: after training, 20 more steps (on a copy of the trained engine, so the
results above are untouched) with timers around the output layer's forward, backward, its own
update and the optimizer's update of its parameters, divided by the time of the whole step.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLOOR = 1e-5


def load_experiment(path):
    import tomllib
    with open(path, "rb") as fh:
        exp = tomllib.load(fh)
    for key in ("study", "model", "train", "run"):
        if key not in exp:
            raise SystemExit(f"{path}: missing [{key}] (see tools/experiments/README.md)")
    return exp


def output_bias(output, backend):
    """The output layer's bias (D,) on the device, or None: the dense layers' parameter "b", the
    factored layers' last column of W (`dense_bias`)."""
    if hasattr(output, "dense_bias"):
        b = output.dense_bias()
        return None if b is None else backend.asarray(b)
    return output.params.get("b")


def normalised_output_perplexity(engine, data, split="test", batch_size=512, chunk=4096):
    """Perplexity of p_c = max(o_c, FLOOR) / sum_k max(o_k, FLOOR) for an output with no
    likelihood (squared error, Z-loss), dense over the exported W, by vocabulary chunks."""
    model, be = engine.model, engine.backend
    xp = be.xp
    W = be.asarray(model.output.dense_weight())
    bias = output_bias(model.output, be)
    loader = engine.make_loader(data, split, batch_size, shuffle=False)
    total, count = 0.0, 0
    try:
        for x, y in loader.iter_from(0, 0):
            h = model.hidden_forward(x, False)
            z = xp.zeros(h.shape[0], dtype=numpy.float64)
            for s in range(0, W.shape[0], chunk):
                o = h @ W[s:s + chunk].T
                if bias is not None:
                    o = o + bias[s:s + chunk]
                z += xp.maximum(o, FLOOR).sum(axis=1)
            oc = (h * W[y]).sum(axis=1)
            if bias is not None:
                oc = oc + bias[y]
            total -= float((xp.log(xp.maximum(oc, FLOOR)) - xp.log(z)).sum())
            count += int(y.shape[0])
    finally:
        loader.close()
    return math.exp(total / count)


def softmax_of_scores_perplexity(engine, data, split, temperatures, batch_size=256, chunk=1024):
    """Perplexity of softmax(o / T) for each T of `temperatures` (one pass over the split):
    -> array of perplexities, one per T."""
    model, be = engine.model, engine.backend
    xp = be.xp
    W = be.asarray(model.output.dense_weight())
    bias = output_bias(model.output, be)
    inv_t = xp.asarray(1.0 / numpy.asarray(temperatures, dtype=numpy.float64))
    loader = engine.make_loader(data, split, batch_size, shuffle=False)
    total, count = xp.zeros(len(temperatures)), 0
    try:
        for x, y in loader.iter_from(0, 0):
            h = model.hidden_forward(x, False).astype(numpy.float64)
            n = h.shape[0]
            run_max = xp.full((len(temperatures), n), -numpy.inf)
            run_sum = xp.zeros((len(temperatures), n))
            for s in range(0, W.shape[0], chunk):
                o = h @ W[s:s + chunk].T.astype(numpy.float64)
                if bias is not None:
                    o = o + bias[s:s + chunk]
                z = o[None, :, :] * inv_t[:, None, None]            # (T, B, C)
                new_max = xp.maximum(run_max, z.max(axis=2))
                run_sum = run_sum * xp.exp(run_max - new_max) + xp.exp(z - new_max[:, :, None]).sum(axis=2)
                run_max = new_max
            oc = (h * W[y].astype(numpy.float64)).sum(axis=1)
            if bias is not None:
                oc = oc + bias[y]
            logp = oc[None, :] * inv_t[:, None] - run_max - xp.log(run_sum)
            total -= logp.sum(axis=1)
            count += n
    finally:
        loader.close()
    return numpy.exp(be.to_host(total) / count)


def score_temperatures(engine, data, batch_size=512, n=31):
    """A grid of temperatures around the scale of the scores: std(o) x 10^[-2, 1]."""
    model, be = engine.model, engine.backend
    W = be.asarray(model.output.dense_weight())
    loader = engine.make_loader(data, "valid", batch_size, shuffle=False)
    try:
        x, _ = next(iter(loader.iter_from(0, 0)))
        o = model.hidden_forward(x, False) @ W.T
        bias = output_bias(model.output, be)
        std = float(be.to_host((o if bias is None else o + bias).std()))
    finally:
        loader.close()
    return std * numpy.logspace(-2, 1, n)


class _Timer:
    """Accumulates the wall time spent inside wrapped callables (after a device sync)."""

    def __init__(self, backend):
        self.backend, self.seconds = backend, 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            self.backend.synchronize()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.backend.synchronize()
            self.seconds += time.perf_counter() - t0
            return out
        return timed


def output_share(engine, data, batch_size, steps=20):
    """(output-layer seconds / step seconds, step ms) over `steps` training steps on a copy."""
    eng = copy.deepcopy(engine)
    out = eng.model.output
    timer = _Timer(eng.backend)
    for name in ("forward", "backward", "prepare_update", "apply_update"):
        setattr(out, name, timer.wrap(getattr(out, name)))
    out_keys = {key for key, layer, _ in eng.model.param_items() if layer is out}
    opt = eng.optimizer
    for name in ("_update_dense", "_update_rows"):
        inner = getattr(opt, name)
        timed = timer.wrap(inner)
        setattr(opt, name, (lambda inner, timed: lambda key, *a: (timed if key in out_keys
                                                                  else inner)(key, *a))(inner, timed))
    loader = eng.make_loader(data, "train", batch_size, shuffle=True)
    total, n = 0.0, 0
    try:
        for i, (x, y) in enumerate(loader.iter_from(0, 0)):
            if i >= steps + 2:
                break
            before = timer.seconds
            eng.backend.synchronize()
            t0 = time.perf_counter()
            eng.train_step(x, y, check_finite=False)
            eng.backend.synchronize()
            if i >= 2:                       # two warm-up steps
                total += time.perf_counter() - t0
                n += 1
            else:
                timer.seconds = before
    finally:
        loader.close()
    return timer.seconds / total, 1000.0 * total / n


def build(exp, run, corpus, device):
    from engine import Engine, MLPLanguageModel
    from engine.optim import make_optimizer
    m, t = {**exp["model"], **run.get("model", {})}, exp["train"]   # a run may change the model
    out_kw = dict(run.get("output_kwargs", {}))
    if out_kw.get("cutoffs") == "auto":          # the cost model needs the word counts
        out_kw.setdefault("counts", numpy.asarray(corpus.counts))
        out_kw.setdefault("auto_batch", int(t["batch_size"]))
    model = MLPLanguageModel(corpus.vocab_size, context=m["context"], embed_dim=m["embed_dim"],
                             hidden=m["hidden"], activation=m.get("activation", "tanh"),
                             dropout=m.get("dropout", 0.0), output=run["output"],
                             output_kwargs=out_kw)
    opt_kw = dict(t.get("optimizer_kwargs", {}))
    opt_kw.update(run.get("optimizer_kwargs", {}))
    optimizer = make_optimizer(t.get("optimizer", "adam"), lr=run.get("lr", t["lr"]),
                               schedule=t.get("schedule"), **opt_kw)
    return Engine(model, optimizer, device=device, seed=t.get("seed", 0), verbose=False)


def run_one(exp, run, data, runs_dir, device, quick):
    from engine import Engine
    from engine.data.hdf5_schema import open_lm_corpus
    t = exp["train"]
    run_dir = os.path.join(runs_dir, exp["study"]["name"], run["name"])
    ckpt = os.path.join(run_dir, "checkpoint.h5")
    resumed = os.path.exists(ckpt) and not quick
    if resumed:
        engine = Engine.from_checkpoint(ckpt, device=device, verbose=False)
        print(f"[study] {run['name']}: resuming at epoch {engine.epoch}", flush=True)
    else:
        with open_lm_corpus(data, check_tokens=False) as corpus:
            engine = build(exp, run, corpus, device)
    max_epochs = 1 if quick else int(t["max_epochs"])
    patience = int(t.get("patience", 2))
    steps = 50 if quick else t.get("max_steps_per_epoch")
    batch = int(t["batch_size"])

    def stalled(history):
        losses = [h["valid_loss"] for h in history]
        best = int(numpy.argmin(losses))
        return len(losses) - 1 - best >= patience

    # An output with no likelihood (squared error, Z-loss) gets a per-epoch validation curve of
    # its normalised outputs, kept in the run folder so that a resumed run keeps it: epoch -> ppl.
    track_normalised = not engine.model.output.has_likelihood
    normalised_path = os.path.join(run_dir, "valid_normalised.json")
    normalised = {}
    if track_normalised and resumed and os.path.exists(normalised_path):
        with open(normalised_path) as fh:
            normalised = {int(k): v for k, v in json.load(fh).items()}
    error = None
    while engine.epoch < max_epochs and not (engine.history and stalled(engine.history)):
        try:
            engine.train(data, epochs=engine.epoch + 1, batch_size=batch, valid=data,
                         run_dir=run_dir, max_steps_per_epoch=steps, progress=False)
        except Exception as exc:     # a refused step or a divergence ends this run, not the study
            error = f"{type(exc).__name__}: {exc}"
            print(f"[study] {run['name']}: stopped in epoch {engine.epoch + 1}: {error}", flush=True)
            if not engine.history:
                raise
            break
        h = engine.history[-1]
        if track_normalised:
            normalised[int(h["epoch"])] = normalised_output_perplexity(engine, data, "valid")
            tmp = normalised_path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(normalised, fh)
            os.replace(tmp, normalised_path)
        print(f"[study] {run['name']}: epoch {h['epoch']} valid loss {h['valid_loss']:.4f}"
              + (f" ppl {h['valid_perplexity']:.2f}" if "valid_perplexity" in h else "")
              + (f" normalised-outputs ppl {normalised[int(h['epoch'])]:.1f}"
                 if track_normalised else "")
              + f", {h['seconds']:.0f} s", flush=True)
    history = engine.history
    best_epoch = int(numpy.argmin([h["valid_loss"] for h in history])) + 1
    if exp["study"].get("valid_only"):          # a sweep: the validation loss decides
        row = {"name": run["name"], "output": run["output"],
               "output_kwargs": run.get("output_kwargs", {}), "model": run.get("model", {}),
               "epochs": len(history),
               "best_epoch": best_epoch, "best_valid_loss": history[best_epoch - 1]["valid_loss"],
               "valid_perplexity": [h.get("valid_perplexity") for h in history],
               "train_perplexity": [h.get("train_perplexity") for h in history],
               "seconds_per_epoch": float(numpy.mean([h["seconds"] for h in history]))}
        print(f"[study] {run['name']}: best valid loss {row['best_valid_loss']:.4f}", flush=True)
        return row
    best = Engine.from_checkpoint(os.path.join(run_dir, "best.h5"), device=device, verbose=False)
    likelihood = best.model.output.has_likelihood
    if likelihood:
        test_ppl = best.evaluate(data, split="test")["perplexity"]
        kind = "exact"
        valid_curve = [h["valid_perplexity"] for h in history]
    else:
        test_ppl = normalised_output_perplexity(best, data, "test")
        kind = "normalised-outputs"
        valid_curve = None
        temps = score_temperatures(best, data)
        valid_ppls = softmax_of_scores_perplexity(best, data, "valid", temps)
        t_best = float(temps[int(numpy.argmin(valid_ppls))])
        softmax_scores = {"temperature": t_best, "valid_perplexity": float(valid_ppls.min()),
                          "test_perplexity": float(softmax_of_scores_perplexity(
                              best, data, "test", [t_best])[0])}
    share, step_ms = output_share(best, data, batch, steps=5 if quick else 20)
    wall = numpy.cumsum([h["seconds"] for h in history]).tolist()
    if run["output"] == "adaptive":
        row_extra = {"cutoffs": list(engine.model.output.cutoffs)}
    else:
        row_extra = {}
    row = {"name": run["name"], "output": run["output"], **row_extra,
           "output_kwargs": run.get("output_kwargs", {}), "device": engine.device,
           "epochs": len(history), "best_epoch": best_epoch,
           "stopped": (error if error else "patience" if len(history) < max_epochs
                       else "max_epochs"),
           "test_perplexity": test_ppl, "perplexity_kind": kind,
           "best_valid_loss": history[best_epoch - 1]["valid_loss"],
           "seconds_per_epoch": float(numpy.mean([h["seconds"] for h in history])),
           "wall_seconds": wall, "valid_loss": [h["valid_loss"] for h in history],
           "valid_perplexity": valid_curve, "lr": [h["lr"] for h in history],
           "train_perplexity": [h.get("train_perplexity") for h in history],
           "train_loss": [h["train_loss"] for h in history],
           "output_share": share, "step_ms": step_ms,
           "paper_test_perplexity": exp["study"].get("paper", {}).get(run["name"])}
    if kind == "normalised-outputs":
        row["best_valid_perplexity_normalised"] = normalised_output_perplexity(best, data, "valid")
        # None for epochs trained before the curve was kept
        row["valid_perplexity_normalised"] = [normalised.get(int(h["epoch"])) for h in history]
        row["softmax_of_scores"] = softmax_scores
    if kind == "normalised-outputs":
        print(f"[study] {run['name']}: softmax-of-scores test ppl "
              f"{softmax_scores['test_perplexity']:.1f} (T = {softmax_scores['temperature']:.3g})")
    print(f"[study] {run['name']}: test ppl {test_ppl:.1f} ({kind}), best epoch {best_epoch} "
          f"of {len(history)}, {row['seconds_per_epoch']:.0f} s/epoch, output share "
          f"{100 * share:.0f}%", flush=True)
    return row


def time_to_reach(row, target):
    """Wall-clock seconds until the validation perplexity first reaches `target` (None if never)."""
    curve = row.get("valid_perplexity")
    if not curve:
        return None
    for seconds, ppl in zip(row["wall_seconds"], curve):
        if ppl <= target:
            return seconds
    return None


def interleaved_step_times(exp, rows, data, device, rounds, steps=10):
    """Median whole-step ms and output share of each run's model, measured in `rounds` rounds
    that visit every run in turn (fresh untrained engines: the step's cost does not depend on
    the weights), so that the load of a shared machine falls on every run alike. The wall
    seconds of the training epochs are not comparable on such a machine; these are."""
    from engine.data.hdf5_schema import open_lm_corpus
    by_name = {r["name"]: r for r in exp["run"]}
    with open_lm_corpus(data, check_tokens=False) as corpus:
        engines = {r["name"]: build(exp, by_name[r["name"]], corpus, device) for r in rows}
    samples = {name: [] for name in engines}
    batch = int(exp["train"]["batch_size"])
    loader = next(iter(engines.values())).make_loader(data, "train", batch, shuffle=False)
    steps_per_epoch = len(loader)
    loader.close()
    if exp["train"].get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(exp["train"]["max_steps_per_epoch"]))
    for _ in range(rounds):
        for name, engine in engines.items():
            samples[name].append(output_share(engine, data, batch, steps=steps))
    for r in rows:
        shares, ms = zip(*samples[r["name"]])
        r["interleaved"] = {"rounds": rounds, "steps_per_round": steps,
                            "step_ms": float(numpy.median(ms)),
                            "output_share": float(numpy.median(shares)),
                            "step_ms_all": [float(m) for m in ms],
                            "steps_per_epoch": steps_per_epoch}


def epochs_to_reach(row, target):
    curve = row.get("valid_perplexity") or []
    return next((i + 1 for i, ppl in enumerate(curve) if ppl <= target), None)


def merge_rows(exp, paths):
    """The rows of the result files `paths` that name a run of `exp`, in the run order (a later
    file wins). A file whose model or training settings differ from `exp`'s is refused: its
    rows would not be comparable."""
    found = {}
    for path in paths:
        with open(path) as fh:
            res = json.load(fh)
        if res.get("model") != exp["model"]:
            raise SystemExit(f"study: {path}: its [model] differs from the experiment's "
                             f"({res.get('model')} vs {exp['model']})")
        train = dict(res.get("train") or {})
        cap = train.pop("max_epochs", None)
        if train != {k: v for k, v in exp["train"].items() if k != "max_epochs"}:
            raise SystemExit(f"study: {path}: its [train] differs from the experiment's "
                             f"({res.get('train')} vs {exp['train']})")
        for r in res["rows"]:
            # Another epoch cap changes nothing for a run that stopped on its own before both
            # caps; a run cut by its cap (or longer than this cap) would not be the same run.
            if cap != exp["train"]["max_epochs"] and (
                    r.get("stopped") == "max_epochs" or r["epochs"] > exp["train"]["max_epochs"]):
                raise SystemExit(f"study: {path}: run {r['name']} ran to its file's max_epochs "
                                 f"({cap}); the experiment's is {exp['train']['max_epochs']}")
            if res["study"]["name"] != exp["study"]["name"]:
                r = {**r, "from_study": res["study"]["name"]}
            found[r["name"]] = r
    names = [r["name"] for r in exp["run"]]
    # The paper's figure is this experiment's, not the source study's.
    paper = exp["study"].get("paper", {})
    rows = [{**found[n], "paper_test_perplexity": paper.get(n)} for n in names if n in found]
    if not rows:
        raise SystemExit(f"study: no row of {', '.join(paths)} names a run of the experiment")
    return rows


def write_outputs(exp, rows, out_json):
    if exp["study"].get("valid_only"):
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        with open(out_json, "w") as fh:
            json.dump({"study": exp["study"], "model": exp["model"], "train": exp["train"],
                       "rows": rows}, fh, indent=1, default=float)
        lines = [f"# {exp['study']['name']}", "", exp["study"].get("description", "").strip(),
                 "", "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in rows
                                                       if r.get("command")})), "",
                 "| run | output | options | epochs | best valid loss | valid ppl per epoch | "
                 "train ppl per epoch (dropout on) |", "|---|---|---|---|---|---|---|"]
        fmt = lambda xs: " ".join("-" if x is None else f"{x:.1f}" for x in (xs or [])) or "-"
        for r in rows:
            opts = {**r["output_kwargs"], **({"model": r["model"]} if r.get("model") else {})}
            lines.append(f"| {r['name']} | {r['output']} | {opts} | {r['epochs']} | "
                         f"{r['best_valid_loss']:.4f} | {fmt(r.get('valid_perplexity'))} | "
                         f"{fmt(r.get('train_perplexity'))} |")
        with open(os.path.splitext(out_json)[0] + ".md", "w") as fh:
            fh.write("\n".join(lines) + "\n")
        return
    reference = next((r for r in rows if r["output"] == "softmax"), None)
    if reference is not None and reference.get("valid_perplexity"):
        target = min(reference["valid_perplexity"])
        ref_time = time_to_reach(reference, target)
        for r in rows:
            r["target_valid_perplexity"] = target
            r["seconds_to_target"] = time_to_reach(r, target)
            r["speedup_to_target"] = (ref_time / r["seconds_to_target"]
                                      if r["seconds_to_target"] else None)
            # the same question in measured step time: epochs to the target x the interleaved
            # step time (every run takes the same number of steps per epoch)
            r["epochs_to_target"] = epochs_to_reach(r, target)
            if "interleaved" in r and "interleaved" in reference:
                e, e0 = r["epochs_to_target"], epochs_to_reach(reference, target)
                r["step_speedup_to_target"] = (
                    e0 * reference["interleaved"]["step_ms"] / (e * r["interleaved"]["step_ms"])
                    if e else None)
    result = {"study": exp["study"], "model": exp["model"], "train": exp["train"],
              "command": "per row: see rows[i].command", "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
    with open(out_json, "w") as fh:
        json.dump(result, fh, indent=1, default=float)
    base = os.path.splitext(out_json)[0]
    lines = [f"# {exp['study']['name']}", "", exp["study"].get("description", "").strip(), "",
             "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in rows})), "",
             "| run | test ppl | kind | paper | epochs (best) | s/epoch | output share | "
             "time to softmax's best valid ppl (speedup) | step ms, interleaved (output share) | "
             "epochs to that ppl x step ms: speedup |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = "-" if r["paper_test_perplexity"] is None else f"{r['paper_test_perplexity']}"
        reach = r.get("seconds_to_target")
        reach = ("-" if reach is None else
                 f"{reach:.0f} s ({r['speedup_to_target']:.2f}x)")
        kind = r["perplexity_kind"]
        if "softmax_of_scores" in r:
            kind += f"; softmax of scores: {r['softmax_of_scores']['test_perplexity']:.1f}"
        inter = r.get("interleaved")
        inter = "-" if inter is None else (f"{inter['step_ms']:.1f} "
                                           f"({100 * inter['output_share']:.0f}%)")
        e, sp = r.get("epochs_to_target"), r.get("step_speedup_to_target")
        step_speed = ("never reached" if e is None else
                      f"{e} epochs" + ("" if sp is None else f": {sp:.2f}x"))
        lines.append(f"| {r['name']} | {r['test_perplexity']:.1f} | {kind} | "
                     f"{paper} | {r['epochs']} ({r['best_epoch']}) | {r['seconds_per_epoch']:.0f} | "
                     f"{100 * r['output_share']:.0f}% | {reach} | {inter} | {step_speed} |")
    with open(base + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        def curve(r):
            """(epoch indices, perplexities, dashed): the exact likelihood, else the normalised
            outputs' perplexity (a different quantity: drawn dashed)."""
            if r.get("valid_perplexity"):
                return numpy.arange(len(r["valid_perplexity"])), r["valid_perplexity"], False
            pts = [(i, p) for i, p in enumerate(r.get("valid_perplexity_normalised") or [])
                   if p is not None]
            return (numpy.array([i for i, _ in pts], dtype=int), [p for _, p in pts], True)

        curves = [r for r in rows if len(curve(r)[1])]
        # the second panel only when every curve has interleaved step times: the wall seconds
        # of runs trained apart (other loads, other sessions) are not comparable; epochs x the
        # step time measured side by side are
        fair = bool(curves) and all("steps_per_epoch" in r.get("interleaved", {}) for r in curves)
        fig, axes = plt.subplots(1, 2 if fair else 1, figsize=(13 if fair else 7, 4.5),
                                 squeeze=False)
        ax = axes[0][0]
        for r in curves:
            idx, ppl, dashed = curve(r)
            note = ", normalised outputs" if dashed else ""
            ax.plot(numpy.array(r["wall_seconds"])[idx] / 60, ppl, marker="o",
                    linestyle="--" if dashed else "-",
                    label=f"{r['name']} (test {r['test_perplexity']:.1f}{note})")
        ax.set_xlabel("wall-clock minutes (training only, as run)")
        ax.set_ylabel("validation perplexity")
        ax.set_title(exp["study"]["name"])
        if fair:
            bx = axes[0][1]
            for r in curves:
                it = r["interleaved"]
                idx, ppl, dashed = curve(r)
                minutes = (idx + 1) * it["steps_per_epoch"] * it["step_ms"] / 60000.0
                bx.plot(minutes, ppl, marker="o", linestyle="--" if dashed else "-",
                        label=r["name"])
            bx.set_xlabel("minutes at the interleaved step time (epochs x steps x step ms)")
            bx.set_title("same axis, step times measured side by side")
            bx.grid(alpha=0.3)
            bx.legend(fontsize=8)
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(base + ".png", dpi=110)
        plt.close(fig)
    except Exception as exc:              # the numbers matter more than the picture
        print(f"[study] no plot: {exc}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("experiment", help="TOML file under tools/experiments/")
    p.add_argument("--data-dir", default=".", help="folder holding the corpus files the "
                   "experiment names (engine prepare ... --output DIR/NAME.h5)")
    p.add_argument("--runs-dir", default="runs/studies", help="one run folder per run")
    p.add_argument("--only", nargs="*", default=None, help="run only these names")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto")
    p.add_argument("--json", default=None, help="results (default docs/results/<study>.json)")
    p.add_argument("--quick", action="store_true", help="1 epoch of 50 steps per run")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="train nothing: gather the rows of these result files (runs of this "
                        "experiment trained apart, e.g. in parallel with --only and --json, or "
                        "the same run in another study with the same [model] and [train]) into "
                        "--json, in the experiment's run order")
    p.add_argument("--step-times", type=int, default=0, metavar="ROUNDS",
                   help="train nothing: time the step of every run already in the results, "
                        "interleaved over ROUNDS rounds, and add it to the results")
    args = p.parse_args(argv)
    exp = load_experiment(args.experiment)
    out_json = args.json or os.path.join("docs", "results", exp["study"]["name"] + ".json")
    if args.merge:                       # no data needed: the rows are already measured
        rows = merge_rows(exp, args.merge)
        write_outputs(exp, rows, out_json)
        print(open(os.path.splitext(out_json)[0] + ".md").read())
        return 0
    data = os.path.join(args.data_dir, exp["study"]["data"])
    if not os.path.exists(data):
        raise SystemExit(f"study: {data} not found ({exp['study'].get('prepare', 'engine prepare')})")
    runs = [r for r in exp["run"] if args.only is None or r["name"] in args.only]
    previous = {}
    if os.path.exists(out_json) and not args.quick:
        with open(out_json) as fh:
            previous = {r["name"]: r for r in json.load(fh)["rows"]}
    command = "python tools/study_convergence.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    if args.step_times:
        rows = [previous[r["name"]] for r in exp["run"] if r["name"] in previous]
        if not rows:
            raise SystemExit(f"study: --step-times needs the results of a run in {out_json}")
        interleaved_step_times(exp, rows, data, args.device, args.step_times)
        for r in rows:
            r["interleaved"]["command"] = command
        write_outputs(exp, rows, out_json)
        print(open(os.path.splitext(out_json)[0] + ".md").read())
        return 0
    rows = []
    for run in exp["run"]:
        if run in runs:
            rows.append(run_one(exp, run, data, args.runs_dir, args.device, args.quick))
            rows[-1]["command"] = command
        elif run["name"] in previous:
            rows.append(previous[run["name"]])
        write_outputs(exp, rows, out_json)
    print(open(os.path.splitext(out_json)[0] + ".md").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
