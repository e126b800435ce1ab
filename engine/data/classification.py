"""The HDF5 schema of a dense classification dataset: atomic writer, validating reader, loader.

Layout (``format = "engine-classification"``, ``format_version = 1``)::

    /              attrs: format, format_version (int), num_features (F), num_classes (C),
                          source (free text), plus any extra attrs (e.g. image_shape)
    /{split}/x     (N, F) float32, or uint8 with a dataset attribute `scale` (float): the
                   features are x * scale, converted to float32 when read (MNIST: 1/255)
    /{split}/y     (N,) int64 (any integer type is read), labels in [0, C)

Splits: any of train, valid, test. Dimension letters: N examples of a split, F features,
C classes, B minibatch rows.

`write_classification` writes atomically (temporary file beside the target, fsync,
`os.replace`; on any error the temporary file is removed and an existing target is untouched).
`open_classification` validates everything training relies on (format, version, sizes, every
label in [0, C), every float feature finite; scanned in bounded chunks) and raises `DataError`
naming the file, the field (e.g. /train/y) and the first bad row.

`describe_file(path, open_file)` (-> DatasetInfo) and `make_loader(path, split, batch_size,
shuffle, seed, backend)` are the two functions engine/data/registry.py dispatches to. The loader keeps a split in memory when it
fits under `max_memory_bytes` (MNIST: 172 MB as float32), and otherwise reads each minibatch's
rows from the file (sorted indices, one HDF5 read per batch), so no split has to fit in memory.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Tuple

import h5py
import numpy as np

from .errors import DataError, corrupt_file
from .arrays import Loader, batches_per_epoch, check_part, epoch_order, part_slice
from .atomic_h5 import AtomicH5Writer

FORMAT = "engine-classification"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
CHECK_CHUNK = 1 << 16               # rows validated at once
_X_DTYPES = (np.dtype(np.float32), np.dtype(np.uint8))


# --------------------------------------------------------------------------------- writing
def _check_split(path, split, x, y, num_features, num_classes) -> Tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != num_features:
        raise DataError(f"{path}: /{split}/x must be (N, {num_features}), got shape {x.shape}")
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    if x.dtype not in _X_DTYPES:
        raise DataError(f"{path}: /{split}/x must be float32 or uint8, got {x.dtype}")
    if y.shape != (x.shape[0],):
        raise DataError(f"{path}: /{split}/y must be ({x.shape[0]},) (one label per row of "
                        f"/{split}/x), got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: /{split}/y must hold integer labels, got {y.dtype}")
    _check_rows(path, split, x, y, num_classes, 0)
    return x, y.astype(np.int64)


def _check_rows(path, split, x, y, num_classes, offset):
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        r = int(bad[0])
        raise DataError(f"{path}: /{split}/y row {offset + r}: label {int(y[r])} outside "
                        f"[0, {num_classes})")
    if x.dtype.kind == "f":
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            r = int(np.flatnonzero(~finite)[0])
            raise DataError(f"{path}: /{split}/x row {offset + r}: NaN or inf feature")


def write_classification(path, splits: Mapping[str, Tuple[np.ndarray, np.ndarray]],
                         num_classes: int, x_scale: Optional[float] = None, source: str = "",
                         attrs: Optional[Mapping] = None) -> str:
    """Write a dataset atomically; returns `path`.

    `splits` maps split names to (x (N, F), y (N,)); x float32/float64 (stored float32) or
    uint8 with `x_scale` (features = x * x_scale when read). `attrs`: extra root attributes."""
    path = os.fspath(path)
    if not splits:
        raise DataError(f"{path}: no split to write")
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise DataError(f"{path}: unknown splits {sorted(unknown)} (expected {SPLITS})")
    num_classes = int(num_classes)
    if num_classes < 2:
        raise DataError(f"{path}: num_classes must be >= 2, got {num_classes}")
    first = np.asarray(next(iter(splits.values()))[0])
    if first.ndim != 2:
        raise DataError(f"{path}: features must be 2-D (N, F), got shape {first.shape}")
    num_features = int(first.shape[1])
    checked = {s: _check_split(path, s, x, y, num_features, num_classes)
               for s, (x, y) in splits.items()}
    for s, (x, _) in checked.items():
        if x.dtype == np.uint8 and x_scale is None:
            raise DataError(f"{path}: /{s}/x is uint8 but no x_scale was given")
    with AtomicH5Writer(path) as w:
        f = w.file
        for s, (x, y) in checked.items():
            rows = max(1, min(x.shape[0], max(1, (1 << 20) // max(1, x.shape[1]))))
            dx = f.create_dataset(f"{s}/x", data=x, chunks=(rows, x.shape[1]),
                                  compression="gzip", compression_opts=4)
            if x.dtype == np.uint8:
                dx.attrs["scale"] = float(x_scale)
            f.create_dataset(f"{s}/y", data=y, compression="gzip", compression_opts=4)
        f.attrs.update(dict(attrs or {}))
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = np.int64(FORMAT_VERSION)
        f.attrs["num_features"] = np.int64(num_features)
        f.attrs["num_classes"] = np.int64(num_classes)
        f.attrs["source"] = str(source)
        return w.commit()


# --------------------------------------------------------------------------------- reading
class ClassificationFile:
    """An open, validated dataset (see `open_classification`): `path`, `num_features`,
    `num_classes`, `splits` {name: N}, `attrs`; `read(split, rows=None)` -> (x float32, y int64)."""

    def __init__(self, path, file, num_features, num_classes, splits, attrs):
        self.path, self.file = path, file
        self.num_features, self.num_classes = num_features, num_classes
        self.splits: Dict[str, int] = splits
        self.attrs = attrs

    def _need(self, split):
        if split not in self.splits:
            raise DataError(f"{self.path}: no split {split!r} (has {sorted(self.splits)})")

    def read(self, split, rows=None):
        """Features (float32, scaled) and labels of a split, or of the given sorted rows."""
        self._need(split)
        with corrupt_file(self.path, f"cannot read /{split}"):
            dx, dy = self.file[f"{split}/x"], self.file[f"{split}/y"]
            sel = slice(None) if rows is None else rows
            x = dx[sel]
            if x.dtype == np.uint8:
                x = x.astype(np.float32) * np.float32(dx.attrs["scale"])
            return np.asarray(x, dtype=np.float32), np.asarray(dy[sel], dtype=np.int64)

    def nbytes(self, split):
        self._need(split)
        return self.splits[split] * self.num_features * 4

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _attr_int(path, attrs, name):
    if name not in attrs:
        raise DataError(f"{path}: root attribute {name!r} is missing")
    try:
        return int(attrs[name])
    except (TypeError, ValueError):
        raise DataError(f"{path}: root attribute {name!r} is not an integer: "
                        f"{attrs[name]!r}") from None


def open_classification(path, check_values: bool = True) -> ClassificationFile:
    """Open and validate a dataset file; DataError names the file, field and first bad row."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from e
    try:
        with corrupt_file(path, f"unreadable {FORMAT} file"):
            return _validate(path, f, check_values)
    except BaseException:
        f.close()
        raise


