"""What every model shares: a body that maps inputs to the last hidden `h`, and an output layer.

A subclass sets `self.layers` (all layers, output last), `self.body` (the hidden layers run in
order: Linear, activation, dropout, ...) and `self.output`. The base class runs the body
(`body_forward` / `body_backward`); a model whose input needs a first step of its own (the
language model's embedding lookup) overrides `hidden_forward(x, train) -> h` and
`hidden_backward(dh)` around them. This base class also provides the loss, the backward pass,
evaluation helpers, parameter listing for optimizers and state for checkpoints.

Hooks with documented defaults (no probing): `validate_data(x, y, name)` checks in-memory
arrays before training on them; `config()` the constructor arguments.
"""
from __future__ import annotations

from typing import Dict

import numpy

from ..options import Option, at_least, in_range, json_object, parse_float, parse_int, parse_str


def body_options(hidden, activation, hidden_help):
    """The options both MLPs take for their hidden layers and output (engine/options.py)."""
    from ..outputs import OUTPUTS
    return (
        Option("hidden", parse_int, list(hidden), hidden_help, many=True, check=at_least(1),
               metavar="WIDTH"),
        Option("activation", parse_str, activation, "hidden activation", choices=("tanh", "relu")),
        Option("dropout", parse_float, 0.0, "dropout probability after each hidden layer",
               check=in_range(0, 1)),
        Option("output", parse_str, "softmax", "the output layer (its options: the output "
               "groups below)", choices=tuple(OUTPUTS)),
        Option("output_kwargs", json_object, None, "more output-layer arguments as a JSON object "
               "(keys: the chosen output's constructor keywords), e.g. '{\"chunk_size\": 4096}'",
               metavar="JSON"),
    )


def layer_state_name(layer) -> str:
    """The name of `layer` in state and optimizer keys ("<index>.<name>.<param>"): its class
    name, or its `state_name` when it defines one (a label-sharded output layer keeps the name
    of the single-process layer, so a rank's checkpoint keys are the single-process keys)."""
    return getattr(layer, "state_name", None) or type(layer).__name__


class Model:
    kind = "model"
    #: The user options of the constructor (engine/options.py): the command line's flags.
    OPTIONS: tuple = ()
    #: Constructor keywords that are not user options (sizes from the data), with the reason.
    NOT_OPTIONS: dict = {}
    #: The dataset kind the model trains on: "lm-corpus" (token streams) or "classification"
    #: (dense or sparse features with labels); the engine refuses the other kind with one line.
    data_kind = None
    #: Whether evaluation reports perplexity (exp of the mean loss) when the output is a likelihood.
    reports_perplexity = True

    def __init__(self):
        self.layers = []
        self.body = []
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

    def set_random_key(self, seed: int, step: int, row_offset: int = 0):
        """Key for counter-based randomness (dropout, random meProp) of the next forward;
        `row_offset`: the global minibatch row of this process's first row (Layer's hook)."""
        for layer in self.layers:
            layer.set_random_key(seed, step, row_offset)

    # -- training -------------------------------------------------------------
    def check_inputs(self, x, targets=None):
        pass

    def validate_data(self, x, y, name="data"):
        """Check host arrays once before training on them (shapes, ids in range); raise
        ValueError/TypeError naming `name`. The default accepts anything."""

    @classmethod
    def default_output(cls, info) -> str:
        """The output layer for a dataset (a DatasetInfo) when none is chosen."""
        return "softmax"

    def check_dataset(self, info, path: str = "the dataset"):
        """Check that a dataset's description (a DatasetInfo: sizes, kind) fits the model
        before any batch is read; raise ValueError naming `path`. The default accepts anything."""

    def body_forward(self, h, train):
        """Run the hidden layers in order: (B, width_in) -> h (B, d)."""
        for layer in self.body:
            h = layer.forward(h, train)
        return h

    def body_backward(self, dh):
        """Backward through the hidden layers in reverse; returns d loss / d body input, or None
        when a layer has no input gradient (a first layer over data stops the pass there)."""
        for layer in reversed(self.body):
            dh = layer.backward(dh)
            if dh is None:
                return None
        return dh

    def hidden_forward(self, x, train):
        """Input -> the last hidden h (B, d). Default: the body over x."""
        return self.body_forward(x, train)

    def hidden_backward(self, dh):
        """Backward from dh (B, d) through the body."""
        self.body_backward(dh)

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
            layer.after_step(step, optimizer, f"{i}.{layer_state_name(layer)}.")

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
                items.append((f"{i}.{layer_state_name(layer)}.{name}", layer, name))
        return items

    def self_updating_layers(self):
        return [layer for layer in self.layers if layer.owns_update]

    def num_parameters(self) -> int:
        return int(sum(int(numpy.prod(p.shape)) for layer in self.layers for p in layer.params.values()))

    def state_dict(self) -> Dict[str, numpy.ndarray]:
        state = {}
        for i, layer in enumerate(self.layers):
            for name, value in layer.state_dict().items():
                state[f"{i}.{layer_state_name(layer)}.{name}"] = value
        return state

    def load_state_dict(self, state):
        for i, layer in enumerate(self.layers):
            prefix = f"{i}.{layer_state_name(layer)}."
            layer.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def output_rebuild_kwargs(self):
        """The output layer's constructor keywords as a checkpoint must store them: resolved
        once the model is bound (e.g. adaptive "auto" cutoffs become the list chosen)."""
        if self.output.backend is None:
            return dict(self.output_kwargs)
        return self.output.rebuild_kwargs()

    def config(self):
        return {}
