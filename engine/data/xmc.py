"""Extreme multi-label (XMC) datasets in HDF5: converter, validating reader, minibatch loader.

Layout (``format = "engine-xmc"``, ``format_version = 1``)::

    /                    attrs: format, format_version, num_features (F), num_labels (L),
                                num_train (points of the train split), source, valid_fraction, seed
    /label_counts        (L,) int64: how many train-split points carry each label (propensities)
    /{split}             attrs: num_examples (N); split in train, valid, test
    /{split}/x/indptr    (N+1,) int64   features of point n: indices/data[indptr[n]:indptr[n+1]]
    /{split}/x/indices   (nnz,) int32   feature ids in [0, F), ascending within a point
    /{split}/x/data      (nnz,) float32 feature values
    /{split}/y/indptr    (N+1,) int64   labels of point n: y/indices[indptr[n]:indptr[n+1]]
    /{split}/y/indices   (nlab,) int32  label ids in [0, L), ascending within a point

(the CSR groups of docs/data-formats.md). Dimension letters: N points, F features,
L labels, B minibatch rows, K most labels of a point in the minibatch.

`prepare_xmc(train_txt, test_txt, output)` streams the Extreme Classification Repository text
files (xmc_text.py) into that layout, chunk by chunk (no dense matrix, no whole file in memory).
The valid split is carved from the training file: a fixed-size random subset,
round(valid_fraction * N_train) points (default 10%) chosen by numpy.random.default_rng(seed),
kept in file order; the train split is the rest, and /label_counts counts the train split only.
The file is written atomically (a temporary file beside the target, fsync, os.replace); on any
error nothing is left at the target and an older file there is untouched.

`describe_file(path, open_file)` (-> DatasetInfo, with the training label counts) and
`make_loader(path, split, batch_size, shuffle, seed, backend)` are the format-module protocol of
registry.py. `XMCLoader` holds one split's CSR arrays in host memory
(compact: 12 bytes per non-zero, about 0.5 GB for Amazon-670K's training split) and yields
(x, y): x the (B, F) CSR minibatch (scipy.sparse.csr_matrix, or cupyx.scipy.sparse.csr_matrix on
a GPU backend), y (B, K) int32 label ids padded with -1 (K >= 1). Epoch e is shuffled by
numpy.random.default_rng([seed, e]), as every loader of the engine; a background thread prepares
the next batches (and their host-to-device copy) while the current one trains.
"""
from __future__ import annotations

import os
from typing import Dict

import h5py
import numpy as np

from .errors import DataError
from .arrays import Loader, batches_per_epoch, check_part, epoch_order, part_slice
from .atomic_h5 import AtomicH5Writer
from .xmc_text import DEFAULT_CHUNK_POINTS, read_header, read_xmc_chunks

FORMAT = "engine-xmc"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
_CHUNK = 1 << 16
_CHECK = 1 << 22


