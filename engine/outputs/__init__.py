"""Output layers over huge outputs, chosen by name with `make_output(name, in_features, num_classes, **kw)`.

Every output layer is listed once, in the `OUTPUTS` table below: the name the command line and
the model configs use, and the class. A new output is one import and one line here; its class
declares its constructor's user options in `OPTIONS` (engine/options.py: they become
`engine train` flags), the other keywords in `NOT_OPTIONS` with the reason, the keywords it takes
from the data in `FROM_DATA` ({keyword: DatasetInfo field}, arrays, never paths) and the targets
it takes in `TARGETS` ("one", "many"); tests/test_options.py checks the declarations against
the constructor.

    softmax            exact softmax cross-entropy, whole or chunked (softmax.py)
    squared            dense squared error, one-hot or K-hot (the factored layer's naive baseline)
    adaptive           adaptive softmax (adaptive.py, cutoffs in adaptive_cutoffs.py)
    factored-*         exact factored layer for sparse targets: squared, spherical, taylor, zloss
    *-dense            dense references of the spherical family (spherical_dense.py)
    squared-hinge, bce multi-label losses over dense or fixed fan-in weights (multilabel.py)
"""
from __future__ import annotations

from .adaptive import AdaptiveSoftmaxOutput
from .factored import (FactoredSphericalOutput, FactoredSquaredOutput, FactoredTaylorOutput,
                       FactoredZLossOutput)
from .multilabel import BCEOutput, SquaredHingeOutput
from .softmax import SoftmaxOutput
from .spherical_dense import SphericalDenseOutput, TaylorDenseOutput, ZLossDenseOutput
from .squared import SquaredErrorOutput

OUTPUTS = {
    "softmax": SoftmaxOutput,
    "squared": SquaredErrorOutput,
    "adaptive": AdaptiveSoftmaxOutput,
    "factored-squared": FactoredSquaredOutput,
    "factored-spherical": FactoredSphericalOutput,
    "factored-taylor": FactoredTaylorOutput,
    "factored-zloss": FactoredZLossOutput,
    "spherical-dense": SphericalDenseOutput,
    "taylor-dense": TaylorDenseOutput,
    "zloss-dense": ZLossDenseOutput,
    "squared-hinge": SquaredHingeOutput,
    "bce": BCEOutput,
}


def keywords(cls):
    """The keyword arguments an output's constructor takes (besides in_features and
    num_classes), or None when it takes any (`**kwargs`)."""
    import inspect
    names = set()
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if p.kind == p.VAR_KEYWORD:
            return None
        if name not in ("self", "in_features", "num_classes") and p.kind != p.VAR_POSITIONAL:
            names.add(name)
    return names


def make_output(name: str, in_features: int, num_classes: int, **kwargs):
    try:
        cls = OUTPUTS[name]
    except KeyError:
        raise ValueError(f"unknown output {name!r}; choose from {sorted(OUTPUTS)}") from None
    known = keywords(cls)
    unknown = [k for k in kwargs if known is not None and k not in known]
    if unknown:
        raise ValueError(f"{name}: unknown arguments {unknown} (known: {', '.join(sorted(known))})")
    return cls(in_features, num_classes, **kwargs)


__all__ = ["SoftmaxOutput", "SquaredErrorOutput", "AdaptiveSoftmaxOutput",
           "FactoredSquaredOutput", "FactoredSphericalOutput", "FactoredTaylorOutput",
           "FactoredZLossOutput", "SphericalDenseOutput", "TaylorDenseOutput", "ZLossDenseOutput",
           "SquaredHingeOutput", "BCEOutput", "OUTPUTS", "make_output", "keywords"]
