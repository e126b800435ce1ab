"""Sharded checkpoints: one file per rank plus a manifest, each written atomically; merge to one
file and split into N.

A checkpoint at PATH (runs/<run>/checkpoint.h5, best.h5, ...) saved by N ranks:

    PATH                                 the manifest: an engine checkpoint (engine/checkpoint.py)
                                         with the model and optimizer configurations and the
                                         training position, no arrays, and the attribute
                                         shard = {"role": "manifest", "size": N, "token",
                                         "files": [N names], LAYOUT}
    STEM.TOKEN.rank<r>-of-<N>.h5         rank r's shard (beside PATH; STEM = PATH's name without
                                         .h5): an engine checkpoint of rank r's model (the output
                                         layer's label rows [s_r, e_r) and every replicated
                                         parameter) and optimizer state, shard = {"role":
                                         "shard", "rank": r, "size": N, "token", LAYOUT}
    LAYOUT: "num_labels" (L), "label_ranges" ([[s_r, e_r]] per rank, [r L / N, (r + 1) L / N)),
            "sharded_state" (model state keys split by labels), "sharded_params" (parameter keys
            whose optimizer slots, "<slot>/<key>", are split by labels); an output without a
            sharded version (adaptive softmax) has L = None and nothing split.

The keys are the single-process keys (a sharded output layer keeps its layer's state name,
engine/models/base.py layer_state_name), so
    merge  concatenates each split entry over the ranks in rank order along its first axis (the
           labels) and takes every other entry from rank 0, after checking that every rank
           holds the same bits (replicated parameters must be identical);
    split  cuts each split entry into the ranks' label ranges and copies the others.
Each shard file and the manifest is written by engine/checkpoint.py's save_checkpoint
(temporary file, fsync, rename). Order of a save by N ranks: rank 0 draws a new token and
broadcasts it; every rank writes its shard under that token; all confirm (one all-gather of
their errors, so a rank that cannot write makes every rank raise CheckpointError and the old
checkpoint stays whole); rank 0 replaces the manifest; every rank removes its shards of other
tokens. A crash at any point leaves a manifest whose shards all exist.

Loading (`checkpoint_for_rank`): a manifest of N ranks read by N ranks gives each rank its own
shard file (a resumed run continues bit-identically on the CPU); read by another number of
ranks (one process included), the shards are merged in memory and split again, which needs the
whole model in each process's memory: `engine checkpoint merge` / `split` do the same on disk.
"""
from __future__ import annotations

import os
import re
import secrets

import numpy

from ..checkpoint import CheckpointError, kept_checkpoint, load_checkpoint, save_checkpoint
from ..models.base import layer_state_name
from .comm import SingleProcess
from .data_parallel import is_label_sharded
from .shard import label_range


# ------------------------------------------------------------------------------- layout
def layout_of(model):
    """LAYOUT (module docstring) of a model whose output may be label-sharded."""
    out = model.output
    if not is_label_sharded(out):
        return {"num_labels": None, "label_ranges": None, "sharded_state": [],
                "sharded_params": []}
    prefix = f"{model.layers.index(out)}.{layer_state_name(out)}."
    size = out.comm.size
    return {"num_labels": out.num_labels,
            "label_ranges": [list(label_range(out.num_labels, size, r)) for r in range(size)],
            "sharded_state": [prefix + n for n in out.sharded_state()],
            "sharded_params": [prefix + n for n in out.sharded_params]}


class _Place(SingleProcess):
    """Rank `rank` of `size` for building a sharded layer's shape (no collective is called)."""

    def __init__(self, rank, size):
        super().__init__()
        self.rank, self.size = int(rank), int(size)


def layout_for_config(model_kind, model_config, size):
    """LAYOUT of N = `size` ranks for a model described by a checkpoint (not bound: nothing is
    drawn). ValueError when the output has fewer labels than ranks."""
    from ..models import build_model
    from .step import shard_model
    model = build_model(model_kind, model_config)
    return layout_of(shard_model(model, _Place(0, size)))


# ------------------------------------------------------------------------------- names
def shard_file_name(stem, token, rank, size):
    return f"{stem}.{token}.rank{rank}-of-{size}.h5"


def _stem(path):
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return folder, name[:-3] if name.endswith(".h5") else name


def _remove_other_shards(path, token, rank, size, everything=False):
    """Remove this rank's shard files of PATH under other tokens (`everything`: also the files
    of other rank counts, rank 0's job)."""
    folder, stem = _stem(path)
    pattern = re.compile(re.escape(stem) + r"\.([0-9a-f]+)\.rank(\d+)-of-(\d+)\.h5$")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if not m or m.group(1) == token and int(m.group(3)) == size:
            continue
        mine = int(m.group(2)) == rank and int(m.group(3)) == size
        if mine or everything and int(m.group(3)) != size:
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


