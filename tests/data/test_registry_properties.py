"""Property-based tests of the HDF5 readers: `registry.describe` and `make_loader` over the three
formats (engine/data/hdf5_schema.py, classification.py, xmc.py, loader.py) on files that are
truncated, have bytes changed, or have attributes and datasets removed, retyped or reshaped.
Reading such a file either works (and every batch holds ids in range and finite features) or
fails with a one-line DataError naming the file, never another exception; `engine train` turns
that into one line and exit status 2."""
import os
import shutil
import tempfile

import h5py
import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adversarial import BUDGET, apply_mutations, assert_clean_error, mutations
from engine.cli import main
from engine.data import write_lm_corpus
from engine.data.classification import write_classification
from engine.data.info import LM_CORPUS
from engine.data.registry import describe, make_loader
from engine.data.xmc import prepare_xmc
from engine.data.xmc_synthetic import write_synthetic_xmc

#: values an attribute or a dataset may wrongly hold
BAD_SCALARS = [-1, 0, 2 ** 40, 2 ** 63 - 1, -2 ** 63, 1.5, float("nan"), "text", b"\xff\xfe",
               True, numpy.array([1, 2]), numpy.array([], dtype=numpy.int64)]
BAD_ARRAYS = [numpy.array([0.5, 1.5]), numpy.zeros((2, 2), numpy.int32),
              numpy.array([b"a", b"b"]), numpy.zeros(0, numpy.int32),
              numpy.array([-1, 0, 1], numpy.int64), numpy.array([10 ** 9] * 3, numpy.int64),
              numpy.arange(50, dtype=numpy.int64), numpy.array([numpy.nan, 1.0], numpy.float32),
              numpy.array([3, 2, 1, 0], numpy.uint64), numpy.array([2 ** 63], numpy.uint64),
              numpy.array(7)]


def _lm(path):
    stream = numpy.array([0, 1, 2, 3, 4] * 6, numpy.int32)
    write_lm_corpus(path, ["the", "cat", "<eos>", "<unk>", "sat"], [6, 6, 6, 6, 6],
                    {"train": stream, "valid": stream[:7], "test": stream[:9]},
                    {"unk_id": 3, "eos_id": 2, "tokenizer": "words", "lowercase": 1})


def _dense(path, uint8=False):
    rng = numpy.random.default_rng(0)
    x = (rng.integers(0, 256, (9, 4)).astype(numpy.uint8) if uint8
         else rng.random((9, 4)).astype(numpy.float32))
    write_classification(path, {"train": (x, rng.integers(0, 3, 9)),
                                "test": (x[:4], rng.integers(0, 3, 4))}, 3,
                         x_scale=1 / 255 if uint8 else None)


def _xmc(path):
    folder = os.path.dirname(path)
    tr, te = os.path.join(folder, "tr.txt"), os.path.join(folder, "te.txt")
    write_synthetic_xmc(tr, te, 20, 6, 12, 5, labels_per_point=2, features_per_point=3, seed=1)
    prepare_xmc(tr, te, path, valid_fraction=0.2)
    os.remove(tr)
    os.remove(te)


MAKERS = {"lm": _lm, "dense": _dense, "dense-uint8": lambda p: _dense(p, True), "xmc": _xmc}


_ORIGINALS = {}


def original(kind):
    """A valid small file of format `kind`, as bytes (written once per session)."""
    if kind not in _ORIGINALS:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{kind}.h5")
            MAKERS[kind](path)
            with open(path, "rb") as f:
                _ORIGINALS[kind] = f.read()
    return _ORIGINALS[kind]


def _read_everything(path):
    """describe, then every batch of every split through make_loader; checks what is read."""
    info = describe(path)
    for split, n in info.splits.items():
        if n <= 0:
            continue
        context = 2 if info.kind == LM_CORPUS else None
        loader = make_loader(info, split, batch_size=4, shuffle=True, seed=0, context=context)
        try:
            seen = 0
            for x, y in loader.iter_from(0, 0):
                y = numpy.asarray(y)
                seen += y.shape[0]
                if info.kind == LM_CORPUS:
                    assert ((x >= 0) & (x < info.vocab_size)).all()
                    assert ((y >= 0) & (y < info.vocab_size)).all()
                elif info.multilabel:
                    assert ((y >= -1) & (y < info.num_classes)).all()
                    assert numpy.isfinite(x.data).all() and x.shape[1] == info.num_features
                else:
                    assert ((y >= 0) & (y < info.num_classes)).all()
                    assert numpy.isfinite(x).all() and x.shape[1] == info.num_features
            assert seen == loader.num_examples
        finally:
            loader.close()
    return info


