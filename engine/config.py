"""Run configuration files: `engine train --config run.toml`, and the resolved config.toml of
every run folder.

A config file is TOML whose keys are `engine train`'s flags without their dashes
(`fan-in = 32`; `fan_in` is read too); flags given on the command line override the file. Keys
may sit at the top level or in tables, which only group them ([data], [model], [output],
[optimizer], [training]: the names are free, a key may appear once). A switch reads
`deterministic = true`, or `no-progress = true` for its negative.

    data = "ptb.h5"
    [model]
    context = 5
    hidden = [512]
    [output]
    output = "adaptive"
    cutoffs = [2000, 10000]

`resolved_run_config(engine, data, training)` lists every option of the run's model, output,
optimizer and training with the value it took (the adaptive softmax's "auto" cutoffs as the
list chosen), so `engine train --config runs/<run>/config.toml` repeats the run: same data,
model, seed and options, same metrics on the CPU. TOML has no null: an option whose value is
None (its default "none") is left out, which means the same.

Reading uses the standard library's tomllib (Python >= 3.11) or the `tomli` package (declared
for older Pythons); writing uses `dumps` below (scalars, strings, lists of scalars, one level
of tables), whose output reads back identical (tests/test_config.py).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, Mapping

from .filemode import follow_umask
from .options import MISSING

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


class ConfigError(ValueError):
    """A config file that cannot be read, or a key or value it must not hold (one line)."""


# ------------------------------------------------------------------------------- writing
def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    raise TypeError(f"config: cannot write a {type(value).__name__} ({value!r}) as a TOML scalar")


def _value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return _scalar(value)


def dumps(config: Mapping[str, Any], header: str = "") -> str:
    """TOML text of `config`: top-level scalars and lists, then one table per dict value."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for key, value in config.items():
        if not isinstance(value, dict):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in config.items():
        if isinstance(value, dict):
            lines.append("")
            lines.append(f"[{_key(key)}]")
            for k, v in value.items():
                if isinstance(v, dict):
                    raise TypeError(f"config: nested table {key}.{k}: one level of tables only")
                lines.append(f"{_key(k)} = {_value(v)}")
    return "\n".join(lines) + "\n"


def write_config(path, config: Mapping[str, Any], header: str = "") -> str:
    """Write `dumps(config)` to `path` atomically (a temporary file beside it, then rename)."""
    import tempfile
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".toml", dir=folder)
    follow_umask(fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(dumps(config, header))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


# ------------------------------------------------------------------------------- reading
def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:                      # Python < 3.11: the declared fallback
        import tomli as tomllib
    return tomllib


def loads(text: str) -> dict:
    return _toml().loads(text)


def read_config(path) -> Dict[str, Any]:
    """{key: value} of a config file, tables flattened, keys with dashes (`fan_in` -> `fan-in`).
    ConfigError (naming the file) when it is missing, not TOML, or holds a key twice."""
    return {name: value for _, name, value in config_entries(path)}


def config_entries(path):
    """[(key as written, key with dashes, value)] of a config file (see read_config)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = _toml().load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except ValueError as exc:                        # tomllib.TOMLDecodeError
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    entries = []
    where: Dict[str, str] = {}
    for key, value in data.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        table = key if isinstance(value, dict) else None
        for k, v in items:
            if isinstance(v, dict):
                raise ConfigError(f"{path}: [{table}] {k}: tables nest one level deep at most")
            name = k.replace("_", "-")
            here = f"[{table}] {k}" if table else k
            if name in where:
                raise ConfigError(f"{path}: {name} is given twice ({where[name]} and {here})")
            where[name] = here
            entries.append((k, name, v))
    return entries


# --------------------------------------------------------------------- the resolved config
def _toml_able(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, (bool, int, float, str)) for v in value)
    return isinstance(value, (bool, int, float, str))


def option_table(options, config: Mapping[str, Any], fallback: Mapping[str, Any] = None):
    """{flag name: value} of the options that apply, from an object's config() (a part of a
    dict keyword from that dict), else `fallback` ({option name: value}), else the default;
    None values are left out."""
    fallback = fallback or {}
    values = {}
    for o in options:
        if o.part_of:
            v = (config.get(o.part_of) or {}).get(o.entry, MISSING)
        else:
            v = config.get(o.name, MISSING)
        if v is MISSING or not _toml_able(v) and v is not None:
            v = fallback.get(o.name, o.run_default)
        values[o.name] = list(v) if isinstance(v, tuple) else v
    return {o.dest: values[o.name] for o in options
            if o.applies(values) and values[o.name] is not None and _toml_able(values[o.name])}


def resolved_run_config(engine, data=None, training: Mapping[str, Any] = None,
                        extra: Mapping[str, Any] = None) -> Dict[str, Dict[str, Any]]:
    """Every option of a run, grouped in tables: data, model, output, optimizer, training.

    `engine` gives the model, output and optimizer (their config() after bind, so resolved
    values appear) and the seed, dtype and device as asked; `data` the dataset (a path or a
    DatasetInfo); `training` Engine.train's options ({name: value}); `extra` more training
    entries (the command line's test / json switches, as {flag name: value})."""
    from .data.info import DatasetInfo
    from .train_options import ENGINE_OPTIONS, TRAIN_OPTIONS
    model, output, optimizer = engine.model, engine.model.output, engine.optimizer
    config: Dict[str, Dict[str, Any]] = {}
    path = data.path if isinstance(data, DatasetInfo) else data
    config["data"] = {"data": os.path.abspath(os.fspath(path))} if isinstance(
        path, (str, os.PathLike)) else {}
    mcfg = model.config()
    body = [o for o in type(model).OPTIONS if o.name not in ("output", "output_kwargs")]
    config["model"] = {"model": model.kind, **option_table(body, mcfg)}
    out_kw = dict(mcfg.get("output_kwargs") or {})
    out_cls = type(output)
    config["output"] = {"output": mcfg["output"], **option_table(out_cls.OPTIONS, out_kw)}
    declared = {o.keyword for o in out_cls.OPTIONS} | set(out_cls.NOT_OPTIONS)
    rest = {k: v for k, v in out_kw.items() if k not in declared and v is not None}
    if rest:                                         # constructor keywords without a flag
        import json
        config["output"]["output-kwargs"] = json.dumps(rest, sort_keys=True)
    ocfg = dict(optimizer.config())
    ocfg["schedule"] = optimizer.schedule.spec()
    config["optimizer"] = {"optimizer": optimizer.name,
                           **option_table(type(optimizer).OPTIONS, ocfg)}
    engine_values = {"device": engine.device_asked, "dtype": engine.dtype.name, "seed": engine.seed}
    train_values = dict(training or {})
    table = option_table(ENGINE_OPTIONS, engine_values)
    table.update(option_table([o for o in TRAIN_OPTIONS if o.name != "run_dir"], train_values,
                              train_values))
    table.update(dict(extra or {}))
    config["training"] = table
    return config


CONFIG_HEADER = ("The resolved options of this run: `engine train --config {path}` repeats it\n"
                 "(flags given with it override these). Options left out are at their default "
                 "\"none\".")


__all__ = ["ConfigError", "dumps", "loads", "read_config", "config_entries", "write_config", "option_table",
           "resolved_run_config", "CONFIG_HEADER"]
