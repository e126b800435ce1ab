"""Engine(...) and Engine.train(...) in Python refuse the numbers `engine train` refuses, with
one ValueError naming the keyword, before any step (0 never silently means "unlimited")."""
import numpy
import pytest

from engine import Adam, Engine, MLPLanguageModel, SGD
from engine.cli import main
from engine.cli_train import owners
from engine.options import cutoffs_value, float_pair, int_list, parse_float, parse_int


def data(n=200, V=20, ctx=2, seed=0):
    rng = numpy.random.default_rng(seed)
    x = rng.integers(0, V, (n, ctx)).astype(numpy.int32)
    return x, ((x[:, 0] + x[:, 1]) % V).astype(numpy.int32)


def make_engine(**kw):
    return Engine(MLPLanguageModel(20, context=2, embed_dim=4, hidden=(8,)), Adam(lr=1e-2),
                  device="cpu", verbose=False, **kw)


@pytest.mark.parametrize("kw,message", [
    ({"epochs": 0}, "Engine.train: epochs must be >= 1, got 0"),
    ({"epochs": 1.5}, "Engine.train: epochs must be an integer, got 1.5"),
    ({"max_steps_per_epoch": 0}, "Engine.train: max_steps_per_epoch must be >= 1, got 0"),
    ({"max_steps_per_epoch": -1}, "Engine.train: max_steps_per_epoch must be >= 1, got -1"),
    ({"checkpoint_every": 0}, "Engine.train: checkpoint_every must be >= 1, got 0"),
    ({"checkpoint_every": -2}, "Engine.train: checkpoint_every must be >= 1, got -2"),
    ({"sync_every": 0}, "Engine.train: sync_every must be >= 1, got 0"),
    ({"eval_batch_size": 0}, "Engine.train: eval_batch_size must be >= 1, got 0"),
    ({"batch_size": -3}, "Engine.train: batch_size must be >= 1, got -3"),
    ({"max_steps": 0}, "Engine.train: max_steps must be >= 1, got 0"),
])
def test_train_refuses_nonsense_numbers(tmp_path, kw, message):
    e = make_engine()
    with pytest.raises(ValueError) as exc:
        e.train(data(), valid=data(seed=1), progress=False, run_dir=str(tmp_path / "r"), **kw)
    assert str(exc.value) == message
    assert e.step == 0 and not (tmp_path / "r").exists()


def test_numpy_integers_are_integers():
    e = make_engine()
    e.train(data(), epochs=numpy.int64(1), batch_size=numpy.int32(50), progress=False)
    assert e.step == 4


def test_engine_refuses_a_negative_seed():
    with pytest.raises(ValueError, match=r"^Engine: seed must be >= 0, got -1$"):
        make_engine(seed=-1)


@pytest.mark.parametrize("cls", [Adam, SGD])
def test_a_learning_rate_of_zero_is_refused(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: lr must be > 0, got 0"):
        cls(lr=0)


def test_cli_refuses_lr_zero(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "cache"))   # refused before any data
    assert main(["train", "--lr", "0", "--run-dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == "engine train: error: --lr must be > 0, got 0.0"
    assert not (tmp_path / "r").exists() and not (tmp_path / "cache").exists()


#: numeric options whose every value means something (no bound to check)
ANY_VALUE = {"--zloss-b": "the z-loss margin b: any real number",
             "--psp-a": "a propensity model's parameter, fitted per dataset",
             "--psp-b": "a propensity model's parameter, fitted per dataset",
             "--cutoffs": "checked against the vocabulary by the adaptive layer"}


def test_every_numeric_option_declares_its_bounds():
    """A new numeric option states its valid range (check=...) or says here why any value is
    valid: the command line, config files and the Python API then refuse the rest alike."""
    unchecked = set()
    for owner in owners():
        for o in owner.options:
            numeric = o.parse in (parse_int, parse_float, int_list, float_pair, cutoffs_value)
            if numeric and o.check is None and o.choices is None:
                unchecked.add(o.flag)
    assert unchecked == set(ANY_VALUE), unchecked ^ set(ANY_VALUE)


def test_band_must_hold_the_identity():
    from engine.options import OptionError
    from engine.outputs.factored import FactoredOutput
    band = next(o for o in FactoredOutput.OPTIONS if o.name == "band")
    assert band.value("0.5,2") == [0.5, 2.0]
    for bad in ("2,0.5", "0,2", "1.5,3"):
        with pytest.raises(OptionError, match=r"^--band must be LOW,HIGH with 0 < LOW <= 1 <= HIGH"):
            band.value(bad)


@pytest.mark.parametrize("line,message", [
    ("max-steps-per-epoch = 0", "--max-steps-per-epoch must be >= 1, got 0"),
    ("epochs = 0", "--epochs must be >= 1, got 0"),
    ("[training]\ncheckpoint-every = -1", "--checkpoint-every must be >= 1, got -1"),
    ("lr = 0.0", "--lr must be > 0, got 0.0"),
])
def test_config_files_are_checked_alike(tmp_path, capsys, monkeypatch, line, message):
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "run.toml"
    config.write_text(line + "\n")
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == f"engine train: error: {message}"
    assert not (tmp_path / "r").exists() and not (tmp_path / "cache").exists()
