"""The model for a dataset: `build_model_for(info, options)`, used by `engine train` and the
paper-reproduction scripts (tools/repro_*.py).

    info = engine.data.registry.describe("ptb.h5")                   # one open of the file
    model = build_model_for(info, {"context": 5, "embed_dim": 256, "hidden": [512],
                                   "output": "adaptive", "output_kwargs": {"cutoffs": "auto"}})

`options` holds the model's constructor keywords (the names in its OPTIONS: context,
embed_dim, hidden, activation, dropout, intermediate, meprop, output, output_kwargs) and may
name the model kind (`"model": "mlp-lm" | "mlp-classifier"`, default: the one the data's kind
takes). What comes from the data is filled in here, and only here:

    language-model corpus   vocab_size; the adaptive softmax's word counts (DatasetInfo.word_counts)
    classification file     num_features, num_classes, sparse_input; the default output
                            (squared-hinge for multi-label data); the multi-label outputs'
                            training label counts and num_train (PSP@k)

An option that is not given takes the declared default of `engine train` (Option.run_default:
the small default language model, 64-wide embeddings and one hidden layer of 256), or the
training option named by `default_from` (`batch_size`, `seed` keywords of this function).
An output keyword the chosen output does not take, or an output that does not take the data's
targets, is one ValueError line.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from ..data.info import LM_CORPUS, DatasetInfo
from ..options import MISSING, constructor_kwargs
from ..outputs import OUTPUTS
from . import MODELS
from .base import Model


def model_class_for(info: DatasetInfo, kind: Optional[str] = None):
    """The model class for the data (or the named `kind`, which must take the data's kind)."""
    if kind is None:
        for cls in MODELS.values():
            if cls.data_kind == info.kind:
                return cls
        raise ValueError(f"{info.path}: no model takes {info.kind} data")
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; choose from {', '.join(MODELS)}")
    cls = MODELS[kind]
    if cls.data_kind != info.kind:
        what = "a language-model corpus" if info.kind == LM_CORPUS else "a classification file"
        raise ValueError(f"--model {kind} trains on {cls.data_kind} data, but {info.path} is {what}")
    return cls


def output_keywords(output_cls) -> Dict[str, str]:
    """{keyword: where it comes from} of what an output's constructor takes from a user:
    its declared options' keywords, and the constructor keywords that are neither declared
    nor filled by the model or the data."""
    import inspect
    known = {o.keyword: "option" for o in output_cls.OPTIONS}
    for name, p in inspect.signature(output_cls.__init__).parameters.items():
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            known.setdefault(name, "keyword")
    for name in output_cls.NOT_OPTIONS:
        known.pop(name, None)
    return known


def check_output_kwargs(output_name: str, kwargs: Mapping[str, Any], where="--output-kwargs"):
    """One ValueError line naming any key the output does not take, with the keys it does."""
    cls = OUTPUTS[output_name]
    known = output_keywords(cls)
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        raise ValueError(f"{where}: {', '.join(map(repr, unknown))} "
                         f"{'is not an argument' if len(unknown) == 1 else 'are not arguments'} "
                         f"of the {output_name} output (its keys: {', '.join(sorted(known))})")


def output_for(info: DatasetInfo, model_cls, output: Optional[str]) -> str:
    """The output's name (given, or the model's default for the data), checked against the
    data's targets (one label, or several per example)."""
    name = output or model_cls.default_output(info)
    if name not in OUTPUTS:
        raise ValueError(f"unknown output {name!r}; choose from {', '.join(OUTPUTS)}")
    need = "many" if info.multilabel else "one"
    if need not in OUTPUTS[name].TARGETS:
        fits = [n for n, c in OUTPUTS.items() if need in c.TARGETS]
        what = ("several labels per example (multi-label)" if info.multilabel
                else "one label per example")
        raise ValueError(f"--output {name} does not take {what}, which {info.path} has; "
                         f"choose from {', '.join(fits)}")
    return name


def build_model_for(info: DatasetInfo, options: Optional[Mapping[str, Any]] = None, *,
                    batch_size: int = 256, seed: int = 0) -> Model:
    """The model described by `options` for the dataset `info` (see the module docstring)."""
    options = dict(options or {})
    cls = model_class_for(info, options.pop("model", None))
    derived = {"batch_size": batch_size, "seed": seed}
    given = dict(options)
    if "meprop" in given:                      # a whole dict given: spread it over its parts
        meprop = given.pop("meprop") or {}
        for o in cls.OPTIONS:
            if o.part_of == "meprop" and o.entry in meprop:
                given[o.name] = meprop[o.entry]
    declared = {o.name for o in cls.OPTIONS}
    unknown = [k for k in given if k not in declared]
    if unknown:
        raise ValueError(f"{cls.kind}: unknown options {unknown} (known: {sorted(declared)})")
    given["output"] = output_for(info, cls, given.get("output"))
    out_kw = dict(given.pop("output_kwargs", None) or {})
    check_output_kwargs(given["output"], out_kw)
    resolved = {o.name: given[o.name] if o.name in given else
                derived[o.default_from] if o.default_from else o.run_default for o in cls.OPTIONS}
    values = {o.name: resolved[o.name] for o in cls.OPTIONS     # defaults of what applies
              if o.name in given or (o.applies(resolved) and resolved[o.name] is not None
                                     and o.name != "output_kwargs")}
    kwargs = constructor_kwargs(cls.OPTIONS, values)
    kwargs["output_kwargs"] = _output_kwargs(info, OUTPUTS[given["output"]], out_kw, derived)
    if info.kind == LM_CORPUS:
        kwargs["vocab_size"] = info.vocab_size
    else:
        kwargs.update(num_features=info.num_features, num_classes=info.num_classes,
                      sparse_input=bool(info.sparse))
    return cls(**kwargs)


def _output_kwargs(info, out_cls, given, derived):
    """The output's keywords: the given ones; for options not given that apply, the command
    line's default where it differs from the constructor's (the adaptive softmax's "auto"
    cutoffs) or the training option named by `default_from`; and the arrays it takes from
    the data."""
    kw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in given.items()}

    def given_value(o):
        if o.part_of:
            return (kw.get(o.part_of) or {}).get(o.entry, MISSING)
        return kw.get(o.name, MISSING)

    resolved = {}
    for o in out_cls.OPTIONS:
        v = given_value(o)
        resolved[o.name] = (v if v is not MISSING else
                            derived[o.default_from] if o.default_from else o.run_default)
    for o in out_cls.OPTIONS:
        if given_value(o) is not MISSING or not o.applies(resolved):
            continue
        if o.default_from or o.cli_default is not MISSING:
            if o.part_of:
                kw.setdefault(o.part_of, {})[o.entry] = resolved[o.name]
            else:
                kw[o.name] = resolved[o.name]
    for keyword, field in out_cls.FROM_DATA.items():
        value = getattr(info, field)
        if keyword not in kw and value is not None:
            kw[keyword] = value
    if kw.get("cutoffs") == "auto" and "counts" in out_cls.FROM_DATA and kw.get("counts") is None:
        raise ValueError(f"{info.path}: --cutoffs auto sizes the clusters from a language-model "
                         f"corpus's word counts, which this file has not; give the cutoffs "
                         f"(--cutoffs 4,8: increasing class ids)")
    return kw


__all__ = ["build_model_for", "model_class_for", "output_for", "output_keywords",
           "check_output_kwargs"]
