"""Do the `engine prepare text` defaults give a language model that beats counting words?

Writes a plain English text (default: the State of the Union addresses shipped in data/, in
year order, as one .txt file), then runs what a new user runs:

    engine prepare text corpus.txt --output corpus.h5          # the defaults
    engine train --data corpus.h5 --epochs 1                   # the defaults

and scores the test split (the last 5% of the lines) twice: by the trained model, and by the
add-one unigram model of the same tokens, p(w) = (count_train(w) + 1) / (N_train + V), the
model that only counts words. Prints both perplexities and their ratio.

    python tools/text_defaults_check.py                                # SOTU as one .txt
    python tools/text_defaults_check.py --text book.txt               # any UTF-8 text
    python tools/text_defaults_check.py --sentences --max-lines 2000   # a subset: quick
    python tools/text_defaults_check.py --prepare-args="--tokenizer whitespace --min-count 1
        --no-lowercase"                                                # other prepare flags

--json FILE writes the numbers; --keep DIR keeps the text, the corpus and the run folder.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

import numpy

import _path  # noqa: F401  (this checkout's engine first on sys.path)


def write_sotu_text(path, archive=None, max_lines=None, sentences=False) -> int:
    """The shipped addresses (or `archive`), oldest first, as one UTF-8 file: one line per
    line of the archive (a paragraph, or a whole address), or with `sentences` one line per
    sentence (cut after . ! or ? and a space); at most `max_lines` lines. Returns the lines
    written."""
    import re
    import tarfile

    from engine.data.prepare import _sotu_members, default_corpus_path
    archive = os.fspath(archive) if archive else str(default_corpus_path())
    lines = 0
    with tarfile.open(archive, "r:*") as tf, open(path, "w", encoding="utf-8") as out:
        for _, name in _sotu_members(archive):
            text = tf.extractfile(tf.getmember(name)).read().decode("utf-8")
            for line in text.splitlines():
                for piece in re.split(r"(?<=[.!?])\s+", line) if sentences else [line]:
                    if max_lines is not None and lines >= max_lines:
                        return lines
                    out.write(piece + "\n")
                    lines += 1
    return lines


def copy_lines(source, path, max_lines=None) -> int:
    """The first `max_lines` lines (all by default) of `source` into `path`."""
    lines = 0
    with open(source, "rb") as src, open(path, "wb") as out:
        for raw in src:
            if max_lines is not None and lines >= max_lines:
                break
            out.write(raw)
            lines += 1
    return lines


def add_one_unigram_perplexity(corpus_path, split="test") -> float:
    """exp of the mean negative log-probability of `split`'s tokens under the add-one unigram of
    the training split (every token a target, as Engine.evaluate scores them)."""
    from engine.data import open_lm_corpus
    with open_lm_corpus(corpus_path) as corpus:
        V = corpus.vocab_size
        train, target = corpus.tokens("train"), corpus.tokens(split)
    counts = numpy.bincount(train, minlength=V).astype(numpy.float64)
    logp = numpy.log(counts + 1.0) - numpy.log(counts.sum() + V)
    return float(numpy.exp(-logp[target].mean()))


def run_check(text, workdir, device="auto", max_steps=None, prepare_args=(), train_args=(),
              progress=True) -> dict:
    """prepare (defaults + `prepare_args`) and train one epoch (defaults + `train_args`) from
    `text` in `workdir`; -> the numbers."""
    from engine import Engine
    from engine.cli import main as engine_main
    corpus, run = os.path.join(workdir, "corpus.h5"), os.path.join(workdir, "run")
    prepare = ["prepare", "text", text, "--output", corpus, *prepare_args]
    train = ["train", "--data", corpus, "--epochs", "1", "--device", device, "--run-dir", run,
             *(["--max-steps-per-epoch", str(max_steps)] if max_steps else []),
             *([] if progress else ["--no-progress"]), *train_args]
    print("$ engine " + " ".join(shlex.quote(a) for a in prepare), flush=True)
    if engine_main(prepare) != 0:
        raise SystemExit(2)
    print("$ engine " + " ".join(shlex.quote(a) for a in train), flush=True)
    t0 = time.perf_counter()
    if engine_main(train) != 0:
        raise SystemExit(2)
    seconds = time.perf_counter() - t0
    engine = Engine.from_checkpoint(os.path.join(run, "checkpoint.h5"), device=device,
                                    verbose=False)
    test = engine.evaluate(corpus, split="test")
    unigram = add_one_unigram_perplexity(corpus)
    from engine.data import open_lm_corpus
    with open_lm_corpus(corpus) as c:
        splits = {s: c.split_length(s) for s in c.splits}
        unk_rate = {s: float(numpy.mean(c.tokens(s) == c.unk_id)) for s in c.splits}
        vocab_size = c.vocab_size
    return {"text": text, "prepare": prepare[1:], "train": train[1:],
            "vocab_size": vocab_size, "splits": splits, "unk_rate": unk_rate, "steps": engine.step,
            "train_seconds": seconds, "device": engine.device,
            "test_perplexity": float(test["perplexity"]), "unigram_test_perplexity": unigram,
            "ratio": float(test["perplexity"]) / unigram}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--text", default=None, help="a UTF-8 text file (default: the shipped SOTU "
                                                  "addresses written out as one .txt)")
    p.add_argument("--max-lines", type=int, default=None, help="only the first N lines")
    p.add_argument("--sentences", action="store_true",
                   help="the SOTU text with one sentence per line (default: one address or "
                        "paragraph per line, as in the archive)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    p.add_argument("--max-steps-per-epoch", type=int, default=None,
                   help="cut the epoch (quick runs; the result then says so)")
    p.add_argument("--prepare-args", default="", help="more `engine prepare text` flags")
    p.add_argument("--train-args", default="", help="more `engine train` flags")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--keep", default=None, help="a folder to keep the files in")
    p.add_argument("--json", default=None, help="write the numbers to this file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or tmp
        os.makedirs(workdir, exist_ok=True)
        text = os.path.join(workdir, "corpus.txt")
        if args.text:
            lines = copy_lines(args.text, text, args.max_lines)
        else:
            lines = write_sotu_text(text, max_lines=args.max_lines, sentences=args.sentences)
        print(f"{text}: {lines:,} lines ({os.path.getsize(text) / 1e6:.1f} MB) from "
              f"{args.text or 'the shipped State of the Union addresses'}", flush=True)
        result = run_check(text, workdir, device=args.device, max_steps=args.max_steps_per_epoch,
                           prepare_args=shlex.split(args.prepare_args),
                           train_args=shlex.split(args.train_args), progress=not args.no_progress)
    result["lines"] = lines
    print(f"test perplexity: model {result['test_perplexity']:.1f}, add-one unigram "
          f"{result['unigram_test_perplexity']:.1f} (ratio {result['ratio']:.3f}) after "
          f"{result['steps']:,} steps ({result['train_seconds']:.0f} s on {result['device']}); "
          f"vocabulary {result['vocab_size']:,} words; tokens (<unk> share) "
          + ", ".join(f"{s} {n:,} ({100 * result['unk_rate'][s]:.1f}%)"
                      for s, n in result["splits"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
