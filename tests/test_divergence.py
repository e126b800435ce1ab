"""A loss that explodes without becoming NaN stops training as NaN does (the last good
checkpoint kept, exit status 3 on the command line); a perplexity beyond float range is inf."""
import json
import math

import numpy
import pytest

from engine import Adam, Engine, MLPLanguageModel, TrainingDiverged
from engine.cli import main
from engine.divergence import DEFAULT_FACTOR, divergence_limit, loss_problem
from toy_lm import LM, prepare_toy_corpus


def data(n=300, V=40, ctx=3, seed=0):
    rng = numpy.random.default_rng(seed)
    x = rng.integers(0, V, (n, ctx)).astype(numpy.int32)
    return x, ((x[:, 0] + 2 * x[:, 1]) % V).astype(numpy.int32)


def make_engine():
    model = MLPLanguageModel(40, context=3, embed_dim=6, hidden=(16,))
    return Engine(model, Adam(lr=3e-3), device="cpu", seed=1, dtype="float64", verbose=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return prepare_toy_corpus(tmp_path_factory.mktemp("lm"))


def test_the_rule():
    assert loss_problem(float("nan"), None) == "loss became nan"
    assert loss_problem(float("inf"), 3.0) == "loss became inf"
    assert loss_problem(1e30, None) is None                 # no reference yet: finite is fine
    # the limit: the first loss plus DEFAULT_FACTOR times its size (at least 1)
    assert divergence_limit(3.7) == 3.7 + DEFAULT_FACTOR * 3.7
    assert divergence_limit(0.01) == 0.01 + DEFAULT_FACTOR
    assert divergence_limit(-2.0) == -2.0 + DEFAULT_FACTOR * 2.0
    assert loss_problem(divergence_limit(3.7), 3.7) is None
    assert loss_problem(divergence_limit(3.7) * 1.001, 3.7).startswith("loss 40.7")
    assert loss_problem(1e9, 3.7, factor=None) is None      # the rule switched off


def test_exploding_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    e = make_engine()
    e.train(data(), epochs=1, batch_size=32, progress=False, run_dir=str(tmp_path))
    ck = tmp_path / "checkpoint.h5"
    before = ck.read_bytes()
    first = e.step_log[0][1]
    e.model.output.params["W"] *= 1e4                        # large, finite logits
    with pytest.raises(TrainingDiverged, match=r"far above the run's first loss .*"
                                               r"last good checkpoint kept at"):
        e.train(data(), epochs=2, batch_size=32, progress=False, run_dir=str(tmp_path))
    assert ck.read_bytes() == before
    assert "[engine] stopped: loss " in (tmp_path / "log.txt").read_text()
    assert abs(e.step_log[0][1] - first) == 0               # the reference is the run's first loss


def test_first_step_is_checked_with_a_long_sync_interval():
    """The reference loss is the first step's, whatever sync_every is (GPU default 20)."""
    e = make_engine()
    e.train(data(), epochs=1, batch_size=32, progress=False, sync_every=1000)
    assert e.step_log[0][0] == 1


def test_cli_lr_explosion_is_caught(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", corpus, *LM, "--epochs", "1", "--run-dir", str(run),
                 "--no-test", "--batch-size", "32"]) == 0
    ck = run / "checkpoint.h5"
    before = ck.read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(ck), "--data", corpus, "--lr", "1e6", "--epochs", "3",
                 "--no-progress", "--json"]) == 3
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("engine train: training diverged: loss ")
    assert "far above the run's first loss" in err and f"kept at {ck}" in err
    assert ck.read_bytes() == before


def test_perplexity_beyond_float_range_is_inf(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", corpus, *LM, "--epochs", "1", "--run-dir", str(run),
                 "--no-test"]) == 0
    e = Engine.from_checkpoint(str(run / "checkpoint.h5"), device="cpu", verbose=False)
    e.model.output.params["W"] *= 1e6
    assert e.evaluate(corpus, split="test")["perplexity"] == math.inf
    bad = tmp_path / "bad.h5"
    e.save_checkpoint(str(bad))
    capsys.readouterr()
    assert main(["evaluate", str(bad), "--data", corpus, "--device", "cpu", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert ", perplexity inf over " in out[-2], out[-2]
    result = json.loads(out[-1])                             # strict JSON: no Infinity
    assert result["perplexity"] == "inf" and result["loss"] > 709


def test_large_perplexity_is_not_three_hundred_digits():
    from engine.reporting import perplexity, show_perplexity
    assert perplexity(2.0) == math.exp(2.0)
    assert perplexity(709.0) == math.exp(709.0) and perplexity(710.0) == math.inf
    assert show_perplexity(11.2749) == "11.27" and show_perplexity(math.inf) == "inf"
    assert show_perplexity(math.exp(150)) == "1.394e+65"


def test_explosion_between_sync_points_is_caught_before_a_checkpoint(tmp_path):
    """With sync_every > 1 (the GPU default) the last step's loss is checked before every
    save, so an exploded model is never written over the good checkpoint."""
    e = make_engine()
    e.train(data(), epochs=1, batch_size=32, progress=False, run_dir=str(tmp_path))
    ck = tmp_path / "checkpoint.h5"
    before = ck.read_bytes()
    e.model.output.params["W"] *= 1e4
    with pytest.raises(TrainingDiverged, match=r"far above .* at step 12 \(epoch 2\); found "
                                               r"before saving; nothing was saved; last good"):
        e.train(data(), epochs=2, batch_size=32, progress=False, run_dir=str(tmp_path),
                sync_every=1000, checkpoint_every=3)
    assert ck.read_bytes() == before
