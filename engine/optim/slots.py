"""How many state buffers of a parameter's size an optimizer keeps, for memory reports.

`slot_count(optimizer)` takes None (no optimizer state: 0), an optimizer name ("sgd" 0,
"momentum" 1, "adam" 2), a slot count, or an Optimizer (the length of its `slots`).
"""
from __future__ import annotations

import numpy

#: state buffers per parameter, by optimizer name
SLOTS_BY_NAME = {"sgd": 0, "momentum": 1, "sgd-momentum": 1, "adam": 2, "adamw": 2}


def slot_count(optimizer) -> int:
    if optimizer is None:
        return 0
    if isinstance(optimizer, (int, numpy.integer)):
        return int(optimizer)
    if isinstance(optimizer, str):
        try:
            return SLOTS_BY_NAME[optimizer.lower()]
        except KeyError:
            raise ValueError(f"memory_report: unknown optimizer {optimizer!r} (known: "
                             f"{sorted(SLOTS_BY_NAME)}, or pass a slot count)") from None
    return len(optimizer.slots)


__all__ = ["SLOTS_BY_NAME", "slot_count"]
