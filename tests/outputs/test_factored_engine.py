"""The factored output inside the engine: MLPLanguageModel(output="factored-...") trained by
Engine.train_step with Adam on the body (the factored state takes its own exact SGD step with the
engine's learning rate times lr_scale, or its own lr), a checkpoint round trip, and the
`engine train --output factored-spherical` command on a tiny prepared corpus."""
from __future__ import annotations

import json

import numpy
import pytest

from baselines import unigram_perplexity
from engine import Engine
from engine.cli import main
from engine.models import MLPLanguageModel
from engine.optim import Adam

TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n" * 40


def _arrays(n=256, V=30, context=3, seed=0):
    rng = numpy.random.default_rng(seed)
    x = rng.integers(0, V, size=(n, context)).astype(numpy.int32)
    y = ((x[:, 0] * 7 + x[:, 1]) % V).astype(numpy.int32)
    return x, y


@pytest.mark.parametrize("output", ["factored-spherical", "factored-squared", "factored-zloss"])
def test_engine_trains_factored_output_with_adam_body(output):
    x, y = _arrays()
    model = MLPLanguageModel(30, context=3, embed_dim=8, hidden=(16,), output=output,
                             output_kwargs={"lr": 0.05})
    eng = Engine(model, Adam(1e-2), device="cpu", dtype="float64", verbose=False)
    assert model.self_updating_layers() == [model.output]
    assert all(layer is not model.output for _, layer, _ in model.param_items())
    V0 = model.output.params["V"].copy()
    losses = []
    for epoch in range(6):
        for i in range(0, 256, 32):
            losses.append(float(eng.train_step(x[i:i + 32], y[i:i + 32])))
    assert model.output.updates == len(losses)
    assert not numpy.array_equal(V0, model.output.params["V"])
    assert numpy.mean(losses[-8:]) < numpy.mean(losses[:8]), (losses[:8], losses[-8:])
    mon = model.output.run_checks()
    assert mon["q_rel_err"] < 1e-10 and mon["inv_err"] < 1e-10
    if model.output.has_likelihood:
        lp = model.log_prob(x[:10], y[:10])
        assert numpy.all(numpy.isfinite(lp)) and numpy.all(lp < 0)


def test_engine_train_and_checkpoint_round_trip(tmp_path):
    x, y = _arrays()
    model = MLPLanguageModel(30, context=3, embed_dim=8, hidden=(16,), output="factored-taylor",
                             output_kwargs={"lr_scale": 5.0})
    eng = Engine(model, Adam(1e-2), device="cpu", dtype="float64", verbose=False)
    eng.train((x, y), epochs=1, batch_size=32, run_dir=str(tmp_path / "run"), progress=False)
    back = Engine.from_checkpoint(str(tmp_path / "run" / "checkpoint.h5"), device="cpu", verbose=False)
    assert back.model.output.lr_scale == 5.0 and back.model.output.loss_name == "taylor"
    numpy.testing.assert_array_equal(back.model.output.dense_weight(), model.output.dense_weight())
    # float64 state read back from HDF5 is the same bits: so are the log-probabilities
    numpy.testing.assert_array_equal(back.model.log_prob(x[:8], y[:8]), model.log_prob(x[:8], y[:8]))
    for key, value in model.state_dict().items():
        numpy.testing.assert_array_equal(back.model.state_dict()[key], value, err_msg=key)


def test_cli_train_factored_spherical(tmp_path, capsys):
    for name, text in [("train.txt", TEXT), ("valid.txt", TEXT[:200]), ("test.txt", TEXT[:300])]:
        (tmp_path / name).write_text(text)
    corpus = tmp_path / "c.h5"
    assert main(["prepare", "text", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt"),
                 "--test", str(tmp_path / "test.txt"), "--output", str(corpus)]) == 0
    assert main(["train", "--data", str(corpus), "--context", "2", "--embed", "8", "--hidden", "16",
                 "--output", "factored-spherical", "--output-lr", "0.05", "--epochs", "2",
                 "--batch-size", "32", "--max-steps-per-epoch", "20", "--device", "cpu",
                 "--run-dir", str(tmp_path / "run"), "--no-progress", "--json"]) == 0
    lines = [l for l in capsys.readouterr().out.strip().splitlines() if l.strip()]
    result = json.loads(lines[-1])
    # 11 words: the add-one unigram of the training split scores 9.0 (uniform: 11); measured 2.3
    unigram = unigram_perplexity(corpus)
    assert 8 < unigram < 10
    assert result["test_perplexity"] < 0.5 * unigram, (result["test_perplexity"], unigram)
