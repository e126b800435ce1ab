"""tools/bench_meprop.py on its hidden --tiny shape (h=64, B=32, k=4 and 16), CPU, unified and
per-example.

Not a performance test. Checks the fields and that both layers' first step passed the check
against the float64 reference (for meProp: the masked products with the true top-k). The
printed table is checked too. A planted off-by-one in k must fail the check.
"""
import math

import numpy

from toolrun import assert_checked, load_tool, run_tool

REQUIRED = ("h", "batch", "k", "mode", "device", "dense_backward_ms", "meprop_backward_ms",
            "dense_step_ms", "meprop_step_ms", "select_ms", "forward_ms", "check", "check_error",
            "dense_peak_bytes", "meprop_resident_bytes")


def test_bench_meprop_tiny(tmp_path, capsys):
    bench = load_tool("bench_meprop")
    rows, printed = run_tool(bench, ["--device", "cpu", "--tiny", "--memory", "inproc"], tmp_path,
                             capsys)
    assert [(r["mode"], r["k"]) for r in rows] == [("unified", 4), ("unified", 16),
                                                   ("per-example", 4), ("per-example", 16)]
    for r in rows:
        for key in REQUIRED:
            assert key in r, (key, r)
        assert r["device"] == "cpu" and (r["h"], r["batch"]) == (64, 32)
        assert r["check"] == "ok" and r["check_ok"] is True
        assert_checked(r, "dense_")
        assert_checked(r, "meprop_")
        assert ("selection" in r["meprop_check_errors"]) == (r["mode"] == "unified")
        assert all(r[k] > 0 for k in REQUIRED[5:11])
        assert math.isclose(r["backward_speedup"], r["dense_backward_ms"] / r["meprop_backward_ms"])
        assert r["paper_backward_ms"] is None          # only the paper's own shape has figures
        assert r["dense_resident_bytes"] >= 64 * 64 * 4 + 2 * 32 * 64 * 4     # W, x, dy
    assert "bwd speedup" in printed and printed.strip().splitlines()[-1].split()[0] == "per-example"


def test_bench_meprop_refuses_to_time_a_wrong_selection(tmp_path, capsys, monkeypatch):
    """meProp with a planted off-by-one (k - 1 entries kept) fails the check against the
    true top-k: the meProp side is not timed, the exit status is 1."""
    bench = load_tool("bench_meprop")
    import engine.layers.linear as linear
    real = linear.meprop_backward

    def off_by_one(backend, dy, x, W, cfg, key=(0, 0, 0), need_dx=True):
        return real(backend, dy, x, W, dict(cfg, k=cfg["k"] - 1), key, need_dx)

    monkeypatch.setattr(linear, "meprop_backward", off_by_one)
    rows, printed = run_tool(bench, ["--device", "cpu", "--tiny", "--memory", "inproc",
                                     "--modes", "per-example", "--k", "16"], tmp_path, capsys,
                             status=1)
    (r,) = rows
    assert r["meprop_check"] == "failed" and r["check"] == "failed"
    assert r["meprop_step_ms"] is None and r["meprop_backward_ms"] is None
    assert r["meprop_check_errors"]["dW"] > 1e-3 and r["meprop_check_errors"]["db"] < 1e-6
    assert r["dense_check"] == "ok" and r["dense_step_ms"] > 0
    assert "CORRECTNESS FAILURE" in printed


def test_topk_mask_reference():
    """tools/_references.topk_mask: k per row (per-example) or k shared columns (unified), the
    largest |dy|, ties to the lowest index."""
    refs = load_tool("_references")
    dy = numpy.array([[0.5, -3.0, 3.0, 1.0], [2.0, 2.0, -2.0, 0.0], [0.0, 0.0, 0.0, -4.0]])
    mask, _ = refs.topk_mask(dy, 2, "per-example")
    numpy.testing.assert_array_equal(mask, [[0, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 1]])
    mask, score = refs.topk_mask(dy, 2, "unified")       # column sums 2.5, 5, 5, 5
    numpy.testing.assert_array_equal(mask[0], [0, 1, 1, 0])
    assert refs.unified_gap(score, [1, 2]) == 0.0 and refs.unified_gap(score, [1, 3]) == 0.0
    assert refs.unified_gap(score, [0, 1]) == (5.0 - 2.5) / 5.0


def test_bench_meprop_paper_column():
    bench = load_tool("bench_meprop")
    assert bench.PAPER_MS[8] == 8.37 and bench.PAPER_MS[512] == 69.95
    assert round(bench.PAPER_DENSE_MS / bench.PAPER_MS[8], 1) == 36.8
