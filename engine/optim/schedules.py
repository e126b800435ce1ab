"""Learning-rate schedules: pure maps (base_lr, step, epoch) -> lr, plus Plateau's feedback.

A schedule is called as `schedule(base_lr, step, epoch)` where `step` is the number of optimizer
steps already taken (0 for the first step) and `epoch` the 0-based epoch the step belongs to; it
returns a Python float. Schedules hold no arrays and run on the host only.

- `Constant()`                                  lr = base_lr
- `StepDecay(every_epochs, factor)`             lr = base_lr * factor ** (epoch // every_epochs)
- `Cosine(total_steps, min_lr=0, warmup_steps=0)`
      step < warmup: lr = base_lr * (step + 1) / warmup_steps   (the first step is never 0)
      else:          lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2,
                     p = min(1, (step - warmup) / max(1, total_steps - warmup))
      `total_steps` may be left None and filled in by the engine with `set_total_steps(n)`.
- `LinearWarmup(warmup_steps, inner=Constant())` lr = min(1, (step + 1) / warmup) * inner(...)
- `Plateau(factor=0.5, patience=0, threshold=0, mode="min", min_lr=0)`: the classic LM schedule.
      The engine calls `observe(metric)` once per epoch with the validation metric; when the
      metric has not improved on the best seen (relative `threshold`: "min" mode needs
      metric < best - threshold * |best|) for more than `patience` epochs in a row, the lr
      multiplier is multiplied by `factor`. lr = max(base_lr * multiplier, min_lr).

Every schedule has `observe(metric)` (a no-op except for Plateau, forwarded by wrappers) so the
engine may call it unconditionally, `set_total_steps(n)` (used by Cosine), `config()` /
`Schedule.from_config(cfg)` (JSON-able) and `state_dict()` / `load_state_dict(state)` (flat dict
of ints/floats; only Plateau, and a Cosine whose horizon was set at run time, have any).

`make_schedule(spec)` builds one from None, a Schedule, a config dict or a string:
"constant", "step:2:0.5", "cosine:1000", "cosine:1000:0.0:100", "plateau:0.5", "plateau:0.5:1",
"warmup:100", "warmup:100+cosine:1000" (warmup wrapping an inner schedule). String arguments
are positional in constructor order, or `name=value`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

_REGISTRY: Dict[str, type] = {}


def _register(cls):
    _REGISTRY[cls.name] = cls
    return cls


class Schedule:
    """Base class: constant learning rate, no state."""

    name = "schedule"

    def __call__(self, base_lr: float, step: int, epoch: int) -> float:
        raise NotImplementedError

    def observe(self, metric) -> bool:
        """Feed the epoch's validation metric; returns True when the lr was reduced."""
        return False

    def set_total_steps(self, total_steps: int):
        """Tell the schedule the training horizon (only Cosine uses it)."""

    def config(self) -> Dict[str, Any]:
        return {"name": self.name}

    @staticmethod
    def from_config(cfg: Dict[str, Any]) -> "Schedule":
        cfg = dict(cfg)
        name = cfg.pop("name", None)
        if name not in _REGISTRY:
            raise ValueError(f"unknown schedule {name!r}; known: {sorted(_REGISTRY)}")
        return _REGISTRY[name](**cfg)

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]):
        pass

    def spec(self) -> str:
        """The string `make_schedule` turns back into this schedule ("plateau:factor=0.5:...");
        a run's config.toml records it."""
        args = [f"{k}={_format_value(v)}" for k, v in self.config().items() if k != "name"]
        return ":".join([self.name] + args)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


@_register
class Constant(Schedule):
    name = "constant"

    def __call__(self, base_lr, step, epoch):
        return float(base_lr)


