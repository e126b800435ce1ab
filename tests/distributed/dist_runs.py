"""Run a scenario single-process (the reference: Engine.train_step) or on the ranks of a
communicator (engine.distributed), float64 on the CPU, and collect what the tests compare:
per-step losses, the final state (single-process key names), evaluation metrics."""
from __future__ import annotations

import numpy

from engine import Engine
from engine.backend import Backend
from engine.distributed.shard import batch_rows
from engine.distributed.step import DistributedStep, eval_sums, shard_model

from dist_scenarios import SEED, build, data, plain_name, sharded_entries


def _finish(model, total):
    host = {k: float(v) for k, v in total.items()}
    return model.eval_finish(host)


def _add(total, sums):
    for key, value in sums.items():
        value = numpy.asarray(value, dtype=numpy.float64)
        total[key] = total[key] + value if key in total else value
    return total


def run_single(name):
    """The single-process reference: {"losses", "state", "metrics"}."""
    model, optimizer = build(name)
    engine = Engine(model, optimizer, device="cpu", seed=SEED, dtype="float64", verbose=False)
    train, evaluation = data(name)
    losses = [float(engine.train_step(x, y)) for x, y in train]
    total = {}
    for x, y in evaluation:
        _add(total, model.eval_sums(x, y))
    return {"losses": numpy.array(losses), "state": model.state_dict(),
            "metrics": _finish(model, total)}


def run_ranks(name, comm):
    """This rank's part of the distributed run: {"losses", "state" (single-process key names),
    "sharded" (keys holding label rows), "metrics"}."""
    backend = Backend()
    comm.bind(backend)
    model, optimizer = build(name)
    shard_model(model, comm)
    model.bind(backend, SEED, numpy.float64)
    optimizer.bind(backend)
    trainer = DistributedStep(model, optimizer, comm, seed=SEED)
    train, evaluation = data(name)
    losses = []
    for x, y in train:
        rows = batch_rows(y.shape[0], comm.size, comm.rank)
        losses.append(float(trainer.step(x[rows], y[rows])))
    total = {}
    for x, y in evaluation:
        rows = batch_rows(y.shape[0], comm.size, comm.rank)
        _add(total, eval_sums(model, comm, x[rows], y[rows]))
    state = {plain_name(k): v for k, v in model.state_dict().items()}
    return {"losses": numpy.array(losses), "state": state, "sharded": sharded_entries(model),
            "metrics": _finish(model, total)}
