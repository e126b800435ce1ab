"""The run folder of `engine train`: the test split's results in metrics.json and log.txt, and
files created with the modes the umask gives (0666 & ~umask), as the user's other files."""
import json
import os
import stat

import pytest

from engine.cli import main

TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n" * 40
LM = ["--context", "2", "--embed", "8", "--hidden", "16", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm")
    for name, text in [("train.txt", TEXT), ("valid.txt", TEXT[:200]), ("test.txt", TEXT[:300])]:
        (tmp / name).write_text(text)
    out = tmp / "c.h5"
    assert main(["prepare", "text", str(tmp / "train.txt"), "--valid", str(tmp / "valid.txt"),
                 "--test", str(tmp / "test.txt"), "--output", str(out)]) == 0
    return str(out)


def test_test_results_are_saved(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", corpus, *LM, "--epochs", "1", "--run-dir", str(run),
                 "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    test_line = next(line for line in out if line.startswith("[engine] test loss"))
    assert test_line in (run / "log.txt").read_text().splitlines()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["loss"] == result["test_loss"]
    assert metrics["test"]["perplexity"] == result["test_perplexity"]
    assert metrics["test"]["examples"] == 97 and "history" in metrics


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_follow_the_umask(corpus, tmp_path, capsys, umask):
    run = tmp_path / "run"
    old = os.umask(umask)
    try:
        assert main(["train", "--data", corpus, *LM, "--epochs", "1", "--run-dir", str(run)]) == 0
    finally:
        os.umask(old)
    for name in ("checkpoint.h5", "best.h5", "metrics.json", "config.toml", "log.txt"):
        mode = stat.S_IMODE(os.stat(run / name).st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))
