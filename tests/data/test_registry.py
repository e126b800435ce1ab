"""engine/data/registry.py: one DatasetInfo per file, read in one open; the engine and the
command line never open the file again to decide its kind, and outputs get arrays."""
import ast
import json
import os
import pathlib

import h5py
import numpy
import pytest

from engine.cli import main
from engine.data import write_lm_corpus
from engine.data.classification import write_classification
from engine.data.errors import DataError
from engine.data.hdf5_schema import vocab_hash
from engine.data.registry import DatasetInfo, dataset_format, describe
from engine.data.xmc import prepare_xmc
from engine.data.xmc_synthetic import write_synthetic_xmc

VOCAB = ["the", "cat", "sat", "<eos>", "<unk>"]


@pytest.fixture
def lm_file(tmp_path):
    path = tmp_path / "lm.h5"
    stream = numpy.array([0, 1, 2, 3] * 30, numpy.int32)
    write_lm_corpus(path, VOCAB, [30, 30, 30, 30, 0],
                    {"train": stream, "valid": stream[:20], "test": stream[:24]},
                    {"unk_id": 4, "eos_id": 3, "tokenizer": "words", "lowercase": 1})
    return path


@pytest.fixture(scope="module")
def xmc_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xmc")
    tr, te = str(tmp / "tr.txt"), str(tmp / "te.txt")
    write_synthetic_xmc(tr, te, 300, 60, 50, 20, labels_per_point=2, features_per_point=6, seed=1)
    out = tmp / "x.h5"
    prepare_xmc(tr, te, str(out), valid_fraction=0.2)
    return out


class OpenCounter:
    """Counts h5py.File opens of one path (monkeypatched)."""

    def __init__(self, monkeypatch, path):
        self.path, self.count = os.path.abspath(path), 0
        real = h5py.File
        counter = self

        class Counting(real):
            def __init__(self, name, *args, **kwargs):
                if isinstance(name, (str, os.PathLike)) and \
                        os.path.abspath(os.fspath(name)) == counter.path:
                    counter.count += 1
                super().__init__(name, *args, **kwargs)

        monkeypatch.setattr(h5py, "File", Counting)


def test_lm_corpus_described_in_one_open(lm_file, monkeypatch):
    opens = OpenCounter(monkeypatch, lm_file)
    info = describe(lm_file)
    assert opens.count == 1
    assert isinstance(info, DatasetInfo) and info.kind == "lm-corpus"
    assert info.format == "engine-lm-corpus" and info.path == os.path.abspath(lm_file)
    assert info.splits == {"train": 120, "valid": 20, "test": 24} and info.num_train == 120
    assert info.vocab == tuple(VOCAB) and info.vocab_size == 5 and info.num_outputs == 5
    assert info.vocab_hash == vocab_hash(VOCAB)
    numpy.testing.assert_array_equal(info.word_counts, [30, 30, 30, 30, 0])
    assert (info.unk_id, info.eos_id, info.tokenizer, info.lowercase) == (4, 3, "words", True)
    assert info.num_classes is None and info.label_counts is None
    assert json.dumps(info.summary())            # scalars only


def test_classification_files_described_in_one_open(tmp_path, xmc_file, monkeypatch):
    rng = numpy.random.default_rng(0)
    dense = tmp_path / "d.h5"
    write_classification(dense, {"train": (rng.random((6, 3)), rng.integers(0, 4, 6)),
                                 "test": (rng.random((2, 3)), rng.integers(0, 4, 2))}, 4)
    for path in (dense, xmc_file):
        opens = OpenCounter(monkeypatch, path)
        info = describe(path)
        assert opens.count == 1 and info.kind == "classification"
    info = describe(dense)
    assert (info.num_features, info.num_classes, info.multilabel, info.sparse) == (3, 4, False, False)
    assert info.has_split("train") and not info.has_split("valid") and info.num_train == 6
    xmc = describe(xmc_file)
    assert (xmc.num_features, xmc.num_classes, xmc.multilabel, xmc.sparse) == (50, 20, True, True)
    assert xmc.label_counts.shape == (20,) and xmc.label_counts.sum() > 0
    assert xmc.num_train == xmc.splits["train"] == 240


