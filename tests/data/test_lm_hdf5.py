"""The language-model HDF5 schema: atomic writing and validation (engine/data/hdf5_schema.py)."""
import os

import h5py
import numpy as np
import pytest

from engine.data import hdf5_schema
from engine.data.errors import DataError
from engine.data.hdf5_schema import (
    FORMAT, LMCorpusWriter, open_lm_corpus, vocab_hash, write_lm_corpus,
)

VOCAB = ["the", "<eos>", "ünï", "<unk>", "cat"]
COUNTS = [5, 3, 2, 1, 1]
ATTRS = {"unk_id": 3, "eos_id": 1, "min_count": 1, "source": "test"}


def _write(path, splits=None, vocab=VOCAB, counts=COUNTS, attrs=ATTRS):
    if splits is None:
        splits = {"train": np.array([0, 4, 1, 2, 0, 1], dtype=np.int32),
                  "valid": np.array([0, 3, 1], dtype=np.int32)}
    return write_lm_corpus(path, vocab, counts, splits, attrs)


def test_round_trip(tmp_path):
    path = tmp_path / "c.h5"
    _write(path)
    with open_lm_corpus(path) as c:
        assert c.vocab == VOCAB and c.vocab_size == 5
        assert (c.unk_id, c.eos_id, c.min_count, c.source) == (3, 1, 1, "test")
        assert c.counts.tolist() == COUNTS
        assert c.splits == ("train", "valid")
        assert c.split_length("train") == 6 and c.split_length("valid") == 3
        assert c.read_tokens("train", 2, 5).tolist() == [1, 2, 0]
        assert c.tokens("valid").dtype == np.int32
        assert c.vocab_hash() == vocab_hash(VOCAB)
        with pytest.raises(DataError, match=r"no split 'test'"):
            c.split_length("test")
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT and int(f.attrs["format_version"]) == 1
        ds = f["train/tokens"]
        assert ds.dtype == np.int32 and ds.chunks is not None and ds.compression == "gzip"
        assert f["counts"].dtype == np.int64
        assert h5py.check_string_dtype(f["vocab"].dtype).encoding == "utf-8"
    assert c.file is None   # closed by the context manager


def test_vocab_hash_is_stable_and_order_sensitive():
    assert vocab_hash(["a", "b"]) == vocab_hash(("a", "b"))
    assert vocab_hash(["a", "b"]) != vocab_hash(["b", "a"])
    assert vocab_hash(["ab", "c"]) != vocab_hash(["a", "bc"])
    assert len(vocab_hash(VOCAB)) == 64


def _leftovers(folder):
    return [p for p in os.listdir(folder) if p.endswith(".tmp")]


def test_failed_write_leaves_existing_file_untouched(tmp_path):
    path = tmp_path / "c.h5"
    _write(path)
    before = path.read_bytes()
    with pytest.raises(DataError, match=r"split 'train'.*position 2"):
        _write(path, splits={"train": np.array([0, 1, 9, 2])})
    with pytest.raises(RuntimeError):
        with LMCorpusWriter(path) as w:
            w.append_tokens("train", np.arange(3))
            raise RuntimeError("midway")
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    with pytest.raises(DataError, match="unk_id"):
        write_lm_corpus(tmp_path / "d.h5", VOCAB, COUNTS, {}, {"eos_id": 1})
    assert not (tmp_path / "d.h5").exists() and _leftovers(tmp_path) == []


def test_file_mode_follows_umask(tmp_path):
    path = _write(tmp_path / "c.h5")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.h5: no such file"):
        open_lm_corpus(tmp_path / "nope.h5")
    with pytest.raises(DataError, match="is a folder"):
        open_lm_corpus(tmp_path)
    junk = tmp_path / "junk.h5"
    junk.write_text("hello, not HDF5")
    with pytest.raises(DataError, match=r"junk\.h5: not a readable HDF5 file"):
        open_lm_corpus(junk)


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "big.h5"
    rng = np.random.default_rng(0)
    _write(path, splits={"train": rng.integers(0, 5, 200_000).astype(np.int32)})
    data = path.read_bytes()
    for keep in (len(data) // 2, 100):
        cut = tmp_path / f"cut{keep}.h5"
        cut.write_bytes(data[:keep])
        with pytest.raises(DataError, match=rf"cut{keep}\.h5"):
            open_lm_corpus(cut)


def _raw(path, **changes):
    """A corpus written with raw h5py, so the writer's checks can be bypassed."""
    vocab = changes.get("vocab", VOCAB)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = changes.get("format", FORMAT)
        f.attrs["format_version"] = changes.get("format_version", 1)
        f.attrs["vocab_size"] = changes.get("vocab_size", len(vocab))
        f.attrs["unk_id"] = changes.get("unk_id", 3)
        f.attrs["eos_id"] = 1
        f.create_dataset("vocab", data=np.array(vocab, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("counts", data=np.asarray(changes.get("counts", COUNTS), np.int64))
        for split, ids in changes.get("splits", {"train": [0, 1]}).items():
            f.create_dataset(f"{split}/tokens", data=np.asarray(ids, np.int32))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"format": "something-else"}, "'format' is 'something-else'"),
    ({"format_version": 2}, "format_version 2, expected 1"),
    ({"vocab_size": 6}, "vocab_size=6 but /vocab has 5"),
    ({"counts": [5, 3, 2, 1]}, "/counts must be 5 integers"),
    ({"counts": [5, 3, 4, 1, 1]}, "not frequency-sorted: id 2"),
    ({"unk_id": 7}, r"unk_id=7 outside \[0, 5\)"),
    ({"vocab": ["a", "a", "b", "c", "d"]}, "not unique"),
])
def test_bad_schema_is_named(tmp_path, changes, message):
    path = _raw(tmp_path / "bad.h5", **changes)
    with pytest.raises(DataError, match=message) as info:
        open_lm_corpus(path)
    assert "bad.h5" in str(info.value)


def test_ids_out_of_range_name_split_and_first_position(tmp_path, monkeypatch):
    monkeypatch.setattr(hdf5_schema, "CHECK_CHUNK", 4)     # the bad id is in the 4th chunk
    ids = [0] * 20
    ids[13], ids[17] = 5, -1
    path = _raw(tmp_path / "ids.h5", splits={"train": [0, 1], "valid": ids})
    with pytest.raises(DataError, match=r"ids\.h5: split 'valid'.*position 13: token id 5 "
                                        r"outside the vocabulary range \[0, 5\)"):
        open_lm_corpus(path)
    open_lm_corpus(path, check_tokens=False).close()


def test_empty_split_is_an_error_only_when_used(tmp_path):
    path = _write(tmp_path / "e.h5", splits={"train": np.array([0, 1]),
                                             "test": np.zeros(0, np.int32)})
    with open_lm_corpus(path) as c:
        assert c.split_length("test") == 0
        with pytest.raises(DataError, match=r"split 'test' is empty"):
            c.require_split("test")
        assert c.require_split("train") == 2
