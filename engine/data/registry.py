"""Which HDF5 dataset format a file holds, and the module that reads it.

Every file written by `engine prepare` carries a root attribute `format`:

    "engine-lm-corpus"       token streams for the language model   (engine/data/hdf5_schema.py)
    "engine-classification"  dense features, one label per example  (engine/data/classification.py)
    "engine-xmc"             CSR features, several labels per example (engine/data/xmc.py)

A classification format module provides

    describe(path) -> dict(format, num_features, num_classes, multilabel, sparse, splits, ...)
    make_loader(path, split, batch_size, shuffle, seed, backend)
        -> loader with __len__, num_examples, iter_from(epoch, start_batch), close()

and the Engine and the command line dispatch on the attribute through this file, so a new format
is one entry in FORMATS.
"""
from __future__ import annotations

import importlib
import os

from .errors import DataError

LM_FORMAT = "engine-lm-corpus"

#: format attribute -> module holding describe() and make_loader()
FORMATS = {
    "engine-classification": "engine.data.classification",
    "engine-xmc": "engine.data.xmc",
}


def dataset_format(path) -> str | None:
    """The `format` attribute of an HDF5 file, or None when the file is missing, unreadable or has
    none (the caller's reader then raises its own error naming the problem)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    try:
        import h5py
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
    except Exception:           # not HDF5, truncated...: the format's reader says what is wrong
        return None
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    return None if fmt is None else str(fmt)


def is_lm_corpus_file(path) -> bool:
    """True unless the file is a classification dataset (missing or broken files count as LM
    corpora so that the corpus reader reports what is wrong with them)."""
    return dataset_format(path) not in FORMATS


def _module(path):
    fmt = dataset_format(path)
    if fmt not in FORMATS:
        raise DataError(f"{path}: not a classification dataset (format {fmt!r}; "
                        f"known: {sorted(FORMATS)})")
    return importlib.import_module(FORMATS[fmt])


def describe_dataset(path) -> dict:
    """Sizes and kind of a classification dataset (see the module docstring)."""
    return _module(path).describe(path)


def make_dataset_loader(path, split, batch_size, shuffle=True, seed=0, backend=None):
    """A streaming loader over one split of a classification dataset."""
    return _module(path).make_loader(path, split, batch_size, shuffle=shuffle, seed=seed,
                                     backend=backend)
