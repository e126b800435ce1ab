"""Run a scenario (dist_scenarios.py) and collect what the tests compare: per-step losses, the
final model and optimizer state (single-process key names), evaluation metrics.

    run_engine(name, data_dir, comm=None)   through Engine.train / evaluate / predict_topk: one
                                            process (comm None, the reference) or this rank of
                                            `comm`
    run_steps(name, comm)                   the DistributedStep level (no Engine) over the
                                            scenario's fixed minibatches, one rank in-process
    run_steps_reference(name)               the same minibatches through Engine.train_step
float64 on the CPU throughout.
"""
from __future__ import annotations

import numpy

from engine import Engine
from engine.backend import Backend
from engine.distributed.checkpoints import layout_of
from engine.distributed.shard import batch_rows
from engine.distributed.step import DistributedStep, eval_sums, shard_model

from dist_scenarios import SEED, STEPS, batch_size, batches, build, data

KEEP = ("seconds", "device")


def _states(model, optimizer):
    """{key: array} of the model state and the optimizer's arrays ("opt/<slot>/<key>")."""
    state = {k: numpy.asarray(v) for k, v in model.state_dict().items()}
    for key, value in optimizer.state_dict().items():
        if isinstance(value, numpy.ndarray):
            state["opt/" + key] = value
    return state


def _split_keys(model, state):
    """Keys of `_states` whose arrays hold this rank's label rows."""
    layout = layout_of(model)
    out = [k for k in layout["sharded_state"] if k in state]
    for key in state:
        if key.startswith("opt/") and key.split("/", 2)[2] in layout["sharded_params"]:
            out.append(key)
    return out


def run_engine(name, data_dir, comm=None):
    """{"losses" (per step), "state", "sharded" (keys split by labels), "metrics",
    "train_loss" (the epoch's mean)}."""
    model, optimizer = build(name)
    engine = Engine(model, optimizer, device="cpu", seed=SEED, dtype="float64", verbose=False,
                    comm=comm)
    train, evaluation = data(name, data_dir)
    B = batch_size(name)
    history = engine.train(train, epochs=1, batch_size=B, max_steps_per_epoch=STEPS,
                           progress=False)
    losses = numpy.array([loss for _, loss in engine.step_log])
    metrics = {k: v for k, v in engine.evaluate(evaluation, split="test", batch_size=B).items()
               if k not in KEEP}
    state = _states(engine.model, engine.optimizer)
    if isinstance(evaluation, tuple):     # the top 3 of the first 7 rows, every rank all rows
        ids, scores = engine.predict_topk(evaluation[0][:7], k=3)
        state["predict/ids"] = numpy.asarray(engine.backend.to_host(ids))
        state["predict/scores"] = numpy.asarray(engine.backend.to_host(scores))
    return {"losses": losses, "state": state, "sharded": _split_keys(engine.model, state),
            "metrics": metrics, "train_loss": history[-1]["train_loss"]}


def _finish(model, total):
    return model.eval_finish({k: float(v) for k, v in total.items()})


def _add(total, sums):
    for key, value in sums.items():
        value = numpy.asarray(value, dtype=numpy.float64)
        total[key] = total[key] + value if key in total else value
    return total


def run_steps_reference(name):
    """The scenario's fixed minibatches through Engine.train_step (one process)."""
    model, optimizer = build(name)
    engine = Engine(model, optimizer, device="cpu", seed=SEED, dtype="float64", verbose=False)
    train, evaluation = batches(name)
    losses = [float(engine.train_step(x, y)) for x, y in train]
    total = {}
    for x, y in evaluation:
        _add(total, model.eval_sums(x, y))
    state = _states(model, optimizer)
    return {"losses": numpy.array(losses), "state": state, "sharded": [],
            "metrics": _finish(model, total)}


def run_steps(name, comm):
    """This rank's part of the scenario's minibatches through DistributedStep and eval_sums."""
    backend = Backend()
    comm.bind(backend)
    model, optimizer = build(name)
    shard_model(model, comm)
    model.bind(backend, SEED, numpy.float64)
    optimizer.bind(backend)
    trainer = DistributedStep(model, optimizer, comm, seed=SEED)
    train, evaluation = batches(name)
    losses = []
    for x, y in train:
        rows = batch_rows(y.shape[0], comm.size, comm.rank)
        losses.append(float(trainer.step(x[rows], y[rows])))
    total = {}
    for x, y in evaluation:
        rows = batch_rows(y.shape[0], comm.size, comm.rank)
        _add(total, eval_sums(model, comm, x[rows], y[rows]))
    state = _states(model, optimizer)
    return {"losses": numpy.array(losses), "state": state, "sharded": _split_keys(model, state),
            "metrics": _finish(model, total)}


__all__ = ["run_engine", "run_steps", "run_steps_reference", "STEPS"]
