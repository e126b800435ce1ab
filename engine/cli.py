"""The `engine` command: prepare | train | evaluate | bench.

    engine train                                # the embedded default: SOTU corpus, small MLP LM
    engine train --data ptb.h5 --epochs 10 --json
    engine evaluate runs/<run>/checkpoint.h5 --data ptb.h5 --split test --json
    engine predict runs/<run>/checkpoint.h5 --data ptb.h5 "the stock market" --top 5
    engine prepare ptb ../shared/data/ptb --output ptb.h5
    engine prepare text a.txt b.txt --valid v.txt --test t.txt --output corpus.h5
    engine prepare sotu data/addresses.tar.gz --output sotu.h5
    engine prepare mnist ../shared/data/mnist --output mnist.h5   # IDX files, gzipped or not
    engine train --data mnist.h5 --meprop-k 20 --meprop-mode unified --json
    engine prepare xmc TRAIN.txt TEST.txt --output xmc.h5       # Extreme Classification Repository files
    engine train --data xmc.h5 --intermediate 2048 --output-kwargs '{"weights": "ffi", "fan_in": 32}' --json
    engine bench softmax --quick                 # runs tools/bench_softmax.py from a source checkout

With --json, the last line printed is one JSON object with the final metrics.
Bad input ends with a one-line error naming the file and the problem (exit status 2).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# The default model for `engine train` with no arguments: small enough for a few minutes per
# epoch on a 2-core CPU over the embedded State of the Union corpus.
DEFAULTS = dict(context=4, embed=64, hidden=[256], activation="tanh", dropout=0.0,
                output="softmax", optimizer="adam", lr=1e-3, epochs=2, batch_size=256)
# The classifier's defaults (a classification file as --data): the meProp paper's MNIST MLP;
# multi-label (XMC) files default to the squared hinge output.
CLASSIFIER_DEFAULTS = dict(hidden=[500, 500], activation="relu", output="softmax",
                           multilabel_output="squared-hinge")


def _add_model_args(p):
    p.add_argument("--context", type=int, default=DEFAULTS["context"], help="previous words seen (n)")
    p.add_argument("--embed", type=int, default=DEFAULTS["embed"], help="embedding width")
    p.add_argument("--hidden", type=int, nargs="*", default=None,
                   help=f"hidden widths (default {DEFAULTS['hidden']} for a language model, "
                        f"{CLASSIFIER_DEFAULTS['hidden']} for a classifier)")
    p.add_argument("--activation", choices=["tanh", "relu"], default=None,
                   help="hidden activation (default tanh for a language model, relu for a classifier)")
    p.add_argument("--dropout", type=float, default=DEFAULTS["dropout"])
    p.add_argument("--output", default=None,
                   help="output layer: softmax (exact), squared (dense squared error), adaptive, "
                        "factored-*, and for multi-label data squared-hinge (default) or bce")
    p.add_argument("--output-kwargs", default=None, metavar="JSON",
                   help='extra output-layer arguments as a JSON object, e.g. \'{"weights": "ffi", '
                        '"fan_in": 32}\'')
    p.add_argument("--intermediate", type=int, default=None,
                   help="classifier: width of a dense ReLU layer just before the output (XMC)")
    p.add_argument("--meprop-k", type=int, default=None,
                   help="classifier: meProp, keep the k largest output-gradient entries per hidden layer")
    p.add_argument("--meprop-mode", choices=["per-example", "unified", "random"], default="per-example")
    p.add_argument("--meprop-output", action="store_true",
                   help="meProp also on the output layer (when it supports it)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="softmax over vocabulary chunks of this many words (never holds B x D)")
    p.add_argument("--cutoffs", default=None,
                   help="--output adaptive: comma-separated cutoffs (e.g. 2000,10000) or 'auto' "
                        "(chosen from --data's word counts by the measured cost model)")
    p.add_argument("--div-value", type=float, default=None,
                   help="--output adaptive: tail i has width d / div_value^(i+1) (default 4)")
    p.add_argument("--output-lr", type=float, default=None,
                   help="--output factored-*: the factored layer's own exact-SGD learning rate "
                        "(default: the optimizer's --lr and schedule)")


def _add_optim_args(p):
    p.add_argument("--optimizer", choices=["adam", "sgd"], default=DEFAULTS["optimizer"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=None, help="clip the global gradient norm")
    p.add_argument("--schedule", default=None,
                   help="constant | step:EVERY:FACTOR | cosine | plateau:FACTOR")


def build_parser():
    parser = argparse.ArgumentParser(prog="engine", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train a language model (default: the embedded SOTU corpus)")
    t.add_argument("--data", default=None, help="corpus HDF5 (engine prepare ...); default: embedded SOTU")
    _add_model_args(t)
    _add_optim_args(t)
    t.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    t.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    t.add_argument("--max-steps-per-epoch", type=int, default=None, help="cut epochs short (quick runs)")
    t.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--run-dir", default=None, help="run folder (default runs/<timestamp>)")
    t.add_argument("--resume", default=None, help="checkpoint to continue from (model/optimizer from it)")
    t.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps")
    t.add_argument("--no-test", action="store_true", help="skip the final test-split evaluation")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--json", action="store_true", help="end with one JSON line of final metrics")

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a corpus split")
    e.add_argument("checkpoint")
    e.add_argument("--data", default=None, help="corpus HDF5 (default: embedded SOTU)")
    e.add_argument("--split", default="test")
    e.add_argument("--batch-size", type=int, default=512)
    e.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    e.add_argument("--json", action="store_true")

    q = sub.add_parser("predict", help="the most probable next words after a text")
    q.add_argument("checkpoint")
    q.add_argument("text", nargs="+", help="the words so far (tokenised like the corpus)")
    q.add_argument("--data", default=None, help="the corpus the model was trained on (its vocabulary)")
    q.add_argument("--top", type=int, default=10)
    q.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("prepare", help="convert a corpus to HDF5")
    psub = p.add_subparsers(dest="kind")
    pt = psub.add_parser("text", help="plain-text files -> HDF5")
    pt.add_argument("train", nargs="+", help="training text file(s)")
    pt.add_argument("--valid", nargs="*", default=None)
    pt.add_argument("--test", nargs="*", default=None)
    pt.add_argument("--valid-fraction", type=float, default=0.05)
    pt.add_argument("--test-fraction", type=float, default=0.05)
    pt.add_argument("--min-count", type=int, default=1)
    pt.add_argument("--max-vocab", type=int, default=None)
    pt.add_argument("--lowercase", action="store_true")
    pt.add_argument("--tokenizer", choices=["whitespace", "words"], default="whitespace")
    pt.add_argument("--output", required=True)
    pp = psub.add_parser("ptb", help="the PTB folder (ptb.train.txt, ptb.valid.txt, ptb.test.txt) -> HDF5")
    pp.add_argument("directory")
    pp.add_argument("--output", required=True)
    ps = psub.add_parser("sotu", help="State of the Union tar.gz -> HDF5, split by year")
    ps.add_argument("archive", nargs="?", default=None, help="default: the embedded data/addresses.tar.gz")
    ps.add_argument("--train-until", type=int, default=2000)
    ps.add_argument("--valid-until", type=int, default=2010)
    ps.add_argument("--min-count", type=int, default=None)
    ps.add_argument("--output", required=True)
    pm = psub.add_parser("mnist", help="MNIST / Fashion-MNIST IDX folder (gzipped or not) -> HDF5")
    pm.add_argument("directory", help="folder with train-images-idx3-ubyte[.gz] and the 3 others")
    pm.add_argument("--valid-size", type=int, default=5000,
                    help="last training images held out as the valid split (default 5000)")
    pm.add_argument("--output", required=True)
    _add_xmc_prepare_parsers(psub)

    b = sub.add_parser("bench", help="run a benchmark script of tools/ (source checkout only)")
    b.add_argument("name", help="e.g. softmax -> tools/bench_softmax.py")
    b.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _add_xmc_prepare_parsers(psub):
    px = psub.add_parser("xmc", help="Extreme Classification Repository text files (train, test; "
                                     ".gz read too) -> HDF5; valid split carved from train")
    px.add_argument("train")
    px.add_argument("test")
    px.add_argument("--valid-fraction", type=float, default=0.1,
                    help="random share of the training file held out as the valid split (default 0.1)")
    px.add_argument("--seed", type=int, default=0, help="seed of the valid split's choice")
    px.add_argument("--output", required=True)
    py = psub.add_parser("xmc-synthetic", help="synthetic XMC data (power-law labels, prototype "
                                                "features) -> text files and HDF5")
    py.add_argument("--train-points", type=int, default=20000)
    py.add_argument("--test-points", type=int, default=5000)
    py.add_argument("--features", type=int, default=5000)
    py.add_argument("--labels", type=int, default=2000)
    py.add_argument("--labels-per-point", type=float, default=5.0)
    py.add_argument("--features-per-point", type=float, default=40.0)
    py.add_argument("--amazon-670k", action="store_true",
                    help="Amazon-670K's shape (490,449 / 153,025 points, 135,909 features, "
                         "670,091 labels; overrides the sizes above)")
    py.add_argument("--text-prefix", default=None,
                    help="keep the text files as PREFIX_train.txt / PREFIX_test.txt (default: temporary)")
    py.add_argument("--valid-fraction", type=float, default=0.1)
    py.add_argument("--seed", type=int, default=0)
    py.add_argument("--output", required=True)


def _prepare_xmc(args):
    import tempfile
    from .data.xmc import describe, prepare_xmc
    if args.kind == "xmc":
        prepare_xmc(args.train, args.test, args.output, valid_fraction=args.valid_fraction,
                    seed=args.seed)
        return {"output": args.output, **describe(args.output)}
    from .data.xmc_synthetic import AMAZON_670K, write_synthetic_xmc
    sizes = dict(num_train=args.train_points, num_test=args.test_points,
                 num_features=args.features, num_labels=args.labels,
                 labels_per_point=args.labels_per_point, features_per_point=args.features_per_point)
    if args.amazon_670k:
        sizes.update(AMAZON_670K)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(args.output))) as tmp:
        prefix = args.text_prefix or os.path.join(tmp, "synthetic")
        train, test = f"{prefix}_train.txt", f"{prefix}_test.txt"
        write_synthetic_xmc(train, test, seed=args.seed, **sizes)
        prepare_xmc(train, test, args.output, valid_fraction=args.valid_fraction, seed=args.seed)
    return {"output": args.output, **describe(args.output)}


def _make_optimizer(args):
    from .optim import make_optimizer
    kw = dict(lr=args.lr, weight_decay=args.weight_decay, clip_norm=args.clip, schedule=args.schedule)
    if args.optimizer == "sgd":
        kw["momentum"] = args.momentum
    return make_optimizer(args.optimizer, **kw)


def _default_data():
    from .data.prepare import ensure_default_corpus
    return ensure_default_corpus()


def _output_kwargs_json(args):
    if not args.output_kwargs:
        return {}
    try:
        kw = json.loads(args.output_kwargs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--output-kwargs: not valid JSON ({exc})") from None
    if not isinstance(kw, dict):
        raise ValueError(f"--output-kwargs: expected a JSON object, got {args.output_kwargs!r}")
    return kw


def _build_classifier(args, data):
    """An MLPClassifier sized from a classification file's description."""
    from .data.registry import describe_dataset
    from .models import MLPClassifier
    info = describe_dataset(data)
    multilabel = bool(info.get("multilabel", False))
    output = args.output or (CLASSIFIER_DEFAULTS["multilabel_output"] if multilabel
                             else CLASSIFIER_DEFAULTS["output"])
    out_kw = _output_kwargs_json(args)
    if info.get("format") == "engine-xmc":       # training label counts: PSP@k propensities
        out_kw.setdefault("label_counts", os.path.abspath(data))
    meprop = None
    if args.meprop_k is not None:
        meprop = {"k": args.meprop_k, "mode": args.meprop_mode, "seed": args.seed,
                  "output": bool(args.meprop_output)}
    return MLPClassifier(int(info["num_features"]), int(info["num_classes"]),
                         hidden=CLASSIFIER_DEFAULTS["hidden"] if args.hidden is None else args.hidden,
                         activation=args.activation or CLASSIFIER_DEFAULTS["activation"],
                         dropout=args.dropout, sparse_input=bool(info.get("sparse", False)),
                         intermediate=args.intermediate, output=output, output_kwargs=out_kw,
                         meprop=meprop)


