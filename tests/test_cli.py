"""The `engine` command: prepare -> train --json -> evaluate --json, the default corpus, errors."""
import json
import os

import numpy

import pytest

from baselines import unigram_perplexity
from engine import Engine
from engine.cli import main
from engine.data import open_lm_corpus

TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n" * 40


@pytest.fixture
def corpus(tmp_path):
    for name, text in [("train.txt", TEXT), ("valid.txt", TEXT[:200]), ("test.txt", TEXT[:300])]:
        (tmp_path / name).write_text(text)
    out = tmp_path / "c.h5"
    assert main(["prepare", "text", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt"),
                 "--test", str(tmp_path / "test.txt"), "--output", str(out)]) == 0
    return out


def last_json(capsys):
    lines = [l for l in capsys.readouterr().out.strip().splitlines() if l.strip()]
    return json.loads(lines[-1])


def test_prepare_train_evaluate_json(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--context", "2", "--embed", "8", "--hidden", "16",
                 "--epochs", "2", "--batch-size", "32", "--lr", "1e-2", "--device", "cpu",
                 "--run-dir", str(run), "--no-progress", "--json"]) == 0
    result = last_json(capsys)
    for key in ("loss", "perplexity", "seconds_per_epoch", "device", "valid_perplexity", "test_perplexity"):
        assert key in result, key
    assert result["device"] == "cpu" and result["epochs"] == 2
    # 11 words: a model that learned nothing scores 11, the add-one unigram of the training split
    # 9.0; two words of context nearly determine the next one (measured: 1.6)
    unigram = unigram_perplexity(corpus)
    assert 8 < unigram < 10
    assert result["test_perplexity"] < 0.5 * unigram, (result["test_perplexity"], unigram)
    assert (run / "checkpoint.h5").exists() and (run / "plot.png").exists()
    assert main(["evaluate", str(run / "checkpoint.h5"), "--data", str(corpus), "--split", "valid",
                 "--device", "cpu", "--json"]) == 0
    ev = last_json(capsys)
    assert abs(ev["perplexity"] - result["valid_perplexity"]) < 1e-6 * ev["perplexity"]
    # next-word prediction: probabilities of the top words, best first, from the full softmax
    assert main(["predict", str(run / "checkpoint.h5"), "--data", str(corpus), "the", "cat",
                 "--top", "3", "--device", "cpu", "--json"]) == 0
    pred = last_json(capsys)
    probs = [p["probability"] for p in pred["predictions"]]
    assert pred["context"] == ["the", "cat"] and probs == sorted(probs, reverse=True)
    assert pred["predictions"][0]["word"] == "sat" and sum(probs) <= 1 + 1e-6   # "the cat sat" x80
    engine = Engine.from_checkpoint(str(run / "checkpoint.h5"), device="cpu", verbose=False)
    ctx = numpy.zeros((1, 2), dtype=numpy.int32)
    with open_lm_corpus(str(corpus)) as c:
        ctx[0] = [list(c.vocab).index("the"), list(c.vocab).index("cat")]
    for p_ in pred["predictions"]:
        logp = float(engine.model.log_prob(ctx, numpy.array([p_["id"]], dtype=numpy.int32))[0])
        assert abs(numpy.exp(logp) - p_["probability"]) < 1e-6
    # resume to a third epoch from the checkpoint
    assert main(["train", "--data", str(corpus), "--resume", str(run / "checkpoint.h5"), "--epochs", "3",
                 "--batch-size", "32", "--device", "cpu", "--no-progress", "--json", "--no-test"]) == 0
    assert last_json(capsys)["epochs"] == 3


def test_errors_name_the_file(tmp_path, corpus, capsys):
    assert main(["train", "--data", str(tmp_path / "nope.h5"), "--device", "cpu"]) == 2
    assert "nope.h5" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.h5"), "--data", str(corpus)]) == 2
    assert "missing.h5" in capsys.readouterr().err
    assert main(["prepare", "text", str(tmp_path / "absent.txt"), "--output", str(tmp_path / "x.h5")]) == 2
    assert "absent.txt" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_vocabulary_mismatch_between_checkpoint_and_data(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--context", "2", "--embed", "4", "--hidden", "8",
                 "--epochs", "1", "--device", "cpu", "--run-dir", str(run), "--no-progress", "--no-test"]) == 0
    other_txt = tmp_path / "other.txt"
    other_txt.write_text("completely different words here\n" * 30)
    other = tmp_path / "other.h5"
    assert main(["prepare", "text", str(other_txt), "--output", str(other)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run / "checkpoint.h5"), "--data", str(other), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "other.h5" in err and "vocabulary" in err


def test_default_corpus_trains_with_no_data_argument(tmp_path, capsys, monkeypatch):
    """The main job's path: no --data -> the embedded SOTU corpus (cut short here)."""
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1", "--max-steps-per-epoch", "3", "--device", "cpu",
                 "--no-progress", "--no-test", "--json"]) == 0
    result = last_json(capsys)
    assert result["steps"] == 3 and result["valid_perplexity"] > 1
    assert os.path.isdir(result["run_dir"]) and result["run_dir"].startswith("runs")
