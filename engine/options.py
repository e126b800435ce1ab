"""Option declarations: each class that takes user settings says which, once.

An output layer, a model and an optimizer each list their constructor's options in a class
attribute `OPTIONS` (a tuple of `Option`), and the keywords that are deliberately not user
options in `NOT_OPTIONS` ({keyword: why}, e.g. sizes that come from the data). The training
options of `Engine` / `Engine.train` are declared in engine/train_options.py. From these
declarations the command line builds `engine train`'s flags (engine/cli_train.py), checks each value,
refuses a flag that does not apply to the chosen model / output / optimizer, and writes the
resolved `config.toml` of a run (engine/config.py). tests/test_options.py checks every
declaration against its owner's constructor signature.

    Option("fan_in", parse_int, None, "connections per label (FFI weights)", check=at_least(1),
           when=("weights", ("ffi",)))

Fields:
    name         the constructor keyword (or, with `part_of`, the key inside a dict keyword)
    parse        str or typed value -> value (`parse_int`, `parse_float`, ... below); values
                 come as strings from the command line and typed from a TOML file
    default      the constructor's default (checked against the signature by the test)
    help         one line for `engine train --help`
    flag         "--" + name with dashes unless given (explicit where names collide: the
                 factored layer's own `lr` is `--output-lr`); the TOML key is the flag without
                 its dashes
    choices      allowed values (after parsing)
    check        a validity check such as `at_least(1)`: value -> None, or raises ValueError
    resumable    may change when resuming from a checkpoint (epochs, lr, ...); model shape and
                 seed may not
    switch       a boolean flag: `--x` / `--no-x`
    many         a list of values (`--hidden 512 512`)
    part_of      the dict keyword this option is one entry of (`meprop`, `loss_kwargs`); its
                 key there is `key` (default: name)
    when         (other option, allowed values): the option applies only when that option of
                 the same owner has one of these values ("*": any value but None)
    cli_default  what `engine train` (and models/build.py) use when the option is not given,
                 where that differs from the constructor's default (a smaller default model)
    default_from a training option whose value this one takes when not given (the adaptive
                 softmax's auto_batch follows --batch-size)
    metavar      the value's name in the help (default: the flag in capitals, or the choices)

A new owner declares `OPTIONS = (Option(...), ...)` with its class and `NOT_OPTIONS` for the
rest of its keywords; nothing else registers a flag.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

MISSING = type("Missing", (), {"__repr__": lambda self: "MISSING", "__bool__": lambda self: False})()
ANY = "*"


class OptionError(ValueError):
    """A value that does not parse or does not pass its check; the message is one line."""


# ------------------------------------------------------------------------------- parsers
def _is_text(value):
    return isinstance(value, str)


def parse_str(value):
    if not _is_text(value):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def parse_int(value):
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if _is_text(value):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


def parse_float(value):
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if _is_text(value):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {value!r}")


def parse_bool(value):
    if isinstance(value, bool):
        return value
    if _is_text(value) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if _is_text(value) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _items(value):
    """A list from a list/tuple, or from a comma-separated string ("" -> [])."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if _is_text(value):
        return [p for p in (s.strip() for s in value.split(",")) if p]
    raise ValueError(f"expected a list or comma-separated values, got {value!r}")


def int_list(value):
    """[int, ...] from "2000,10000", ["512", "512"] or [512, 512]."""
    return [parse_int(v) for v in _items(value)]


def float_pair(value):
    """(float, float) from "0.5,2.0" or [0.5, 2.0]."""
    items = [parse_float(v) for v in _items(value)]
    if len(items) != 2:
        raise ValueError(f"expected two numbers LOW,HIGH, got {value!r}")
    return items


def cutoffs_value(value):
    """The adaptive softmax's cutoffs: "auto", or a list of ints ("2000,10000" or a list)."""
    if _is_text(value) and value.strip().lower() == "auto":
        return "auto"
    return int_list(value)


def json_object(value):
    """A dict from a JSON object string (the command line) or a table (a TOML file)."""
    if isinstance(value, dict):
        return dict(value)
    if not _is_text(value):
        raise ValueError(f"expected a JSON object, got {value!r}")
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {value!r}")
    return obj


# -------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Check:
    """A validity check with the words it prints: `test(value)` is True for a good value."""
    test: Callable[[Any], bool]
    words: str                       # "must be >= 1"

    def __call__(self, value):
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None and not (isinstance(v, numbers.Real) and not isinstance(v, bool)
                                      and not math.isnan(v) and self.test(v)):
                raise ValueError(f"{self.words}, got {v!r}")


def at_least(low):
    return Check(lambda v: v >= low, f"must be >= {low}")


def greater_than(low):
    return Check(lambda v: v > low, f"must be > {low}")


def in_range(low, high, high_open=True):
    if high_open:
        return Check(lambda v: low <= v < high, f"must be in [{low}, {high})")
    return Check(lambda v: low <= v <= high, f"must be in [{low}, {high}]")


def in_open_closed(low, high):
    return Check(lambda v: low < v <= high, f"must be in ({low}, {high}]")


def check_arguments(options: Iterable["Option"], values: Dict[str, Any], owner: str):
    """The Python API's check of keyword arguments against their declarations: ValueError
    "owner: name must be >= 1, got 0" for the first value that fails (None passes)."""
    for o in options:
        value = values.get(o.name)
        if value is None:
            continue
        if o.parse is parse_int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise ValueError(f"{owner}: {o.name} must be an integer, got {value!r}")
        if o.choices is not None and value not in o.choices:
            raise ValueError(f"{owner}: {o.name} must be one of "
                             f"{', '.join(map(str, o.choices))}, got {value!r}")
        if o.check is not None:
            try:
                o.check(value)
            except ValueError as exc:
                raise ValueError(f"{owner}: {o.name} {exc}") from None


