"""The `engine` command: prepare | train | evaluate | predict | checkpoint | bench.

    engine train                                # the embedded default: SOTU corpus, small MLP LM
    engine train --data ptb.h5 --epochs 10 --json
    engine evaluate runs/<run>/checkpoint.h5 --data ptb.h5 --split test --json
    engine predict runs/<run>/checkpoint.h5 --data ptb.h5 "the stock market" --top 5
    engine prepare ptb DATA/ptb --output ptb.h5
    engine prepare text a.txt b.txt --valid v.txt --test t.txt --output corpus.h5
    engine prepare sotu data/addresses.tar.gz --output sotu.h5
    engine prepare mnist DATA/mnist --output mnist.h5   # IDX files, gzipped or not
    engine train --data mnist.h5 --meprop-k 20 --meprop-mode unified --json
    engine prepare xmc TRAIN.txt TEST.txt --output xmc.h5       # Extreme Classification Repository files
    engine train --data xmc.h5 --intermediate 2048 --weights ffi --fan-in 32 --json
    engine train --config runs/<run>/config.toml  # repeat a run (flags given too override it)
    engine bench softmax --quick                 # runs tools/bench_softmax.py from a source checkout
    mpiexec -n 2 engine train --data xmc.h5 ...  # 2 ranks: data-parallel body, labels split
    engine checkpoint merge runs/<run> --output single.h5    # a sharded run -> one file
    engine checkpoint split single.h5 --ranks 4 --output runs/<run4>   # and back, for 4 ranks

With --json, the last line printed is one JSON object with the final metrics.
Bad input ends with a one-line error naming the file and the problem (exit status 2). Under
`mpiexec -n N` rank 0 prints; a rank that fails prints its error and ends every rank.
`engine train`'s flags are built from the option declarations of the models, output layers,
optimizers and training (engine/cli_train.py); this file parses the other commands.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

COMMANDS = {
    "train": "train a language model or a classifier on a dataset from engine prepare "
             "(default: a small language model on the shipped State of the Union corpus)",
    "evaluate": "evaluate a checkpoint on a dataset split",
    "predict": "the most probable next words after a text (a language-model checkpoint)",
    "prepare": "convert a corpus or a classification dataset to the engine's HDF5 files",
    "checkpoint": "merge a sharded checkpoint (mpiexec -n N engine train) into one file, or "
                  "split a checkpoint for N ranks",
    "bench": "run a benchmark script of tools/ (source checkout only)",
}


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block: train's has 80 flags),
    with the closest flag for an unknown one."""

    def error(self, message):
        import difflib
        if message.startswith("unrecognized arguments: "):
            flags = [s for a in self._actions for s in a.option_strings]
            for word in message.split(": ", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], flags, n=1)
                if word.startswith("-") and close:
                    message += f" (did you mean {close[0]}?)"
                    break
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command=None):
    """The parser of one command (`command`), or the top-level one listing the commands.
    Only `engine train` imports the option declarations (the models, outputs, optimizers)."""
    parser = _Parser(
        prog="engine", description=__doc__.split("\n")[0],
        epilog="Without a command, engine runs `engine train`. `engine COMMAND --help` gives a "
               "command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, text in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text, allow_abbrev=False)
        if name == command:
            globals()[f"_add_{name}_arguments"](p)
    return parser


def _add_train_arguments(t):
    from .cli_train import add_train_arguments
    t.epilog = ("A flag that does not apply to the data's model, the chosen --output or "
                "--optimizer is refused. Every run folder gets config.toml: "
                "`engine train --config runs/<run>/config.toml` repeats the run.")
    add_train_arguments(t)


def _add_evaluate_arguments(e):
    e.add_argument("checkpoint")
    e.add_argument("--data", default=None, help="the dataset (default: the shipped SOTU corpus)")
    e.add_argument("--split", default="test", choices=("train", "valid", "test"))
    e.add_argument("--batch-size", type=int, default=512, help="(default: 512)")
    e.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    e.add_argument("--distributed", choices=["auto", "single", "mpi", "nccl"], default="auto",
                   help="under mpiexec -n N: evaluate on N ranks (default: auto, as engine train)")
    e.add_argument("--json", action="store_true")


def _add_checkpoint_arguments(c):
    csub = c.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    m = csub.add_parser("merge", help="a sharded checkpoint (its manifest, or a run folder "
                                      "holding checkpoint.h5) -> one single-process file")
    m.add_argument("source", help="the manifest (runs/<run>/checkpoint.h5 or best.h5) or the "
                                  "run folder")
    m.add_argument("--output", required=True, help="the single-process checkpoint to write")
    m.add_argument("--json", action="store_true")
    p = csub.add_parser("split", help="a checkpoint (one file, or a manifest of any number of "
                                      "ranks) -> a manifest and one shard per rank")
    p.add_argument("source", help="the checkpoint, or a run folder holding checkpoint.h5")
    p.add_argument("--ranks", type=int, required=True, help="the number of ranks N")
    p.add_argument("--output", required=True,
                   help="the folder to write checkpoint.h5 (the manifest) and its shards to")
    p.add_argument("--json", action="store_true")


def _add_predict_arguments(q):
    q.add_argument("checkpoint")
    q.add_argument("text", nargs="+", help="the words so far (tokenised like the corpus)")
    q.add_argument("--data", default=None, help="the corpus the model was trained on (its vocabulary)")
    q.add_argument("--top", type=int, default=10, help="how many words (default: 10)")
    q.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    q.add_argument("--json", action="store_true")


def _add_prepare_arguments(p):
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


def _add_bench_arguments(b):
    b.add_argument("name", help="e.g. softmax -> tools/bench_softmax.py")
    b.add_argument("args", nargs=argparse.REMAINDER)


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
        return {"output": args.output, **describe(args.output).summary()}
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
    return {"output": args.output, **describe(args.output).summary()}


def _default_data():
    from .data.prepare import ensure_default_corpus
    return ensure_default_corpus()


def cmd_train(args):
    """Resolve the run (engine/cli_train.py), train, evaluate the test split."""
    from . import cli_train as ct
    from .data.registry import describe
    from .engine import metric_keys
    from .reporting import show_perplexity
    from .distributed.environment import requested
    from .options import run_values
    from .runlog import RunLog
    from .train_options import RUN_OPTIONS, TRAIN_OPTIONS
    table = ct.flag_table()
    given = ct.given_values(args, table)
    if "config" in given:
        raw = ct.config_values(ct.parse_values({"config": given["config"]}, table)["config"], table)
        raw.update(given)
        raw.pop("config")
        given = raw
    values = ct.parse_values(given, table)
    if "resume" in values and "data" not in values:       # the data the run recorded
        values.update(ct.recorded_data(values["resume"]))
    data = values.get("data") or _default_data()
    info = describe(data)
    run = run_values(RUN_OPTIONS, {k: values[k] for k in ("test", "json", "distributed")
                                   if k in values})
    comm = requested(run["distributed"])          # None: one process
    if "resume" in values:
        engine, changes = ct.resume_engine(values, info, table, comm=comm)
        args.root = engine.comm.is_root
        train_given = {o.name: values[o.dest] for o in TRAIN_OPTIONS if o.dest in values}
        if "batch_size" not in train_given and engine.batch_size is not None:
            train_given["batch_size"] = engine.batch_size      # the checkpoint's, not the default
        training = ct.training_values(train_given)
        if training["run_dir"] is None:
            training["run_dir"] = os.path.dirname(os.path.abspath(values["resume"]))
        if args.root:
            log = RunLog(training["run_dir"])
            log.line(f"[engine] resuming {values['resume']} at epoch {engine.epoch + 1}, step "
                     f"{engine.step}")
            for change in changes:                 # one line per changed value
                log.line(f"[engine] resume: {change}")
    else:
        chosen = ct.choose_owners(values, info, table)
        plan = ct.plan_for(values, table, chosen)
        engine = ct.build_engine(plan, info, comm=comm)
        args.root = engine.comm.is_root
        training = ct.training_values(plan.values["train"])
    run_dir = training.pop("run_dir") or "auto"
    valid = info if info.has_split("valid") else None
    history = engine.train(info, valid=valid, run_dir=run_dir,
                           run_config={"test": run["test"], "json": run["json"],
                                       "distributed": run["distributed"]}, **training)
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
    if run["test"]:
        test = engine.evaluate(info, split="test", batch_size=max(training["batch_size"], 512))
        result["test_loss"] = test["loss"]
        if engine.model.reports_perplexity:
            result["test_perplexity"] = test.get("perplexity")
        extra = {k: v for k, v in test.items()
                 if k not in ("loss", "perplexity", "examples", "seconds", "device")}
        for key, value in extra.items():
            result[f"test_{key}"] = value
        line = (f"[engine] test loss {test['loss']:.4f}" +
                (f", test perplexity {show_perplexity(test['perplexity'])}" if "perplexity" in test else "") +
                "".join(f", test {k} {v:.4f}" for k, v in extra.items()))
        if args.root:                  # printed, and kept in log.txt and metrics.json
            log = RunLog(engine.run_dir)
            log.line(line)
            log.add_metrics("test", {k: v for k, v in test.items() if k not in ("seconds", "device")})
    args.json = run["json"]
    return result


def _positive(flag, value):
    if value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")


def cmd_evaluate(args):
    from .distributed.environment import requested
    from .engine import Engine
    from .reporting import show_perplexity
    _positive("--batch-size", args.batch_size)
    engine = Engine.from_checkpoint(args.checkpoint, device=args.device,
                                    comm=requested(args.distributed))
    args.root = engine.comm.is_root
    data = args.data or _default_data()
    metrics = engine.evaluate(data, split=args.split, batch_size=args.batch_size)
    line = f"[engine] {args.split}: loss {metrics['loss']:.4f}"
    if "perplexity" in metrics:
        line += f", perplexity {show_perplexity(metrics['perplexity'])}"
    for key, value in metrics.items():
        if key not in ("loss", "perplexity", "examples", "seconds", "device"):
            line += f", {key} {value:.4f}"
    _say(args, line + f" over {metrics['examples']:,} examples in {metrics['seconds']:.1f} s")
    return {"split": args.split, **metrics, "perplexity": metrics.get("perplexity")}


def cmd_predict(args):
    """Tokenise the text as the corpus was, keep the last n ids (left-padded with <eos>, as the
    loader pads the start of a stream) and print the top-k next words with their probabilities."""
    import math

    import numpy

    from .data.info import LM_CORPUS
    from .data.registry import describe
    from .data.text import tokenize_line
    from .engine import Engine
    _positive("--top", args.top)
    engine = Engine.from_checkpoint(args.checkpoint, device=args.device, verbose=False)
    info = describe(args.data or _default_data())
    if info.kind != LM_CORPUS:
        raise ValueError(f"{info.path}: engine predict needs a language-model corpus (its "
                         f"vocabulary), got a {info.format} file")
    engine.check_data(info)
    vocab = info.vocab
    index = {w: i for i, w in enumerate(vocab)}
    tokens = tokenize_line(" ".join(args.text), lowercase=info.lowercase, tokenizer=info.tokenizer)
    ids = [index.get(t, info.unk_id) for t in tokens]
    n = engine.model.context
    context = ([info.eos_id] * n + ids)[-n:]
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
        info = {"output": args.output, **describe(args.output).summary()}
    elif args.kind in ("xmc", "xmc-synthetic"):
        info = _prepare_xmc(args)
    else:
        raise SystemExit("engine prepare: choose text, ptb, sotu, mnist, xmc or xmc-synthetic "
                         "(see engine prepare -h)")
    print(f"[engine] {info}")
    return info if isinstance(info, dict) else info.as_dict()


def cmd_checkpoint(args):
    """merge: a manifest -> one file; split: a checkpoint -> a manifest and N shards."""
    from .distributed import checkpoints as dc
    if args.action == "merge":
        out = dc.write_merged(args.source, args.output)
    elif args.action == "split":
        _positive("--ranks", args.ranks)
        out = dc.write_split(args.source, args.ranks, args.output)
    else:
        raise SystemExit("engine checkpoint: choose merge or split (see engine checkpoint -h)")
    info = dc.describe_checkpoint(out)
    print(f"[engine] wrote {out}: {info['ranks']} rank(s), epoch {info['epoch']}, step "
          f"{info['step']}" + (f", {info['num_labels']:,} labels split" if info["num_labels"]
                               and info["ranks"] > 1 else ""))
    return info


def _say(args, text):
    """Print on rank 0 only (every rank runs the command under mpiexec)."""
    if getattr(args, "root", True):
        print(text)


def cmd_bench(args):
    import subprocess
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(here, "tools", f"bench_{args.name}.py")
    if not os.path.exists(script):
        raise FileNotFoundError(f"{script}: no such benchmark (benchmarks live in tools/ of a source checkout)")
    return subprocess.call([sys.executable, script] + list(args.args))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["train"] + argv                  # no command: engine train
    command = argv[0] if argv[0] in COMMANDS else None
    parser = build_parser(command)
    args, extra = parser.parse_known_args(argv)
    if extra:                                    # the command's own parser names them
        parser._subparsers._group_actions[0].choices[command].error(
            f"unrecognized arguments: {' '.join(extra)}")
    from .checkpoint import CheckpointError
    from .data.errors import DataError
    from .engine import TrainingDiverged
    try:
        if args.command == "bench":
            return cmd_bench(args)
        result = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
                  "prepare": cmd_prepare, "checkpoint": cmd_checkpoint}[args.command](args)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as exc:
        return _fail(f"engine {args.command}: error: {exc}", 2)
    except TrainingDiverged as exc:
        return _fail(f"engine {args.command}: training diverged: {exc}", 3)
    except OSError as exc:       # a folder that cannot be written, a full disk, ...
        return _fail(f"engine {args.command}: error: {_os_error(exc)}", 2)
    if getattr(args, "json", False):
        from .reporting import json_safe
        _say(args, json.dumps(json_safe(result), default=float))
    return 0


def _os_error(exc):
    """One line for an OSError: "FILE: reason" when it names a file."""
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _fail(message, code):
    """Print a failed command's one line and return its exit status; under mpiexec with several
    ranks, end every rank (engine/distributed/environment.py abort_job)."""
    if not any(os.environ.get(v) for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                                           "MV2_COMM_WORLD_SIZE")):
        print(message, file=sys.stderr)
        return code
    from .distributed.environment import abort_job
    return abort_job(message, code)


if __name__ == "__main__":
    sys.exit(main())
