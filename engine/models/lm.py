"""Feed-forward (Bengio-style) n-gram language model.

ids (B, n) of the n previous words -> embeddings (B, n, E) -> concatenated (B, n E)
-> [Linear -> activation -> dropout] x len(hidden) -> output layer over the vocabulary
(chosen by name: "softmax", "squared", and the techniques of later issues).

`forward(x, targets, train)` returns the mean loss (0-d device array); `backward()` runs the
whole backward pass, leaving each layer's `grads` filled. `param_items()` lists
(key, layer, name) for the optimizer; layers with `owns_update` are listed in
`self_updating_layers()` instead.
"""
from __future__ import annotations

from typing import Sequence

import numpy

from ..layers import Dropout, Embedding, Linear, make_activation
from ..outputs import make_output
from ..options import Option, at_least, parse_int
from .base import Model, body_options


class MLPLanguageModel(Model):
    kind = "mlp-lm"
    data_kind = "lm-corpus"
    # the command line's default model is smaller than the constructor's: a few minutes per
    # epoch on a 2-core CPU over the shipped corpus
    OPTIONS = (
        Option("context", parse_int, 4, "previous words seen (n)", check=at_least(1)),
        Option("embed_dim", parse_int, 128, "embedding width", flag="--embed", check=at_least(1),
               cli_default=64),
        Option("hidden", parse_int, [512], "hidden widths", many=True, check=at_least(1),
               cli_default=[256], metavar="WIDTH"),
    ) + tuple(o for o in body_options((512,), "tanh", "") if o.name != "hidden")
    NOT_OPTIONS = {"vocab_size": "the corpus's vocabulary (DatasetInfo.vocab_size)"}

    def __init__(self, vocab_size: int, context: int = 4, embed_dim: int = 128,
                 hidden: Sequence[int] = (512,), activation: str = "tanh", dropout: float = 0.0,
                 output: str = "softmax", output_kwargs: dict | None = None):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"MLPLanguageModel: vocab_size must be >= 2, got {vocab_size}")
        if context < 1:
            raise ValueError(f"MLPLanguageModel: context must be >= 1, got {context}")
        self.vocab_size, self.context, self.embed_dim = int(vocab_size), int(context), int(embed_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation, self.dropout = activation, float(dropout)
        self.output_name, self.output_kwargs = output, dict(output_kwargs or {})

        self.embedding = Embedding(self.vocab_size, self.embed_dim)
        self.body = []                               # Linear, activation, [Dropout] per hidden layer
        width = self.context * self.embed_dim
        if self.dropout > 0:
            self.body.append(Dropout(self.dropout))  # on the concatenated embeddings
        for h in self.hidden:
            self.body += [Linear(width, h), make_activation(activation)]
            if self.dropout > 0:
                self.body.append(Dropout(self.dropout))
            width = h
        self.output = make_output(output, width, self.vocab_size, **self.output_kwargs)
        self.layers = [self.embedding] + self.body + [self.output]

    def check_inputs(self, x, targets=None):
        if x.ndim != 2 or x.shape[1] != self.context:
            raise ValueError(f"{self.kind}: expected contexts (B, {self.context}), got {tuple(x.shape)}")
        if x.dtype.kind not in "iu":
            raise TypeError(f"{self.kind}: contexts must be integer token ids, got {x.dtype}")
        if targets is not None and targets.shape[0] != x.shape[0]:
            raise ValueError(f"{self.kind}: {x.shape[0]} contexts but {targets.shape[0]} targets")

    def validate_data(self, x, y, name="data"):
        """Check host arrays once before training on them: shapes, and every id in the vocabulary
        (the GPU kernels cannot raise on an out-of-range id, so it is caught here)."""
        x, y = numpy.asarray(x), numpy.asarray(y)
        if x.ndim != 2 or x.shape[1] != self.context:
            raise ValueError(f"{name}: contexts must be (N, {self.context}), got {x.shape}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"{name}: targets must be ({x.shape[0]},), got {y.shape}")
        for what, a, low in (("contexts", x, 0), ("targets", y, -1)):
            if a.dtype.kind not in "iu":
                raise TypeError(f"{name}: {what} must be integer token ids, got {a.dtype}")
            bad = numpy.flatnonzero((a.reshape(-1) < low) | (a.reshape(-1) >= self.vocab_size))
            if bad.size:
                pos = numpy.unravel_index(bad[0], a.shape)
                raise ValueError(f"{name}: {what} id {a[pos]} at position {tuple(int(i) for i in pos)} "
                                 f"is outside the vocabulary [0, {self.vocab_size})")

    def check_dataset(self, info, path: str = "the corpus"):
        """The corpus's vocabulary (a DatasetInfo) must be the model's output."""
        if info.vocab_size != self.vocab_size:
            raise ValueError(f"{path}: vocabulary of {info.vocab_size} words but the model has "
                             f"{self.vocab_size} outputs (vocabulary mismatch)")

    def hidden_forward(self, x, train):
        emb = self.embedding.forward(x, train)
        return self.body_forward(emb.reshape(x.shape[0], self.context * self.embed_dim), train)

    def hidden_backward(self, dh):
        dh = self.body_backward(dh)
        self.embedding.backward(dh.reshape(-1, self.context, self.embed_dim))

    def config(self):
        out_kw = self.output_rebuild_kwargs()
        return {"vocab_size": self.vocab_size, "context": self.context,
                "embed_dim": self.embed_dim, "hidden": list(self.hidden),
                "activation": self.activation, "dropout": self.dropout,
                "output": self.output_name, "output_kwargs": out_kw}