# ------------------------------------------------------------------------------- saving
def _kinds(engine):
    opt = engine.optimizer
    return engine.model.kind, engine.model.config(), type(opt).__name__.lower(), opt.config()


def save_sharded(engine, path):
    """Collective: every rank of engine.comm writes its shard of PATH, rank 0 the manifest."""
    comm = engine.comm
    folder, stem = _stem(path)
    token = comm.bcast_object(secrets.token_hex(4) if comm.is_root else None)
    layout = layout_of(engine.model)
    files = [shard_file_name(stem, token, r, comm.size) for r in range(comm.size)]
    mine = os.path.join(folder, files[comm.rank])
    kind, config, opt_kind, opt_config = _kinds(engine)
    state = engine.engine_state()
    error = None
    try:
        save_checkpoint(mine, kind, config, engine.model.state_dict(), opt_kind, opt_config,
                        engine.optimizer.state_dict(), state,
                        shard={"role": "shard", "rank": comm.rank, "size": comm.size,
                               "token": token, **layout})
    except Exception as exc:           # told to every rank below, then raised on every rank
        error = str(exc) if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
    errors = comm.allgather_object(error)
    failed = [r for r, e in enumerate(errors) if e]
    if not failed and comm.is_root:
        try:
            save_checkpoint(path, kind, config, {}, opt_kind, opt_config, {}, state,
                            shard={"role": "manifest", "size": comm.size, "token": token,
                                   "files": files, **layout})
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    if not failed:
        error = comm.bcast_object(error)
        failed = [0] if error else []
        errors = [error]
    if failed:
        if os.path.exists(mine):
            os.remove(mine)
        first = next(e for e in errors if e)
        raise CheckpointError(f"{path}: rank(s) {failed} could not write the checkpoint "
                              f"({first}); {kept_checkpoint(path)}")
    _remove_other_shards(path, token, comm.rank, comm.size, everything=comm.is_root)
    return path


# ------------------------------------------------------------------------------- reading
def _read_shard(path, meta, rank):
    name = os.path.join(os.path.dirname(os.path.abspath(path)), meta["files"][rank])
    if not os.path.exists(name):
        raise CheckpointError(f"{path}: the shard of rank {rank} ({name}) is missing")
    ck = load_checkpoint(name)
    got = ck.get("shard") or {}
    if (got.get("role"), got.get("rank"), got.get("size"), got.get("token")) != (
            "shard", rank, meta["size"], meta["token"]):
        raise CheckpointError(f"{name}: not rank {rank}'s shard of the checkpoint {path} "
                              f"(another save, token {got.get('token')} vs {meta['token']})")
    return ck


def _is_split(key, layout, optimizer):
    if not optimizer:
        return key in layout["sharded_state"]
    slot, _, param = key.partition("/")
    return slot != "schedule" and param in layout["sharded_params"]


def _merge_states(path, layout, states, optimizer):
    """One state from the ranks' states (sharded entries concatenated, the others checked)."""
    what = "optimizer" if optimizer else "model"
    keys = list(states[0])
    for r, s in enumerate(states[1:], 1):
        if set(s) != set(keys):
            odd = sorted(set(s) ^ set(keys))
            raise CheckpointError(f"{path}: the {what} state of rank {r} has other entries than "
                                  f"rank 0's ({', '.join(odd[:4])})")
    merged = {}
    for key in keys:
        values = [s[key] for s in states]
        if _is_split(key, layout, optimizer):
            for r, v in enumerate(values):
                start, stop = layout["label_ranges"][r]
                if numpy.shape(v)[:1] != (stop - start,):
                    raise CheckpointError(f"{path}: {what} entry {key} of rank {r} has shape "
                                          f"{numpy.shape(v)}, expected {stop - start} label rows")
            merged[key] = numpy.concatenate([numpy.asarray(v) for v in values])
            continue
        first = values[0]
        for r, v in enumerate(values[1:], 1):
            if isinstance(first, numpy.ndarray):
                same = (isinstance(v, numpy.ndarray) and v.shape == first.shape
                        and v.dtype == first.dtype and v.tobytes() == first.tobytes())
            else:
                same = v == first
            if not same:
                raise CheckpointError(f"{path}: replicated {what} entry {key} differs between "
                                      f"rank 0 and rank {r}")
        merged[key] = first
    return merged


def merge_checkpoint(path, ck=None):
    """The single-process checkpoint (a load_checkpoint dict, shard None) of a manifest."""
    ck = load_checkpoint(path) if ck is None else ck
    meta = _manifest(path, ck)
    shards = [_read_shard(path, meta, r) for r in range(meta["size"])]
    merged = dict(ck)
    merged["engine_state"] = shards[0]["engine_state"]
    merged["model_state"] = _merge_states(path, meta, [s["model_state"] for s in shards], False)
    merged["optimizer_state"] = _merge_states(path, meta, [s["optimizer_state"] for s in shards],
                                              True)
    merged["shard"] = None
    return merged


