"""Optimizers for the engine: SGD and Adam(W), dense and row-sparse updates, lr schedules.

`make_optimizer("sgd" | "adam", **kw)` builds one by name; `optimizer_from_config(cfg)` rebuilds
one from `opt.config()` (checkpoints). Files: base.py (the protocol and step loop), sgd.py,
adam.py, clipping.py (global-norm clipping on the device), schedules.py.
"""
from __future__ import annotations

from .adam import Adam
from .base import Optimizer
from .clipping import clip_grads_, global_grad_norm
from .schedules import (Constant, Cosine, LinearWarmup, Plateau, Schedule, StepDecay,
                        make_schedule)
from .sgd import SGD

#: name -> class: the optimizers `make_optimizer` and `engine train --optimizer` know
OPTIMIZERS = {"sgd": SGD, "adam": Adam}
_OPTIMIZERS = OPTIMIZERS


def make_optimizer(name: str, **kw) -> Optimizer:
    """An optimizer by name ("sgd", "adam"); `schedule` may be a spec string/dict/Schedule."""
    key = str(name).lower()
    if key not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(_OPTIMIZERS)}")
    return _OPTIMIZERS[key](**kw)


def optimizer_from_config(cfg) -> Optimizer:
    """Rebuild an optimizer from `opt.config()`."""
    cfg = dict(cfg)
    return make_optimizer(cfg.pop("name"), **cfg)


__all__ = ["Optimizer", "SGD", "Adam", "OPTIMIZERS", "make_optimizer", "optimizer_from_config",
           "Schedule", "Constant", "StepDecay", "Cosine", "LinearWarmup", "Plateau",
           "make_schedule", "clip_grads_", "global_grad_norm"]
