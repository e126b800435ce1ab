"""The feed-forward (Bengio-style) MLP language model on Penn Treebank, exact softmax.

Prepares PTB from Mikolov's text files (ptb.{train,valid,test}.txt), trains
MLPLanguageModel(context 5, embeddings 256, one tanh layer of 512, dropout 0.3) with Adam
(lr 1e-3, halved when validation perplexity stops improving), and prints validation/test
perplexity and seconds per epoch next to the reference: the classic feed-forward network
language model reaches about 140 test perplexity on PTB (Mikolov et al. 2011 report 140-141 for
a 4/5-gram feed-forward NNLM; the foundation issue's goal is 150 or better).

    python tools/repro_ptb_mlp.py --ptb DATA/ptb --device auto --json ptb_mlp.json
    python tools/repro_ptb_mlp.py --ptb DATA/ptb --quick      # about a minute on a CPU

Equivalent command line:
    engine prepare ptb DATA/ptb --output ptb.h5
    engine train --data ptb.h5 --context 5 --embed 256 --hidden 512 --dropout 0.3 \
        --optimizer adam --lr 1e-3 --schedule plateau:0.5 --epochs 6 --batch-size 256 --json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import _path  # noqa: F401  (this checkout's engine first on sys.path)

REFERENCE_TEST_PPL = 140.0      # classic feed-forward NNLM on PTB (approximate)
GOAL_TEST_PPL = 150.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ptb", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ptb"),
                   help="folder with ptb.train.txt, ptb.valid.txt, ptb.test.txt")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default="auto")
    p.add_argument("--quick", action="store_true", help="one short epoch (a smoke run, not the result)")
    p.add_argument("--json", default=None)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--run-dir", default=None, help="run folder (default: run/ in the work folder)")
    p.add_argument("--work-dir", default=None,
                   help="where the prepared ptb.h5 goes (default: a new temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float64: the CPU reference numbers the golden tests pin")
    args = p.parse_args(argv)

    from engine import Adam, Engine
    from engine.data.registry import describe
    from engine.models.build import build_model_for
    from engine.data.prepare import prepare_ptb

    work = args.work_dir or tempfile.mkdtemp(prefix="ptb-")
    corpus = os.path.join(work, "ptb.h5")
    print(prepare_ptb(args.ptb, corpus))
    model = build_model_for(describe(corpus), {"context": 5, "embed_dim": 256, "hidden": [512],
                                               "activation": "tanh", "dropout": 0.3,
                                               "output": "softmax"})
    engine = Engine(model, Adam(lr=1e-3, schedule="plateau:0.5"), device=args.device, seed=args.seed,
                    dtype=args.dtype)
    epochs = 1 if args.quick else args.epochs
    history = engine.train(corpus, epochs=epochs, batch_size=256, valid=corpus,
                           max_steps_per_epoch=200 if args.quick else None,
                           run_dir=args.run_dir or os.path.join(work, "run"), progress=sys.stderr.isatty())
    test = engine.evaluate(corpus, split="test")
    best = min(history, key=lambda h: h["valid_perplexity"])
    row = {"model": "mlp-lm ctx5 emb256 h512 tanh drop0.3, softmax", "device": engine.device,
           "epochs": len(history), "quick": args.quick,
           "valid_perplexity": history[-1]["valid_perplexity"], "best_valid_perplexity": best["valid_perplexity"],
           "test_perplexity": test["perplexity"],
           "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history),
           "reference_test_perplexity": REFERENCE_TEST_PPL, "goal_test_perplexity": GOAL_TEST_PPL}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([row], fh, indent=1)
    print()
    print(f"{'':32s} {'test ppl':>9s} {'valid ppl':>10s} {'s/epoch':>9s}")
    print(f"{'feed-forward NNLM (reference)':32s} {REFERENCE_TEST_PPL:9.0f} {'':>10s} {'':>9s}")
    print(f"{'ours (' + engine.device + ', ' + str(len(history)) + ' epochs)':32s} {test['perplexity']:9.1f} "
          f"{history[-1]['valid_perplexity']:10.1f} {row['seconds_per_epoch']:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
