"""The MLP language model with the factored output layers of Vincent et al. (docs/factored.md).

For each corpus (default: the prepared PTB /tmp/data/ptb.h5 and the shipped SOTU corpus
/tmp/data/sotu.h5, or any `engine prepare` HDF5 given with --data) and each output (default:
factored-spherical, factored-squared, softmax), trains MLPLanguageModel(context, embed, hidden
tanh) with Adam on the body; the factored layers take their own exact SGD step with
--factored-lr (docs/factored.md#why-only-sgd: Adam cannot be exact on W = V U). Prints test perplexity and
seconds per epoch side by side with the papers' figures.

Perplexity: exact for softmax and for the spherical softmax (p_c = (o_c^2 + eps) / (q + D eps),
O(d^2) per word). Squared error defines no likelihood; its row reports the perplexity of
p_c = max(o_c, floor) / sum_k max(o_k, floor) (floor 1e-5; the squared-error regression
estimates p(c | context) by o_c), computed densely over the exported W at test time only, and
marks it `normalised-outputs`.

    python tools/repro_vincent.py --epochs 2                    # both corpora, three outputs
    python tools/repro_vincent.py --data /tmp/data/ptb.h5 --epochs 1 --max-steps-per-epoch 500
    python tools/repro_vincent.py --quick                       # about a minute on a CPU

Papers' figures (docs/factored.md#reported-figures, secondary source): spherical losses trail log-softmax on PTB,
perplexity about 147-149 against 126.7.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy

import _path  # noqa: F401  (this checkout's engine first on sys.path)

PAPER = {"softmax": 126.7, "factored-spherical": 148.0, "factored-squared": None}
DEFAULT_DATA = ["/tmp/data/ptb.h5", "/tmp/data/sotu.h5"]
FLOOR = 1e-5


def squared_test_perplexity(engine, corpus, split="test", batch_size=512, chunk=4096):
    """Perplexity of p_c = max(o_c, FLOOR) / sum_k max(o_k, FLOOR) for a squared-error output
    (dense over the exported W, by chunks of the vocabulary)."""
    model, be = engine.model, engine.backend
    xp = be.xp
    W = be.asarray(model.output.dense_weight())
    loader = engine.make_loader(corpus, split, batch_size, shuffle=False)
    total, count = 0.0, 0
    try:
        for x, y in loader.iter_from(0, 0):
            h = model.hidden_forward(x, False)
            z = xp.zeros(h.shape[0], dtype=numpy.float64)
            for s in range(0, W.shape[0], chunk):
                z += xp.maximum(h @ W[s:s + chunk].T, FLOOR).sum(axis=1)
            oc = xp.maximum((h * W[y]).sum(axis=1), FLOOR)
            total -= float((xp.log(oc) - xp.log(z)).sum())
            count += int(y.shape[0])
    finally:
        close = getattr(loader, "close", None)
        if close is not None:
            close()
    return math.exp(total / count)


def run_one(data, output, args):
    from engine import Adam, Engine
    from engine.data.registry import describe
    from engine.models.build import build_model_for

    info = describe(data)
    vocab = info.vocab_size
    kw = {}
    if output.startswith("factored-"):
        lr = args.squared_lr if output == "factored-squared" else args.factored_lr
        kw = {"lr": lr, "check_every": 200,
              "init_scale": args.squared_init_scale if output == "factored-squared" else None}
    model = build_model_for(info, {"context": args.context, "embed_dim": args.embed,
                                   "hidden": [args.hidden], "activation": "tanh", "output": output,
                                   "output_kwargs": kw})
    engine = Engine(model, Adam(lr=args.lr), device=args.device, seed=args.seed, dtype=args.dtype,
                    verbose=False)
    t0 = time.perf_counter()
    history = engine.train(data, epochs=args.epochs, batch_size=args.batch_size, valid=None,
                           max_steps_per_epoch=args.max_steps_per_epoch, progress=False)
    train_s = time.perf_counter() - t0
    row = {"data": os.path.basename(data), "vocab": vocab, "output": output, "device": engine.device,
           "epochs": len(history), "max_steps_per_epoch": args.max_steps_per_epoch,
           "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history),
           "train_seconds": train_s, "train_loss": history[-1]["train_loss"],
           "paper_test_perplexity": PAPER.get(output) if "ptb" in os.path.basename(data) else None}
    if model.output.has_likelihood:
        row["test_perplexity"] = engine.evaluate(data, split="test")["perplexity"]
        row["perplexity_kind"] = "exact"
    else:
        row["test_perplexity"] = squared_test_perplexity(engine, data)
        row["perplexity_kind"] = "normalised-outputs"
    if output.startswith("factored-"):
        row["monitors"] = model.output.run_checks()
        row["numerical_events"] = len(model.output.events)
    print(f"[repro] {row['data']} {output}: test ppl {row['test_perplexity']:.1f} "
          f"({row['perplexity_kind']}), {row['seconds_per_epoch']:.1f} s/epoch", flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", default=None, help="prepared corpora (HDF5)")
    p.add_argument("--outputs", nargs="+", default=["factored-spherical", "factored-squared", "softmax"])
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--context", type=int, default=4)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the body")
    p.add_argument("--factored-lr", type=float, default=0.05,
                   help="exact-SGD learning rate of the factored output layers")
    p.add_argument("--squared-lr", type=float, default=0.02,
                   help="exact-SGD learning rate of factored-squared (its g_q = 1 / B is larger: "
                        "0.1 trips the learning-rate guard with tanh h of width 256)")
    p.add_argument("--squared-init-scale", type=float, default=1e-3,
                   help="initial W of factored-squared: uniform +-this (outputs start near 0, "
                        "the regression target p(c | context) is small; the others use 1/sqrt(d))")
    p.add_argument("--blas-threads", type=int, default=0,
                   help="limit BLAS threads for every run (0: leave as is; 1 helps on a busy CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float64: the CPU reference numbers the golden tests pin")
    p.add_argument("--quick", action="store_true", help="1 epoch of 100 steps per run (smoke test)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.max_steps_per_epoch = 1, args.max_steps_per_epoch or 100
    datas = args.data or [d for d in DEFAULT_DATA if os.path.exists(d)]
    if not datas:
        raise SystemExit("repro_vincent: no corpus found (give --data PATH; see `engine prepare`)")
    import contextlib
    limit = contextlib.nullcontext()
    if args.blas_threads:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(args.blas_threads)
    with limit:
        rows = [run_one(d, o, args) for d in datas for o in args.outputs]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=float)
    print()
    print(f"MLP LM ctx{args.context} emb{args.embed} h{args.hidden}, {args.epochs} epoch(s)"
          + (f" of {args.max_steps_per_epoch} steps" if args.max_steps_per_epoch else "")
          + f", batch {args.batch_size}, body Adam {args.lr}, factored SGD {args.factored_lr} "
          f"(squared {args.squared_lr})"
          + (f", {args.blas_threads} BLAS thread(s)" if args.blas_threads else ""))
    print(f"{'data':10s} {'output':20s} {'test ppl':>9s} {'kind':>19s} {'s/epoch':>8s} {'paper ppl':>9s}")
    for r in rows:
        paper = "-" if r["paper_test_perplexity"] is None else f"{r['paper_test_perplexity']:.1f}"
        print(f"{r['data']:10s} {r['output']:20s} {r['test_perplexity']:9.1f} "
              f"{r['perplexity_kind']:>19s} {r['seconds_per_epoch']:8.1f} {paper:>9s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
