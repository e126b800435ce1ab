"""What every model shares: a body that maps inputs to the last hidden `h`, and an output layer.

A subclass sets `self.layers` (all layers, output last), `self.output`, and implements
`hidden_forward(x, train) -> h` and `hidden_backward(dh)`. This base class provides the loss,
the backward pass, evaluation helpers, parameter listing for optimizers and state for
checkpoints.
"""
from __future__ import annotations

from typing import Dict

import numpy


class Model:
    kind = "model"
    #: Whether evaluation reports perplexity (exp of the mean loss) when the output is a likelihood.
    reports_perplexity = True

    def __init__(self):
        self.layers = []
        self.output = None
        self.backend = None
        self.dtype = None

    # -- set-up ---------------------------------------------------------------
    def bind(self, backend, seed: int = 0, dtype="float32"):
        """Create every parameter on `backend`, drawn on the host from `seed` (same on CPU/GPU)."""
        self.backend, self.dtype = backend, numpy.dtype(dtype)
        rng = numpy.random.default_rng(seed)
        for i, layer in enumerate(self.layers):
            layer.layer_id = i
            layer.bind(backend, rng, self.dtype)
        return self

    def set_random_key(self, seed: int, step: int):
        """Key for counter-based randomness (dropout) of the next forward."""
        for layer in self.layers:
            if hasattr(layer, "key"):
                layer.key = (int(seed), int(step))

    # -- training -------------------------------------------------------------
    def check_inputs(self, x, targets=None):
        pass

    def hidden_forward(self, x, train):
        raise NotImplementedError

    def hidden_backward(self, dh):
        raise NotImplementedError

    def forward(self, x, targets, train=True):
        """Mean loss over the minibatch (0-d device array)."""
        self.check_inputs(x, targets)
        h = self.hidden_forward(x, train)
        return self.output.forward(h, targets, train)

    def backward(self):
        """Backward pass of the last forward(train=True); fills every layer's grads."""
        dh = self.output.backward()
        self.hidden_backward(dh)

    # -- evaluation -----------------------------------------------------------
    def log_prob(self, x, targets):
        self.check_inputs(x, targets)
        return self.output.log_prob(self.hidden_forward(x, False), targets)

    def eval_sums(self, x, targets):
        """Metric sums of one minibatch (see OutputLayer.eval_sums), on the device."""
        self.check_inputs(x, targets)
        return self.output.eval_sums(self.hidden_forward(x, False), targets)

    def eval_finish(self, sums):
        """Host sums of a whole split -> metrics (see OutputLayer.eval_finish)."""
        return self.output.eval_finish(sums)

    def after_step(self, step: int, optimizer):
        """Called by the engine after every update (`step` = updates so far): layers with an
        `after_step(step, optimizer, key_prefix)` hook (dynamic rewiring) run it; key_prefix is
        the prefix of that layer's optimizer keys (see param_items)."""
        for i, layer in enumerate(self.layers):
            hook = getattr(layer, "after_step", None)
            if hook is not None:
                hook(step, optimizer, f"{i}.{type(layer).__name__}.")

    def loss(self, x, targets):
        """Mean loss without caching anything for backward."""
        return self.forward(x, targets, train=False)

    def predict_topk(self, x, k=1):
        self.check_inputs(x)
        return self.output.predict_topk(self.hidden_forward(x, False), k)

    # -- parameters -----------------------------------------------------------
    def param_items(self):
        """[(key, layer, name)] for every parameter an optimizer updates."""
        items = []
        for i, layer in enumerate(self.layers):
            if layer.owns_update:
                continue
            for name in layer.params:
                items.append((f"{i}.{type(layer).__name__}.{name}", layer, name))
        return items

    def self_updating_layers(self):
        return [layer for layer in self.layers if layer.owns_update]

    def num_parameters(self) -> int:
        return int(sum(int(numpy.prod(p.shape)) for layer in self.layers for p in layer.params.values()))

    def state_dict(self) -> Dict[str, numpy.ndarray]:
        state = {}
        for i, layer in enumerate(self.layers):
            for name, value in layer.state_dict().items():
                state[f"{i}.{type(layer).__name__}.{name}"] = value
        return state

    def load_state_dict(self, state):
        for i, layer in enumerate(self.layers):
            prefix = f"{i}.{type(layer).__name__}."
            layer.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def config(self):
        return {}
