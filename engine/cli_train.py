"""`engine train`: its flags, built from the option declarations, and the run they describe.

Where the flags come from (engine/options.py): every model (engine/models), output layer
(engine/outputs, the OUTPUTS table) and optimizer (engine/optim, OPTIMIZERS) declares its
constructor's options in `OPTIONS`; the training options are declared in
engine/train_options.py. A flag several owners declare (`--hidden`, `--init-scale`, `--lr`) is
one flag; its value goes to whichever owner the run uses.

How a run is resolved:
  1. argparse keeps only the flags given (every default is suppressed); `--config F.toml` adds
     its keys for the flags not given (engine/config.py);
  2. the dataset is described once (engine.data.registry.describe -> DatasetInfo), which
     decides the model kind; then the output (given, or the model's default for the data)
     and the optimizer;
  3. a given flag that none of the chosen owners declares, or whose `when` condition fails,
     is refused with one line naming it and why (exit status 2), as is a value that fails its
     owner's check;
  4. the model is built by engine/models/build.py from the DatasetInfo, the optimizer by name,
     and Engine.train gets the DatasetInfo (no file is opened again to decide its kind).
With `--resume`, options marked resumable are applied and logged; the others must equal the
checkpoint's values or the run is refused with one line listing them.
"""
from __future__ import annotations

import argparse
import os
from collections import namedtuple

from .options import MISSING, OptionError, constructor_kwargs, run_values

#: role: "run" (engine train's own), "model", "output", "optimizer", "engine", "train"
Owner = namedtuple("Owner", "role name options")

ROLE_FLAG = {"model": "--model", "output": "--output", "optimizer": "--optimizer"}


# ---------------------------------------------------------------------------- declarations
def owners():
    """Every option owner, in help order."""
    from .models import MODELS
    from .optim import OPTIMIZERS
    from .outputs import OUTPUTS
    from .train_options import COMMAND_LINE_ONLY, ENGINE_OPTIONS, RUN_OPTIONS, TRAIN_OPTIONS
    return ([Owner("run", None, RUN_OPTIONS + COMMAND_LINE_ONLY)]
            + [Owner("model", kind, cls.OPTIONS) for kind, cls in MODELS.items()]
            + [Owner("output", name, cls.OPTIONS) for name, cls in OUTPUTS.items()]
            + [Owner("optimizer", name, cls.OPTIONS) for name, cls in OPTIMIZERS.items()]
            + [Owner("engine", None, ENGINE_OPTIONS), Owner("train", None, TRAIN_OPTIONS)])


def flag_table(all_owners=None):
    """{dest: [(owner, option), ...]} over every declaration; dest = the flag without dashes.
    Declarations sharing a flag must parse alike (checked here: a programming error)."""
    table = {}
    for owner in all_owners or owners():
        for o in owner.options:
            entries = table.setdefault(o.dest, [])
            if entries:
                first = entries[0][1]
                if (first.switch, first.many, first.parse) != (o.switch, o.many, o.parse):
                    raise TypeError(f"{o.flag}: declared with different kinds by "
                                    f"{_label(entries[0][0])} and {_label(owner)}")
            entries.append((owner, o))
    return table


def _label(owner):
    return f"{owner.role} {owner.name}" if owner.name else owner.role


def _technique(output_name):
    if output_name.startswith("factored-"):
        return "factored-*"
    if output_name.endswith("-dense"):
        return "*-dense"
    if output_name in ("squared-hinge", "bce"):
        return "squared-hinge, bce"
    return output_name


_TITLES = {"*-dense and factored-*": "factored-* and *-dense (the spherical-family losses)",
           "squared-hinge, bce": "squared-hinge, bce (multi-label; dense or fixed fan-in "
                                 "weights)",
           "factored-*": "factored-* (the exact factored layer)"}