@_register
class StepDecay(Schedule):
    """lr = base_lr * factor ** (epoch // every_epochs)."""

    name = "step"

    def __init__(self, every_epochs: int = 1, factor: float = 0.5):
        if int(every_epochs) < 1:
            raise ValueError(f"StepDecay: every_epochs must be >= 1, got {every_epochs}")
        self.every_epochs = int(every_epochs)
        self.factor = float(factor)

    def __call__(self, base_lr, step, epoch):
        return float(base_lr) * self.factor ** (int(epoch) // self.every_epochs)

    def config(self):
        return {"name": self.name, "every_epochs": self.every_epochs, "factor": self.factor}


@_register
class Cosine(Schedule):
    """Cosine decay from base_lr to min_lr over total_steps, after an optional linear warmup."""

    name = "cosine"

    def __init__(self, total_steps: Optional[int] = None, min_lr: float = 0.0,
                 warmup_steps: int = 0):
        self.total_steps = None if total_steps is None else int(total_steps)
        self.min_lr = float(min_lr)
        self.warmup_steps = int(warmup_steps)
        self._set_at_run_time = False

    def set_total_steps(self, total_steps):
        if self.total_steps is None or self._set_at_run_time:
            self.total_steps = int(total_steps)
            self._set_at_run_time = True

    def __call__(self, base_lr, step, epoch):
        step = int(step)
        if step < self.warmup_steps:
            return float(base_lr) * (step + 1) / self.warmup_steps
        if self.total_steps is None:
            raise ValueError("Cosine schedule: total_steps is unknown; pass it to Cosine(...) or "
                             "call set_total_steps(n) before training")
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (float(base_lr) - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def config(self):
        return {"name": self.name, "total_steps": self.total_steps, "min_lr": self.min_lr,
                "warmup_steps": self.warmup_steps}

    def spec(self):
        # a horizon the engine set from the run's length is left for the next run to set
        args = {"min_lr": self.min_lr, "warmup_steps": self.warmup_steps}
        if not self._set_at_run_time and self.total_steps is not None:
            args = {"total_steps": self.total_steps, **args}
        return ":".join([self.name] + [f"{k}={_format_value(v)}" for k, v in args.items()])

    def state_dict(self):
        return {"total_steps": self.total_steps} if self._set_at_run_time else {}

    def load_state_dict(self, state):
        if "total_steps" in state:
            self.total_steps = int(state["total_steps"])
            self._set_at_run_time = True


@_register
class LinearWarmup(Schedule):
    """lr = min(1, (step + 1) / warmup_steps) * inner(base_lr, step, epoch)."""

    name = "warmup"

    def __init__(self, warmup_steps: int, inner=None):
        if int(warmup_steps) < 0:
            raise ValueError(f"LinearWarmup: warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.inner = make_schedule(inner)

    def __call__(self, base_lr, step, epoch):
        lr = self.inner(base_lr, step, epoch)
        if int(step) < self.warmup_steps:
            lr *= (int(step) + 1) / self.warmup_steps
        return lr

    def observe(self, metric):
        return self.inner.observe(metric)

    def set_total_steps(self, total_steps):
        self.inner.set_total_steps(total_steps)

    def config(self):
        return {"name": self.name, "warmup_steps": self.warmup_steps, "inner": self.inner.config()}

    def spec(self):
        return f"{self.name}:warmup_steps={self.warmup_steps}+{self.inner.spec()}"

    def state_dict(self):
        return {f"inner/{k}": v for k, v in self.inner.state_dict().items()}

    def load_state_dict(self, state):
        self.inner.load_state_dict({k[len("inner/"):]: v for k, v in state.items()
                                    if k.startswith("inner/")})


@_register
class Plateau(Schedule):
    """Reduce the lr by `factor` when the validation metric stops improving (see module doc)."""

    name = "plateau"

    def __init__(self, factor: float = 0.5, patience: int = 0, threshold: float = 0.0,
                 mode: str = "min", min_lr: float = 0.0):
        if not 0.0 < float(factor) < 1.0:
            raise ValueError(f"Plateau: factor must be in (0, 1), got {factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"Plateau: mode must be 'min' or 'max', got {mode!r}")
        self.factor = float(factor)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.mode = mode
        self.min_lr = float(min_lr)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad = 0
        self.multiplier = 1.0

    def __call__(self, base_lr, step, epoch):
        return max(float(base_lr) * self.multiplier, self.min_lr)

    def _improved(self, metric: float) -> bool:
        if math.isnan(metric):
            return False
        if math.isinf(self.best):
            return metric < self.best if self.mode == "min" else metric > self.best
        margin = self.threshold * abs(self.best)
        if self.mode == "min":
            return metric < self.best - margin
        return metric > self.best + margin

    def observe(self, metric):
        metric = float(metric)
        if self._improved(metric):
            self.best = metric
            self.num_bad = 0
            return False
        self.num_bad += 1
        if self.num_bad > self.patience:
            self.multiplier *= self.factor
            self.num_bad = 0
            return True
        return False

    def config(self):
        return {"name": self.name, "factor": self.factor, "patience": self.patience,
                "threshold": self.threshold, "mode": self.mode, "min_lr": self.min_lr}

    def state_dict(self):
        return {"best": float(self.best), "num_bad": int(self.num_bad),
                "multiplier": float(self.multiplier)}

    def load_state_dict(self, state):
        self.best = float(state["best"])
        self.num_bad = int(state["num_bad"])
        self.multiplier = float(state["multiplier"])


def _format_value(value) -> str:
    """A value as `_parse_value` reads it back (floats exactly, via repr)."""
    if value is None:
        return "none"
    return repr(value) if isinstance(value, float) else str(value)


def _parse_value(text: str):
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    try:
        return int(low)
    except ValueError:
        pass
    try:
        return float(low)
    except ValueError:
        return text.strip()


def _from_string(spec: str) -> Schedule:
    if "+" in spec:
        outer, inner = spec.split("+", 1)
        sched = _from_string(outer)
        if not isinstance(sched, LinearWarmup):
            raise ValueError(f"schedule {spec!r}: only 'warmup:N' can wrap another schedule "
                             "with '+'")
        sched.inner = _from_string(inner)
        return sched
    name, *parts = [p.strip() for p in spec.strip().split(":")]
    name = name.lower()
    if name not in _REGISTRY:
        raise ValueError(f"unknown schedule {name!r} in {spec!r}; known: {sorted(_REGISTRY)}")
    args, kwargs = [], {}
    for part in parts:
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            kwargs[k.strip()] = _parse_value(v)
        else:
            args.append(_parse_value(part))
    try:
        return _REGISTRY[name](*args, **kwargs)
    except TypeError as exc:
        raise ValueError(f"schedule {spec!r}: {exc}") from None


def make_schedule(spec=None) -> Schedule:
    """A Schedule from None (Constant), a Schedule, a config dict, or a string spec."""
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, dict):
        return Schedule.from_config(spec)
    if isinstance(spec, str):
        return _from_string(spec)
    raise TypeError(f"cannot make a schedule from {type(spec).__name__}: {spec!r}")


__all__ = ["Schedule", "Constant", "StepDecay", "Cosine", "LinearWarmup", "Plateau",
           "make_schedule"]
