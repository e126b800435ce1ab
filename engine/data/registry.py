"""Which dataset a file holds, described once, and the loader that reads it.

Every file written by `engine prepare` carries a root attribute `format`:

    "engine-lm-corpus"       token streams for the language model   (engine/data/hdf5_schema.py)
    "engine-classification"  dense features, one label per example  (engine/data/classification.py)
    "engine-xmc"             CSR features, several labels per example (engine/data/xmc.py)

    info = describe("ptb.h5")          # one open of the file -> DatasetInfo (engine/data/info.py)
    loader = make_loader(info, "train", batch_size=256, shuffle=True, seed=0, backend=be,
                         context=5)    # context: language-model corpora only

A format module provides `describe_file(path, open_h5py_file) -> DatasetInfo` and
`make_loader(path, split, batch_size, shuffle, seed, backend[, part])` (the corpus loader also
takes `context`; `part` is a rank's share of every minibatch, needed for distributed training);
a new format is one entry in FORMATS. The kind of a file is decided here, once:
the Engine and the command line take the DatasetInfo and never open the file to ask again.
"""
from __future__ import annotations

import importlib
import os

from .errors import DataError, corrupt_file
from .info import CLASSIFICATION, LM_CORPUS, DatasetInfo

LM_FORMAT = "engine-lm-corpus"

#: format attribute -> module holding describe_file() and make_loader()
FORMATS = {
    LM_FORMAT: "engine.data.hdf5_schema",
    "engine-classification": "engine.data.classification",
    "engine-xmc": "engine.data.xmc",
}

_EXPECTED = ("a file written by `engine prepare` (a language-model corpus, or a classification "
             "file from `engine prepare mnist|xmc`)")


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def describe(path) -> DatasetInfo:
    """Open the file once, read its format and describe it; DataError (one line naming the
    file) when it is missing, unreadable or of an unknown format."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file (expected {_EXPECTED})")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, expected {_EXPECTED}")
    import h5py
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {e}; "
                        f"expected {_EXPECTED}") from e
    with f, corrupt_file(path, "unreadable dataset file"):
        fmt = _text(f.attrs.get("format"))
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise DataError(f"{path}: root attribute 'format' is {fmt!r}, expected one of "
                            f"{', '.join(FORMATS)} ({_EXPECTED})")
        with corrupt_file(path, f"unreadable {fmt} file"):
            return importlib.import_module(FORMATS[fmt]).describe_file(path, f)


def as_info(data) -> DatasetInfo:
    """A DatasetInfo as it is, or the description of a path."""
    return data if isinstance(data, DatasetInfo) else describe(data)


def make_loader(info: DatasetInfo, split, batch_size, shuffle=True, seed=0, backend=None,
                context=None, part=None):
    """A streaming loader over one split of a described dataset (`context`: the n-gram length,
    for a language-model corpus; `part=(rank, size)`: only that rank's rows of every minibatch,
    engine/data/arrays.py)."""
    if info.kind == LM_CORPUS:
        if context is None:
            raise ValueError(f"{info.path}: a language-model corpus loader needs the context length")
        from .loader import NGramLoader
        return NGramLoader(info.path, split, context=context, batch_size=batch_size,
                           shuffle=shuffle, seed=seed, backend=backend, part=part)
    module = importlib.import_module(FORMATS[info.format])
    if part is None:                  # a format module without rank shares still loads
        return module.make_loader(info.path, split, batch_size, shuffle=shuffle, seed=seed,
                                  backend=backend)
    return module.make_loader(info.path, split, batch_size, shuffle=shuffle, seed=seed,
                              backend=backend, part=part)


def dataset_format(path) -> str | None:
    """The `format` attribute of an HDF5 file, or None when the file is missing, unreadable or
    has none (a utility: `describe` is what the engine uses)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    try:
        import h5py
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
    except Exception:           # not HDF5, truncated...: describe() says what is wrong
        return None
    fmt = _text(fmt)
    return None if fmt is None else str(fmt)


__all__ = ["DatasetInfo", "describe", "as_info", "make_loader", "dataset_format", "FORMATS",
           "LM_FORMAT", "LM_CORPUS", "CLASSIFICATION"]
