"""Output layers over huge outputs, chosen by name with `make_output(name, in_features, num_classes, **kw)`.

Names: "softmax" (exact softmax cross-entropy; `chunk_size` for the chunked mode),
"squared" (dense squared error, the naive baseline of the factored layer).
Later techniques register themselves here with `register_output(name, cls)`.
"""
from __future__ import annotations

from .softmax import SoftmaxOutput
from .squared import SquaredErrorOutput

OUTPUTS = {"softmax": SoftmaxOutput, "squared": SquaredErrorOutput}


def register_output(name: str, cls):
    OUTPUTS[name] = cls


def make_output(name: str, in_features: int, num_classes: int, **kwargs):
    try:
        cls = OUTPUTS[name]
    except KeyError:
        raise ValueError(f"unknown output {name!r}; choose from {sorted(OUTPUTS)}") from None
    return cls(in_features, num_classes, **kwargs)


__all__ = ["SoftmaxOutput", "SquaredErrorOutput", "OUTPUTS", "register_output", "make_output"]
