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


from .adaptive import AdaptiveSoftmaxOutput  # noqa: E402

register_output("adaptive", AdaptiveSoftmaxOutput)

from .factored import FACTORED_OUTPUTS  # noqa: E402  (issue 3: exact factored output layer)
from .spherical_dense import SphericalDenseOutput, TaylorDenseOutput, ZLossDenseOutput  # noqa: E402

for _name, _cls in FACTORED_OUTPUTS.items():
    register_output(_name, _cls)
register_output("spherical-dense", SphericalDenseOutput)
register_output("taylor-dense", TaylorDenseOutput)
register_output("zloss-dense", ZLossDenseOutput)

from .multilabel import BCEOutput, SquaredHingeOutput  # noqa: E402  (issue 6: XMC, dense or FFI)

register_output("squared-hinge", SquaredHingeOutput)
register_output("bce", BCEOutput)


def make_output(name: str, in_features: int, num_classes: int, **kwargs):
    try:
        cls = OUTPUTS[name]
    except KeyError:
        raise ValueError(f"unknown output {name!r}; choose from {sorted(OUTPUTS)}") from None
    return cls(in_features, num_classes, **kwargs)


__all__ = ["SoftmaxOutput", "SquaredErrorOutput", "AdaptiveSoftmaxOutput", "SphericalDenseOutput",
           "TaylorDenseOutput", "ZLossDenseOutput", "SquaredHingeOutput", "BCEOutput", "OUTPUTS",
           "register_output", "make_output"]