def _manifest(path, ck):
    meta = ck.get("shard")
    if meta is None:
        raise CheckpointError(f"{path}: a single-process checkpoint, not a sharded one")
    if meta.get("role") != "manifest":
        raise CheckpointError(f"{path}: rank {meta.get('rank')}'s shard of a sharded checkpoint; "
                              f"give the manifest instead (the file the run names, e.g. "
                              f"checkpoint.h5 beside it)")
    return meta


def split_checkpoint(ck, size, path="checkpoint"):
    """[N load_checkpoint dicts]: rank r's share of a single-process checkpoint `ck`, each with
    its shard meta (role "shard", token None until written)."""
    try:
        layout = layout_for_config(ck["model_kind"], ck["model_config"], size)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot split over {size} ranks: {exc}") from None
    out = []
    for r in range(size):
        part = dict(ck)
        for group, optimizer in (("model_state", False), ("optimizer_state", True)):
            state = {}
            for key, value in ck[group].items():
                if not _is_split(key, layout, optimizer):
                    state[key] = value
                    continue
                if numpy.shape(value)[:1] != (layout["num_labels"],):
                    raise CheckpointError(f"{path}: entry {key} has shape {numpy.shape(value)}, "
                                          f"expected {layout['num_labels']} label rows")
                start, stop = layout["label_ranges"][r]
                state[key] = numpy.ascontiguousarray(value[start:stop])
            part[group] = state
        part["shard"] = {"role": "shard", "rank": r, "size": size, "token": None, **layout}
        out.append(part)
    return out


def checkpoint_for_rank(path, ck, rank, size):
    """What rank `rank` of `size` loads from PATH (whose load_checkpoint dict is `ck`): its own
    shard file when the manifest has `size` ranks, else the merged state split in memory."""
    meta = ck.get("shard")
    if meta is not None:
        _manifest(path, ck)
        if meta["size"] == size:
            return _read_shard(path, meta, rank)
        ck = merge_checkpoint(path, ck)
    if size == 1:
        return ck
    return split_checkpoint(ck, size, path)[rank]


# ------------------------------------------------------------------------------- on disk
def _write(path, ck, shard):
    save_checkpoint(path, ck["model_kind"], ck["model_config"], ck["model_state"],
                    ck["optimizer_kind"], ck["optimizer_config"], ck["optimizer_state"],
                    ck["engine_state"], shard=shard)


def write_merged(source, output):
    """`engine checkpoint merge`: the manifest `source` (or a run folder holding
    checkpoint.h5) -> one single-process checkpoint file `output`. Returns output."""
    source = _resolve(source)
    _write(output, merge_checkpoint(source), None)
    return output


def write_split(source, size, folder, name="checkpoint.h5"):
    """`engine checkpoint split`: a checkpoint (single-process, or a manifest of any N) ->
    folder/name (a manifest of `size` ranks) and its shard files. Returns the manifest path."""
    source = _resolve(source)
    if int(size) < 1:
        raise ValueError(f"--ranks must be >= 1, got {size}")
    ck = load_checkpoint(source)
    if ck.get("shard") is not None:
        ck = merge_checkpoint(source, ck)
    parts = split_checkpoint(ck, int(size), source)
    manifest = os.path.join(folder, name)
    _, stem = _stem(manifest)
    token = secrets.token_hex(4)
    files = [shard_file_name(stem, token, r, size) for r in range(size)]
    for r, part in enumerate(parts):
        _write(os.path.join(folder, files[r]), part, {**part["shard"], "token": token})
    layout = {k: v for k, v in parts[0]["shard"].items() if k not in ("role", "rank", "token")}
    manifest_ck = dict(ck, model_state={}, optimizer_state={})
    _write(manifest, manifest_ck, {**layout, "role": "manifest", "token": token,
                                   "files": files})
    for r in range(size):
        _remove_other_shards(manifest, token, r, size, everything=r == 0)
    return manifest


def _resolve(source):
    """A run folder means its checkpoint.h5."""
    source = os.fspath(source)
    if os.path.isdir(source):
        return os.path.join(source, "checkpoint.h5")
    return source


def describe_checkpoint(path):
    """{"path", "ranks", "num_labels", "step", "epoch"} of a checkpoint (sharded or not)."""
    ck = load_checkpoint(_resolve(path))
    meta = ck.get("shard") or {}
    state = ck["engine_state"]
    return {"path": _resolve(path), "ranks": meta.get("size", 1), "role": meta.get("role"),
            "num_labels": meta.get("num_labels"), "step": state.get("step"),
            "epoch": state.get("epoch")}


__all__ = ["layout_of", "layout_for_config", "save_sharded", "merge_checkpoint",
           "split_checkpoint", "checkpoint_for_rank", "write_merged", "write_split",
           "shard_file_name", "describe_checkpoint"]
