"""Helpers of the tests of tools/: load a script, run its main() and read its JSON rows, check
the harness's fields, and compare golden numbers.

Golden numbers are values that a CPU run computes deterministically from a fixed seed:
float64 losses and metrics after a few steps, pinned to a relative 1e-12. Update them on
purpose only, after a deliberate change (initialisation, data order, a loss constant):

    ENGINE_UPDATE_GOLDEN=1 python -m pytest tests/tools -k golden -s

prints every golden dict as it is now (and passes); paste the printed dicts over the old ones.
Without the variable, a mismatch fails and its message holds the new dict too.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, "tools")
GOLDEN_RTOL = 1e-12


def load_tool(name):
    """tools/<name>.py as a fresh module (tools/ on sys.path for its helper modules)."""
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    if name.startswith("_"):             # helper modules: the one copy the scripts use too
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_importable():
    try:
        import torch  # noqa: F401
        return True
    except Exception:        # ImportError, or a broken install
        return False


def run_tool(module, argv, tmp_path, capsys, status=0):
    """Run module.main(argv + --json), check its exit status; (rows, printed output)."""
    path = tmp_path / f"{module.__name__}-rows.json"
    if path.exists():
        path.unlink()
    assert module.main(list(argv) + ["--json", str(path)]) == status
    return json.loads(path.read_text()), capsys.readouterr().out


def assert_checked(row, prefix=""):
    """The harness checked the row's first step: "ok", every quantity's error within its
    tolerance, and timed."""
    p = prefix
    assert row[f"{p}check"] == "ok", row
    errors = row[f"{p}check_errors"]
    tolerances = row.get(f"{p}check_tolerances") or row["check_tolerances"]
    assert set(errors) == set(tolerances), (errors, tolerances)
    for key, err in errors.items():
        assert err is not None and 0.0 <= err <= tolerances[key], (key, err, tolerances[key])
    assert math.isclose(row[f"{p}check_error"], max(errors.values()), rel_tol=0, abs_tol=0)


def assert_golden(name, actual, expected, rtol=GOLDEN_RTOL):
    """actual == expected ({key: number}) to `rtol` (integers and strings exactly); see the
    module docstring for the update procedure."""
    if os.environ.get("ENGINE_UPDATE_GOLDEN"):
        print(f"\n{name} = {actual!r}", file=sys.__stdout__, flush=True)
        return
    message = f"golden numbers of {name} changed; new values:\n{name} = {actual!r}"
    assert set(actual) == set(expected), message
    for key, want in expected.items():
        got = actual[key]
        if isinstance(want, float):
            assert got is not None and math.isclose(got, want, rel_tol=rtol, abs_tol=0.0), \
                f"{key}: {got!r} != {want!r}\n{message}"
        else:
            assert got == want, f"{key}: {got!r} != {want!r}\n{message}"


# ---------------------------------------------------------------------------- test-side formulas
# Written here again on purpose, independently of tools/_references.py and of engine/.
def logsumexp_rows(z):
    m = z.max(axis=1, keepdims=True)
    return (m + numpy.log(numpy.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def softmax_xent(W, b, h, t):
    """Mean cross-entropy of softmax(h W^T + b), float64."""
    z = numpy.asarray(h, numpy.float64) @ numpy.asarray(W, numpy.float64).T
    if b is not None:
        z = z + numpy.asarray(b, numpy.float64)
    return float(numpy.mean(logsumexp_rows(z) - z[numpy.arange(len(t)), t]))


def adaptive_xent(P, cutoffs, D, h, t):
    """Mean -log p of the adaptive softmax, float64, one row at a time (P: head_W, head_b,
    proj{i}_W, out{i}_W as the engine names them)."""
    P = {k: numpy.asarray(v, numpy.float64) for k, v in P.items()}
    bounds = list(cutoffs) + [D]
    total = 0.0
    for x, w in zip(numpy.asarray(h, numpy.float64), t):
        head = P["head_W"] @ x + P.get("head_b", 0.0)
        head = head - logsumexp_rows(head[None, :])[0]
        if w < cutoffs[0]:
            total -= head[w]
            continue
        i = max(j for j in range(len(cutoffs)) if w >= bounds[j])
        tail = P[f"out{i}_W"] @ (P[f"proj{i}_W"] @ x)
        total -= head[cutoffs[0] + i] + tail[w - bounds[i]] - logsumexp_rows(tail[None, :])[0]
    return float(total / len(t))