def _read_or_fail_cleanly(path):
    try:
        return _read_everything(path)
    except Exception as e:                   # noqa: BLE001 (the property: only DataError)
        assert_clean_error(e, path)
        return None


def test_originals_read(tmp_path):
    for name in MAKERS:
        path = tmp_path / f"{name}.h5"
        path.write_bytes(original(name))
        assert _read_everything(str(path)) is not None


@BUDGET
@given(st.sampled_from(sorted(MAKERS)), mutations(max_edits=2))
def test_damaged_bytes_read_or_fail_cleanly(kind, edits):
    """Truncated files, changed bytes (headers, B-trees, compressed chunks), spliced tokens."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d.h5")
        with open(path, "wb") as f:
            f.write(apply_mutations(original(kind), edits))
        _read_or_fail_cleanly(path)


def _objects(f):
    names = []
    f.visit(names.append)
    return sorted(names)


@st.composite
def structural_edits(draw, f):
    """One edit of an open file's structure: (what, target, value)."""
    what = draw(st.sampled_from(["del-attr", "set-attr", "set-dataset", "del-object",
                                 "group-to-dataset", "set-dataset-attr"]))
    if what in ("del-attr", "set-attr"):
        return what, draw(st.sampled_from(sorted(f.attrs))), draw(st.sampled_from(BAD_SCALARS))
    datasets = [n for n in _objects(f) if isinstance(f[n], h5py.Dataset)]
    if what == "set-dataset":
        return what, draw(st.sampled_from(datasets)), draw(st.sampled_from(BAD_ARRAYS))
    if what == "set-dataset-attr":
        return what, draw(st.sampled_from(datasets)), draw(st.sampled_from(BAD_SCALARS))
    if what == "group-to-dataset":
        groups = [n for n in _objects(f) if isinstance(f[n], h5py.Group)]
        return what, draw(st.sampled_from(groups)), draw(st.sampled_from(BAD_ARRAYS))
    return what, draw(st.sampled_from(_objects(f))), None


def _apply_edit(f, edit):
    what, target, value = edit
    if what == "del-attr":
        del f.attrs[target]
    elif what == "set-attr":
        f.attrs[target] = value
    elif what == "set-dataset-attr":
        f[target].attrs["scale"] = value
    elif what == "del-object":
        del f[target]
    else:                                      # set-dataset, group-to-dataset
        del f[target]
        f.create_dataset(target, data=value)


@BUDGET
@given(st.sampled_from(sorted(MAKERS)), st.data())
def test_wrong_attributes_and_datasets_read_or_fail_cleanly(kind, data):
    """Missing or retyped attributes (strings, floats, arrays, huge or negative numbers),
    datasets of the wrong dtype, shape or range, missing datasets and groups."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.h5")
        with open(path, "wb") as f:
            f.write(original(kind))
        with h5py.File(path, "r+") as f:
            for _ in range(data.draw(st.integers(1, 2))):
                if not _objects(f) and not len(f.attrs):
                    break
                _apply_edit(f, data.draw(structural_edits(f)))
        _read_or_fail_cleanly(path)


@pytest.mark.parametrize("damage", ["truncate", "format"])
def test_cli_exit_2_one_line(tmp_path, capsys, damage):
    """`engine train --data` on a truncated file or one of an unknown format: one line on
    stderr, exit status 2."""
    path = tmp_path / "bad.h5"
    data = original("lm")
    path.write_bytes(data[:len(data) // 2] if damage == "truncate" else data)
    if damage == "format":
        with h5py.File(path, "r+") as f:
            f.attrs["format"] = numpy.array([1, 2])
    assert main(["train", "--data", str(path), "--device", "cpu", "--epochs", "1",
                 "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.h5" in err and err.startswith("engine train: error:")
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