def _validate(path, f, check_values) -> ClassificationFile:
    """Check an open file's structure (and, with check_values, every row)."""
    attrs = dict(f.attrs)
    fmt = attrs.get("format")
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    if fmt != FORMAT:
        raise DataError(f"{path}: root attribute format is {fmt!r}, expected {FORMAT!r}")
    version = _attr_int(path, attrs, "format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {version} is not supported (this engine "
                        f"reads version {FORMAT_VERSION})")
    F = _attr_int(path, attrs, "num_features")
    C = _attr_int(path, attrs, "num_classes")
    if F < 1 or C < 2:
        raise DataError(f"{path}: num_features={F}, num_classes={C} (need >= 1 and >= 2)")
    splits = {}
    for s in SPLITS:
        if s not in f:
            continue
        if not isinstance(f[s], h5py.Group):
            raise DataError(f"{path}: /{s} is not a group (expected /{s}/x and /{s}/y)")
        for field in ("x", "y"):
            if field not in f[s]:
                raise DataError(f"{path}: split {s!r} has no /{s}/{field}")
        dx, dy = f[f"{s}/x"], f[f"{s}/y"]
        if dx.ndim != 2 or dx.shape[1] != F:
            raise DataError(f"{path}: /{s}/x has shape {dx.shape}, expected (N, {F})")
        if dx.dtype not in _X_DTYPES:
            raise DataError(f"{path}: /{s}/x has dtype {dx.dtype}, expected float32 or uint8")
        if dx.dtype == np.uint8:
            scale = dx.attrs.get("scale")
            if scale is None:
                raise DataError(f"{path}: /{s}/x is uint8 but has no 'scale' attribute")
            number = isinstance(scale, (int, float, np.number)) and \
                not isinstance(scale, (bool, np.bool_))
            if not number or not np.isfinite(scale):
                raise DataError(f"{path}: /{s}/x attribute scale = {scale!r}: expected a "
                                f"finite number")
        if dy.shape != (dx.shape[0],) or dy.dtype.kind not in "iu":
            raise DataError(f"{path}: /{s}/y has shape {dy.shape} and dtype {dy.dtype}, "
                            f"expected ({dx.shape[0]},) integers")
        if check_values:
            for start in range(0, dx.shape[0], CHECK_CHUNK):
                _check_rows(path, s, dx[start:start + CHECK_CHUNK],
                            dy[start:start + CHECK_CHUNK], C, start)
        splits[s] = int(dx.shape[0])
    if not splits:
        raise DataError(f"{path}: no split (expected groups among {SPLITS})")
    return ClassificationFile(path, f, F, C, splits, attrs)