# ------------------------------------------------------------------------------ writing
class XMCWriter(AtomicH5Writer):
    """Writes one engine-xmc file atomically; points are appended to a split in CSR pieces.

    Nothing appears at `path` until `finish` returns; leaving a `with` block by an exception (or
    without `finish`) removes the temporary file."""

    def __init__(self, path, num_features: int, num_labels: int):
        super().__init__(path)
        self.F, self.L = int(num_features), int(num_labels)
        self.counts: Dict[str, int] = {}
        self.label_counts = np.zeros(self.L, dtype=np.int64)

    def _create(self, split):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
        if split in self.counts:
            return
        g = self.file.create_group(split)
        kw = dict(maxshape=(None,), chunks=(_CHUNK,), compression="gzip", compression_opts=4)
        for name, dtype in (("x/indptr", np.int64), ("y/indptr", np.int64)):
            g.create_dataset(name, data=np.zeros(1, dtype=dtype), **kw)
        for name, dtype in (("x/indices", np.int32), ("x/data", np.float32),
                            ("y/indices", np.int32)):
            g.create_dataset(name, shape=(0,), dtype=dtype, shuffle=True, **kw)
        self.counts[split] = 0

    @staticmethod
    def _append(ds, values):
        n = ds.shape[0]
        ds.resize((n + values.shape[0],))
        ds[n:] = values

    def append(self, split, x_indptr, x_indices, x_data, y_indptr, y_indices):
        """Append R points: CSR pieces whose indptr arrays start at 0 (length R + 1)."""
        self._create(split)
        g = self.file[split]
        for name, indptr, parts in (("x", x_indptr, (x_indices, x_data)), ("y", y_indptr,
                                                                           (y_indices,))):
            ptr = g[f"{name}/indptr"]
            base = int(ptr[ptr.shape[0] - 1])
            self._append(ptr, np.asarray(indptr[1:], dtype=np.int64) + base)
            for sub, values in zip(("indices", "data"), parts):
                self._append(g[f"{name}/{sub}"], np.asarray(values))
        self.counts[split] += int(len(x_indptr) - 1)
        if split == "train" and len(y_indices):
            self.label_counts += np.bincount(y_indices, minlength=self.L)

    def finish(self, **attrs) -> str:
        f = self.file
        for split in SPLITS:
            if split in self.counts:
                f[split].attrs["num_examples"] = np.int64(self.counts[split])
        f.create_dataset("label_counts", data=self.label_counts, compression="gzip")
        f.attrs.update({k: v for k, v in attrs.items() if v is not None})
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = np.int64(FORMAT_VERSION)
        f.attrs["num_features"] = np.int64(self.F)
        f.attrs["num_labels"] = np.int64(self.L)
        f.attrs["num_train"] = np.int64(self.counts.get("train", 0))
        return self.commit()


def prepare_xmc(train_txt, test_txt, output, valid_fraction: float = 0.1, seed: int = 0,
                chunk_points: int = DEFAULT_CHUNK_POINTS) -> dict:
    """Convert XMC text files (train, test) into an engine-xmc HDF5 file; returns a summary."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    train_txt, test_txt = os.fspath(train_txt), os.fspath(test_txt)
    n_train, F, L = read_header(train_txt)
    n_test, F2, L2 = read_header(test_txt)
    if (F2, L2) != (F, L):
        raise DataError(f"{test_txt}: line 1: header has {F2} features and {L2} labels but "
                        f"{train_txt} has {F} and {L}")
    for path, n in ((train_txt, n_train), (test_txt, n_test)):
        if n == 0:
            raise DataError(f"{path}: line 1: the header announces 0 points (empty dataset)")
    n_valid = int(round(valid_fraction * n_train))
    if n_valid >= n_train:
        raise DataError(f"{train_txt}: {n_train} points leave none for training after a "
                        f"{valid_fraction} valid split")
    is_valid = np.zeros(n_train, dtype=bool)
    is_valid[np.random.default_rng(seed).choice(n_train, size=n_valid, replace=False)] = True
    with XMCWriter(output, F, L) as w:
        start = 0
        for ch in read_xmc_chunks(train_txt, chunk_points):
            mask = is_valid[start:start + ch.num_points]
            start += ch.num_points
            for split, rows in (("train", np.flatnonzero(~mask)), ("valid", np.flatnonzero(mask))):
                if rows.size or split == "train":
                    w.append(split, *_take_rows(ch, rows))
        for ch in read_xmc_chunks(test_txt, chunk_points):
            w.append("test", ch.x_indptr, ch.x_indices, ch.x_data, ch.y_indptr, ch.y_indices)
        if n_valid == 0:
            w._create("valid")          # an empty valid split is still described
        w.finish(source=f"{os.path.basename(train_txt)} + {os.path.basename(test_txt)}",
                 valid_fraction=float(valid_fraction), seed=np.int64(seed))
        counts = dict(w.counts)
    return {"output": os.fspath(output), "num_features": F, "num_labels": L,
            **{f"{s}_points": n for s, n in counts.items()}}


def _take_rows(ch, rows):
    """CSR pieces of the chunk's points `rows` (ascending)."""
    def take(indptr, *arrays):
        lens = np.diff(indptr)[rows]
        new_ptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lens, out=new_ptr[1:])
        idx = (np.repeat(indptr[rows] - new_ptr[:-1], lens) + np.arange(new_ptr[-1]))
        return (new_ptr,) + tuple(a[idx] for a in arrays)
    xp_, xi, xd = take(ch.x_indptr, ch.x_indices, ch.x_data)
    yp, yi = take(ch.y_indptr, ch.y_indices)
    return xp_, xi, xd, yp, yi


