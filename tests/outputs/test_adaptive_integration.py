"""Adaptive softmax inside MLPLanguageModel, Engine.train/evaluate and `engine train --output
adaptive` (hand and auto cutoffs) on a tiny corpus; the checkpoint stores the resolved cutoffs."""
import json

import numpy
import pytest

from engine import Adam, Engine, MLPLanguageModel
from engine.checkpoint import load_checkpoint
from engine.cli import main
from gradcheck import check_model_gradients

TEXT = ("the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n"
        "one bird flew over the old red barn today\n") * 30


@pytest.fixture
def corpus(tmp_path):
    for name, text in [("train.txt", TEXT), ("valid.txt", TEXT[:300]), ("test.txt", TEXT[:400])]:
        (tmp_path / name).write_text(text)
    out = tmp_path / "c.h5"
    assert main(["prepare", "text", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt"),
                 "--test", str(tmp_path / "test.txt"), "--output", str(out)]) == 0
    return out


def test_model_gradients_float64():
    model = MLPLanguageModel(40, context=3, embed_dim=6, hidden=[10], output="adaptive",
                             output_kwargs={"cutoffs": [5, 15], "div_value": 2.0, "tail_bias": True})
    from engine.backend import Backend
    model.bind(Backend(), seed=0, dtype="float64")
    rng = numpy.random.default_rng(0)
    x = rng.integers(0, 40, (16, 3))
    y = rng.integers(0, 40, 16)
    y[:3] = [1, 8, 30]
    check_model_gradients(model, x, y)


def test_engine_train_evaluate_perplexity(corpus, tmp_path):
    from engine.data import open_lm_corpus
    with open_lm_corpus(str(corpus)) as c:
        vocab = c.vocab_size
    model = MLPLanguageModel(vocab, context=2, embed_dim=8, hidden=[16], output="adaptive",
                             output_kwargs={"cutoffs": [4, 9]})
    engine = Engine(model, Adam(lr=1e-2), device="cpu", seed=0, verbose=False)
    hist = engine.train(str(corpus), epochs=3, batch_size=32, valid=str(corpus), progress=False,
                        run_dir=str(tmp_path / "run"))
    ev = engine.evaluate(str(corpus), split="test")
    assert ev["perplexity"] < 8 and hist[-1]["valid_perplexity"] < hist[0]["valid_perplexity"]
    again = Engine.from_checkpoint(str(tmp_path / "run" / "checkpoint.h5"), device="cpu", verbose=False)
    assert abs(again.evaluate(str(corpus), split="test")["perplexity"] - ev["perplexity"]) < 1e-9 * ev["perplexity"]


def test_cli_train_auto_cutoffs_checkpoint_stores_them(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--context", "2", "--embed", "8", "--hidden", "16",
                 "--output", "adaptive", "--cutoffs", "auto", "--epochs", "1", "--batch-size", "32",
                 "--device", "cpu", "--run-dir", str(run), "--no-progress", "--json"]) == 0
    out = capsys.readouterr().out
    assert "[adaptive] auto cutoffs" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert numpy.isfinite(result["test_perplexity"])
    cfg = load_checkpoint(str(run / "checkpoint.h5"))["model_config"]["output_kwargs"]
    assert isinstance(cfg["cutoffs"], list) and "counts" not in cfg
    assert main(["evaluate", str(run / "checkpoint.h5"), "--data", str(corpus), "--device", "cpu",
                 "--json"]) == 0
    assert abs(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["perplexity"]
               - result["test_perplexity"]) < 1e-6 * result["test_perplexity"]


def test_cli_train_hand_cutoffs(corpus, tmp_path, capsys):
    assert main(["train", "--data", str(corpus), "--context", "2", "--embed", "8", "--hidden", "16",
                 "--output", "adaptive", "--cutoffs", "3,8", "--div-value", "2", "--epochs", "1",
                 "--batch-size", "32", "--device", "cpu", "--run-dir", str(tmp_path / "r"),
                 "--no-progress", "--no-test", "--json"]) == 0
    cfg = load_checkpoint(str(tmp_path / "r" / "checkpoint.h5"))["model_config"]["output_kwargs"]
    assert cfg["cutoffs"] == [3, 8] and cfg["div_value"] == 2.0
