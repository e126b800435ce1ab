"""What a training or evaluation step does across ranks, and how a model gets its shards.

    comm = from_environment()                      # SingleProcess, MPIComm or NCCLComm
    model = shard_model(MLPLanguageModel(...), comm)   # before bind: the output owns a label range
    model.bind(backend, seed, dtype); optimizer.bind(backend); comm.bind(backend)
    trainer = DistributedStep(model, optimizer, comm, seed)
    x_r, y_r = x[batch_rows(B, N, r)], y[batch_rows(B, N, r)]   # this rank's rows
    loss = trainer.step(x_r, y_r, epoch)           # the global minibatch's mean loss, every rank
    sums = eval_sums(model, comm, x_r, y_r)        # the global minibatch's sums, every rank

`shard_model` replaces a model's output layer (not yet bound) by its label-sharded version when
there is one: softmax (whole, chunked, fused SGD), squared hinge and BCE (dense or FFI weights),
the factored layers. Other outputs (adaptive softmax, squared error, the dense spherical family)
stay replicated and train data-parallel; a replicated output that owns its update cannot (its
update would use only this rank's rows) and is refused.

`DistributedStep.step` is `Engine.train_step` with the communication put in (Engine uses it
when its communicator has more than one rank): the row counts of every rank (one all-gather of
one number: this rank's first global row keys the dropout and random meProp masks, so they are
the single-process masks, and the global row count weights the epoch's mean loss); forward on
this rank's rows (a sharded output gathers h itself); for a replicated output the loss is made
global and the rank's gradients weighted (data_parallel.data_parallel_loss); the loss is
checked (NaN/inf raise `TrainingDiverged` on every rank alike, the loss being global); backward;
the replicated gradients summed over ranks (data_parallel.GradientReducer); the optimizer step,
with global-norm clipping over all shards when clipping is on (the sharded gradients' sum of
squares all-reduced); the self-updating layers' update; `after_step`.

Not equal to the single-process run (a documented limit): unified meProp selects its columns
over the rank's rows only.
"""
from __future__ import annotations

import hashlib
import json
import math

import numpy

from ..optim.clipping import clip_factor, scale_grads_, sum_of_squares
from ..outputs.factored import (FactoredSphericalOutput, FactoredSquaredOutput,
                                FactoredTaylorOutput, FactoredZLossOutput)
from ..outputs.multilabel import BCEOutput, SquaredHingeOutput
from ..outputs.softmax import SoftmaxOutput
from ..row_sparse import RowSparseGrad
from .data_parallel import GradientReducer, data_parallel_loss, is_label_sharded
from .sharded_factored import (ShardedFactoredSphericalOutput, ShardedFactoredSquaredOutput,
                               ShardedFactoredTaylorOutput, ShardedFactoredZLossOutput)
from .sharded_multilabel import ShardedBCEOutput, ShardedSquaredHingeOutput
from .sharded_softmax import ShardedSoftmaxOutput

#: single-process output class -> its label-sharded version (exact type match)
SHARDED_OUTPUTS = {
    SoftmaxOutput: ShardedSoftmaxOutput,
    SquaredHingeOutput: ShardedSquaredHingeOutput,
    BCEOutput: ShardedBCEOutput,
    FactoredSquaredOutput: ShardedFactoredSquaredOutput,
    FactoredSphericalOutput: ShardedFactoredSphericalOutput,
    FactoredTaylorOutput: ShardedFactoredTaylorOutput,
    FactoredZLossOutput: ShardedFactoredZLossOutput,
}


def shard_output(output, comm):
    """The label-sharded version of an unbound output layer (same constructor arguments), or
    the output itself when it has none (it then trains data-parallel)."""
    if output.backend is not None:
        raise RuntimeError("shard the model before binding it (before Engine(...) or "
                           "model.bind): the shards draw their own rows of the initial weights")
    cls = SHARDED_OUTPUTS.get(type(output))
    if cls is None:
        if output.owns_update:
            raise ValueError(f"{type(output).__name__} updates its own weights and has no "
                             f"label-sharded version: it cannot train data-parallel")
        return output
    sharded = cls(output.in_features, output.num_classes, comm=comm, **output.rebuild_kwargs())
    if getattr(output, "label_counts", None) is not None:     # arrays, not in rebuild_kwargs
        sharded.set_label_frequencies(output.label_counts, output.num_train)
    return sharded


def shard_model(model, comm):
    """Replace `model`'s output by its label-sharded version for `comm` (in place; returns the
    model). With one rank the sharded layer computes exactly what the plain one does."""
    new = shard_output(model.output, comm)
    if new is not model.output:
        model.layers = [new if layer is model.output else layer for layer in model.layers]
        model.output = new
    return model


def sharded_keys(model):
    """Optimizer keys of the params that hold only this rank's label rows."""
    return [key for key, layer, name in model.param_items()
            if is_label_sharded(layer) and name in layer.sharded_params]