def cmd_train(args):
    from .data.registry import is_lm_corpus_file
    from .engine import Engine, metric_keys
    from .models import MLPLanguageModel

    data = args.data or _default_data()
    classification = not is_lm_corpus_file(data)
    if args.resume:
        engine = Engine.from_checkpoint(args.resume, device=args.device)
    elif classification:
        engine = Engine(_build_classifier(args, data), _make_optimizer(args), device=args.device,
                        seed=args.seed, dtype=args.dtype)
    else:
        if args.intermediate is not None or args.meprop_k is not None:
            raise ValueError("--intermediate and --meprop-k apply to classifiers (a classification "
                             "file as --data), not to the language model")
        args.output = args.output or DEFAULTS["output"]
        args.hidden = DEFAULTS["hidden"] if args.hidden is None else args.hidden
        args.activation = args.activation or DEFAULTS["activation"]
        from .data.hdf5_schema import open_lm_corpus
        with open_lm_corpus(data) as corpus:
            vocab_size = corpus.vocab_size
        out_kw = {"chunk_size": args.chunk_size} if args.chunk_size else {}
        out_kw.update(_output_kwargs_json(args))
        if args.output == "adaptive":           # adaptive softmax: cutoffs, div_value, counts
            out_kw = {"cutoffs": args.cutoffs or "auto", "auto_batch": args.batch_size,
                      **_output_kwargs_json(args)}
            if args.div_value is not None:
                out_kw["div_value"] = args.div_value
            if out_kw["cutoffs"] == "auto":
                out_kw["counts"] = os.path.abspath(data)
        if args.output.startswith("factored-") and args.output_lr is not None:
            out_kw["lr"] = args.output_lr           # factored output: its own SGD learning rate
        model = MLPLanguageModel(vocab_size, context=args.context, embed_dim=args.embed,
                                 hidden=args.hidden, activation=args.activation,
                                 dropout=args.dropout, output=args.output, output_kwargs=out_kw)
        engine = Engine(model, _make_optimizer(args), device=args.device, seed=args.seed, dtype=args.dtype)
    run_config = {"data": os.path.abspath(data), "command": sys.argv, **{k: v for k, v in vars(args).items()
                                                                         if k != "func"}}
    run_dir = args.run_dir or (os.path.dirname(os.path.abspath(args.resume)) if args.resume else "auto")
    valid = data
    if classification:                     # classification files may come without a valid split
        from .data.registry import describe_dataset
        valid = data if "valid" in describe_dataset(data).get("splits", ()) else None
    history = engine.train(data, epochs=args.epochs, batch_size=args.batch_size, valid=valid,
                           run_dir=run_dir, checkpoint_every=args.checkpoint_every,
                           max_steps_per_epoch=args.max_steps_per_epoch,
                           progress=not args.no_progress, run_config=run_config)
    last = history[-1] if history else {}
    result = {"device": engine.device, "epochs": engine.epoch, "steps": engine.step,
              "loss": last.get("train_loss"), "perplexity": last.get("train_perplexity"),
              "valid_loss": last.get("valid_loss"), "valid_perplexity": last.get("valid_perplexity"),
              "seconds_per_epoch": (sum(h["seconds"] for h in history) / len(history)) if history else None,
              "run_dir": engine.run_dir}
    if not engine.model.reports_perplexity:          # a classifier: no perplexity fields
        for key in ("perplexity", "valid_perplexity"):
            del result[key]
    for key in metric_keys(last, "valid_"):          # valid_accuracy, valid_p@1, ...
        result[f"valid_{key}"] = last[f"valid_{key}"]
    if not args.no_test:
        test = engine.evaluate(data, split="test", batch_size=max(args.batch_size, 512))
        result["test_loss"] = test["loss"]
        if engine.model.reports_perplexity:
            result["test_perplexity"] = test.get("perplexity")
        extra = {k: v for k, v in test.items()
                 if k not in ("loss", "perplexity", "examples", "seconds", "device")}
        for key, value in extra.items():
            result[f"test_{key}"] = value
        print(f"[engine] test loss {test['loss']:.4f}" +
              (f", test perplexity {test['perplexity']:.2f}" if "perplexity" in test else "") +
              "".join(f", test {k} {v:.4f}" for k, v in extra.items()))
    return result


