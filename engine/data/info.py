"""`DatasetInfo`: everything the engine needs to know about a dataset file, read in one open.

`engine.data.registry.describe(path)` returns one; the command line builds the model from it
(engine/models/build.py), the Engine makes its loaders from it without reopening the file to
decide its kind, and output layers get their arrays from it (the adaptive softmax's word counts,
the multi-label outputs' training label counts), never a path.

Dimension letters: V vocabulary words, L labels (= num_classes of a multi-label file).

    path          absolute path of the file
    format        its `format` attribute: engine-lm-corpus, engine-classification, engine-xmc
    kind          "lm-corpus" (token streams for a language model) or "classification"
    splits        {split: examples} for every split the file holds (tokens for a corpus; a
                  split may be empty), in the order train, valid, test
    num_train     examples of the training split (None when the file has none)
  language-model corpus (kind "lm-corpus"; None otherwise):
    vocab_size, vocab (tuple of V words, id order), vocab_hash (sha256 of the vocabulary),
    word_counts ((V,) int64 training counts, frequency-sorted), unk_id, eos_id, min_count,
    tokenizer ("whitespace" | "words"), lowercase
  classification (kind "classification"; None otherwise):
    num_features, num_classes, multilabel, sparse,
    label_counts  ((L,) int64 training points per label; multi-label files only)
  attrs         every root attribute (Python scalars), for what the fields above leave out
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy

LM_CORPUS = "lm-corpus"
CLASSIFICATION = "classification"


@dataclass(frozen=True, eq=False)         # arrays inside: compare summary() instead
class DatasetInfo:
    path: str
    format: str
    kind: str
    splits: Dict[str, int]
    num_train: Optional[int] = None
    # language-model corpus
    vocab_size: Optional[int] = None
    vocab: Optional[Tuple[str, ...]] = field(default=None, repr=False)
    vocab_hash: Optional[str] = field(default=None, repr=False)
    word_counts: Optional[numpy.ndarray] = field(default=None, repr=False)
    unk_id: Optional[int] = None
    eos_id: Optional[int] = None
    min_count: Optional[int] = None
    tokenizer: Optional[str] = None
    lowercase: Optional[bool] = None
    # classification
    num_features: Optional[int] = None
    num_classes: Optional[int] = None
    multilabel: bool = False
    sparse: bool = False
    label_counts: Optional[numpy.ndarray] = field(default=None, repr=False)
    attrs: Dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.kind not in (LM_CORPUS, CLASSIFICATION):
            raise ValueError(f"DatasetInfo: kind must be {LM_CORPUS!r} or {CLASSIFICATION!r}, "
                             f"got {self.kind!r}")

    def has_split(self, split: str) -> bool:
        """The file holds `split` with at least one example."""
        return self.splits.get(split, 0) > 0

    @property
    def num_outputs(self) -> int:
        """Size of the model's output: the vocabulary or the number of classes."""
        return self.vocab_size if self.kind == LM_CORPUS else self.num_classes

    def summary(self) -> dict:
        """A JSON-able dict of the scalar fields (no vocabulary or count arrays)."""
        out = {"path": self.path, "format": self.format, "kind": self.kind,
               "splits": dict(self.splits), "num_train": self.num_train}
        if self.kind == LM_CORPUS:
            out.update(vocab_size=self.vocab_size, vocab_hash=self.vocab_hash,
                       unk_id=self.unk_id, eos_id=self.eos_id, min_count=self.min_count,
                       tokenizer=self.tokenizer, lowercase=self.lowercase)
        else:
            out.update(num_features=self.num_features, num_classes=self.num_classes,
                       multilabel=self.multilabel, sparse=self.sparse)
        return out

    def summary_line(self, seconds: Optional[float] = None) -> str:
        """One line for a person: the file, its sizes and examples per split, e.g.
        `mnist.h5: classification, 784 features, 10 classes; train 55,000, valid 5,000, test
        10,000 examples; 1.2 s; source: ...`."""
        splits = ", ".join(f"{s} {n:,}" for s, n in self.splits.items())
        if self.kind == LM_CORPUS:
            what = f"language-model corpus, vocabulary {self.vocab_size:,} words"
            unit = "tokens"
        else:
            what = (f"{'multi-label' if self.multilabel else 'classification'}"
                    f"{', sparse' if self.sparse else ''}, {self.num_features:,} features, "
                    f"{self.num_classes:,} {'labels' if self.multilabel else 'classes'}")
            unit = "examples"
        line = f"{self.path}: {what}; {splits or 'no'} {unit}"
        if seconds is not None:
            line += f"; {seconds:.1f} s"
        source = self.attrs.get("source")
        return line + (f"; source: {source}" if source else "")


def scalar_attrs(attrs) -> Dict[str, Any]:
    """HDF5 root attributes as Python scalars (bytes decoded, numpy scalars unwrapped)."""
    out = {}
    for key, value in dict(attrs).items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, numpy.generic):
            value = value.item()
        out[str(key)] = value
    return out


__all__ = ["DatasetInfo", "LM_CORPUS", "CLASSIFICATION", "scalar_attrs"]