def test_format_errors_are_one_line(tmp_path):
    other = tmp_path / "b.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else"
    assert dataset_format(other) == "something-else"
    with pytest.raises(DataError, match="b.h5: root attribute 'format' is 'something-else', "
                                        "expected one of engine-lm-corpus"):
        describe(other)
    junk = tmp_path / "c.h5"
    junk.write_bytes(b"not hdf5 at all")
    assert dataset_format(junk) is None
    with pytest.raises(DataError, match="c.h5: not a readable HDF5 file"):
        describe(junk)
    with pytest.raises(DataError, match="missing.h5: no such file"):
        describe(tmp_path / "missing.h5")


def test_one_epoch_of_xmc_opens_the_file_once_per_split(xmc_file, tmp_path, monkeypatch, capsys):
    """One describe, then one open per split read: train, valid, test (was 21)."""
    opens = OpenCounter(monkeypatch, xmc_file)
    assert main(["train", "--data", str(xmc_file), "--hidden", "16", "--epochs", "1",
                 "--batch-size", "32", "--device", "cpu", "--run-dir", str(tmp_path / "run"),
                 "--no-progress", "--json"]) == 0
    assert opens.count == 4
    assert "test_psp@1" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_one_epoch_of_a_corpus_opens_the_file_once_per_split(lm_file, tmp_path, monkeypatch):
    opens = OpenCounter(monkeypatch, lm_file)
    assert main(["train", "--data", str(lm_file), "--context", "2", "--embed", "4", "--hidden",
                 "8", "--epochs", "1", "--device", "cpu", "--run-dir", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    assert opens.count == 4


def test_outputs_take_arrays_never_paths(xmc_file, lm_file):
    from engine.outputs import make_output
    with pytest.raises(ValueError, match="must be an array"):
        make_output("bce", 4, 20, label_counts=str(xmc_file))
    with pytest.raises(ValueError, match="must be an array"):
        make_output("adaptive", 4, 5, cutoffs="auto", counts=str(lm_file))
    outputs = pathlib.Path(__file__).resolve().parents[2] / "engine" / "outputs"
    for source in outputs.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert not (module.startswith("..data") or module.startswith("engine.data")), \
                    (source.name, module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("engine.data") for a in node.names), source.name


def test_evaluate_after_the_data_file_moved(xmc_file, tmp_path, capsys):
    """The checkpoint holds the label counts (state) and no data path (config)."""
    from engine.checkpoint import load_checkpoint
    run = tmp_path / "run"
    assert main(["train", "--data", str(xmc_file), "--hidden", "16", "--epochs", "1",
                 "--batch-size", "32", "--device", "cpu", "--run-dir", str(run),
                 "--no-progress", "--no-test"]) == 0
    ck = load_checkpoint(str(run / "checkpoint.h5"))
    assert "label_counts" not in ck["model_config"]["output_kwargs"]
    moved = tmp_path / "elsewhere.h5"
    moved.write_bytes(pathlib.Path(xmc_file).read_bytes())
    capsys.readouterr()
    assert main(["evaluate", str(run / "checkpoint.h5"), "--data", str(moved), "--device", "cpu",
                 "--json"]) == 0
    assert "psp@1" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_engine_takes_a_description_without_reopening(lm_file, monkeypatch):
    from engine import Adam, Engine, MLPLanguageModel
    info = describe(lm_file)
    engine = Engine(MLPLanguageModel(5, context=2, embed_dim=4, hidden=(8,)), Adam(), device="cpu",
                    verbose=False)
    opens = OpenCounter(monkeypatch, lm_file)
    engine.evaluate(info, split="test")
    assert opens.count == 1                    # the loader's own open, no describe
