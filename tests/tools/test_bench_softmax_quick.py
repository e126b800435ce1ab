"""tools/bench_softmax.py on its hidden --tiny grid (B=8, d=16, D=100), CPU.

Not a performance test. Checks the rows and the printed table, that every method's first step
passed the harness's check against the float64 reference, the first-step losses against a loss
computed here, and the golden float64 loss. A planted bug must fail the check, and then the
method is not timed and the exit status is 1. The variant without PyTorch also takes the
default memory path (a fresh process per method); the one with PyTorch measures in-process.
"""
import math
import sys

import numpy
import pytest

from toolrun import (assert_checked, assert_golden, load_tool, logsumexp_rows, run_tool,
                     softmax_xent, torch_importable)

REQUIRED = ("B", "D", "d", "device", "method", "ms", "peak_bytes", "resident_bytes", "floor_ms",
            "chunk_size", "loss", "reference_loss", "check", "check_error", "timed_with")
# To update on purpose: ENGINE_UPDATE_GOLDEN=1 python -m pytest tests/tools -k golden -s prints
# the new dicts; paste them here.
# float64 loss of the first step, B=8 D=100 d=16 seed 0
GOLDEN_TINY = {"reference_loss": 4.573219211351019}


def _reference_loss(bench):
    h, t = bench.make_data(8, 100, 16, 25, 0)
    return softmax_xent(bench.make_W0(100, 16, 0), None, h, t)


@pytest.mark.parametrize("use_torch", [True, False], ids=["with-torch-if-importable", "torch-missing"])
def test_bench_softmax_tiny(tmp_path, capsys, monkeypatch, use_torch):
    bench = load_tool("bench_softmax")
    argv = ["--device", "cpu", "--tiny"]
    if use_torch:
        argv += ["--memory", "inproc"]
    else:
        monkeypatch.setitem(sys.modules, "torch", None)      # `import torch` raises ImportError
    rows, printed = run_tool(bench, argv, tmp_path, capsys)
    expected = ["ours", "ours-chunked-unfused", "ours-chunked"]
    if use_torch and torch_importable():
        expected = ["torch"] + expected
    else:
        assert "NOTE: no PyTorch rows" in printed
    assert [r["method"] for r in rows] == expected
    ref_loss = _reference_loss(bench)
    for r in rows:
        for key in REQUIRED:
            assert key in r, (key, r)
        assert (r["B"], r["D"], r["d"], r["device"]) == (8, 100, 16, "cpu")
        assert r["skipped"] is None
        assert_checked(r)
        assert set(r["check_errors"]) == {"loss", "dh", "W_update", "b_update"}
        assert math.isclose(r["reference_loss"], ref_loss, rel_tol=1e-12)
        assert math.isclose(r["loss"], ref_loss, rel_tol=1e-5)       # the float32 first step
        assert r["ms"] > 0 and r["repeats"] == 1 and r["timed_with"] == expected
        assert isinstance(r["peak_bytes"], int) and r["peak_bytes"] >= 0
        assert r["resident_bytes"] >= 100 * 16 * 4          # at least W
        assert 0 < r["floor_ms"] < r["ms"] * 10
        if r["method"].startswith("ours-chunked"):
            assert 1 <= r["chunk_size"] < 100
            assert r["flops"] == 8 * 8 * 100 * 16
        else:
            assert r["chunk_size"] is None
            assert r["flops"] == 6 * 8 * 100 * 16
    by = {r["method"]: r for r in rows}
    if use_torch:
        assert by["ours"]["peak_method"] == "tracemalloc"
        if "torch" in by:
            assert by["torch"]["peak_method"] == "estimated"
    else:
        assert {r["peak_method"] for r in rows} == {"rss-hwm"}     # each in a fresh process
    # the fused chunked step keeps no gradient between steps: less resident than the unfused one
    assert by["ours-chunked"]["resident_bytes"] < by["ours-chunked-unfused"]["resident_bytes"]
    # the table is the last thing printed and names every method
    tail = printed.strip().splitlines()
    assert tail[-1].split()[3] == expected[-1] and tail[-1].split()[-1] == "ok"
    for method in expected:
        assert any(line.split()[3:4] == [method] for line in tail[-len(expected):])


def test_bench_softmax_golden():
    """The float64 first-step loss of the tiny grid, from the seeded data and initial W."""
    assert_golden("GOLDEN_TINY", {"reference_loss": _reference_loss(load_tool("bench_softmax"))},
                  GOLDEN_TINY)


def test_bench_softmax_refuses_to_time_a_wrong_method(tmp_path, capsys, monkeypatch):
    """A bug planted in one method (its bias update 1% too large) fails its check: that row is
    "failed" and not timed, the others are timed, the exit status is 1."""
    bench = load_tool("bench_softmax")
    step = bench.OursSoftmax.step

    def wrong_step(self):
        step(self)
        if self.method == "ours-chunked":
            self.out.params["b"] *= 1.01

    monkeypatch.setattr(bench.OursSoftmax, "step", wrong_step)
    rows, printed = run_tool(bench, ["--device", "cpu", "--tiny", "--no-torch", "--memory", "inproc"],
                             tmp_path, capsys, status=1)
    by = {r["method"]: r for r in rows}
    bad = by["ours-chunked"]
    assert bad["check"] == "failed" and bad["check_ok"] is False
    assert bad["check_errors"]["b_update"] > bad["check_tolerances"]["b_update"]
    assert bad["ms"] is None and bad["peak_bytes"] is None and bad["timed_with"] is None
    for m in ("ours", "ours-chunked-unfused"):
        assert_checked(by[m])
        assert by[m]["ms"] > 0
    assert "CORRECTNESS FAILURE" in printed and printed.strip().splitlines()[-1].endswith("FAILED")


def test_default_chunk_rule():
    bench = load_tool("bench_softmax")
    assert bench.default_chunk(4096, 793471) == 4096          # 4096 x 4096 x 4 B = 64 MiB
    assert bench.default_chunk(256, 793471) == 65536           # capped
    assert bench.default_chunk(256, 10000) == 2500             # covers D: D / 4
    assert bench.default_chunk(8, 100) == 25


def test_reference_step_matches_numpy_formula(monkeypatch):
    """tools/_references.softmax_sgd_step against the plain formula here, blocks included."""
    refs = load_tool("_references")
    rng = numpy.random.default_rng(3)
    B, D, d, lr = 5, 37, 4, 0.5
    W, b = rng.standard_normal((D, d)), rng.standard_normal(D)
    h, t = rng.standard_normal((B, d)), rng.integers(0, D, B)
    rows = numpy.array([0, 3, t[0], D - 1])
    monkeypatch.setattr(refs, "BLOCK_BYTES", 8 * B * 10)        # blocks of 10 classes
    out = refs.softmax_sgd_step(numpy, W, b, h, t, lr, rows)
    z = h @ W.T + b
    P = numpy.exp(z - logsumexp_rows(z)[:, None])
    G = P.copy()
    G[numpy.arange(B), t] -= 1
    G /= B
    assert math.isclose(out["loss"], softmax_xent(W, b, h, t), rel_tol=1e-13)
    numpy.testing.assert_allclose(out["dh"], G @ W, rtol=1e-12)
    numpy.testing.assert_allclose(out["W_update"], -lr * (G.T @ h)[rows], rtol=1e-12)
    numpy.testing.assert_allclose(out["b_update"], -lr * G.sum(axis=0), rtol=1e-12)

