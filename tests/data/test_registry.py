"""engine/data/registry.py: dispatch on the HDF5 `format` attribute."""
import h5py
import pytest

from engine.data.errors import DataError
from engine.data.registry import dataset_format, describe_dataset, is_lm_corpus_file


def test_format_of_files(tmp_path):
    good = tmp_path / "a.h5"
    with h5py.File(good, "w") as f:
        f.attrs["format"] = "engine-xmc"
    assert dataset_format(good) == "engine-xmc" and not is_lm_corpus_file(good)
    other = tmp_path / "b.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else"
    assert is_lm_corpus_file(other)          # the corpus reader then names the wrong format
    with pytest.raises(DataError, match="not a classification dataset"):
        describe_dataset(other)
    junk = tmp_path / "c.h5"
    junk.write_bytes(b"not hdf5 at all")
    assert dataset_format(junk) is None and is_lm_corpus_file(junk)
    assert dataset_format(tmp_path / "missing.h5") is None
