"""XMC data: the text reader (line-numbered errors), the HDF5 round trip, atomic writing,
truncated/corrupt files, empty datasets, the minibatch loader and the synthetic generator."""
import gzip
import os

import h5py
import numpy
import pytest

from devices import BACKEND_PARAMS, make_backend, to_host
from engine.backend import Backend
from engine.data.errors import DataError
from engine.data.xmc import describe, make_loader, prepare_xmc, read_label_frequencies, read_split
from engine.data.xmc_synthetic import write_synthetic_xmc
from engine.data.xmc_text import read_xmc_chunks

TRAIN = """6 8 5
0,3 1:0.5 4:2
 2:1 7:1
4 0:1
2,1,0 6:1.5 3:0.25 5:1
1
3 1:1 2:1
"""
TEST = """2 8 5
1 0:1 7:3
 4:1
"""


def write(tmp_path, name, text, gz=False):
    path = tmp_path / name
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def parse_all(path):
    """Points as (sorted labels, {feature: value}) from the reader's chunks."""
    out = []
    for ch in read_xmc_chunks(path, chunk_points=2):
        for r in range(ch.num_points):
            xs = slice(ch.x_indptr[r], ch.x_indptr[r + 1])
            ys = slice(ch.y_indptr[r], ch.y_indptr[r + 1])
            out.append((ch.y_indices[ys].tolist(),
                        dict(zip(ch.x_indices[xs].tolist(), ch.x_data[xs].tolist()))))
    return out


def test_reader_parses_every_line_kind(tmp_path):
    pts = parse_all(write(tmp_path, "t.txt", TRAIN, gz=True))
    assert pts[0] == ([0, 3], {1: 0.5, 4: 2.0})
    assert pts[1] == ([], {2: 1.0, 7: 1.0})                 # no label: leading space
    assert pts[3] == ([0, 1, 2], {3: 0.25, 5: 1.0, 6: 1.5})  # ids sorted, values moved along
    assert pts[4] == ([1], {})                               # labels only
    assert len(pts) == 6


@pytest.mark.parametrize("text, line, what", [
    ("6 8\n", 1, "bad header"),
    ("a b c\n", 1, "bad header"),
    ("", 1, "empty"),
    ("2 8 5\n0 1:1\n5 1:1\n", 3, "label id 5 out of range"),
    ("2 8 5\n0 1:1\n0 8:1\n", 3, "feature id 8 out of range"),
    ("2 8 5\n0 1:1\n0 1-1\n", 3, "malformed pair"),
    ("2 8 5\n0 1:x\n0 1:1\n", 2, "malformed pair"),
    ("2 8 5\n0,a 1:1\n0 1:1\n", 2, "malformed label list"),
    ("2 8 5\n0 1:1 1:2\n0 1:1\n", 2, "appears twice"),
    ("2 8 5\n0,0 1:1\n0 1:1\n", 2, "repeated"),
    ("2 8 5\n0 1:nan\n0 1:1\n", 2, "non-finite"),
    ("3 8 5\n0 1:1\n0 1:1\n", 4, "announces 3"),
    ("1 8 5\n0 1:1\n0 1:1\n", 3, "more point lines"),
])
def test_errors_name_file_line_and_problem(tmp_path, text, line, what):
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(DataError) as info:
        list(read_xmc_chunks(path))
    msg = str(info.value)
    assert path in msg and f"line {line}:" in msg and what in msg, msg


def test_trailing_blank_lines_are_ignored(tmp_path):
    assert len(parse_all(write(tmp_path, "t.txt", TRAIN + "\n\n"))) == 6


def test_round_trip_and_label_counts(tmp_path):
    tr, te = write(tmp_path, "tr.txt", TRAIN), write(tmp_path, "te.txt", TEST)
    out = str(tmp_path / "d.h5")
    info = prepare_xmc(tr, te, out, valid_fraction=1 / 3, seed=3)
    assert info["train_points"] == 4 and info["valid_points"] == 2 and info["test_points"] == 2
    d = describe(out)
    assert d.sparse and d.multilabel and d.format == "engine-xmc" and d.kind == "classification"
    assert (d.num_features, d.num_classes) == (8, 5) and list(d.splits) == ["train", "valid", "test"]
    assert d.num_train == 4 and d.label_counts.dtype == numpy.int64
    pts = parse_all(tr)
    seen = []
    for split in ("train", "valid"):
        x, yp, yi = read_split(out, split)
        for r in range(x.shape[0]):
            row = x.getrow(r)
            seen.append((yi[yp[r]:yp[r + 1]].tolist(),
                         dict(zip(row.indices.tolist(), row.data.tolist()))))
    assert sorted(map(repr, seen)) == sorted(map(repr, pts))   # every point once, unchanged
    x, yp, yi = read_split(out, "train")
    counts, n = read_label_frequencies(out)
    assert n == 4
    numpy.testing.assert_array_equal(counts, numpy.bincount(yi, minlength=5))   # train only
    xt, ypt, yit = read_split(out, "test")
    numpy.testing.assert_array_equal(xt.toarray()[0], [1, 0, 0, 0, 0, 0, 0, 3])
    assert yit[ypt[0]:ypt[1]].tolist() == [1] and ypt[2] == ypt[1]