def _help_groups(table):
    """[(title, [dest, ...])] for `engine train --help`: data, model, one group per output
    technique, options several outputs share, optimizer, training."""
    groups = {"data": [], "model": [], "optimizer": [], "training": []}
    outputs = {}
    for dest, entries in table.items():
        roles = {owner.role for owner, _ in entries}
        if dest in ("data", "config", "resume"):
            groups["data"].append(dest)
        elif dest in ("model",) or roles == {"model"}:
            groups["model"].append(dest)
        elif dest == "optimizer" or roles == {"optimizer"}:
            groups["optimizer"].append(dest)
        elif roles == {"output"}:
            techniques = sorted({_technique(owner.name) for owner, _ in entries})
            key = (" and ".join(techniques) if len(techniques) == 1 or
                   set(techniques) == {"factored-*", "*-dense"} else "several outputs")
            outputs.setdefault(key, []).append(dest)
        else:
            groups["training"].append(dest)
    out = [("data", groups["data"]), ("model (mlp-lm: a language-model corpus as --data; "
                                      "mlp-classifier: a classification file)", groups["model"])]
    shared = outputs.pop("several outputs", [])
    for key, dests in outputs.items():
        out.append((f"--output {_TITLES.get(key, key)}", dests))
    if shared:
        out.append(("options several outputs share", shared))
    out += [("optimizer", groups["optimizer"]), ("training", groups["training"])]
    return out


def _flag_help(entries):
    first = entries[0][1]
    text = first.help or next((o.help for _, o in entries if o.help), "")
    defaults = {}
    for owner, o in entries:
        if o.describe_default() != "none":
            defaults.setdefault(o.describe_default(), []).append(owner.name or "")
    if len(defaults) == 1 and len(next(iter(defaults.values()))) == len(entries):
        text += f" (default: {next(iter(defaults))})"
    elif defaults:
        text += " (default: " + "; ".join(f"{', '.join(n for n in names if n)} {value}"
                                          for value, names in defaults.items()) + ")"
    techniques = {_technique(owner.name) for owner, _ in entries if owner.role == "output"}
    if len(techniques) > 1 and techniques != {"factored-*", "*-dense"}:
        text += " [outputs: " + ", ".join(owner.name for owner, _ in entries) + "]"
    return text.replace("%", "%%")


def add_train_arguments(parser):
    """All of `engine train`'s flags, grouped, every default suppressed."""
    table = flag_table()
    for title, dests in _help_groups(table):
        group = parser.add_argument_group(title)
        for dest in dests:
            entries = table[dest]
            o = entries[0][1]
            kw = dict(dest=dest.replace("-", "_"), default=argparse.SUPPRESS,
                      help=_flag_help(entries))
            if o.switch:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["metavar"] = o.metavar or ("{" + ",".join(map(str, o.choices)) + "}"
                                              if o.choices else dest.upper().replace("-", "_"))
                if o.many:
                    kw["nargs"] = "*"
            group.add_argument(o.flag, **kw)
    return parser


# ------------------------------------------------------------------------------- values
def given_values(args, table):
    """{dest: raw value} of the flags given on the command line."""
    given = vars(args)
    return {dest: given[dest.replace("-", "_")] for dest in table
            if dest.replace("-", "_") in given}


