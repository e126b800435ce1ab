"""tools/_bench_harness.py and the round-robin timer of tools/_bench_common.py, with stand-in
runners: checks that can fail, methods that are not timed after failing, round-robin order,
groups that fit in memory, and out-of-memory methods."""
import math
import types

import numpy
import pytest

from toolrun import load_tool

bc = load_tool("_bench_common")
harness = load_tool("_bench_harness")


def test_round_robin_order_repeats_and_warmup():
    calls = []
    fns = {name: (lambda name=name: calls.append(name), lambda: calls.append("sync"))
           for name in ("a", "b", "c")}
    timings = bc.time_round_robin(fns, {"a": 3, "b": 1, "c": 2}, {"a": 1, "b": 0, "c": 2})
    work = [c for c in calls if c != "sync"]
    assert work == ["a", "c", "c"] + ["a", "b", "c", "a", "c", "a"]     # warm-up, then rounds
    assert {k: len(t.times_ms) for k, t in timings.items()} == {"a": 3, "b": 1, "c": 2}
    assert all(t.min_ms <= t.median_ms for t in timings.values())


def test_compare_relative_errors_allowances_and_failures():
    ref = harness.Reference({"loss": 2.0, "g": numpy.array([1.0, -4.0]), "u": numpy.array([1e-3, 0.0])},
                            allowances={"u": 1e-4})
    tol = {"loss": 1e-3, "g": 1e-3, "u": 1e-3}
    ok = harness.compare({"loss": 2.001, "g": numpy.array([1.0, -4.002]),
                          "u": numpy.array([1.05e-3, 5e-5])}, ref, tol)
    assert ok.ok and math.isclose(ok.errors["loss"], 5e-4) and math.isclose(ok.errors["g"], 5e-4)
    assert ok.errors["u"] == 0.0                        # within the allowance: rounding only
    assert ok.fields()["check"] == "ok" and ok.error == max(ok.errors.values())
    bad = harness.compare({"loss": 2.01, "g": numpy.array([1.0, numpy.nan]),
                           "u": numpy.array([1.2e-3, 0.0])}, ref, tol)
    assert not bad.ok and bad.fields()["check"] == "failed"
    assert math.isclose(bad.errors["u"], 0.1) and bad.errors["g"] == math.inf
    assert len(bad.problems) == 3
    shape = harness.compare({"loss": 2.0, "g": numpy.zeros(3), "u": numpy.zeros(2)}, ref, tol)
    assert not shape.ok and shape.errors["g"] == math.inf
    missing = harness.compare({"loss": 2.0}, ref, tol)
    assert not missing.ok and "g: not produced" in missing.describe()
    gap = harness.compare({}, harness.Reference({}, errors={"selection": 0.5}), {"selection": 0.1})
    assert not gap.ok and gap.errors == {"selection": 0.5}


class FakeRunner(harness.Runner):
    """A method whose first step yields `value`; counts its steps."""

    def __init__(self, method, value, log, size=100):
        self.method, self.value, self.log, self.size = method, value, log, size
        self.a = numpy.zeros(size)

    def step(self):
        self.log.append(self.method)

    def check_values(self):
        return {"loss": float(self.value)}

    def held_arrays(self):
        return [self.a]

    def meters(self, rss=False):
        return [load_tool("_bench_memory").TracemallocPeak()]


def _args(**kw):
    return types.SimpleNamespace(repeats=2, warmup=1, memory="inproc", **kw)


def _env():
    from engine.backend import get_backend
    return dict(backend=get_backend("cpu"), device="cpu", torch=None)


def test_run_methods_times_only_what_passed_its_check(capsys):
    log = []
    values = {"good": 1.0, "wrong": 1.5, "also-good": 1.0000001}
    res = harness.run_methods(list(values), lambda m: FakeRunner(m, values[m], log),
                              lambda runner, v: harness.Reference({"loss": 1.0}), {"loss": 1e-6},
                              _args(), _env(), label="cfg")
    assert res["wrong"]["check"] == "failed" and res["wrong"]["ms"] is None
    assert res["wrong"]["timed_with"] is None and res["wrong"]["peak_bytes"] is None
    for m in ("good", "also-good"):
        assert res[m]["check"] == "ok" and res[m]["repeats"] == 2 and res[m]["ms"] >= 0
        assert res[m]["timed_with"] == ["good", "also-good"] and res[m]["resident_bytes"] == 800
        assert res[m]["peak_method"] == "tracemalloc" and res[m]["loss"] == values[m]
    # first steps, then warm-up, then the rounds interleaved, then one step each for memory
    assert log == ["good", "wrong", "also-good", "good", "also-good", "good", "also-good",
                   "good", "also-good", "good", "also-good"]
    printed = capsys.readouterr().out
    assert "CORRECTNESS FAILURE, not timed: cfg wrong" in printed
    rows = [dict(r, name=m) for m, r in res.items()]
    assert harness.report_failures(rows, lambda r: r["name"]) == 1


def test_run_methods_groups_by_memory_and_skips_what_cannot_fit(monkeypatch):
    monkeypatch.setattr(harness.bm, "available_memory", lambda backend: 1000)
    log = []
    need = {"a": 500, "b": 500, "c": 2000}
    res = harness.run_methods(["a", "b", "c"], lambda m: FakeRunner(m, 1.0, log),
                              lambda runner, v: harness.Reference({"loss": 1.0}), {"loss": 1e-9},
                              _args(), _env(), estimate=lambda m: need[m])
    assert res["a"]["timed_with"] == ["a"] and res["b"]["timed_with"] == ["b"]   # 900 bytes budget
    assert res["c"]["skipped"].startswith("needs about") and res["c"]["check"] == "skipped"


def test_run_methods_out_of_memory_is_a_skip_other_errors_propagate():
    def build(method):
        if method == "oom":
            raise MemoryError("no room")
        if method == "bug":
            raise ValueError("a real error")
        return FakeRunner(method, 1.0, [])

    ref = lambda runner, v: harness.Reference({"loss": 1.0})     # noqa: E731
    res = harness.run_methods(["ok", "oom"], build, ref, {"loss": 1e-9}, _args(), _env())
    assert res["oom"]["skipped"] == "out of memory (MemoryError)" and res["ok"]["check"] == "ok"
    with pytest.raises(ValueError, match="a real error"):
        harness.run_methods(["bug"], build, ref, {"loss": 1e-9}, _args(), _env())


def test_combined_fields_and_spread_rows():
    ok = dict(harness.blank_result("x"), check="ok", check_error=1e-7)
    failed = dict(harness.blank_result("y"), check="failed", check_error=0.5)
    row = harness.combined_fields({"x": ok, "y": failed}, ["x", "y"])
    assert row["check"] == "failed" and row["check_ok"] is False and row["check_error"] == 0.5
    assert row["x_check"] == "ok" and row["y_check"] == "failed"
    assert harness.combined_fields({"x": ok, "y": ok}, ["x", "y"])["check"] == "ok"
    assert list(harness.spread_rows(3)) == [0, 1, 2]
    rows = harness.spread_rows(1000)
    assert rows[0] == 0 and rows[-1] == 999 and len(rows) == 8
