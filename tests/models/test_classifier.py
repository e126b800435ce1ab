"""MLPClassifier (engine/models/classifier.py): gradients, training, evaluation sums, checks."""
import numpy
import pytest

from engine import Adam, Engine, MLPClassifier
from engine.backend import Backend
from engine.data.info import DatasetInfo
from engine.models import build_model
from gradcheck import check_model_gradients


def _blobs(n=600, f=12, c=4, seed=0):
    """Linearly separable-ish Gaussian blobs: a classifier must reach high accuracy."""
    rng = numpy.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(c, f))
    y = rng.integers(0, c, size=n)
    x = centres[y] + rng.normal(size=(n, f))
    return x.astype(numpy.float32), y.astype(numpy.int64)


def test_gradients_float64():
    model = MLPClassifier(7, 5, hidden=(6, 4), activation="tanh").bind(Backend(), 0, "float64")
    rng = numpy.random.default_rng(1)
    x = rng.normal(size=(9, 7))
    y = rng.integers(0, 5, size=9)
    check_model_gradients(model, x, y)


def test_trains_and_reports_accuracy_not_perplexity():
    x, y = _blobs()
    eng = Engine(MLPClassifier(12, 4, hidden=(32,)), Adam(lr=1e-2), device="cpu", verbose=False)
    hist = eng.train((x[:500], y[:500]), epochs=3, batch_size=50, valid=(x[500:], y[500:]),
                     progress=False)
    assert "valid_accuracy" in hist[-1] and "valid_perplexity" not in hist[-1]
    assert "train_perplexity" not in hist[-1]
    metrics = eng.evaluate((x[500:], y[500:]))
    assert metrics["examples"] == 100 and "perplexity" not in metrics
    # accuracy equals the host computation from predict_topk
    top, _ = eng.predict_topk(x[500:], 1)
    expected = float(numpy.mean(eng.backend.to_host(top)[:, 0] == y[500:]))
    assert metrics["accuracy"] == pytest.approx(expected)
    assert metrics["accuracy"] > 0.9


def test_eval_sums_ignore_padding_rows():
    model = MLPClassifier(5, 3, hidden=(4,)).bind(Backend(), 0, "float64")
    rng = numpy.random.default_rng(2)
    x = rng.normal(size=(6, 5))
    y = numpy.array([0, 1, -1, 2, -1, 1])
    sums = model.eval_sums(x, y)
    assert int(sums["count"]) == 4
    full = model.eval_sums(x[y >= 0], y[y >= 0])
    assert float(sums["loss"]) == pytest.approx(float(full["loss"]))
    assert int(sums["correct"]) == int(full["correct"])


def test_config_round_trip_and_bad_input():
    model = MLPClassifier(10, 3, hidden=(8, 8), dropout=0.1, intermediate=16)
    again = build_model(model.kind, model.config())
    assert again.config() == model.config()
    model.bind(Backend(), 0, "float32")
    with pytest.raises(ValueError, match=r"expected input \(B, 10\)"):
        model.forward(numpy.zeros((2, 9), numpy.float32), numpy.array([0, 1]))
    with pytest.raises(ValueError, match="label 3"):
        model.validate_data(numpy.zeros((2, 10)), numpy.array([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        model.validate_data(numpy.full((2, 10), numpy.nan), numpy.array([0, 1]))
    with pytest.raises(ValueError, match="num_classes is 4"):
        model.check_dataset(DatasetInfo("x.h5", "engine-classification", "classification",
                                        {"train": 5}, num_features=10, num_classes=4), "x.h5")


def test_after_step_hook_receives_step_optimizer_and_key_prefix():
    x, y = _blobs(n=40)
    model = MLPClassifier(12, 4, hidden=(8,))
    calls = []
    model.body[0].after_step = lambda step, opt, prefix: calls.append((step, opt, prefix))
    eng = Engine(model, Adam(lr=1e-3), device="cpu", verbose=False)
    eng.train((x, y), epochs=1, batch_size=10, progress=False)
    assert [c[0] for c in calls] == [1, 2, 3, 4]
    assert calls[0][1] is eng.optimizer
    keys = [k for k, layer, name in model.param_items() if layer is model.body[0]]
    assert all(k.startswith(calls[0][2]) for k in keys) and keys


def test_model_and_data_kinds_must_match(tmp_path):
    """A classifier handed a language-model corpus (or the reverse) gets an error naming both."""
    from engine import MLPLanguageModel
    from engine.data import write_lm_corpus
    from engine.data.classification import write_classification
    lm_file, cls_file = tmp_path / "lm.h5", tmp_path / "cls.h5"
    write_lm_corpus(lm_file, ["<unk>", "<eos>", "a"], [5, 4, 3],
                    {"train": numpy.array([2, 1, 2, 1], numpy.int32)}, {"unk_id": 0, "eos_id": 1})
    rng = numpy.random.default_rng(0)
    write_classification(cls_file, {"train": (rng.random((6, 12)), rng.integers(0, 4, 6))}, 4)
    clf = Engine(MLPClassifier(12, 4, hidden=(8,)), Adam(lr=1e-3), device="cpu", verbose=False)
    with pytest.raises(ValueError, match="language-model corpus, but the model is a mlp-classifier"):
        clf.evaluate(str(lm_file), split="train")
    lm = Engine(MLPLanguageModel(3, context=2, embed_dim=4, hidden=(4,)), Adam(lr=1e-3),
                device="cpu", verbose=False)
    with pytest.raises(ValueError, match="classification file, but the model is a mlp-lm"):
        lm.evaluate(str(cls_file), split="train")
