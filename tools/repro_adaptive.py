"""The MLP language model with the exact softmax vs the adaptive softmax (hand and auto cutoffs):
test perplexity and seconds per epoch, printed next to the paper's text8 table.

Model (as tools/repro_ptb_mlp.py): context 5, embeddings 256, one tanh layer of 512, dropout
0.3, Adam lr 1e-3 halved on a validation plateau, batch 256, float32. Methods:
    softmax        the exact softmax (engine output "softmax")
    adaptive       hand cutoffs (--cutoffs; default 2000 as the paper uses on PTB)
    adaptive-auto  cutoffs="auto": chosen from the corpus's /counts by this device's cost model,
                   the head covering --head-coverage (0.8) of the tokens, at least --min-head words
Corpora: HDF5 files from `engine prepare` (default /tmp/data/ptb.h5 and /tmp/data/sotu.h5
when present). The paper's figures are a one-layer LSTM on text8 (d = 512, 5 epochs, a Maxwell
GPU), not this model: they are printed for reference, not as a target.

    python tools/repro_adaptive.py --data ptb.h5 --epochs 2 --json repro_adaptive.json
    python tools/repro_adaptive.py --quick          # 1 epoch of 150 steps per method
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import _path  # noqa: F401  (this checkout's engine first on sys.path)

PAPER_TEXT8 = [("full softmax", 144, 83), ("importance sampling", 166, 41),
               ("hierarchical softmax", 166, 34), ("D-softmax", 195, 53),
               ("adaptive softmax", 147, 30)]
METHODS = ("softmax", "adaptive", "adaptive-auto")


def run_one(corpus, method, args):
    from engine import Adam, Engine
    from engine.data.registry import describe
    from engine.models.build import build_model_for
    info = describe(corpus)
    vocab = info.vocab_size
    if method == "softmax":
        out, kw = "softmax", {}
    elif method == "adaptive":
        cut = [c for c in args.cutoffs if c < vocab]
        out, kw = "adaptive", {"cutoffs": cut}
    else:
        out, kw = "adaptive", {"cutoffs": "auto", "auto_batch": args.batch_size,
                               "auto_head_coverage": args.head_coverage,
                               "auto_min_head": args.min_head}
    model = build_model_for(info, {"context": 5, "embed_dim": 256, "hidden": [512],
                                   "activation": "tanh", "dropout": 0.3, "output": out,
                                   "output_kwargs": kw})           # word counts from `info`
    engine = Engine(model, Adam(lr=1e-3, schedule="plateau:0.5"), device=args.device,
                    seed=args.seed, dtype=args.dtype, verbose=False)
    history = engine.train(corpus, epochs=args.epochs, batch_size=args.batch_size, valid=corpus,
                           max_steps_per_epoch=args.max_steps_per_epoch, progress=False)
    test = engine.evaluate(corpus, split="test")
    cfg = model.output.config()
    if method == "adaptive-auto" and (args.head_coverage != 0.8 or args.min_head != 1):
        method = f"auto-cov{args.head_coverage:g}-min{args.min_head}"   # a non-default head floor
    row = {"corpus": os.path.basename(corpus), "vocab": vocab, "method": method,
           "cutoffs": cfg.get("cutoffs"), "device": engine.device, "epochs": len(history),
           "max_steps_per_epoch": args.max_steps_per_epoch,
           "steps_per_epoch": history[-1]["step"] // len(history),
           "valid_perplexity": history[-1]["valid_perplexity"], "test_perplexity": test["perplexity"],
           "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history),
           "examples_per_second": history[-1]["examples_per_second"]}
    if getattr(model.output, "auto_report", None):
        row["predicted_output_ms"] = model.output.auto_report["predicted_ms"]
    print(f"[repro] {row['corpus']} {method}: test ppl {row['test_perplexity']:.1f}, "
          f"{row['seconds_per_epoch']:.1f} s/epoch, cutoffs {row['cutoffs']}", flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", default=None, help="corpus .h5 files (engine prepare ...)")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cutoffs", type=lambda s: [int(c) for c in s.split(",") if c], default=[2000],
                   help="hand cutoffs, comma-separated (empty: a head over the whole vocabulary)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--head-coverage", type=float, default=0.8,
                   help="adaptive-auto: the head holds the words covering this share of tokens")
    p.add_argument("--min-head", type=int, default=1, help="adaptive-auto: head floor in words")
    p.add_argument("--quick", action="store_true", help="1 epoch of 150 steps per method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float64: the CPU reference numbers the golden tests pin")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.max_steps_per_epoch = 1, args.max_steps_per_epoch or 150
    data = args.data or [f for f in ("/tmp/data/ptb.h5", "/tmp/data/sotu.h5") if os.path.exists(f)]
    if not data:
        raise SystemExit("repro_adaptive: no corpus; pass --data corpus.h5 (engine prepare ptb ...)")
    rows = [run_one(corpus, method, args) for corpus in data for method in args.methods]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    print()
    print("Paper (Grave et al. 2017, text8, 1-layer LSTM d=512, 5 epochs, one GPU):")
    for name, ppl, minutes in PAPER_TEXT8:
        print(f"  {name:22s} ppl {ppl:4d}  {minutes:3d} min")
    print(f"Ours (MLP LM ctx5 emb256 h512, {args.epochs} epoch(s)"
          + (f" of at most {args.max_steps_per_epoch} steps" if args.max_steps_per_epoch else "")
          + f", batch {args.batch_size}):")
    head = f"{'corpus':10s} {'method':22s} {'cutoffs':22s} {'test ppl':>9s} {'s/epoch':>8s} {'x softmax':>9s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        base = next((b for b in rows if b["corpus"] == r["corpus"] and b["method"] == "softmax"), None)
        speed = f"{base['seconds_per_epoch'] / r['seconds_per_epoch']:.2f}" if base else "-"
        cut = ",".join(map(str, r["cutoffs"])) if r["cutoffs"] else "-"
        print(f"{r['corpus']:10s} {r['method']:22s} {cut:22s} {r['test_perplexity']:9.1f} "
              f"{r['seconds_per_epoch']:8.1f} {speed:>9s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