def describe_file(path, f):
    """The DatasetInfo of an open dataset file (the registry's describe): sizes, kind, splits;
    the rows are checked by the loader."""
    from .info import CLASSIFICATION, DatasetInfo, scalar_attrs
    path = os.path.abspath(os.fspath(path))
    ds = _validate(path, f, check_values=False)
    return DatasetInfo(path=path, format=FORMAT, kind=CLASSIFICATION, splits=dict(ds.splits),
                       num_train=ds.splits.get("train"), num_features=ds.num_features,
                       num_classes=ds.num_classes, multilabel=False, sparse=False,
                       attrs=scalar_attrs(ds.attrs))


def describe(path):
    """The DatasetInfo of a dataset file (engine.data.registry.describe)."""
    from .registry import describe as describe_any
    return describe_any(path)


# --------------------------------------------------------------------------------- loading
class ClassificationLoader(Loader):
    """Minibatches (x (B, F) float32, y (B,) int64) of one split, as backend arrays.

    Protocol of engine/data/arrays.py: `__len__`, `num_examples`, `iter_from(epoch,
    start_batch)` (epoch e shuffled by numpy.random.default_rng([seed, e])), `close()`."""

    def __init__(self, path, split, batch_size, shuffle=True, seed=0, backend=None,
                 max_memory_bytes=2 << 30, part=None):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.file = open_classification(path)
        try:
            self.file._need(split)
            n = self.file.splits[split]
            if n == 0:
                raise DataError(f"{path}: split {split!r} is empty")
            self.split, self.batch_size = split, int(batch_size)
            self.shuffle, self.seed, self.backend = shuffle, seed, backend
            self.part = check_part(part)      # (rank, size): this rank's rows of each batch
            self._n = n
            self._x = self._y = None
            if self.file.nbytes(split) <= max_memory_bytes:
                self._x, self._y = self.file.read(split)
        except BaseException:
            self.file.close()
            raise

    @property
    def num_examples(self):
        return self._n

    def __len__(self):
        return batches_per_epoch(self._n, self.batch_size)

    def order(self, epoch):
        return epoch_order(self._n, self.shuffle, self.seed, epoch)

    def _rows(self, idx):
        if self._x is not None:
            return self._x[idx], self._y[idx]
        if idx.size == 0:                   # a rank's empty share of a small minibatch
            return (np.zeros((0, self.file.num_features), dtype=np.float32),
                    np.zeros((0,), dtype=np.int64))
        srt = np.argsort(idx, kind="stable")
        x, y = self.file.read(self.split, idx[srt])       # h5py needs increasing indices
        inv = np.empty_like(srt)
        inv[srt] = np.arange(srt.size)
        return x[inv], y[inv]

    def iter_from(self, epoch=0, start_batch=0):
        order = self.order(epoch)
        put = self.backend.asarray if self.backend is not None else (lambda a: a)
        for i in range(start_batch, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x, y = self._rows(idx[part_slice(idx.shape[0], self.part)])
            yield put(x), put(y)

    def close(self):
        self.file.close()


def make_loader(path, split, batch_size, shuffle=True, seed=0, backend=None, part=None):
    """The registry's make_loader(): a ClassificationLoader over one split (`part`: a rank's
    share of every minibatch, engine/data/arrays.py)."""
    return ClassificationLoader(path, split, batch_size, shuffle=shuffle, seed=seed,
                                backend=backend, part=part)


__all__ = ["FORMAT", "FORMAT_VERSION", "ClassificationFile", "ClassificationLoader",
           "describe", "make_loader", "open_classification", "write_classification"]