def optimizer_step(optimizer, items, epoch, comm, sharded=()):
    """optimizer.step(items, epoch), with global-norm clipping over every rank's shard when
    clipping is on and some gradients are sharded (the optimizer alone would clip by this
    rank's norm). Returns the lr used."""
    clip = optimizer.clip_norm
    sharded = set(sharded)
    if clip is None or comm.size == 1 or not sharded:
        return optimizer.step(items, epoch=epoch)
    backend = optimizer.backend
    xp = backend.xp
    grads, own = [], xp.zeros((), dtype=numpy.float64)
    replicated = xp.zeros((), dtype=numpy.float64)
    for key, _, grad in items:
        if grad is None:
            continue
        if isinstance(grad, RowSparseGrad):
            grad = grad.coalesced(backend)
        array = grad.values if isinstance(grad, RowSparseGrad) else grad
        if key in sharded:
            own = own + sum_of_squares(xp, array)
        else:
            replicated = replicated + sum_of_squares(xp, array)
        grads.append(grad)
    norm = xp.sqrt(replicated + comm.allreduce(own, "sum"))
    scale_grads_(backend, grads, clip_factor(backend, norm, clip))
    items = [(key, param, grad.coalesced(backend) if isinstance(grad, RowSparseGrad) else grad)
             for key, param, grad in items]
    optimizer.clip_norm = None
    try:
        lr = optimizer.step(items, epoch=epoch)
    finally:
        optimizer.clip_norm = clip
    optimizer.last_grad_norm = norm
    return lr


class DistributedStep:
    """One training step of a (sharded) model over the ranks of `comm` (module docstring)."""

    def __init__(self, model, optimizer, comm, seed=0):
        from ..engine import TrainingDiverged
        self.TrainingDiverged = TrainingDiverged
        self.model, self.optimizer, self.comm, self.seed = model, optimizer, comm, int(seed)
        self.reducer = GradientReducer(comm, model.backend)
        self.sharded = sharded_keys(model)
        self.data_parallel_output = not is_label_sharded(model.output)
        self.steps = 0
        self.global_rows = 0        # rows of the last step's global minibatch

    def step(self, x, y, epoch=0, check_finite=True, step=None, where=None, check=None):
        """Forward, backward and update on this rank's rows (x, y); returns the global
        minibatch's loss (0-d array of the backend, the same on every rank). `step`: the
        number of updates before this one (default: this object's count), which keys the
        random masks; `where`: the position named when the loss is not finite; `check`:
        check(loss, where) raises TrainingDiverged (the engine's rule; default: finiteness)."""
        model, optimizer = self.model, self.optimizer
        if step is not None:
            self.steps = int(step)
        counts = self.comm.row_counts(y.shape[0])
        self.global_rows = sum(counts)
        model.set_random_key(self.seed, self.steps, sum(counts[:self.comm.rank]))
        loss = model.forward(x, y, train=True)
        weight = None
        if self.data_parallel_output and self.comm.size > 1:
            loss, weight = data_parallel_loss(self.comm, model.output, loss, y)
        if check_finite and check is not None:
            check(float(loss), where or f"step {self.steps + 1}")
        elif check_finite:
            value = float(loss)
            if not math.isfinite(value):
                raise self.TrainingDiverged(f"loss became {value} at "
                                            f"{where or f'step {self.steps + 1}'}; the update "
                                            f"was not applied")
        for layer in model.self_updating_layers():
            layer.prepare_update(optimizer.current_lr(epoch))
        model.backward()
        items = [(key, layer.params[name], layer.grads.get(name))
                 for key, layer, name in model.param_items()]
        items = self.reducer.reduce(items, self.sharded, weight)
        lr = optimizer_step(optimizer, items, epoch, self.comm, self.sharded)
        for layer in model.self_updating_layers():
            layer.apply_update(lr)
        for layer in model.layers:
            layer.zero_grads()
        self.steps += 1
        model.after_step(self.steps, optimizer)
        return loss


def eval_sums(model, comm, x, y):
    """The model's evaluation sums of the global minibatch, from this rank's rows (x, y): every
    output returns this rank's part, summed here over the ranks in one all-reduce. Add them over
    minibatches and call `model.eval_finish` once, as Engine.evaluate does."""
    sums = model.eval_sums(x, y)
    if comm.size == 1:
        return sums
    xp = model.backend.xp
    keys = list(sums)
    packed = xp.stack([xp.asarray(sums[k], dtype=numpy.float64).reshape(()) for k in keys])
    packed = comm.allreduce(packed, "sum", inplace=True)
    return {k: packed[i] for i, k in enumerate(keys)}


def config_digest(obj) -> str:
    """A short hash of a JSON-able configuration (what ranks compare at start)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_same_everywhere(comm, what, obj):
    """Raise ValueError on every rank when `obj` (a JSON-able configuration, a data file's
    description, ...) differs between ranks, naming the ranks that differ from rank 0."""
    digests = comm.allgather_object(config_digest(obj))
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise ValueError(f"ranks were started with different {what}: rank(s) {odd} differ from "
                         f"rank 0")


__all__ = ["shard_model", "shard_output", "sharded_keys", "optimizer_step", "DistributedStep",
           "eval_sums", "check_same_everywhere", "config_digest", "SHARDED_OUTPUTS"]
