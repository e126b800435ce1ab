"""When training has diverged: the loss checked at a sync point is NaN or infinite, or it has
risen far above the run's first loss.

    loss_problem(value, reference)   -> None, or the words saying what is wrong
    divergence_limit(reference)      -> the highest loss still taken as training

The reference is the loss of the run's first step (a model that has learnt nothing: about
log V for a softmax over V words, log C for C classes). A loss that climbs past

    reference + DEFAULT_FACTOR * max(|reference|, 1)

(about 11 times the start for a positive loss; the floor of 1 keeps a start near 0 from making
the limit tiny) is not a run that is still learning: a learning rate far too high sends it to
1e8 within a few steps without ever producing a NaN. An exploding loss, as a NaN, stops
training before the update is applied, and the last checkpoint written is kept
(engine/engine.py).
"""
from __future__ import annotations

import math

#: how far above the first loss training may go, in units of the first loss (at least 1)
DEFAULT_FACTOR = 10.0


def divergence_limit(reference, factor=DEFAULT_FACTOR):
    """The largest loss still taken as training, given the run's first loss."""
    return reference + factor * max(abs(reference), 1.0)


def loss_problem(value, reference, factor=DEFAULT_FACTOR):
    """None when `value` (a loss checked at a sync point) is fine; else a few words saying why
    training must stop. `reference`: the run's first loss (None: only finiteness is checked);
    `factor` None switches the explosion rule off."""
    if not math.isfinite(value):
        return f"loss became {value}"
    if reference is None or factor is None or not math.isfinite(reference):
        return None
    limit = divergence_limit(reference, factor)
    if value > limit:
        return (f"loss {value:.4g} is far above the run's first loss {reference:.4g} (the "
                f"limit is {limit:.4g})")
    return None


__all__ = ["DEFAULT_FACTOR", "divergence_limit", "loss_problem"]
