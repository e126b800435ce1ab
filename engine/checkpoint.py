"""Checkpoints: one HDF5 file with the model, the optimizer and the training position.

Layout (format "engine-checkpoint", format_version 1):
  attrs: model_kind, model_config (JSON), optimizer_kind, optimizer_config (JSON)
  /engine_state     a JSON string: step, epoch, batch in epoch, seed, dtype, history, data
                    vocabulary hash, running sums of the current epoch
  /model/<key>      every parameter (host arrays, in the model's dtype)
  /optimizer/<key>  every optimizer buffer and scalar
  attr shard        (distributed runs only) JSON: a rank's shard, or the manifest naming the
                    shard files (engine/distributed/checkpoints.py); absent in one process

Writes are atomic: the file is written next to its destination under a temporary name, flushed
to disk, then renamed over the destination; a failure leaves any earlier checkpoint untouched.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy

from .filemode import follow_umask

FORMAT = "engine-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is missing, truncated, of another format, or does not fit the data."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (full disk, I/O error); the message says what is kept.
    Also an OSError, as the failure of the file system that it is."""


def _h5py():
    import h5py
    return h5py


def save_checkpoint(path, model_kind, model_config, model_state, optimizer_kind, optimizer_config,
                    optimizer_state, engine_state, shard=None):
    h5py = _h5py()
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".h5", dir=folder)
    follow_umask(fd)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["model_kind"] = model_kind
            f.attrs["model_config"] = json.dumps(model_config)
            f.attrs["optimizer_kind"] = optimizer_kind
            f.attrs["optimizer_config"] = json.dumps(optimizer_config)
            if shard is not None:
                f.attrs["shard"] = json.dumps(shard)
            # a dataset, not an attribute: the history can outgrow HDF5's 64 KiB attribute limit
            f.create_dataset("engine_state", data=json.dumps(engine_state))
            g = f.create_group("model")
            for key, value in model_state.items():
                g.create_dataset(key, data=numpy.asarray(value))
            g = f.create_group("optimizer")
            scalars = {}
            for key, value in optimizer_state.items():
                if isinstance(value, numpy.ndarray):
                    g.create_dataset(key, data=value)     # "/" in a key makes subgroups
                else:
                    scalars[key] = value.item() if isinstance(value, numpy.generic) else value
            g.attrs["scalars"] = json.dumps(scalars)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError):   # a full disk, a quota, an I/O error: say what is kept
            reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
            kept = f"; {kept_checkpoint(path)}" if os.path.exists(path) else ""
            raise CheckpointWriteError(f"{path}: could not write the checkpoint ({reason}); its "
                                  f"temporary file was removed{kept}") from None
        raise


def kept_checkpoint(path):
    """"the previous checkpoint PATH (step S, ...) is kept": what a failed write left there."""
    if not os.path.exists(path):
        return f"no earlier checkpoint exists at {path}"
    try:
        h5py = _h5py()
        with h5py.File(path, "r") as f:
            state = json.loads(_text(f["engine_state"][()]))
        if state.get("batch_in_epoch"):
            where = (f" (step {state['step']}, batch {state['batch_in_epoch']} of epoch "
                     f"{state['epoch'] + 1})")
        else:
            where = f" (step {state['step']}, end of epoch {state['epoch']})"
    except Exception:                  # the message must not fail on an odd file
        where = ""
    return f"the previous checkpoint {path}{where} is kept"


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _datasets(group):
    """{relative path: array} of every dataset under `group` (keys may contain "/")."""
    h5py = _h5py()
    found = {}
    group.visititems(lambda name, obj: found.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return found


def load_checkpoint(path):
    """-> dict with model_kind, model_config, model_state, optimizer_kind, optimizer_config,
    optimizer_state, engine_state, shard (None in one process). Raises CheckpointError naming
    the file and the problem."""
    h5py = _h5py()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CheckpointError(f"{path}: not a readable HDF5 checkpoint (truncated or corrupt?): {exc}") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not an engine checkpoint (format attribute is "
                                  f"{f.attrs.get('format')!r}, expected {FORMAT!r})")
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format_version {version}, this engine reads {FORMAT_VERSION}")
        try:
            out = {
                "model_kind": str(f.attrs["model_kind"]),
                "model_config": json.loads(f.attrs["model_config"]),
                "optimizer_kind": str(f.attrs["optimizer_kind"]),
                "optimizer_config": json.loads(f.attrs["optimizer_config"]),
                "engine_state": json.loads(_text(f["engine_state"][()])),
                "model_state": _datasets(f["model"]),
                "optimizer_state": _datasets(f["optimizer"]),
            }
            out["optimizer_state"].update(json.loads(f["optimizer"].attrs["scalars"]))
            out["shard"] = json.loads(f.attrs["shard"]) if "shard" in f.attrs else None
        except (KeyError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})") from None
    return out