# ------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[Any], Any] = parse_str
    default: Any = None
    help: str = ""
    flag: Optional[str] = None
    choices: Optional[Tuple[Any, ...]] = None
    check: Optional[Callable[[Any], None]] = None
    resumable: bool = False
    switch: bool = False
    many: bool = False
    part_of: Optional[str] = None
    key: Optional[str] = None
    when: Optional[Tuple[str, Any]] = None
    cli_default: Any = MISSING
    default_from: Optional[str] = None
    metavar: Optional[str] = None

    def __post_init__(self):
        if self.flag is None:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))
        if self.switch:
            object.__setattr__(self, "parse", parse_bool)

    @property
    def dest(self) -> str:
        """The flag without its dashes: the key in a TOML file and in resolved values."""
        return self.flag[2:]

    @property
    def keyword(self) -> str:
        """The constructor keyword this option sets (the dict keyword for a part)."""
        return self.part_of or self.name

    @property
    def entry(self) -> str:
        """The key inside the `part_of` dict."""
        return self.key or self.name

    @property
    def run_default(self):
        """The value used when the option is not given (before `default_from`)."""
        return self.default if self.cli_default is MISSING else self.cli_default

    def parse_value(self, raw):
        """A raw value (a string, or a typed TOML value) parsed; OptionError names the flag.
        A list option parses each item."""
        try:
            if self.many:
                items = raw if isinstance(raw, (list, tuple)) else _items(raw)
                return [self.parse(v) for v in items]
            return self.parse(raw)
        except ValueError as exc:
            raise OptionError(f"{self.flag}: {exc}") from None

    def value(self, raw):
        """Parse and check a raw value (OptionError, one line naming the flag)."""
        value = self.parse_value(raw)
        self.validate(value)
        return value

    def validate(self, value):
        """Raise OptionError (one line naming the flag) unless `value` passes choices/check."""
        if value is None:
            return
        if self.choices is not None:
            for v in (value if self.many else [value]):
                if v not in self.choices:
                    raise OptionError(f"{self.flag} must be one of {', '.join(map(str, self.choices))}"
                                      f", got {v!r}")
        if self.check is not None:
            try:
                self.check(value)
            except ValueError as exc:
                raise OptionError(f"{self.flag} {exc}") from None

    def applies(self, values: Dict[str, Any]) -> bool:
        """Whether `when` holds for `values` ({option name: value} of the same owner)."""
        if self.when is None:
            return True
        other, allowed = self.when
        got = values.get(other)
        if allowed == ANY:
            return got is not None
        return got in allowed

    def describe_default(self) -> str:
        if self.default_from:
            return f"--{self.default_from.replace('_', '-')}"
        value = self.run_default
        if value is None:
            return "none"
        if isinstance(value, (list, tuple)):
            return " ".join(map(str, value)) if self.many else ",".join(map(str, value))
        return str(value)


# ------------------------------------------------- options several output layers share
DETERMINISTIC_HELP = ("GPU: sums in a fixed order instead of by atomics, so runs repeat bit "
                      "for bit (factored-*: the row scatter; FFI weights: the input gradient)")


def init_scale_option():
    return Option("init_scale", parse_float, None,
                  "initial output weights uniform in +-S (default 1/sqrt(d))",
                  check=greater_than(0), metavar="S")


def bias_option(default):
    return Option("bias", default=default, switch=True, help="an output bias vector")


def reduction_option(choices=("mean", "sum"), default="mean"):
    return Option("reduction", parse_str, default,
                  "loss of a minibatch: the mean over its examples or their sum", choices=choices)


def with_defaults(options: Iterable[Option], **cli_defaults) -> Tuple[Option, ...]:
    """A copy of `options` whose named entries use other command-line defaults (subclasses:
    factored-spherical's loss is "spherical")."""
    from dataclasses import replace
    out = []
    for o in options:
        out.append(replace(o, cli_default=cli_defaults[o.name]) if o.name in cli_defaults else o)
    return tuple(out)


def options_by_name(options: Iterable[Option]) -> Dict[str, Option]:
    return {o.name: o for o in options}


def run_values(options: Iterable[Option], given: Dict[str, Any]) -> Dict[str, Any]:
    """{name: value} of every option: the given value, else its run default."""
    return {o.name: given[o.name] if o.name in given else o.run_default for o in options}


def constructor_kwargs(options: Iterable[Option], given: Dict[str, Any]) -> Dict[str, Any]:
    """Keyword arguments for the owner's constructor from the given options ({name: value}):
    plain options as they are, parts gathered into their dict keyword."""
    kwargs: Dict[str, Any] = {}
    for o in options:
        if o.name not in given:
            continue
        if o.part_of:
            kwargs.setdefault(o.part_of, {})[o.entry] = given[o.name]
        else:
            kwargs[o.name] = given[o.name]
    return kwargs


__all__ = ["Option", "OptionError", "Check", "MISSING", "ANY", "parse_str", "parse_int",
           "parse_float", "parse_bool", "int_list", "float_pair", "cutoffs_value", "json_object",
           "at_least", "greater_than", "in_range", "in_open_closed", "with_defaults",
           "init_scale_option", "bias_option", "reduction_option", "DETERMINISTIC_HELP",
           "options_by_name", "run_values", "constructor_kwargs", "check_arguments"]
