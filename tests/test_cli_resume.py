"""Resuming: each changed value is applied and logged on a line of its own (stdout and
log.txt); the batch size stays the checkpoint's unless changed, in Python as on the command line."""
import json

import numpy
import pytest

from engine import Adam, Engine, MLPLanguageModel
from engine.cli import main
from toy_lm import LM, prepare_toy_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return prepare_toy_corpus(tmp_path_factory.mktemp("lm"))


def test_each_change_is_a_line_of_its_own(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", corpus, *LM, "--epochs", "1", "--batch-size", "32",
                 "--run-dir", str(run), "--no-test"]) == 0
    ck = str(run / "checkpoint.h5")
    capsys.readouterr()
    assert main(["train", "--resume", ck, "--data", corpus, "--epochs", "2", "--lr", "0.01",
                 "--schedule", "step:1:0.5", "--checkpoint-every", "7", "--batch-size", "64",
                 "--no-progress", "--no-test", "--json"]) == 0
    out = capsys.readouterr().out
    expected = [f"[engine] resuming {ck} at epoch 2, step 25",
                "[engine] resume: --lr 0.001 -> 0.01",
                "[engine] resume: --schedule constant -> step:every_epochs=1:factor=0.5",
                "[engine] resume: --epochs 1 -> 2",
                "[engine] resume: --checkpoint-every (unset) -> 7",
                "[engine] batch size 32 -> 64 from epoch 2"]
    log = (run / "log.txt").read_text().splitlines()
    for line in expected:
        assert out.count(line + "\n") == 1, (line, out)
        assert log.count(line) == 1, (line, log)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["steps"] == 25 + 13                        # 800 tokens: 13 batches of 64


def test_a_changed_data_file_is_logged(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", corpus, *LM, "--epochs", "1", "--run-dir", str(run),
                 "--no-test"]) == 0
    copy = tmp_path / "copy.h5"                              # same vocabulary, another file
    copy.write_bytes(open(corpus, "rb").read())
    capsys.readouterr()
    assert main(["train", "--resume", str(run / "checkpoint.h5"), "--data", str(copy),
                 "--epochs", "2", "--no-progress", "--no-test"]) == 0
    assert f"[engine] resume: --data {corpus} -> {copy}\n" in capsys.readouterr().out


def data(n=300, V=20, ctx=2, seed=0):
    rng = numpy.random.default_rng(seed)
    x = rng.integers(0, V, (n, ctx)).astype(numpy.int32)
    return x, ((x[:, 0] + x[:, 1]) % V).astype(numpy.int32)


def test_python_resume_keeps_the_batch_size(tmp_path):
    e = Engine(MLPLanguageModel(20, context=2, embed_dim=4, hidden=(8,)), Adam(lr=1e-2),
               device="cpu", verbose=False)
    e.train(data(), epochs=1, batch_size=50, progress=False, run_dir=str(tmp_path))
    resumed = Engine.from_checkpoint(str(tmp_path / "checkpoint.h5"), device="cpu", verbose=False)
    resumed.train(data(), epochs=2, progress=False, run_dir=str(tmp_path))
    assert resumed.step == 12 and resumed.batch_size == 50    # 6 batches of 50 per epoch
    resumed.train(data(), epochs=3, batch_size=100, progress=False, run_dir=str(tmp_path))
    assert resumed.step == 15
    assert "[engine] batch size 50 -> 100 from epoch 3" in (tmp_path / "log.txt").read_text()
    fresh = Engine(MLPLanguageModel(20, context=2, embed_dim=4, hidden=(8,)), Adam(lr=1e-2),
                   device="cpu", verbose=False)
    fresh.train(data(), epochs=1, progress=False)
    assert fresh.batch_size == 128 and fresh.step == 3       # the documented default
