"""Feed-forward classifier: dense or sparse (bag-of-words) input -> hidden layers -> output.

    x (B, F) dense float, or a CSR minibatch (scipy.sparse / cupyx.scipy.sparse) when sparse_input
    -> [Linear (SparseLinear for CSR input) -> activation -> dropout] x len(hidden)
    -> [Linear -> ReLU]  when `intermediate` (the XMC intermediate layer)
    -> output layer over the C classes, chosen by name: "softmax" (one label per example,
       targets (B,) int, -1 = ignored), or a multi-label output ("squared-hinge", "bce"; targets
       (B, K) int padded with -1), whose weights may be dense or fixed fan-in.

meProp (docs/meprop.md): `meprop={"k": 30, "mode": "per-example"|"unified"|"random",
"seed": 0, "output": False}` is passed to every hidden Linear (their output gradients keep k
entries per example); "output": True also hands it to the output layer, when that layer
supports it. The sparse input layer has no input gradient, so backward stops there.

Multi-label targets are sets: a label named twice in an example's list is one positive (y = 1
at each positive label, 0 elsewhere, for every output). The squared hinge and BCE read the
labels as a mask, where a repeat changes nothing; the squared-error family (factored-squared)
would count it twice, so the model hands the output each example's distinct labels (a sort of
the (B, K) ids per minibatch).

Evaluation: the output's metric sums, plus "accuracy" (top-1) for single-label targets;
`reports_perplexity` is False (a classifier's mean loss is reported as is).
"""
from __future__ import annotations

from typing import Sequence

import numpy

from ..layers import Dropout, Linear, make_activation
from ..outputs import OUTPUTS, keywords, make_output
from ..outputs.xmc_metrics import unique_targets
from ..options import ANY, Option, at_least, parse_int, parse_str
from .base import Model, body_options


def _is_sparse(x):
    """A CSR minibatch (scipy or cupyx) rather than a dense array."""
    return hasattr(x, "indptr") and hasattr(x, "indices")


_MEPROP = ("meprop_k", ANY)


