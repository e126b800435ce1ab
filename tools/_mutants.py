"""Mutants of one Python source file, for tools/mutation.py.

A mutant is the whole file with one small change. The changes are mutmut's node operators
(`mutmut.mutation.mutators.mutation_operators`: arithmetic and comparison swaps, `and`/`or`,
`is`/`is not`, `in`/`not in`, number + 1, True/False, `+=` -> `=`, `x = ...` -> `x = None`,
a call argument replaced by None or dropped, string changes, ternaries forced one way) plus
three of ours that mutmut does not have:

- ``number-1``: an int or float literal minus one (mutmut only adds one);
- ``drop-statement``: a statement that only has an effect (a bare call, an in-place write
  ``a[i] = ...`` / ``a.x = ...``, an augmented assignment) replaced by ``pass``;
- ``swap-args``: two neighbouring positional arguments of a call exchanged.

We apply mutmut's operators ourselves instead of running mutmut, because mutmut 3 puts every
mutated function behind a Python "trampoline" and therefore skips every decorated function:
the numba kernels of engine/backend/cpu_*.py would never be mutated, and a trampoline cannot be
called from nopython code anyway. Here a mutant is plain source, so a jitted function is
mutated and recompiled like any other.

What is never mutated (changes there are noise, not bugs a test should catch): code outside a
function body (imports, module and class constants), decorators, annotations, parameter
defaults, docstrings and other bare string statements, `raise` statements and `warnings.warn`
calls (error messages), the calls `len(...)` and `isinstance(...)` (as in mutmut), and any line
carrying ``# pragma: no mutate``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

try:
    from mutmut.mutation.mutators import mutation_operators as MUTMUT_OPERATORS
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("tools/mutation.py needs mutmut (pip install 'mutmut>=3'): "
                      "it uses mutmut's mutation operators") from exc

NEVER_CALLED = {"len", "isinstance"}
PRAGMA = "pragma: no mutate"


def _number_minus_one(node):
    if isinstance(node, (cst.Integer, cst.Float)):
        value = node.evaluated_value - 1
        if isinstance(node, cst.Integer) and value < 0:
            # "-1" as a literal is a UnaryOperation; a negative Integer node would not render.
            yield cst.UnaryOperation(operator=cst.Minus(), expression=cst.Integer(str(-value)))
        elif isinstance(node, cst.Float) and value < 0:
            yield cst.UnaryOperation(operator=cst.Minus(), expression=cst.Float(repr(-value)))
        else:
            yield node.with_changes(value=repr(value))


def _effect_only(stmt):
    """True for a statement that exists only for its effect (removing it cannot be a NameError)."""
    if isinstance(stmt, cst.Expr):
        return isinstance(stmt.value, cst.Call)
    if isinstance(stmt, cst.AugAssign):
        return True
    if isinstance(stmt, cst.Assign):
        return all(isinstance(t.target, (cst.Subscript, cst.Attribute)) for t in stmt.targets)
    return False


def _drop_statement(node):
    if len(node.body) == 1 and _effect_only(node.body[0]):
        yield node.with_changes(body=[cst.Pass()])


def _swap_args(node):
    args = list(node.args)
    for i in range(len(args) - 1):
        a, b = args[i], args[i + 1]
        if a.star or b.star or a.keyword is not None or b.keyword is not None:
            continue
        swapped = args[:i] + [a.with_changes(value=b.value), b.with_changes(value=a.value)] + args[i + 2:]
        yield node.with_changes(args=swapped)


# (node type, operator name, operator): ours after mutmut's
OPERATORS = [(t, "mutmut:" + op.__name__.replace("operator_", ""), op) for t, op in MUTMUT_OPERATORS] + [
    (cst.BaseNumber, "number-1", _number_minus_one),
    (cst.SimpleStatementLine, "drop-statement", _drop_statement),
    (cst.Call, "swap-args", _swap_args),
]


@dataclass
class Candidate:
    """One change, not yet rendered: `original` replaced by `mutated` in the parsed file."""
    path: str
    index: int          # order of generation in the file: with `path`, the mutant's id
    line: int
    operator: str
    original: cst.CSTNode
    mutated: cst.CSTNode

    @property
    def id(self):
        return f"{self.path}:{self.index}"


@dataclass
class Mutant:
    id: str
    path: str
    line: int
    operator: str
    diff: str           # "- old line\n+ new line" (the changed lines only)
    code: str           # the whole mutated file


class _Collector(cst.CSTVisitor):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, path, pragma_lines):
        super().__init__()
        self.path = path
        self.pragma_lines = pragma_lines
        self.functions = 0        # depth of FunctionDef nesting
        self.skipped = []         # stack of nodes whose subtree is not mutated
        self.candidates = []

    def _skip_subtree(self, node):
        if isinstance(node, (cst.Decorator, cst.Annotation, cst.Raise, cst.Param)):
            return True
        if isinstance(node, cst.SimpleStatementLine) and len(node.body) == 1 \
                and isinstance(node.body[0], cst.Expr) \
                and isinstance(node.body[0].value, (cst.BaseString,)):
            return True        # docstrings and bare strings
        if isinstance(node, cst.Call):
            f = node.func
            if isinstance(f, cst.Name) and f.value in NEVER_CALLED:
                return True
            if isinstance(f, cst.Attribute) and f.attr.value == "warn" \
                    and isinstance(f.value, cst.Name) and f.value.value == "warnings":
                return True
        return False

    def on_visit(self, node):
        if self._skip_subtree(node):
            # a FunctionDef's Params are skipped, its body is not: Param is the only
            # FunctionDef child listed above, so nothing below a body is lost here.
            return False
        if isinstance(node, cst.FunctionDef):
            self.functions += 1
            return True
        if self.functions == 0:
            return True
        pos = self.get_metadata(PositionProvider, node, None)
        line = pos.start.line if pos else 0
        if line in self.pragma_lines:
            return True
        for node_type, name, op in OPERATORS:
            if isinstance(node, node_type):
                for mutated in op(node):
                    self.candidates.append(Candidate(self.path, len(self.candidates), line,
                                                     name, node, mutated))
        return True

    def on_leave(self, original_node):
        if isinstance(original_node, cst.FunctionDef):
            self.functions -= 1


def candidates(path, source):
    """Every change the operators offer for `source` (the text of the file at `path`),
    in a fixed order. Returns (module, [Candidate]); render one with `render`."""
    module = cst.parse_module(source)
    pragma_lines = {i + 1 for i, text in enumerate(source.splitlines()) if PRAGMA in text}
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
    collector = _Collector(path, pragma_lines)
    wrapper.visit(collector)
    return module, collector.candidates


def render(module, candidate):
    """The Mutant of `candidate`, or None when it is no change at all or not valid Python."""
    source = module.code
    code = module.deep_replace(candidate.original, candidate.mutated).code
    if code == source:
        return None
    try:
        compile(code, candidate.path, "exec")
    except SyntaxError:
        return None
    before, after = source.splitlines(), code.splitlines()
    lines = [l for l in difflib.unified_diff(before, after, lineterm="", n=0)
             if l[:1] in "-+" and not l.startswith(("---", "+++"))]
    diff = "\n".join(l[0] + " " + l[1:].strip() for l in lines)
    return Mutant(candidate.id, candidate.path, candidate.line, candidate.operator, diff, code)
