"""engine/options.py and the declarations: every owner's OPTIONS against its constructor."""
import inspect

import pytest

from engine import Engine
from engine.cli_train import flag_table, owners
from engine.models import MODELS
from engine.optim import OPTIMIZERS
from engine.options import (Option, OptionError, at_least, cutoffs_value, float_pair, int_list,
                            parse_bool, parse_float, parse_int)
from engine.outputs import OUTPUTS
from engine.train_options import (ENGINE_NOT_OPTIONS, ENGINE_OPTIONS, RUN_OPTIONS, TRAIN_NOT_OPTIONS,
                                  TRAIN_OPTIONS)

OWNERS = ([(f"output {n}", c, c.OPTIONS, c.NOT_OPTIONS) for n, c in OUTPUTS.items()]
          + [(f"model {n}", c, c.OPTIONS, c.NOT_OPTIONS) for n, c in MODELS.items()]
          + [(f"optimizer {n}", c, c.OPTIONS, c.NOT_OPTIONS) for n, c in OPTIMIZERS.items()]
          + [("Engine", Engine, ENGINE_OPTIONS, ENGINE_NOT_OPTIONS)])


def keywords(func):
    """{name: default} of a function's keyword parameters (no self, *args, **kwargs)."""
    return {name: p.default for name, p in inspect.signature(func).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def normal(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("label, cls, options, not_options", OWNERS, ids=[o[0] for o in OWNERS])
def test_declarations_match_the_constructor(label, cls, options, not_options):
    params = keywords(cls.__init__)
    declared = {o.keyword for o in options}
    assert declared <= set(params), f"{label}: declared but not a keyword: {declared - set(params)}"
    missing = set(params) - declared - set(not_options)
    assert not missing, f"{label}: keywords neither declared nor explained in NOT_OPTIONS: {missing}"
    assert not (declared & set(not_options)), label
    names = [o.name for o in options]
    assert len(names) == len(set(names)) and len({o.flag for o in options}) == len(names), label
    for o in options:
        if not o.part_of:           # the declared default is the constructor's
            assert normal(o.default) == normal(params[o.name]), (label, o.name)
        if o.run_default is not None and not o.default_from:
            o.validate(o.run_default)                  # defaults pass their own checks
        if o.when is not None:
            assert o.when[0] in names, (label, o.name)
        assert o.help, (label, o.name)


def test_training_options_match_engine_train():
    params = keywords(Engine.train)
    declared = {o.name for o in TRAIN_OPTIONS}
    assert declared <= set(params)
    assert set(params) - declared == set(TRAIN_NOT_OPTIONS)
    for o in TRAIN_OPTIONS:
        assert normal(o.default) == normal(params[o.name]), o.name


def test_default_from_names_a_training_option():
    training = {o.name for o in TRAIN_OPTIONS + ENGINE_OPTIONS}
    for owner in owners():
        for o in owner.options:
            assert o.default_from is None or o.default_from in training, o.name


def test_every_output_option_is_in_its_config():
    """config() keys are the option names, so a run's config.toml reads the resolved values."""
    for name, cls in OUTPUTS.items():
        layer = cls(8, 40, **({"cutoffs": [5, 15]} if name == "adaptive" else {}))
        cfg = layer.config()
        for o in cls.OPTIONS:
            if o.part_of:
                assert isinstance(cfg.get(o.part_of, {}), dict), (name, o.name)
            else:
                assert o.name in cfg or o.run_default is None or not o.applies(cfg), (name, o.name)


def test_shared_flags_parse_alike_and_run_options_are_unique():
    table = flag_table()                 # raises on a flag declared with different kinds
    assert "fan-in" in table and "output-lr" in table and "head-coverage" in table
    run = {o.dest for o in RUN_OPTIONS}
    for dest, entries in table.items():
        if dest in run:
            assert len(entries) == 1, dest


def test_parsers_take_strings_and_typed_values():
    assert parse_int("12") == parse_int(12) == 12
    assert parse_float("1e-3") == parse_float(1e-3) == 0.001 and parse_float(2) == 2.0
    assert parse_bool("true") is True and parse_bool(False) is False
    assert int_list("2000,10000") == int_list([2000, 10000]) == [2000, 10000] and int_list("") == []
    assert cutoffs_value("auto") == "auto" and cutoffs_value("5, 9") == [5, 9]
    assert float_pair("0.5,2") == float_pair([0.5, 2]) == [0.5, 2.0]
    for bad, parser in ((True, parse_int), ("x", parse_int), (1.5, parse_int), ("y", parse_float),
                        ("maybe", parse_bool)):
        with pytest.raises(ValueError):
            parser(bad)


def test_an_option_error_is_one_line_naming_the_flag():
    o = Option("max_steps_per_epoch", parse_int, None, "cut epochs", check=at_least(1))
    assert o.flag == "--max-steps-per-epoch" and o.dest == "max-steps-per-epoch"
    assert o.value("7") == 7
    for raw, words in (("-1", "must be >= 1, got -1"), ("0", "must be >= 1, got 0"),
                       ("x", "expected an integer, got 'x'")):
        with pytest.raises(OptionError) as err:
            o.value(raw)
        assert str(err.value).startswith("--max-steps-per-epoch") and words in str(err.value)
        assert "\n" not in str(err.value)
    many = Option("hidden", parse_int, [512], "widths", many=True, check=at_least(1))
    assert many.value(["16", "8"]) == [16, 8] and many.value([]) == []
    with pytest.raises(OptionError, match="--hidden must be >= 1, got 0"):
        many.value(["16", "0"])
    choice = Option("weights", default="dense", help="w", choices=("dense", "ffi"))
    with pytest.raises(OptionError, match="--weights must be one of dense, ffi, got 'sparse'"):
        choice.value("sparse")


def test_when_conditions():
    o = Option("fan_in", parse_int, None, "k", when=("weights", ("ffi",)))
    assert o.applies({"weights": "ffi"}) and not o.applies({"weights": "dense"})
    k = Option("meprop_mode", default="per-example", help="m", when=("meprop_k", "*"))
    assert k.applies({"meprop_k": 3}) and not k.applies({"meprop_k": None})
