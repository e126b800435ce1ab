"""engine/data/classification.py: the dense classification HDF5 format (writer, reader, loader)."""
import h5py
import numpy
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from engine.backend import Backend
from engine.data.classification import (ClassificationLoader, describe, make_loader,
                                        open_classification, write_classification)
from engine.data.errors import DataError
from engine.data.registry import dataset_format
from engine.data.registry import describe as describe_dataset
from engine.data.registry import make_loader as make_dataset_loader


def small(tmp_path, x_dtype=numpy.float32, n=(23, 7, 5), name="c.h5"):
    rng = numpy.random.default_rng(0)
    splits = {}
    for s, m in zip(("train", "valid", "test"), n):
        x = rng.random((m, 6))
        x = (x * 255).astype(numpy.uint8) if x_dtype == numpy.uint8 else x.astype(x_dtype)
        splits[s] = (x, rng.integers(0, 4, m))
    path = tmp_path / name
    write_classification(path, splits, 4, x_scale=1 / 255 if x_dtype == numpy.uint8 else None,
                         source="test", attrs={"note": "x"})
    return path, splits


@pytest.mark.parametrize("x_dtype", [numpy.float32, numpy.uint8])
def test_round_trip_describe_and_registry(tmp_path, x_dtype):
    path, splits = small(tmp_path, x_dtype)
    assert dataset_format(path) == "engine-classification"
    info = describe(path)
    assert info.summary() == describe_dataset(path).summary()
    assert (info.num_features, info.num_classes, info.multilabel, info.sparse) == \
        (6, 4, False, False)
    assert info.splits == {"train": 23, "valid": 7, "test": 5} and info.format == dataset_format(path)
    with open_classification(path) as ds:
        for s, (x, y) in splits.items():
            got_x, got_y = ds.read(s)
            assert got_x.dtype == numpy.float32 and got_y.dtype == numpy.int64
            want = x.astype(numpy.float32) * (numpy.float32(1 / 255) if x_dtype == numpy.uint8 else 1)
            assert_allclose(got_x, want, rtol=1e-7)
            assert_array_equal(got_y, y)
        assert ds.attrs["note"] == "x"


@pytest.mark.parametrize("in_memory", [True, False])
def test_loader_protocol_shuffle_and_resume(tmp_path, in_memory):
    path, splits = small(tmp_path)
    loader = ClassificationLoader(path, "train", 5, shuffle=True, seed=3, backend=Backend(),
                                  max_memory_bytes=(1 << 30) if in_memory else 0)
    assert len(loader) == 5 and loader.num_examples == 23
    epoch = list(loader.iter_from(1, 0))
    xs = numpy.concatenate([x for x, _ in epoch])
    ys = numpy.concatenate([y for _, y in epoch])
    order = numpy.random.default_rng([3, 1]).permutation(23)
    assert_array_equal(xs, splits["train"][0][order])
    assert_array_equal(ys, splits["train"][1][order])
    resumed = list(loader.iter_from(1, 2))
    assert_array_equal(resumed[0][0], epoch[2][0])
    other = numpy.concatenate([y for _, y in loader.iter_from(2, 0)])
    assert not numpy.array_equal(other, ys)
    loader.close()
    plain = make_dataset_loader(describe_dataset(path), "test", 2, shuffle=False)
    assert_array_equal(numpy.concatenate([y for _, y in plain.iter_from(0, 0)]), splits["test"][1])
    plain.close()


def test_writer_errors_and_atomicity(tmp_path):
    path, _ = small(tmp_path)
    before = path.read_bytes()
    x = numpy.zeros((4, 6), numpy.float32)
    with pytest.raises(DataError, match=r"/train/y row 2: label 7 outside \[0, 4\)"):
        write_classification(path, {"train": (x, numpy.array([0, 1, 7, 9]))}, 4)
    with pytest.raises(DataError, match=r"/train/x row 1: NaN"):
        bad = x.copy()
        bad[1, 3] = numpy.nan
        write_classification(path, {"train": (bad, numpy.zeros(4, int))}, 4)
    with pytest.raises(DataError, match="uint8 but no x_scale"):
        write_classification(path, {"train": (x.astype(numpy.uint8), numpy.zeros(4, int))}, 4)
    with pytest.raises(DataError, match="one label per row"):
        write_classification(path, {"train": (x, numpy.zeros(3, int))}, 4)
    assert path.read_bytes() == before                       # target untouched
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5"]   # no temporary file left


def test_reader_names_file_field_and_first_bad_row(tmp_path):
    path, _ = small(tmp_path)
    with h5py.File(path, "a") as f:
        y = f["valid/y"][...]
        y[4] = 11
        f["valid/y"][...] = y
    with pytest.raises(DataError, match=r"c\.h5: /valid/y row 4: label 11"):
        open_classification(path)
    path2, _ = small(tmp_path, name="d.h5")
    with h5py.File(path2, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(DataError, match="format_version 99"):
        describe(path2)
    path3, _ = small(tmp_path, name="e.h5")
    with h5py.File(path3, "a") as f:
        del f.attrs["num_classes"]
    with pytest.raises(DataError, match="'num_classes' is missing"):
        open_classification(path3)
    with pytest.raises(DataError, match="no such file"):
        open_classification(tmp_path / "nope.h5")
    with pytest.raises(DataError, match="no split 'valid'"):
        p4 = tmp_path / "f.h5"
        write_classification(p4, {"train": (numpy.zeros((2, 3), numpy.float32), [0, 1])}, 2)
        make_loader(p4, "valid", 2)