def test_no_valid_split_and_empty_dataset(tmp_path):
    tr, te = write(tmp_path, "tr.txt", TRAIN), write(tmp_path, "te.txt", TEST)
    out = str(tmp_path / "d.h5")
    prepare_xmc(tr, te, out, valid_fraction=0.0)
    assert not describe(out).has_split("valid")
    with pytest.raises(DataError, match="empty"):
        make_loader(out, "valid", 2)
    with pytest.raises(DataError, match="0 points"):
        prepare_xmc(write(tmp_path, "e.txt", "0 8 5\n"), te, str(tmp_path / "e.h5"))
    with pytest.raises(DataError, match="header has 9 features"):
        prepare_xmc(tr, write(tmp_path, "t9.txt", "1 9 5\n0 1:1\n"), str(tmp_path / "f.h5"))


def test_failed_conversion_leaves_nothing_and_keeps_old_file(tmp_path):
    tr = write(tmp_path, "tr.txt", TRAIN)
    write(tmp_path, "te.txt", TEST)
    out = tmp_path / "d.h5"
    out.write_bytes(b"old")
    bad = write(tmp_path, "bad.txt", "2 8 5\n1 0:1\n9 1:1\n")
    with pytest.raises(DataError, match="line 3"):
        prepare_xmc(tr, bad, str(out))
    assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["bad.txt", "d.h5", "te.txt", "tr.txt"]


def test_truncated_and_corrupt_hdf5(tmp_path):
    tr, te = write(tmp_path, "tr.txt", TRAIN), write(tmp_path, "te.txt", TEST)
    out = str(tmp_path / "d.h5")
    prepare_xmc(tr, te, out)
    data = open(out, "rb").read()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match="trunc.h5"):
        make_loader(str(trunc), "train", 2)
    with h5py.File(out, "r+") as f:
        f["test/x/indices"][0] = 99
    with pytest.raises(DataError, match=r"/test/x/indices\[0\] = 99 outside \[0, 8\)"):
        make_loader(out, "test", 2)
    with h5py.File(out, "r+") as f:
        f.attrs["format"] = "something"
    with pytest.raises(DataError, match="format"):
        describe(out)
    with pytest.raises(DataError, match="no such file"):
        describe(str(tmp_path / "missing.h5"))


def test_loader_batches_shuffle_and_resume(tmp_path):
    tr, te = write(tmp_path, "tr.txt", TRAIN), write(tmp_path, "te.txt", TEST)
    out = str(tmp_path / "d.h5")
    prepare_xmc(tr, te, out, valid_fraction=0.0)
    x_all, yp, yi = read_split(out, "train")
    loader = make_loader(out, "train", 4, shuffle=True, seed=1, backend=Backend())
    assert len(loader) == 2 and loader.num_examples == 6
    batches = list(loader.iter_from(3))
    order = numpy.random.default_rng([1, 3]).permutation(6)
    for i, (x, y) in enumerate(batches):
        rows = order[i * 4:(i + 1) * 4]
        numpy.testing.assert_array_equal(x.toarray(), x_all[rows].toarray())
        assert y.dtype == numpy.int32 and y.shape[0] == len(rows)
        for r, yr in zip(rows, y):
            assert sorted(yr[yr >= 0].tolist()) == yi[yp[r]:yp[r + 1]].tolist()
            assert numpy.all(yr[len(yi[yp[r]:yp[r + 1]]):] == -1)
    resumed = list(loader.iter_from(3, 1))
    numpy.testing.assert_array_equal(resumed[0][1], batches[1][1])
    other = numpy.concatenate([x.toarray() for x, _ in loader.iter_from(4)])
    assert not numpy.array_equal(other, numpy.concatenate([x.toarray() for x, _ in batches]))
    assert sorted(map(bytes, other)) == sorted(map(bytes, x_all.toarray()))   # same points
    loader.close()


def test_synthetic_generator_writes_valid_power_law_files(tmp_path):
    tr, te = str(tmp_path / "s_train.txt.gz"), str(tmp_path / "s_test.txt")
    write_synthetic_xmc(tr, te, 3000, 50, 400, 300, labels_per_point=4, features_per_point=20,
                        seed=7)
    pts = parse_all(tr)
    assert len(pts) == 3000 and len(parse_all(te)) == 50
    counts = numpy.bincount([l for labels, _ in pts for l in labels], minlength=300)
    assert 3.0 < counts.sum() / 3000 < 5.0
    top = numpy.sort(counts)[::-1]
    assert top[0] > 10 * max(numpy.median(counts), 1)        # a long tail: head >> median
    again = str(tmp_path / "again.txt")
    write_synthetic_xmc(again, str(tmp_path / "again_test.txt"), 3000, 50, 400, 300,
                        labels_per_point=4, features_per_point=20, seed=7)
    assert gzip.open(tr, "rt").read() == open(again).read()


@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_loader_on_each_backend(tmp_path, backend_name):
    be = make_backend(backend_name)
    tr, te = write(tmp_path, "tr.txt", TRAIN), write(tmp_path, "te.txt", TEST)
    out = str(tmp_path / "d.h5")
    prepare_xmc(tr, te, out, valid_fraction=0.0)
    ref = list(make_loader(out, "train", 4, shuffle=True, seed=2).iter_from(1))
    got = list(make_loader(out, "train", 4, shuffle=True, seed=2, backend=be).iter_from(1))
    for (xr, yr), (x, y) in zip(ref, got):
        numpy.testing.assert_array_equal(to_host(x.toarray()), xr.toarray())
        numpy.testing.assert_array_equal(to_host(y), yr)
