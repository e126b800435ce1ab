"""engine/config.py: the TOML writer reads back identical, config files feed `engine train`,
and `engine train --config runs/<run>/config.toml` repeats the run exactly on the CPU."""
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.config import ConfigError, dumps, loads, read_config

TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n" * 40

keys = st.text(min_size=1, max_size=12)
scalars = (st.booleans() | st.integers(min_value=-2 ** 63, max_value=2 ** 63 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=20))
values = scalars | st.lists(scalars, max_size=5)
tables = st.dictionaries(keys, values, max_size=6)
configs = st.dictionaries(keys, values | tables, max_size=6)


@settings(max_examples=300, deadline=None)
@given(configs)
def test_what_dumps_writes_reads_back_identical(config):
    assert loads(dumps(config)) == config


def test_special_floats_and_strings():
    text = dumps({"a": math.inf, "b": -math.inf, "c": math.nan, "d": 1e-5, "e": 'q"\\\n\t\x01é'})
    back = loads(text)
    assert back["a"] == math.inf and back["b"] == -math.inf and math.isnan(back["c"])
    assert back["d"] == 1e-5 and back["e"] == 'q"\\\n\t\x01é'
    with pytest.raises(TypeError, match="one level"):
        dumps({"t": {"u": {"v": 1}}})
    with pytest.raises(TypeError):
        dumps({"none": None})


def test_read_config_flattens_tables_and_names_problems(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text('data = "x.h5"\n[model]\nfan_in = 3\nhidden = [4, 5]\n[training]\nno-progress = true\n')
    assert read_config(f) == {"data": "x.h5", "fan-in": 3, "hidden": [4, 5], "no-progress": True}
    f.write_text("lr = 1\n[optimizer]\nlr = 2\n")
    with pytest.raises(ConfigError, match=r"lr is given twice \(lr and \[optimizer\] lr\)"):
        read_config(f)
    f.write_text("[a]\n[a.b]\nc = 1\n")
    with pytest.raises(ConfigError, match="one level"):
        read_config(f)
    f.write_text("lr = = 2\n")
    with pytest.raises(ConfigError, match="a.toml: not valid TOML"):
        read_config(f)
    with pytest.raises(ConfigError, match="no such config file"):
        read_config(tmp_path / "missing.toml")


@pytest.fixture
def corpus(tmp_path):
    for name, text in [("train.txt", TEXT), ("valid.txt", TEXT[:200]), ("test.txt", TEXT[:300])]:
        (tmp_path / name).write_text(text)
    out = tmp_path / "c.h5"
    assert main(["prepare", "text", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt"),
                 "--test", str(tmp_path / "test.txt"), "--output", str(out)]) == 0
    return out


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_config_file_keys_and_command_line_override(tmp_path, corpus, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'data = "{corpus}"\n[model]\ncontext = 2\nembed_dim = 4\nembed = 8\n')
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"engine train: error: {cfg}: unknown key 'embed_dim' (did you mean embed?); "
                   f"the keys are engine train's flags without their dashes (engine train --help)")
    cfg.write_text(f'data = "{corpus}"\n[model]\ncontext = 2\nembed = 8\nhidden = [16]\n'
                   f'[training]\nepochs = 3\nbatch_size = 32\nno-progress = true\ndevice = "cpu"\n'
                   f'json = true\ntest = false\n')
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--run-dir", str(run)]) == 0
    result = last_json(capsys)
    assert result["epochs"] == 1 and result["steps"] == 25          # 800 tokens / 32
    written = read_config(run / "config.toml")
    assert (written["context"], written["embed"], written["hidden"]) == (2, 8, [16])
    assert (written["epochs"], written["batch-size"], written["progress"]) == (1, 32, False)
    assert written["data"] == str(corpus) and written["model"] == "mlp-lm"
    cfg.write_text('fan-in = 4\n')
    assert main(["train", "--config", str(cfg), "--data", str(corpus)]) == 2
    assert "--fan-in applies to --output squared-hinge, bce, not to softmax" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [
    ["--output", "adaptive", "--cutoffs", "auto", "--head-coverage", "0.5", "--dropout", "0.2"],
    ["--output", "softmax", "--chunk-size", "5", "--optimizer", "sgd", "--lr", "0.2",
     "--momentum", "0.5", "--schedule", "cosine"],
    ["--output", "factored-spherical", "--output-lr", "0.05", "--spherical-eps", "0.01"],
], ids=["adaptive-auto", "chunked-sgd-cosine", "factored"])
def test_the_resolved_config_repeats_the_run_exactly(tmp_path, corpus, capsys, monkeypatch, extra):
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "first"
    assert main(["train", "--data", str(corpus), "--context", "2", "--embed", "8", "--hidden", "16",
                 "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--run-dir", str(first),
                 "--no-progress", "--json", *extra]) == 0
    a = last_json(capsys)
    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "config.toml"), "--run-dir", str(again)]) == 0
    b = last_json(capsys)
    for key in ("loss", "valid_loss", "test_loss", "test_perplexity", "steps", "epochs"):
        assert a[key] == b[key], key
    assert read_config(first / "config.toml") == read_config(again / "config.toml")
    history = [json.loads((d / "metrics.json").read_text())["history"] for d in (first, again)]
    assert [h["train_loss"] for h in history[0]] == [h["train_loss"] for h in history[1]]


def test_the_python_api_writes_config_toml_too(tmp_path, corpus):
    from engine import Adam, Engine, MLPLanguageModel
    engine = Engine(MLPLanguageModel(11, context=2, embed_dim=4, hidden=(8,)),
                    Adam(lr=1e-2, schedule="step:1:0.5"), device="cpu", verbose=False)
    engine.train(str(corpus), epochs=1, batch_size=64, run_dir=str(tmp_path / "r"), progress=False)
    cfg = read_config(tmp_path / "r" / "config.toml")
    assert cfg["data"] == str(corpus) and cfg["lr"] == 0.01 and cfg["batch-size"] == 64
    assert cfg["schedule"] == "step:every_epochs=1:factor=0.5" and cfg["device"] == "cpu"
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["config"]["model"]["embed"] == 4
