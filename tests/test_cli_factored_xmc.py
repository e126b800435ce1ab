"""`engine train --output factored-squared` on multi-label data: a 600 + 300 example synthetic
set of Bibtex's shape (1,836 features, 159 labels, power-law label frequencies; written here in
the Extreme Classification Repository's text format by engine.data.xmc_synthetic, since the real
Bibtex may not ship with the project) prepared with `engine prepare xmc`. The run reports P@1/3/5, nDCG@k and
PSP@k, above the most-frequent-labels ranking measured here; a run stopped mid-epoch and
resumed from its checkpoint ends bit-identical to the uninterrupted one (the numerical care's
update count and probe generator are in the checkpoint)."""
from __future__ import annotations

import json

import numpy
import pytest

from engine import Adam, Engine
from engine.cli import main
from engine.data.registry import describe
from engine.data.xmc import read_label_frequencies, read_split
from engine.data.xmc_synthetic import write_synthetic_xmc
from engine.models.build import build_model_for
from engine.outputs.xmc_metrics import finish_metrics, inverse_propensity, metric_sums

@pytest.fixture(scope="module")
def bibtex(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bibtex")
    train, test = folder / "train.txt", folder / "test.txt"
    write_synthetic_xmc(train, test, 600, 300, 1836, 159, labels_per_point=2.4,
                        features_per_point=60.0, seed=0)
    out = folder / "bibtex.h5"
    assert main(["prepare", "xmc", str(train), str(test), "--output", str(out)]) == 0
    return str(out)


def most_frequent_labels(path, split="test"):
    """P@k, PSP@k of ranking the training split's 5 most frequent labels first everywhere."""
    counts, n_train = read_label_frequencies(path)
    _, indptr, labels = read_split(path, split)
    rows = indptr.shape[0] - 1
    y = numpy.full((rows, int(numpy.diff(indptr).max())), -1, dtype=numpy.int64)
    for r in range(rows):
        y[r, :indptr[r + 1] - indptr[r]] = labels[indptr[r]:indptr[r + 1]]
    top = numpy.broadcast_to(numpy.argsort(-counts, kind="stable")[:5], (rows, 5))
    sums = metric_sums(numpy, top, y, inverse_propensity(counts, n_train))
    return finish_metrics({"count": float(rows), **{k: float(v) for k, v in sums.items()}})


def test_train_factored_squared_reports_ranking_metrics_above_the_baseline(bibtex, tmp_path,
                                                                            capsys):
    assert main(["train", "--data", bibtex, "--output", "factored-squared", "--output-lr", "0.05",
                 "--hidden", "64", "--activation", "tanh", "--epochs", "5", "--batch-size", "32",
                 "--lr", "3e-3", "--device", "cpu", "--run-dir", str(tmp_path / "run"),
                 "--no-progress", "--json"]) == 0
    lines = [l for l in capsys.readouterr().out.strip().splitlines() if l.strip()]
    result = json.loads(lines[-1])
    for k in (1, 3, 5):
        for name in ("p", "ndcg", "psp"):
            assert f"test_{name}@{k}" in result and f"valid_{name}@{k}" in result, (name, k)
    base = most_frequent_labels(bibtex)
    # the baseline must leave room to beat it by 1.5x (measured P@1 0.247)
    assert 0.0 < base["p@1"] < 0.5
    for k in (1, 3, 5):
        assert result[f"test_p@{k}"] > 1.5 * base[f"p@{k}"], (k, result, base)
    assert result["test_psp@5"] > base["psp@5"]


def _engine(info):
    model = build_model_for(info, {"hidden": [32], "activation": "tanh",
                                   "output": "factored-squared",
                                   "output_kwargs": {"lr": 0.05, "check_every": 7}})
    return Engine(model, Adam(lr=3e-3), device="cpu", seed=0, dtype="float64", verbose=False)


def test_resume_mid_epoch_is_bit_identical(bibtex, tmp_path):
    info = describe(bibtex)                              # 540 training points: 17 batches of 32
    full = _engine(info)
    hist_full = full.train(bibtex, epochs=2, batch_size=32, valid=bibtex, progress=False)
    first = _engine(info)
    first.train(bibtex, epochs=2, batch_size=32, valid=bibtex, progress=False,
                run_dir=str(tmp_path / "run"), max_steps=24)     # stops mid-epoch 2
    resumed = Engine.from_checkpoint(str(tmp_path / "run" / "checkpoint.h5"), device="cpu",
                                     verbose=False)
    assert resumed.step == 24 and resumed.model.output.updates == 24
    hist_res = resumed.train(bibtex, epochs=2, batch_size=32, valid=bibtex, progress=False)
    # the numerical care ran at updates 7, 14, ..., 28 on both sides of the interruption
    assert full.model.output.updates == resumed.model.output.updates == 34
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert set(a) == set(b) and "2.FactoredSquaredOutput.probe_rng" in a
    for key in a:
        numpy.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert hist_full[-1]["train_loss"] == hist_res[-1]["train_loss"]
    assert hist_full[-1]["valid_p@1"] == hist_res[-1]["valid_p@1"]
    assert hist_full[-1]["valid_loss"] == hist_res[-1]["valid_loss"]
