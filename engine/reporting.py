"""Numbers as a run reports them: a perplexity that may exceed float range, and JSON that a
strict reader takes.

    perplexity(loss)        exp(loss), or inf beyond float range (loss > ~709.78)
    show_perplexity(ppl)    "11.27"; "1.393e+65" when huge; "inf"
    json_safe(obj)          non-finite floats as the strings "inf", "-inf", "nan"

JSON has no infinity: Python's json module would write the bare word Infinity, which strict
readers (jq, JavaScript) refuse, so --json lines and metrics.json carry the string "inf"
instead (float("inf") reads it back).
"""
from __future__ import annotations

import math


def perplexity(loss):
    """exp(loss) (per-token cross-entropy in nats), inf when it exceeds float range."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def show_perplexity(value):
    """A perplexity for a log line: two decimals, scientific notation from a million, "inf"."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2f}" if abs(value) < 1e6 else f"{value:.4g}"


def json_safe(obj):
    """`obj` with every non-finite float (also inside dicts, lists, tuples, NumPy scalars)
    replaced by "inf", "-inf" or "nan"."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) or type(obj).__name__.startswith("float"):
        try:
            value = float(obj)
        except (TypeError, ValueError):
            return obj
        return value if math.isfinite(value) else str(value)
    return obj


__all__ = ["perplexity", "show_perplexity", "json_safe"]
