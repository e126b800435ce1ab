"""The optimizer protocol shared by SGD and Adam: binding, the step loop, clipping, state.

    opt.bind(backend)
    lr_used = opt.step(items, epoch=0)   # items: [(key, param, grad)], grad dense | RowSparseGrad | None
    opt.current_lr(epoch)                 # lr the next step will use (schedule applied)
    opt.observe(metric)                   # once per epoch: forwarded to the schedule (Plateau)
    opt.state_dict() / load_state_dict()  # host arrays and scalars, exact round trip
    opt.config()                          # JSON-able constructor args, schedule included

Shapes: a param is (V, D...) or any shape; a dense grad has the param's shape; a row-sparse grad
is `RowSparseGrad(rows (N,), values (N, D...), shape=(V, D...))`, coalesced to U unique rows
before use. Per-parameter state (momentum, Adam moments) is keyed by the item's `key`, created
lazily with the param's shape and dtype on the bound backend, and updated in place, as are the
params (layers keep references to their arrays).

Gradients are consumed by the step: clipping scales them in place and SGD folds weight decay
into them in place, so do not reuse a gradient array after `step`.

Layers with `owns_update=True` (the factored output) never reach the optimizer: the engine calls
`layer.apply_update(lr)` with the lr that `step` returned (the schedule value for that step).

`step_count` counts calls to `step` (also calls whose grads are all None); the schedule sees the
number of steps taken before the current one, Adam's bias correction the 1-based step number.
No kernel here: updates go through the backend primitives (`adam_step`, `adam_step_rows`) or
plain array expressions.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy

from ..row_sparse import RowSparseGrad

from ..options import Option, at_least, greater_than, parse_float, parse_str
from .clipping import clip_grads_
from .schedules import make_schedule

_SPARSE_MODES = ("lazy", "dense")


def common_options(lr):
    """The options every optimizer takes (engine/options.py), with its own default lr. The
    learning rate, its schedule, clipping and decay may change when a run resumes."""
    return (
        Option("lr", parse_float, lr, "learning rate (before the schedule)", check=greater_than(0),
               resumable=True),
        Option("weight_decay", parse_float, 0.0, "L2 weight decay (decoupled for Adam)",
               check=at_least(0), resumable=True),
        Option("clip_norm", parse_float, None, "clip the global gradient norm to this",
               flag="--clip", check=greater_than(0), resumable=True),
        Option("schedule", parse_str, None, "learning-rate schedule: constant | step:EVERY:FACTOR "
               "| cosine[:STEPS] | plateau:FACTOR | warmup:N+... (default constant)",
               resumable=True),
        Option("sparse_mode", parse_str, "lazy", "row-sparse gradients: lazy (only the rows "
               "touched move) or dense (densified, exact dense semantics)",
               choices=_SPARSE_MODES),
    )


class Optimizer:
    """Base class; subclasses define `name`, `slots` and `_update_dense` / `_update_rows`."""

    name = "optimizer"
    #: names of the per-parameter state buffers, each a {key: array} dict in `self.state`
    slots: tuple = ()
    #: the user options of the constructor (engine/options.py): the command line's flags
    OPTIONS: tuple = ()
    NOT_OPTIONS: dict = {}

    def __init__(self, lr, weight_decay=0.0, clip_norm=None, schedule=None, sparse_mode="lazy"):
        if not float(lr) > 0:         # 0 would train nothing
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        if clip_norm is not None and float(clip_norm) <= 0:
            raise ValueError(f"{type(self).__name__}: clip_norm must be > 0 or None, "
                             f"got {clip_norm}")
        if sparse_mode not in _SPARSE_MODES:
            raise ValueError(f"{type(self).__name__}: sparse_mode must be one of {_SPARSE_MODES},"
                             f" got {sparse_mode!r}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.schedule = make_schedule(schedule)
        self.sparse_mode = sparse_mode
        self.backend = None
        self.step_count = 0
        self.state: Dict[str, Dict[str, Any]] = {slot: {} for slot in self.slots}
        #: pre-clip global gradient norm of the last step (0-d float64 device array), or None
        #: when clipping is off; `grad_norm()` converts it to a float (a host sync).
        self.last_grad_norm = None

    # ---------------------------------------------------------------- set-up
    def bind(self, backend):
        """Attach to a backend; state loaded before binding moves to it now. Returns self."""
        self.backend = backend
        for slot in self.slots:
            for key, value in self.state[slot].items():
                self.state[slot][key] = self._to_backend(value)
        return self

    def _require_backend(self):
        if self.backend is None:
            raise RuntimeError(f"{type(self).__name__}: call bind(backend) before step()")
        return self.backend

    def _to_backend(self, value):
        """A private copy of `value` on the bound backend (never aliases the caller's array)."""
        backend = self.backend
        if backend.is_array(value):
            return value.copy()
        return backend.asarray(numpy.array(value, copy=True))

    # ------------------------------------------------------------ lr schedule
    def current_lr(self, epoch: int = 0) -> float:
        """The learning rate the next step will use (schedule applied)."""
        return float(self.schedule(self.lr, self.step_count, epoch))

    def observe(self, metric) -> bool:
        """Feed the epoch's validation metric to the schedule; True when the lr was reduced."""
        return self.schedule.observe(metric)

    def set_total_steps(self, total_steps: int):
        """Tell the schedule the training horizon (Cosine without total_steps needs it)."""
        self.schedule.set_total_steps(total_steps)

    def grad_norm(self):
        """`last_grad_norm` as a Python float (synchronises with the device), or None."""
        if self.last_grad_norm is None:
            return None
        return float(self.backend.to_host(self.last_grad_norm))

    # ------------------------------------------------------------------ step
    def _prepare(self, items):
        """Drop None grads, coalesce row-sparse grads, check keys/shapes/dtypes."""
        backend = self.backend
        prepared, seen = [], set()
        for key, param, grad in items:
            if grad is None:
                continue
            if key in seen:
                raise ValueError(f"{type(self).__name__}.step: key {key!r} appears twice")
            seen.add(key)
            if isinstance(grad, RowSparseGrad):
                if tuple(grad.shape) != tuple(param.shape):
                    raise ValueError(f"{key}: row-sparse grad of shape {tuple(grad.shape)} for a "
                                     f"param of shape {tuple(param.shape)}")
                grad = grad.coalesced(backend)
                if grad.values.dtype != param.dtype:
                    grad = RowSparseGrad(grad.rows, grad.values.astype(param.dtype), grad.shape,
                                         unique=True)
            else:
                backend.check_array(grad, f"{key} grad")
                if tuple(grad.shape) != tuple(param.shape):
                    raise ValueError(f"{key}: grad of shape {tuple(grad.shape)} for a param of "
                                     f"shape {tuple(param.shape)}")
                if grad.dtype != param.dtype:
                    grad = grad.astype(param.dtype)
            prepared.append((key, param, grad))
        return prepared

    def step(self, items, epoch: int = 0) -> float:
        """Update every param in place from its grad; returns the lr used for this step."""
        self._require_backend()
        lr = self.current_lr(epoch)
        prepared = self._prepare(items)
        if self.clip_norm is not None:
            grads = [grad for _, _, grad in prepared]
            self.last_grad_norm = clip_grads_(self.backend, grads, self.clip_norm) if grads else None
        self.step_count += 1
        for key, param, grad in prepared:
            if isinstance(grad, RowSparseGrad):
                if self.sparse_mode == "dense":
                    self._update_dense(key, param, grad.to_dense(self.backend), lr)
                else:
                    self._update_rows(key, param, grad.rows, grad.values, lr)
            else:
                self._update_dense(key, param, grad, lr)
        return lr

    def _update_dense(self, key, param, grad, lr):
        raise NotImplementedError

    def _update_rows(self, key, param, rows_u, values_ud, lr):
        raise NotImplementedError

    def _buffer(self, slot, key, param):
        """The `slot` state of `key`, created as zeros shaped like `param` on first use."""
        buffers = self.state[slot]
        buf = buffers.get(key)
        if buf is None:
            buf = buffers[key] = self.backend.zeros(param.shape, param.dtype)
        elif tuple(buf.shape) != tuple(param.shape):
            raise ValueError(f"{type(self).__name__}: state {slot}/{key} has shape "
                             f"{tuple(buf.shape)} but the param has {tuple(param.shape)}")
        return buf

    def reset_slots(self, key, index, flat: bool = False):
        """Zero every state slot (momentum, Adam moments) of parameter `key` at rows `index`
        (flat=False) or at flat element positions of the buffer (flat=True), e.g. the weights
        regrown by dynamic rewiring. Slots not created yet are left alone."""
        for slot in self.slots:
            buf = self.state[slot].get(key)
            if buf is None:
                continue
            if flat:
                buf.reshape(-1)[index] = 0
            else:
                buf[index] = 0

    # ----------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        """Host copies of every buffer ("<slot>/<key>"), the step count, the schedule state
        ("schedule/<name>") and the optimizer type; `load_state_dict` restores it exactly."""
        state: Dict[str, Any] = {"type": self.name, "step_count": int(self.step_count)}
        for slot in self.slots:
            for key, value in self.state[slot].items():
                host = self.backend.to_host(value) if self.backend is not None else value
                state[f"{slot}/{key}"] = numpy.array(host, copy=True)
        for k, v in self.schedule.state_dict().items():
            state[f"schedule/{k}"] = v
        return state

    def load_state_dict(self, state: Dict[str, Any]):
        kind = state.get("type", self.name)
        if isinstance(kind, bytes):
            kind = kind.decode()
        if str(kind) != self.name:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state is of a "
                             f"{kind!r} optimizer")
        self.step_count = int(state["step_count"])
        self.state = {slot: {} for slot in self.slots}
        schedule_state = {}
        for name, value in state.items():
            if name in ("type", "step_count"):
                continue
            prefix, _, rest = name.partition("/")
            if prefix == "schedule":
                schedule_state[rest] = value
            elif prefix in self.state and rest:
                self.state[prefix][rest] = (self._to_backend(value) if self.backend is not None
                                            else numpy.array(value, copy=True))
            else:
                raise KeyError(f"{type(self).__name__}.load_state_dict: unexpected entry {name!r}")
        self.schedule.load_state_dict(schedule_state)

    def config(self) -> Dict[str, Any]:
        """JSON-able constructor arguments, with `name` ("sgd"/"adam") for make_optimizer."""
        return {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay,
                "clip_norm": self.clip_norm, "schedule": self.schedule.config(),
                "sparse_mode": self.sparse_mode}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"