# ------------------------------------------------------------------------------ reading
def _open(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (expected an {FORMAT} HDF5 file; make one with "
                        f"`engine prepare xmc`)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {e}") from e
    try:
        _check_header(path, f)
        return f
    except BaseException:
        f.close()
        raise


def _check_header(path, f):
    fmt = f.attrs.get("format")
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    if fmt != FORMAT:
        raise DataError(f"{path}: root attribute format is {fmt!r}, expected {FORMAT!r}")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {version}, expected {FORMAT_VERSION}")
    for name in ("num_features", "num_labels", "num_train"):
        if name not in f.attrs:
            raise DataError(f"{path}: root attribute {name} missing")


def _splits(f):
    return [s for s in SPLITS if s in f]


def _label_counts(path, f):
    if "label_counts" not in f:
        raise DataError(f"{os.fspath(path)}: dataset /label_counts missing")
    counts = np.asarray(f["label_counts"][()], dtype=np.int64)
    if counts.shape != (int(f.attrs["num_labels"]),):
        raise DataError(f"{os.fspath(path)}: /label_counts has shape {counts.shape}, expected "
                        f"({int(f.attrs['num_labels'])},)")
    return counts


def describe_file(path, f):
    """The DatasetInfo of an open engine-xmc file (the registry's describe): sparse,
    multi-label, with the training label counts (PSP@k propensities)."""
    from .info import CLASSIFICATION, DatasetInfo, scalar_attrs
    path = os.path.abspath(os.fspath(path))
    _check_header(path, f)
    return DatasetInfo(
        path=path, format=FORMAT, kind=CLASSIFICATION,
        splits={s: int(f[s].attrs.get("num_examples", 0)) for s in _splits(f)},
        num_train=int(f.attrs["num_train"]), num_features=int(f.attrs["num_features"]),
        num_classes=int(f.attrs["num_labels"]), multilabel=True, sparse=True,
        label_counts=_label_counts(path, f), attrs=scalar_attrs(f.attrs))


def describe(path):
    """The DatasetInfo of a dataset file (engine.data.registry.describe)."""
    from .registry import describe as describe_any
    return describe_any(path)


def read_label_frequencies(path):
    """(label_counts (L,) int64, num_train) of an engine-xmc file: the inputs of PSP@k."""
    with _open(path) as f:
        return _label_counts(path, f), int(f.attrs["num_train"])


def read_split(path, split):
    """(x scipy CSR (N, F) float32, y_indptr (N+1,), y_indices) of a split, validated."""
    import scipy.sparse
    path = os.fspath(path)
    with _open(path) as f:
        if split not in f:
            raise DataError(f"{path}: no split {split!r} (the file has {_splits(f)})")
        F, L = int(f.attrs["num_features"]), int(f.attrs["num_labels"])
        try:
            g = f[split]
            arrays = {name: g[name][()] for name in ("x/indptr", "x/indices", "x/data",
                                                     "y/indptr", "y/indices")}
        except KeyError as e:
            raise DataError(f"{path}: /{split} lacks a dataset ({e})") from None
        except (OSError, RuntimeError) as e:
            raise DataError(f"{path}: cannot read /{split} (corrupt or truncated file?): {e}") from e
    n = arrays["x/indptr"].shape[0] - 1
    for name, size, bound in (("x", arrays["x/indices"].shape[0], F),
                              ("y", arrays["y/indices"].shape[0], L)):
        ptr = arrays[f"{name}/indptr"]
        if ptr.shape[0] != n + 1 or ptr[0] != 0 or ptr[-1] != size or np.any(np.diff(ptr) < 0):
            raise DataError(f"{path}: /{split}/{name}/indptr is inconsistent (must rise from 0 "
                            f"to {size} over {n + 1} entries)")
        ids = arrays[f"{name}/indices"]
        for s in range(0, ids.shape[0], _CHECK):
            block = ids[s:s + _CHECK]
            if block.size and (block.min() < 0 or block.max() >= bound):
                bad = s + int(np.flatnonzero((block < 0) | (block >= bound))[0])
                raise DataError(f"{path}: /{split}/{name}/indices[{bad}] = {int(ids[bad])} "
                                f"outside [0, {bound})")
    if arrays["x/data"].shape != arrays["x/indices"].shape:
        raise DataError(f"{path}: /{split}/x/data and /{split}/x/indices differ in length")
    x = scipy.sparse.csr_matrix((arrays["x/data"], arrays["x/indices"], arrays["x/indptr"]),
                                shape=(n, F))
    return x, arrays["y/indptr"], arrays["y/indices"]


class XMCLoader(Loader):
    """Minibatches (x CSR, y (B, K) padded with -1) over one split (see the module docstring)."""

    def __init__(self, path, split, batch_size, shuffle=True, seed=0, backend=None,
                 drop_last=False, prefetch=True, part=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.path, self.split = os.fspath(path), split
        self.x, self.y_indptr, self.y_indices = read_split(path, split)
        if self.x.shape[0] == 0:
            raise DataError(f"{self.path}: split {split!r} is empty (0 examples)")
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.backend, self.drop_last, self.prefetch = backend, bool(drop_last), bool(prefetch)
        self.part = check_part(part)          # (rank, size): this rank's rows of each batch

    @property
    def num_examples(self):
        return self.x.shape[0]

    def __len__(self):
        return batches_per_epoch(self.num_examples, self.batch_size, self.drop_last)

    def order(self, epoch):
        return epoch_order(self.num_examples, self.shuffle, self.seed, epoch)

    def labels(self, rows):
        """(len(rows), K) int32 label ids padded with -1 (K = most labels of these rows, >= 1)."""
        starts, ends = self.y_indptr[rows], self.y_indptr[rows + 1]
        lens = ends - starts
        K = max(1, int(lens.max()) if lens.size else 1)
        y = np.full((rows.shape[0], K), -1, dtype=np.int32)
        col = np.arange(K)
        mask = col[None, :] < lens[:, None]
        y[mask] = self.y_indices[(starts[:, None] + col[None, :])[mask]]
        return y

    def batch(self, rows):
        x, y = self.x[rows], self.labels(rows)
        be = self.backend
        if be is None:
            return x, y
        # the backend's CSR (on the GPU: canonical, built with no host read); runs in the
        # prefetch thread
        return be.to_device_csr(x), be.asarray(y)

    def _batches(self, epoch, start_batch):
        order = self.order(epoch)
        for i in range(start_batch, len(self)):
            rows = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.batch(rows[part_slice(rows.shape[0], self.part)])

    def iter_from(self, epoch=0, start_batch=0):
        """Batches `start_batch`, ... of epoch `epoch`; with `prefetch`, prepared (and copied to
        the device) by a background thread two batches ahead (loader.py's `_prefetched`)."""
        if not self.prefetch:
            return self._batches(epoch, start_batch)
        from .loader import PREFETCH_DEPTH, _prefetched
        return _prefetched(self._batches(epoch, start_batch), PREFETCH_DEPTH)

    def close(self):
        self.x = self.y_indptr = self.y_indices = None


def make_loader(path, split, batch_size, shuffle=True, seed=0, backend=None,
                part=None) -> XMCLoader:
    return XMCLoader(path, split, batch_size, shuffle=shuffle, seed=seed, backend=backend,
                     part=part)