class MLPClassifier(Model):
    kind = "mlp-classifier"
    data_kind = "classification"
    reports_perplexity = False
    OPTIONS = body_options((500, 500), "relu", "hidden widths") + (
        Option("intermediate", parse_int, None, "width of a dense ReLU layer just before the "
               "output (XMC)", check=at_least(1)),
        Option("meprop_k", parse_int, None, "meProp: keep the k largest output-gradient entries "
               "per example in each hidden layer", part_of="meprop", key="k", check=at_least(1)),
        Option("meprop_mode", parse_str, "per-example", "meProp: which entries are kept",
               part_of="meprop", key="mode", choices=("per-example", "unified", "random"),
               when=_MEPROP),
        Option("meprop_output", default=False, switch=True, help="meProp also on the output "
               "layer (when it supports it)", part_of="meprop", key="output", when=_MEPROP),
        Option("meprop_seed", parse_int, 0, "meProp random mode: seed", part_of="meprop",
               key="seed", check=at_least(0), default_from="seed", when=_MEPROP),
    )
    NOT_OPTIONS = {"num_features": "the data's features (DatasetInfo.num_features)",
                   "num_classes": "the data's classes (DatasetInfo.num_classes)",
                   "sparse_input": "whether the data's features are sparse (DatasetInfo.sparse)"}

    @classmethod
    def default_output(cls, info) -> str:
        """Softmax for one label per example; the squared hinge for multi-label data."""
        return "squared-hinge" if info.multilabel else "softmax"

    def __init__(self, num_features: int, num_classes: int, hidden: Sequence[int] = (500, 500),
                 activation: str = "relu", dropout: float = 0.0, sparse_input: bool = False,
                 intermediate: int | None = None, output: str = "softmax",
                 output_kwargs: dict | None = None, meprop: dict | None = None):
        super().__init__()
        if num_features < 1 or num_classes < 2:
            raise ValueError(f"MLPClassifier: need num_features >= 1 and num_classes >= 2, got "
                             f"{num_features} and {num_classes}")
        if sparse_input and not hidden and not intermediate:
            raise ValueError("MLPClassifier: sparse input needs a hidden or intermediate layer "
                             "(the output layers take a dense h)")
        self.num_features, self.num_classes = int(num_features), int(num_classes)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation, self.dropout = activation, float(dropout)
        self.sparse_input = bool(sparse_input)
        self.intermediate = None if not intermediate else int(intermediate)
        self.output_name, self.output_kwargs = output, dict(output_kwargs or {})
        self.meprop = None if meprop is None else dict(meprop)
        layer_kw = {"meprop": self.meprop} if self.meprop else {}

        self.body = []
        widths = list(self.hidden) + ([self.intermediate] if self.intermediate else [])
        activations = [activation] * len(self.hidden) + (["relu"] if self.intermediate else [])
        width = self.num_features
        for i, (w, act) in enumerate(zip(widths, activations)):
            if i == 0 and self.sparse_input:
                from ..layers.sparse_linear import SparseLinear
                self.body.append(SparseLinear(width, w))
            else:
                # the first layer's input is data: no gradient to compute for it
                self.body.append(Linear(width, w, input_grad=i > 0, **layer_kw))
            self.body.append(make_activation(act))
            if self.dropout > 0:
                self.body.append(Dropout(self.dropout))
            width = w
        out_kw = dict(self.output_kwargs)
        if self.meprop and self.meprop.get("output"):
            out_kw.setdefault("meprop", {k: v for k, v in self.meprop.items() if k != "output"})
        if "meprop" in out_kw and output in OUTPUTS and "meprop" not in (
                keywords(OUTPUTS[output]) or ()):
            raise ValueError(f"MLPClassifier: the {output!r} output does not support meProp "
                             f"(meprop 'output': True); the softmax output does")
        self.output = make_output(output, width, self.num_classes, **out_kw)
        self.layers = self.body + [self.output]

    # -- inputs ---------------------------------------------------------------------
    def check_inputs(self, x, targets=None):
        sparse = _is_sparse(x)
        if sparse != self.sparse_input:
            raise TypeError(f"{self.kind}: expected a {'CSR' if self.sparse_input else 'dense'} "
                            f"input minibatch, got {'CSR' if sparse else 'dense'}")
        if len(x.shape) != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{self.kind}: expected input (B, {self.num_features}), "
                             f"got {tuple(x.shape)}")
        if not sparse and x.dtype.kind != "f":
            raise TypeError(f"{self.kind}: input features must be floating point, got {x.dtype}")
        if targets is not None and targets.shape[0] != x.shape[0]:
            raise ValueError(f"{self.kind}: {x.shape[0]} inputs but {targets.shape[0]} targets")

    def validate_data(self, x, y, name="data"):
        """Check host arrays once before training on them: shapes, finite features, and every
        label in [0, C) (or -1 padding)."""
        y = numpy.asarray(y)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{name}: {x.shape[0]} inputs but {y.shape[0]} targets")
        if len(x.shape) != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{name}: inputs must be (N, {self.num_features}), got {tuple(x.shape)}")
        values = x.data if _is_sparse(x) else numpy.asarray(x)
        if not numpy.all(numpy.isfinite(values)):
            raise ValueError(f"{name}: inputs hold NaN or inf")
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name}: labels must be integers, got {y.dtype}")
        bad = numpy.flatnonzero((y.reshape(-1) < -1) | (y.reshape(-1) >= self.num_classes))
        if bad.size:
            pos = numpy.unravel_index(bad[0], y.shape)
            raise ValueError(f"{name}: label {y[pos]} at position {tuple(int(i) for i in pos)} is "
                             f"outside [0, {self.num_classes})")

    def check_dataset(self, info, path: str = "the dataset"):
        """The sizes a classification file declares (a DatasetInfo) must fit the model."""
        for key, mine in (("num_features", self.num_features), ("num_classes", self.num_classes)):
            theirs = getattr(info, key)
            if int(theirs) != mine:
                raise ValueError(f"{path}: {key} is {theirs} but the model has {mine}")
        if bool(info.sparse) != self.sparse_input:
            raise ValueError(f"{path}: {'sparse' if info.sparse else 'dense'} features but "
                             f"the model takes {'sparse' if self.sparse_input else 'dense'} input")

    def distinct_targets(self, targets):
        """K-hot targets (B, K) with each example's repeated labels replaced by -1 padding;
        one label per row (B,) as given."""
        return targets if targets.ndim != 2 else unique_targets(self.backend.xp, targets)

    def forward(self, x, targets, train=True):
        return super().forward(x, self.distinct_targets(targets), train)

    # -- evaluation -----------------------------------------------------------------------
    def eval_sums(self, x, targets):
        self.check_inputs(x, targets)
        targets = self.distinct_targets(targets)
        h = self.hidden_forward(x, False)
        sums = dict(self.output.eval_sums(h, targets))
        if targets.ndim == 1 and "correct" not in sums:     # single label: top-1 accuracy
            top, _ = self.output.predict_topk(h, 1)
            sums["correct"] = ((top[:, 0] == targets) & (targets >= 0)).sum()
        return sums

    def eval_finish(self, sums):
        sums = dict(sums)
        correct = sums.pop("correct", None)
        metrics = self.output.eval_finish(sums)
        if correct is not None:
            metrics["accuracy"] = correct / sums["count"]
        return metrics

    def config(self):
        out_kw = self.output_rebuild_kwargs()
        return {"num_features": self.num_features, "num_classes": self.num_classes,
                "hidden": list(self.hidden), "activation": self.activation,
                "dropout": self.dropout, "sparse_input": self.sparse_input,
                "intermediate": self.intermediate, "output": self.output_name,
                "output_kwargs": out_kw, "meprop": self.meprop}
