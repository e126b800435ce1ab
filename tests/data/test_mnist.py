"""engine/data/mnist.py: IDX files (gzipped or plain) -> the classification HDF5 format."""
import gzip
import os
import struct

import numpy
import pytest
from numpy.testing import assert_array_equal

from engine.data.classification import describe, open_classification
from engine.data.errors import DataError
from engine.data.mnist import STEMS, load_mnist, prepare_mnist, read_idx, write_idx


def make_set(folder, n_train=40, n_test=12, gz=True, seed=0):
    rng = numpy.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        arrays[split] = (rng.integers(0, 256, (n, 28, 28)).astype(numpy.uint8),
                         rng.integers(0, 10, n).astype(numpy.uint8))
        suffix = ".gz" if gz else ""
        write_idx(folder / (STEMS[f"{split}_images"] + suffix), arrays[split][0])
        write_idx(folder / (STEMS[f"{split}_labels"] + suffix), arrays[split][1])
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_and_split(tmp_path, gz):
    arrays = make_set(tmp_path, gz=gz)
    data = load_mnist(tmp_path, valid_size=10)
    assert_array_equal(data["train"][0], arrays["train"][0][:30].reshape(30, 784))
    assert_array_equal(data["valid"][1], arrays["train"][1][30:])
    assert_array_equal(data["test"][0], arrays["test"][0].reshape(12, 784))
    out = prepare_mnist(tmp_path, tmp_path / "m.h5", valid_size=10)
    info = describe(out)
    assert info.splits == {"train": 30, "valid": 10, "test": 12}
    assert (info.num_features, info.num_classes) == (784, 10)
    with open_classification(out) as ds:
        x, y = ds.read("valid")
        assert_array_equal(x, arrays["train"][0][30:].reshape(10, 784).astype(numpy.float32)
                           * numpy.float32(1 / 255))
        assert_array_equal(y, arrays["train"][1][30:])
        assert list(ds.attrs["image_shape"]) == [28, 28]


@pytest.mark.parametrize("dtype", [numpy.uint8, numpy.int8, numpy.int16, numpy.int32,
                                   numpy.float32, numpy.float64])
def test_read_idx_types(tmp_path, dtype):
    a = (numpy.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == numpy.uint8:
        a = numpy.arange(24, dtype=dtype).reshape(2, 3, 4)
    got = read_idx(write_idx(tmp_path / "a.idx", a))
    assert got.dtype == numpy.dtype(dtype) and got.dtype.isnative
    assert_array_equal(got, a)


def test_idx_errors_name_the_file(tmp_path):
    p = write_idx(tmp_path / "ok", numpy.zeros((5, 2, 2), numpy.uint8))
    raw = open(p, "rb").read()
    cases = {
        "truncated IDX data": raw[:-3],
        "1 unexpected bytes after": raw + b"\0",
        "not an IDX file: magic": b"\x01\x02" + raw[2:],
        "truncated IDX header": raw[:7],
        "truncated IDX file": raw[:2],
    }
    for i, (msg, content) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}"
        bad.write_bytes(content)
        with pytest.raises(DataError, match=rf"bad{i}: {msg}"):
            read_idx(bad)
    gz = tmp_path / "cut.gz"
    gz.write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(DataError, match=r"cut\.gz: corrupt or truncated gzip"):
        read_idx(gz)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="missing IDX files: t10k-images"):
        make_set(tmp_path)
        os.remove(tmp_path / (STEMS["test_images"] + ".gz"))
        load_mnist(tmp_path)
    make_set(tmp_path)
    write_idx(tmp_path / (STEMS["test_labels"] + ".gz"), numpy.zeros(11, numpy.uint8))
    with pytest.raises(DataError, match="11 labels but .*t10k-images.* has 12 images"):
        load_mnist(tmp_path, valid_size=5)
    write_idx(tmp_path / (STEMS["test_labels"] + ".gz"), numpy.full(12, 10, numpy.uint8))
    with pytest.raises(DataError, match="label 10 at item 0 outside 0..9"):
        load_mnist(tmp_path, valid_size=5)
    with pytest.raises(DataError, match="valid_size 40"):
        make_set(tmp_path)
        load_mnist(tmp_path, valid_size=40)
    assert not (tmp_path / "x.h5").exists()


def write_idx_by_hand(path, array, gz):
    """An IDX file written with struct, byte by byte from the format's definition (independent of
    engine.data.mnist.write_idx): 0, 0, type 0x08 (uint8), ndim, big-endian uint32 sizes, data."""
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    raw += struct.pack(f">{array.ndim}I", *array.shape)
    raw += numpy.ascontiguousarray(array, dtype=numpy.uint8).tobytes()
    with open(path, "wb") as fh:
        fh.write(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("spelling,gz", [("mnist", True), ("mirror", False)])
def test_full_protocol_split_from_hand_written_idx_files(tmp_path, spelling, gz):
    """The default protocol on a folder laid out as the MNIST distribution (or a mirror that
    spells the names with a dot, uncompressed): the last 5,000 training images are the
    validation split, the t10k files the test split, pixels flattened row-major."""
    n_train, n_test = 5000 + 23, 17
    sets = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = ((numpy.arange(n) * 7 + (5 if split == "train" else 9)) % 10).astype(numpy.uint8)
        images = numpy.zeros((n, 28, 28), numpy.uint8)
        images[:, 0, 0] = numpy.arange(n) % 256              # the row number, in the first pixel
        images[:, 27, :] = (labels * 25)[:, None]            # the label, in the last image row
        images[numpy.arange(n), 3, labels] = 255
        sets[split] = (images, labels)
        for kind, array in (("images", images), ("labels", labels)):
            name = STEMS[f"{split}_{kind}"]
            if spelling == "mirror":
                name = name.replace("-idx", ".idx")
            write_idx_by_hand(tmp_path / (name + (".gz" if gz else "")), array, gz)
    data = load_mnist(tmp_path)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data["train"], data["valid"], data["test"]
    assert x_tr.shape == (23, 784) and x_va.shape == (5000, 784) and x_te.shape == (17, 784)
    assert x_tr.dtype == numpy.uint8 and y_tr.dtype == numpy.int64
    assert int(y_tr[0]) == 5 and int(y_te[0]) == 9                   # the first labels
    train_images, train_labels = sets["train"]
    assert_array_equal(x_tr, train_images[:23].reshape(23, 784))
    assert_array_equal(x_va, train_images[23:].reshape(5000, 784))
    assert_array_equal(y_va, train_labels[23:])
    assert_array_equal(x_te, sets["test"][0].reshape(17, 784))
    assert_array_equal(y_te, sets["test"][1])
    assert x_va[0, 0] == 23 % 256 and x_va[0, 27 * 28] == train_labels[23] * 25   # row-major
    assert tuple(data["image_shape"]) == (28, 28)
    out = prepare_mnist(tmp_path, tmp_path / "m.h5")
    assert describe(out).splits == {"train": 23, "valid": 5000, "test": 17}