def cmd_evaluate(args):
    from .engine import Engine
    engine = Engine.from_checkpoint(args.checkpoint, device=args.device)
    data = args.data or _default_data()
    metrics = engine.evaluate(data, split=args.split, batch_size=args.batch_size)
    line = f"[engine] {args.split}: loss {metrics['loss']:.4f}"
    if "perplexity" in metrics:
        line += f", perplexity {metrics['perplexity']:.2f}"
    for key, value in metrics.items():
        if key not in ("loss", "perplexity", "examples", "seconds", "device"):
            line += f", {key} {value:.4f}"
    print(line + f" over {metrics['examples']:,} examples in {metrics['seconds']:.1f} s")
    return {"split": args.split, **metrics, "perplexity": metrics.get("perplexity")}


def cmd_predict(args):
    """Tokenise the text as the corpus was, keep the last n ids (left-padded with <eos>, as the
    loader pads the start of a stream) and print the top-k next words with their probabilities."""
    import math

    import numpy

    from .data.hdf5_schema import open_lm_corpus
    from .data.text import tokenize_line
    from .engine import Engine
    engine = Engine.from_checkpoint(args.checkpoint, device=args.device, verbose=False)
    data = args.data or _default_data()
    with open_lm_corpus(data) as corpus:
        engine._check_vocabulary(corpus)
        vocab = list(corpus.vocab)
        attrs = dict(corpus.attrs)
        unk, eos = corpus.unk_id, corpus.eos_id
    index = {w: i for i, w in enumerate(vocab)}
    tokens = tokenize_line(" ".join(args.text), lowercase=bool(attrs.get("lowercase", 0)),
                           tokenizer=str(attrs.get("tokenizer", "whitespace")))
    ids = [index.get(t, unk) for t in tokens]
    n = engine.model.context
    context = ([eos] * n + ids)[-n:]
    top_ids, logp = engine.predict_topk(numpy.asarray([context], dtype=numpy.int32), k=args.top)
    top_ids, logp = engine.backend.to_host(top_ids)[0], engine.backend.to_host(logp)[0]
    unknown = [t for t in tokens if t not in index]
    print(f"[engine] context: {' '.join(vocab[i] for i in context)}"
          + (f" (unknown, read as <unk>: {' '.join(unknown)})" if unknown else ""))
    rows = [{"word": vocab[int(i)], "id": int(i), "probability": math.exp(float(lp))}
            for i, lp in zip(top_ids, logp)]
    for r in rows:
        print(f"  {r['probability']:8.5f}  {r['word']}")
    return {"context": [vocab[i] for i in context], "predictions": rows}


