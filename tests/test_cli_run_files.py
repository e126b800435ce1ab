"""The run folder of `engine train`: the test split's results in metrics.json and log.txt, and
files created with the modes the umask gives (0666 & ~umask), as the user's other files."""
import json
import os
import stat

import pytest

from engine.cli import main
from toy_lm import LM, prepare_toy_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return prepare_toy_corpus(tmp_path_factory.mktemp("lm"))


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