def config_values(path, table):
    """{dest: raw value} of a config file, its keys checked (one line for an unknown one)."""
    import difflib

    from .config import config_entries
    values = {}
    known = [d for d in table if d != "config"]
    for key, dest, value in config_entries(path):
        if dest.startswith("no-") and dest[3:] in table and table[dest[3:]][0][1].switch:
            dest, value = dest[3:], _negate(path, key, value)
        if dest not in known:
            close = difflib.get_close_matches(dest, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise OptionError(f"{path}: unknown key {key!r}{hint}; the keys are engine train's "
                              f"flags without their dashes (engine train --help)")
        values[dest] = value
    return values


def _negate(path, key, value):
    if not isinstance(value, bool):
        raise OptionError(f"{path}: {key} must be true or false, got {value!r}")
    return not value


def parse_values(raw, table):
    """{dest: value}: each raw value parsed by its flag's declaration and refused when no
    declaration of the flag accepts it (before the data is read; the owner the run uses checks
    again in plan_for). One OptionError line naming every bad value."""
    values, problems = {}, []
    for dest, value in raw.items():
        try:
            values[dest] = table[dest][0][1].parse_value(value)
            errors = []
            for _, o in table[dest]:
                try:
                    o.validate(values[dest])
                    break
                except OptionError as exc:
                    errors.append(str(exc))
            else:
                problems.append(errors[0])
        except OptionError as exc:
            problems.append(str(exc))
    if problems:
        raise OptionError("; ".join(problems))
    return values


# ------------------------------------------------------------------- which flags apply
class Plan:
    """The chosen owners and, per role, {option name: value} of the flags given."""

    def __init__(self, chosen, values):
        self.chosen = chosen            # role -> Owner
        self.values = values            # role -> {option name: value}


def _not_applicable(dest, entries, chosen):
    """"--x applies to --output a, b, not to c": the owners of the first role declaring it."""
    role = next(r for r in ROLE_FLAG if any(owner.role == r for owner, _ in entries))
    names = [owner.name for owner, _ in entries if owner.role == role]
    return f"--{dest} applies to {ROLE_FLAG[role]} {', '.join(names)}, not to {chosen[role].name}"


def _when_message(o, owner_options, values):
    other, allowed = o.when
    flag = next(x.flag for x in owner_options if x.name == other)
    if allowed == "*":
        return f"{o.flag} applies with {flag}"
    got = values.get(other)
    shown = ",".join(map(str, got)) if isinstance(got, list) else got
    return f"{o.flag} applies with {flag} {' or '.join(map(str, allowed))}, not {shown}"


def plan_for(values, table, chosen):
    """Split the given values among the chosen owners; OptionError (one line) naming every
    flag that does not apply or fails its owner's check."""
    per_role = {role: {} for role in chosen}
    problems = []
    for dest, value in values.items():
        entries = table[dest]
        hits = [(owner, o) for owner, o in entries if chosen.get(owner.role) is owner]
        if not hits:
            problems.append(_not_applicable(dest, entries, chosen))
            continue
        for owner, o in hits:
            per_role[owner.role][o.name] = value
    for role, given in per_role.items():
        options = chosen[role].options
        resolved = run_values(options, given)
        for o in options:
            if o.name not in given:
                continue
            if not o.applies(resolved):
                problems.append(_when_message(o, options, resolved))
                continue
            try:
                o.validate(given[o.name])
            except OptionError as exc:
                problems.append(str(exc))
    if problems:
        raise OptionError("; ".join(problems))
    return Plan(chosen, per_role)


def choose_owners(values, info, table):
    """The owners this run uses: the model for the data, its output, the optimizer."""
    from .models.build import model_class_for, output_for
    all_owners = {(owner.role, owner.name): owner for entries in table.values()
                  for owner, _ in entries}
    model_cls = model_class_for(info, values.get("model"))
    output = output_for(info, model_cls, values.get("output"))
    optimizer = values.get("optimizer", "adam")
    return {"run": all_owners[("run", None)], "model": all_owners[("model", model_cls.kind)],
            "output": all_owners[("output", output)],
            "optimizer": all_owners[("optimizer", optimizer)],
            "engine": all_owners[("engine", None)], "train": all_owners[("train", None)]}


# ------------------------------------------------------------------------------- building
def build_engine(plan, info, comm=None):
    """Model, optimizer and Engine of a fresh run (`comm`: Engine's, None in one process)."""
    from .engine import Engine
    from .models.build import build_model_for
    from .optim import make_optimizer
    model_opts = dict(plan.values["model"])
    out_kw = constructor_kwargs(plan.chosen["output"].options, plan.values["output"])
    extra = dict(model_opts.pop("output_kwargs", None) or {})
    both = sorted(set(out_kw) & set(extra))
    for key in both:
        if isinstance(out_kw[key], dict) and isinstance(extra[key], dict):
            clash = sorted(set(out_kw[key]) & set(extra[key]))
            if clash:
                raise OptionError(f"--output-kwargs: {key} {clash} also given as flags")
            extra[key] = {**extra[key], **out_kw.pop(key)}
        else:
            flag = next(o.flag for o in plan.chosen["output"].options if o.keyword == key)
            raise OptionError(f"--output-kwargs: {key!r} is also given as {flag}")
    model_opts["output"] = plan.chosen["output"].name
    model_opts["output_kwargs"] = {**extra, **out_kw}
    train = training_values(plan.values["train"])
    engine_vals = run_values(plan.chosen["engine"].options, plan.values["engine"])
    try:
        model = build_model_for(info, model_opts, batch_size=train["batch_size"],
                                seed=engine_vals["seed"])
        optimizer = make_optimizer(plan.chosen["optimizer"].name, **constructor_kwargs(
            plan.chosen["optimizer"].options, plan.values["optimizer"]))
    except TypeError as exc:            # a value of the wrong type in --output-kwargs
        raise OptionError(f"{exc}") from None
    return Engine(model, optimizer, **engine_vals, comm=comm)


def training_values(given):
    from .train_options import TRAIN_OPTIONS
    return run_values(TRAIN_OPTIONS, given)


# ------------------------------------------------------------------------------- resuming
def resume_engine(values, info, table, comm=None):
    """The checkpoint's engine with the resumable options applied; OptionError listing the
    given options that would change what a checkpoint fixes. Returns (engine, changes): one
    "--flag old -> new" per changed value (a new batch size: Engine.train logs it).
    `comm`: Engine's (None in one process; a sharded checkpoint is then merged in memory)."""
    from .config import read_config, resolved_run_config
    from .engine import Engine
    from .optim import make_schedule
    problems = []
    for dest, value in values.items():
        try:
            table[dest][0][1].validate(value)
        except OptionError as exc:
            problems.append(str(exc))
    if problems:
        raise OptionError("; ".join(problems))
    path = values["resume"]
    # quiet while deciding: a refused resume prints its one error line and nothing else
    engine = Engine.from_checkpoint(path, device=values.get("device", "auto"), verbose=False,
                                    comm=comm)
    engine.verbose = True
    engine.check_data(info)
    before = {}
    for name, entries in resolved_run_config(engine, info).items():
        if name != "training":
            before.update(entries)
    before.update({"dtype": engine.dtype.name, "seed": engine.seed})
    if engine.batch_size is not None:
        before["batch-size"] = engine.batch_size
    previous = {}
    run_config = os.path.join(os.path.dirname(os.path.abspath(path)), "config.toml")
    if os.path.exists(run_config):
        try:
            previous = read_config(run_config)
        except ValueError:
            previous = {}
    fixed, changes = [], []
    data = os.path.abspath(info.path)
    if isinstance(previous.get("data"), str) and previous["data"] != data:
        changes.append(f"--data {previous['data']} -> {data}")
    for dest, value in values.items():
        if dest in ("resume", "config", "data", "batch-size"):     # the engine logs the batch size
            continue
        resumable = all(o.resumable for _, o in table[dest])
        old = before.get(dest, previous.get(dest, MISSING))
        if dest == "schedule":          # compare the schedules, not how they were spelled
            value = make_schedule(value).spec()
        same = old is not MISSING and _normal(old) == _normal(value)
        if not resumable:
            if not same:
                fixed.append(f"--{dest}")
            continue
        if not same and dest not in _DISPLAY:
            changes.append(f"--{dest} {_show(old)} -> {_show(value)}")
    if fixed:
        resumable = sorted(f"--{d}" for d, entries in table.items()
                           if all(o.resumable for _, o in entries) and d not in ("resume", "data"))
        raise OptionError(f"{', '.join(fixed)} cannot change when resuming (the checkpoint fixes "
                          f"the model, the optimizer's kind and the seed); resumable: "
                          f"{', '.join(resumable)}")
    opt = engine.optimizer
    for dest, value in values.items():
        if dest == "lr":
            opt.lr = float(value)
        elif dest == "weight-decay":
            opt.weight_decay = float(value)
        elif dest == "clip":
            opt.clip_norm = value
        elif dest == "schedule" and make_schedule(value).spec() != opt.schedule.spec():
            opt.schedule = make_schedule(value)          # a new schedule starts afresh
    return engine, changes


#: resumable flags that change only what is shown, not the training: not logged as changes
_DISPLAY = ("json", "progress", "test", "run-dir", "distributed")


def recorded_data(checkpoint):
    """{"data": path} from the config.toml beside a checkpoint, when it names a file that
    exists; else {} (the caller then uses its default)."""
    from .config import read_config
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "config.toml")
    try:
        data = read_config(path).get("data")
    except ValueError:
        return {}
    return {"data": data} if isinstance(data, str) and os.path.isfile(data) else {}


def _normal(value):
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)


def _show(value):
    if value is MISSING:
        return "(unset)"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


__all__ = ["owners", "flag_table", "add_train_arguments", "given_values", "config_values",
           "parse_values", "choose_owners", "plan_for", "build_engine", "resume_engine", "recorded_data",
           "training_values"]