def cmd_prepare(args):
    from .data import prepare
    if args.kind == "text":
        info = prepare.prepare_text(args.train, args.valid, args.test, args.output,
                                    min_count=args.min_count, max_vocab=args.max_vocab,
                                    lowercase=args.lowercase, tokenizer=args.tokenizer,
                                    valid_fraction=args.valid_fraction, test_fraction=args.test_fraction)
    elif args.kind == "ptb":
        info = prepare.prepare_ptb(args.directory, args.output)
    elif args.kind == "sotu":
        kw = {} if args.min_count is None else {"min_count": args.min_count}
        info = prepare.prepare_sotu(args.archive or prepare.default_corpus_path(), args.output,
                                    train_until=args.train_until, valid_until=args.valid_until, **kw)
    elif args.kind == "mnist":
        from .data.classification import describe
        from .data.mnist import prepare_mnist
        prepare_mnist(args.directory, args.output, valid_size=args.valid_size)
        info = {"output": args.output, **describe(args.output)}
    elif args.kind in ("xmc", "xmc-synthetic"):
        info = _prepare_xmc(args)
    else:
        raise SystemExit("engine prepare: choose text, ptb, sotu, mnist, xmc or xmc-synthetic "
                         "(see engine prepare -h)")
    print(f"[engine] {info}")
    return info.as_dict() if hasattr(info, "as_dict") else {"output": args.output}


def cmd_bench(args):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(here, "tools", f"bench_{args.name}.py")
    if not os.path.exists(script):
        raise FileNotFoundError(f"{script}: no such benchmark (benchmarks live in tools/ of a source checkout)")
    return subprocess.call([sys.executable, script] + list(args.args))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["train"] + list(argv if argv is not None else sys.argv[1:]))
    from .checkpoint import CheckpointError
    from .data.errors import DataError
    from .engine import TrainingDiverged
    try:
        if args.command == "bench":
            return cmd_bench(args)
        result = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
                  "prepare": cmd_prepare}[args.command](args)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"engine {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"engine {args.command}: training diverged: {exc}", file=sys.stderr)
        return 3
    if getattr(args, "json", False):
        print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
