"""MNIST-style IDX files (MNIST, Fashion-MNIST) -> the dense classification HDF5 format.

IDX (LeCun's format): 2 zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), a byte with the number of dimensions, then one big-endian uint32
per dimension, then the values, big-endian, row-major. Files may be gzipped (read either way:
the gzip magic 1f 8b decides, not the name).

A folder holds four files, `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
`t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each possibly with `.gz` (the names with a
dot before `idx`, as some mirrors spell them, are found too).

Splits (the usual MNIST protocol): train = the first 55,000 training images, valid = the last
5,000 (`valid_size`), test = the 10,000 t10k images. Images (N, 28, 28) uint8 are flattened
to (N, 784) and stored as uint8 with scale 1/255 (features in [0, 1] when read).
Every problem (missing file, bad magic, wrong dimensions, truncated or over-long data, labels
outside 0..9, image/label counts that differ) raises DataError naming the file.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from .classification import write_classification
from .errors import DataError

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
STEMS = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
NUM_CLASSES = 10


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file (gzipped or not), in native byte order."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from e
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, the header needs 4)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file: magic bytes {raw[:4].hex()} (expected "
                        f"00 00 <type in {sorted(hex(t) for t in _IDX_TYPES)}> <ndim>)")
    ndim = raw[3]
    if ndim < 1:
        raise DataError(f"{path}: IDX header declares {ndim} dimensions")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path}: truncated IDX header: {ndim} dimensions need {head} bytes, "
                        f"the file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - head
    if have < need:
        raise DataError(f"{path}: truncated IDX data: dimensions {dims} of {dtype.str} need "
                        f"{need} bytes after the header, the file has {have}")
    if have > need:
        raise DataError(f"{path}: {have - need} unexpected bytes after the IDX data "
                        f"(dimensions {dims} of {dtype.str} need {need})")
    arr = np.frombuffer(raw, dtype=dtype, count=need // dtype.itemsize, offset=head)
    return arr.reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_files(directory) -> dict:
    """{train_images, train_labels, test_images, test_labels} -> path, in `directory`."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: no such folder (expected the four MNIST IDX files)")
    found, missing = {}, []
    for key, stem in STEMS.items():
        dotted = stem.replace("-idx", ".idx")
        for name in (stem + ".gz", stem, dotted + ".gz", dotted):
            if os.path.isfile(os.path.join(directory, name)):
                found[key] = os.path.join(directory, name)
                break
        else:
            missing.append(stem + "[.gz]")
    if missing:
        raise DataError(f"{directory}: missing IDX files: {', '.join(missing)}")
    return found


def _images_labels(images_path, labels_path):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected images (N, rows, cols), got dimensions "
                        f"{images.shape}")
    if images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 pixels, got {images.dtype}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels (N,), got dimensions {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path}: {labels.shape[0]} labels but {images_path} has "
                        f"{images.shape[0]} images")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise DataError(f"{labels_path}: label {int(labels[bad[0]])} at item {int(bad[0])} "
                        f"outside 0..{NUM_CLASSES - 1}")
    return images.reshape(images.shape[0], -1), labels.astype(np.int64)


def load_mnist(directory, valid_size: int = 5000) -> dict:
    """{"train", "valid", "test"} -> (x (N, 784) uint8, y (N,) int64), plus "image_shape"."""
    files = find_idx_files(directory)
    x_tr, y_tr = _images_labels(files["train_images"], files["train_labels"])
    x_te, y_te = _images_labels(files["test_images"], files["test_labels"])
    images = read_idx(files["test_images"]).shape[1:]
    if x_tr.shape[1] != x_te.shape[1]:
        raise DataError(f"{files['test_images']}: images of {x_te.shape[1]} pixels but the "
                        f"training images have {x_tr.shape[1]}")
    valid_size = int(valid_size)
    if not 0 <= valid_size < x_tr.shape[0]:
        raise DataError(f"{files['train_images']}: valid_size {valid_size} must be in "
                        f"[0, {x_tr.shape[0]}) (the training images)")
    cut = x_tr.shape[0] - valid_size
    out = {"train": (x_tr[:cut], y_tr[:cut]), "test": (x_te, y_te), "image_shape": images}
    if valid_size:
        out["valid"] = (x_tr[cut:], y_tr[cut:])
    return out


def prepare_mnist(directory, output, valid_size: int = 5000) -> str:
    """Convert an MNIST/Fashion-MNIST folder to `output` (engine-classification HDF5)."""
    data = load_mnist(directory, valid_size)
    shape = data.pop("image_shape")
    return write_classification(output, data, NUM_CLASSES, x_scale=1.0 / 255.0,
                                source=f"IDX files in {os.path.abspath(os.fspath(directory))}",
                                attrs={"image_shape": np.asarray(shape, dtype=np.int64),
                                       "valid_from_train": np.int64(valid_size)})


def write_idx(path, array, gz: bool = None) -> str:
    """Write `array` as an IDX file (gzipped when `gz`, default: the name ends in .gz); for
    tests and for making small synthetic sets."""
    path = os.fspath(path)
    arr = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    code = codes.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"write_idx: dtype {arr.dtype} has no IDX type code")
    raw = (bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
           + arr.astype(np.dtype(_IDX_TYPES[code])).tobytes())
    if gz if gz is not None else path.endswith(".gz"):
        raw = gzip.compress(raw)
    with open(path, "wb") as fh:
        fh.write(raw)
    return path


__all__ = ["read_idx", "find_idx_files", "load_mnist", "prepare_mnist", "write_idx", "STEMS"]
