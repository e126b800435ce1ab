"""Scores of models that learned nothing (or only the label/word frequencies), measured on the
same data a test trains on, so a learning test asserts a margin above a baseline instead of a
fixed number. Imported by test modules (`from baselines import unigram_perplexity`).

- `unigram_perplexity`: a language model's split scored by the add-one (Laplace) unigram of the
  training split: p(w) = (count(w) + 1) / (N + V); every token of the split is a target, as in
  `Engine.evaluate`. (A model that learned nothing scores V, the uniform distribution.)
- `most_frequent_label_p_at_1`: an XMC split scored by always predicting the label most frequent
  in the training split (P@1 = the fraction of rows that carry it).
- `majority_class_accuracy`: a single-label split scored by always predicting the class most
  frequent in the training split.
"""
from __future__ import annotations

import numpy


def unigram_perplexity(corpus_path, split="test"):
    from engine.data import open_lm_corpus
    with open_lm_corpus(str(corpus_path)) as corpus:
        V = corpus.vocab_size
        train, target = corpus.tokens("train"), corpus.tokens(split)
    counts = numpy.bincount(train, minlength=V).astype(numpy.float64)
    p = (counts + 1.0) / (counts.sum() + V)
    return float(numpy.exp(-numpy.log(p[target]).mean()))


def most_frequent_label_p_at_1(xmc_path, split="test"):
    from engine.data.xmc import read_split
    _, _, train_labels = read_split(str(xmc_path), "train")
    top = int(numpy.bincount(train_labels).argmax())
    _, indptr, labels = read_split(str(xmc_path), split)
    rows = len(indptr) - 1
    hits = sum(top in labels[indptr[i]:indptr[i + 1]] for i in range(rows))
    return hits / rows


def majority_class_accuracy(classification_path, split="test"):
    from engine.data.classification import open_classification
    with open_classification(str(classification_path)) as data:
        _, y_train = data.read("train")
        _, y = data.read(split)
    top = int(numpy.bincount(numpy.asarray(y_train, dtype=numpy.int64)).argmax())
    return float(numpy.mean(numpy.asarray(y) == top))
