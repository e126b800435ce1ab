"""The layer protocol shared by every layer and output layer.

A layer owns `params` (name -> array) and `grads` (name -> array or RowSparseGrad).
`bind(backend, rng, dtype)` creates the parameters: they are drawn on the host from a seeded
NumPy generator and then moved to the backend, so a CPU and a GPU model start identical.
`forward(x, train)` caches what `backward(dy)` needs and returns `y`; `backward` fills `grads`
and returns `dx`. Row-sparse gradients (embeddings, and later meProp rows and factored rows) are
a `RowSparseGrad(rows, values)` pair, never a dense zero matrix.

Optional hooks, defined here as documented no-ops so that the engine and the models call them
on every layer without probing:

    set_random_key(seed, step, row_offset)   before each forward: key of counter-based
                                          randomness; row_offset = the global minibatch row of
                                          this process's first row (0 in one process)
    prepare_update(lr)                    before backward, for layers that own their update
    apply_update(lr)                      after the optimizer step, same layers
    after_step(step, optimizer, prefix)   after every update (dynamic rewiring)

A layer whose `owns_update` is True (the factored output, the fused-SGD softmax) applies its own
update in `apply_update(lr)`; optimizers skip its params.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy

from ..row_sparse import RowSparseGrad

__all__ = ["Layer", "OutputLayer", "RowSparseGrad"]


class Layer:
    """Base class: parameters, gradients, forward/backward, and state for checkpoints."""

    owns_update = False

    def __init__(self):
        self.params: Dict[str, Any] = {}
        self.grads: Dict[str, Any] = {}
        self.backend = None
        self.dtype = None
        self.layer_id = 0  # position in the model, used for counter-based randomness
        self.key = (0, 0)  # (model seed, step) of the next forward, see set_random_key
        self.row_offset = 0  # global minibatch row of the first row here, see set_random_key

    # -- set-up ---------------------------------------------------------------
    def bind(self, backend, rng: numpy.random.Generator, dtype):
        """Create parameters on `backend` (drawn from `rng` on the host). Returns self."""
        self.backend = backend
        self.dtype = numpy.dtype(dtype)
        for name, host in self.init_params(rng).items():
            self.params[name] = backend.asarray(host.astype(self.dtype))
        return self

    def init_params(self, rng) -> Dict[str, numpy.ndarray]:
        """Host arrays of the initial parameters (override in layers that have any)."""
        return {}

    # -- computation ----------------------------------------------------------
    def forward(self, x, train: bool = True):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def zero_grads(self):
        self.grads = {}

    # -- hooks (no-ops unless a layer needs them) ----------------------------------
    def set_random_key(self, seed: int, step: int, row_offset: int = 0):
        """Key the counter-based randomness (dropout masks, random meProp) of the next forward
        and backward: the same (seed, step) draws the same numbers on every backend. Row b of
        this minibatch draws the numbers of row `row_offset + b` of the global minibatch (a
        rank's share, engine/distributed), so the ranks together draw the single-process
        masks."""
        self.key = (int(seed), int(step))
        self.row_offset = int(row_offset)

    def prepare_update(self, lr: float):
        """Called before backward with the step's learning rate, for layers whose `owns_update`
        is True (they may update inside backward, or refuse a step before anything changes)."""

    def apply_update(self, lr: float):
        """Called after the optimizer step, for layers whose `owns_update` is True: apply this
        layer's own update with learning rate `lr`."""

    def after_step(self, step: int, optimizer, key_prefix: str = ""):
        """Called after every update (`step` = updates so far). `key_prefix` is the prefix of
        this layer's optimizer keys (see Model.param_items), for layers that reset optimizer
        slots (dynamic rewiring)."""

    # -- state ------------------------------------------------------------------
    def state_dict(self) -> Dict[str, numpy.ndarray]:
        """Everything that defines the layer, as host arrays (params and any extra buffers)."""
        return {name: self.backend.to_host(value) for name, value in self.params.items()}

    def load_state_dict(self, state: Dict[str, numpy.ndarray]):
        for name in self.params:
            if name not in state:
                raise KeyError(f"{type(self).__name__}: state has no entry {name!r}")
            value = numpy.asarray(state[name])
            if value.shape != tuple(self.params[name].shape):
                raise ValueError(f"{type(self).__name__}.{name}: shape {value.shape} in the state, "
                                 f"{tuple(self.params[name].shape)} in the model")
            self.params[name] = self.backend.asarray(value.astype(self.dtype))

    def config(self) -> Dict[str, Any]:
        """JSON-able constructor arguments (saved in checkpoints)."""
        return {}


class OutputLayer(Layer):
    """A loss over a (possibly huge) output: takes the last hidden `h` (B, d) and targets.

    forward(h, targets, train) -> mean loss as a 0-d array of the backend (no host sync);
    backward() -> dh (B, d), filling grads; log_prob(h, targets) -> (B,) log p(target);
    predict_topk(h, k) -> (ids (B, k), scores (B, k)) best first.
    `targets` is (B,) int (one target per row), or (B, K) int padded with -1 for K-hot targets
    where the output supports it. A target of -1 in a (B,) array is ignored (padding).
    """

    #: Whether `log_prob` is a normalised log-probability (gives perplexity); squared error is not.
    has_likelihood = True
    #: The user options of the constructor (engine/options.py): the command line's flags.
    OPTIONS: tuple = ()
    #: Constructor keywords that are not user options, with the reason.
    NOT_OPTIONS = {"in_features": "the width of the model's last hidden layer",
                   "num_classes": "the data's vocabulary or number of classes"}
    #: Constructor keywords filled from the dataset description: {keyword: DatasetInfo field}.
    FROM_DATA: Dict[str, str] = {}
    #: Targets the layer takes: "one" (one id per example, (B,)) and/or "many" (K-hot, (B, K)).
    TARGETS = ("one",)

    def rebuild_kwargs(self) -> Dict[str, Any]:
        """The keyword arguments that rebuild this layer, without in_features and num_classes
        (what a model stores in its config). Layers that resolve a setting at bind time (the
        adaptive softmax's "auto" cutoffs) return the resolved value."""
        cfg = dict(self.config())
        cfg.pop("in_features", None)
        cfg.pop("num_classes", None)
        return cfg

    def init_params(self, rng):
        """Dense outputs: W (D, d) uniform in +-init_scale (default 1/sqrt(d)), bias zero.
        Subclasses with other parameters override this."""
        a = self.init_scale if self.init_scale is not None else 1.0 / numpy.sqrt(self.in_features)
        params = {"W": rng.uniform(-a, a, size=(self.num_classes, self.in_features))}
        if self.use_bias:
            params["b"] = numpy.zeros(self.num_classes)
        return params

    def forward(self, h, targets, train: bool = True):
        raise NotImplementedError

    def backward(self, dy=None):
        raise NotImplementedError

    def log_prob(self, h, targets):
        raise NotImplementedError

    def predict_topk(self, h, k: int):
        raise NotImplementedError

    # -- evaluation sums ------------------------------------------------------------
    def eval_sums(self, h, targets) -> Dict[str, Any]:
        """Sums over one minibatch, as 0-d device arrays (no host sync): "count" (examples
        counted) and "loss" (summed loss; summed -log p(target) when `has_likelihood`).
        Classification outputs add their metric sums (e.g. "p@1"); `Engine.evaluate` adds the
        sums of every minibatch and calls `eval_finish` once."""
        if self.has_likelihood:
            logp = self.log_prob(h, targets)
            count = (targets >= 0).sum() if targets.ndim == 1 else targets.shape[0]
            return {"count": count, "loss": -logp.astype(numpy.float64).sum()}
        rows = targets.shape[0]
        return {"count": rows, "loss": self.forward(h, targets, train=False).astype(numpy.float64) * rows}

    def eval_finish(self, sums: Dict[str, float]) -> Dict[str, float]:
        """Host sums of the whole split -> metrics: every key but "count" divided by the count
        ("loss" becomes the mean loss). Override to rename or normalise differently."""
        n = sums["count"]
        return {key: value / n for key, value in sums.items() if key != "count"}
