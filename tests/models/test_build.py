"""engine/models/build.py: the model for a DatasetInfo and the user's options."""
import numpy
import pytest

from engine.data import write_lm_corpus
from engine.data.registry import describe
from engine.data.xmc import prepare_xmc
from engine.data.xmc_synthetic import write_synthetic_xmc
from engine.models.build import build_model_for


@pytest.fixture
def lm(tmp_path):
    path = tmp_path / "lm.h5"
    write_lm_corpus(path, ["a", "b", "c", "<eos>", "<unk>"], [9, 5, 3, 2, 0],
                    {"train": numpy.array([0, 1, 2, 3] * 5, numpy.int32)},
                    {"unk_id": 4, "eos_id": 3})
    return describe(path)


@pytest.fixture
def xmc(tmp_path):
    tr, te = str(tmp_path / "tr.txt"), str(tmp_path / "te.txt")
    write_synthetic_xmc(tr, te, 100, 20, 30, 12, labels_per_point=2, features_per_point=5, seed=0)
    prepare_xmc(tr, te, str(tmp_path / "x.h5"))
    return describe(tmp_path / "x.h5")


def test_language_model_defaults_and_options(lm):
    model = build_model_for(lm)
    cfg = model.config()
    assert (cfg["vocab_size"], cfg["context"], cfg["embed_dim"], cfg["hidden"]) == (5, 4, 64, [256])
    assert cfg["output"] == "softmax" and cfg["activation"] == "tanh"
    model = build_model_for(lm, {"context": 2, "embed_dim": 8, "hidden": [16], "output": "adaptive",
                                 "output_kwargs": {"cutoffs": "auto"}}, batch_size=32)
    out = model.output
    numpy.testing.assert_array_equal(out.counts, [9, 5, 3, 2, 0])      # from the description
    assert out.auto_batch == 32                                       # follows the batch size
    model = build_model_for(lm, {"output": "adaptive"})               # engine train's default
    assert model.output.cutoffs == "auto"


def test_classifier_from_a_multilabel_file(xmc):
    model = build_model_for(xmc, {"hidden": [16], "output_kwargs": {"weights": "ffi", "fan_in": 4}},
                            seed=3)
    assert model.kind == "mlp-classifier" and model.sparse_input
    assert (model.num_features, model.num_classes, model.output_name) == (30, 12, "squared-hinge")
    numpy.testing.assert_array_equal(model.output.label_counts, xmc.label_counts)
    assert model.output.num_train == xmc.num_train
    model = build_model_for(xmc, {"hidden": [8], "meprop": {"k": 2}}, seed=5)
    assert model.meprop == {"k": 2, "mode": "per-example", "output": False, "seed": 5}


def test_one_line_errors(lm, xmc):
    with pytest.raises(ValueError, match="mlp-lm: unknown options \\['fan_in'\\]"):
        build_model_for(lm, {"fan_in": 3})
    with pytest.raises(ValueError, match="'chunk_size' is not an argument of the squared-hinge"):
        build_model_for(xmc, {"output_kwargs": {"chunk_size": 3}})
    with pytest.raises(ValueError, match="--output adaptive does not take several labels"):
        build_model_for(xmc, {"output": "adaptive"})
    with pytest.raises(ValueError, match="--model mlp-classifier trains on classification data"):
        build_model_for(lm, {"model": "mlp-classifier"})
