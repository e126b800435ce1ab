"""tools/bench_ffi.py on its hidden --tiny shape (L=3000, I=256, k=8, B=8), CPU.

Not a performance test. Checks the row fields, the bandwidth-floor arithmetic, that both methods'
first step passed the check against the float64 reference, and the paper memory table: its
computed total is the sum of its components, and the components are golden (exact bytes). A
planted bug in the FFI weight gradient fails the check.
"""
import math

import numpy

from toolrun import assert_checked, assert_golden, load_tool, run_tool

REQUIRED = ("labels", "input", "k", "batch", "device", "method", "ms", "peak_bytes",
            "resident_bytes", "step_peak_bytes", "check", "check_error")
# To update on purpose: ENGINE_UPDATE_GOLDEN=1 python -m pytest tests/tools -k golden -s prints
# the new dicts; paste them here.
# the paper table's computed components at the tiny shape, bytes
GOLDEN_PAPER = {
    "intermediate params (E x I + b)": 33280,
    "intermediate grads": 33280,
    "intermediate Adam m, v": 66560,
    "FFI weights + bias": 264000,
    "FFI indices (int32)": 256000,
    "FFI grads": 264000,
    "FFI Adam m, v": 528000,
    "activations (batch)": 602112,
    "total (all at once: an upper bound)": 2047232,
    "memory example: dense E x L weights": 512000,
    "memory example: dense E x L + grad + Adam": 2048000,
    "memory example: FFI k=32 over E, everything": 1312000,
}


def test_bench_ffi_tiny_golden(tmp_path, capsys):
    bench = load_tool("bench_ffi")
    rows, printed = run_tool(bench, ["--device", "cpu", "--tiny", "--bandwidth", "1e10",
                                     "--memory", "inproc"], tmp_path, capsys)
    timing = [r for r in rows if "method" in r]
    memory = [r for r in rows if r.get("table") == "paper-memory"]
    assert [r["method"] for r in timing] == ["ffi-kernel", "dense"]
    for r in timing:
        for key in REQUIRED:
            assert key in r, (key, r)
        assert (r["labels"], r["input"], r["k"], r["batch"], r["device"]) == (3000, 256, 8, 8, "cpu")
        assert_checked(r)
        assert r["ms"] > 0 and r["peak_kind"] == "measured" and r["timed_with"] == ["ffi-kernel", "dense"]
        assert r["peak_bytes"] == r["resident_bytes"] + r["step_peak_bytes"]
    ffi, dense = timing
    assert set(ffi["check_errors"]) == {"y", "dx", "dw", "dbias", "y_sketch", "dx_sketch"}
    assert set(dense["check_errors"]) == {"y", "dx", "dW", "db", "y_sketch", "dx_sketch"}
    floor = bench.floor_bytes(3000, 256, 8, 8) / 1e10 * 1e3
    assert math.isclose(ffi["floor_ms"], floor) and math.isclose(ffi["floor_ratio"], ffi["ms"] / floor)
    # held: weights + indices + bias + x + dy
    assert ffi["resident_bytes"] == 3000 * 8 * 4 * 2 + 3000 * 4 + 8 * 256 * 4 + 8 * 3000 * 4
    assert dense["resident_bytes"] == 3000 * 256 * 4 + 3000 * 4 + 8 * 256 * 4 + 8 * 3000 * 4
    comps = {r["component"]: r["ours_gib"] for r in memory}
    parts = [v for name, v in comps.items()
             if not name.startswith(("total", "measured", "memory example"))]
    assert math.isclose(comps["total (all at once: an upper bound)"], sum(parts), rel_tol=1e-9)
    measured = comps.pop("measured peak, 2 training steps (cpu, tracemalloc)")
    assert measured * 2 ** 30 >= 3000 * 8 * 8                     # at least the FFI weights + indices
    assert_golden("GOLDEN_PAPER", {k: round(v * 2 ** 30) for k, v in comps.items()}, GOLDEN_PAPER)
    assert "paper vs ours" in printed and printed.strip().splitlines()[-1].split()[-1] == "measured"


def test_bench_ffi_refuses_to_time_a_wrong_gradient(tmp_path, capsys, monkeypatch):
    """A planted bug in the FFI layer (one label's weight gradient dropped, as a lost race would
    do) fails the dw check: the row is not timed, the exit status is 1."""
    bench = load_tool("bench_ffi")
    from engine.layers.fixed_fanin import FixedFanInLinear
    backward = FixedFanInLinear.backward

    def lossy(self, dy, need_input_grad=True):
        dx = backward(self, dy, need_input_grad)
        self.grads["weights"][31] = 0.0          # a row the check looks at
        return dx

    monkeypatch.setattr(FixedFanInLinear, "backward", lossy)
    rows, printed = run_tool(bench, ["--device", "cpu", "--tiny", "--memory", "inproc", "--no-paper",
                                     "--methods", "ffi-kernel"], tmp_path, capsys, status=1)
    assert len(rows) == 1 and rows[0]["check"] == "failed" and rows[0]["ms"] is None
    assert rows[0]["check_errors"]["dw"] > 0.1 and rows[0]["check_errors"]["y"] < 1e-6
    assert "CORRECTNESS FAILURE" in printed


def test_floor_bytes_formula():
    bench = load_tool("bench_ffi")
    L, I, k, B, s = 670_091, 32_768, 32, 32, 4
    expected = (2 * L * k * (s + 4) + L * s + 2 * B * I * s + B * L * s     # reads
                + B * L * s + L * k * s + L * s + B * I * s)                # writes
    assert bench.floor_bytes(L, I, k, B) == expected


def test_reference_ffi_step_matches_dense_formula():
    """tools/_references.ffi_step equals the dense product with the scattered weights."""
    refs = load_tool("_references")
    rng = numpy.random.default_rng(2)
    L, I, K, B = 9, 7, 3, 4
    idx = numpy.array([rng.choice(I, K, replace=False) for _ in range(L)])
    w, bias = rng.standard_normal((L, K)), rng.standard_normal(L)
    x, dy = rng.standard_normal((B, I)), rng.standard_normal((B, L))
    W = numpy.zeros((L, I))
    numpy.put_along_axis(W, idx, w, axis=1)
    sketch = refs.sketch_vectors(B, L, I)
    out = refs.ffi_step(w, idx, bias, x, dy, [0, 2], [1, 5, 8], sketch)
    numpy.testing.assert_allclose(out["y"], (x @ W.T + bias)[[0, 2]], rtol=1e-13)
    numpy.testing.assert_allclose(out["dx"], (dy @ W)[[0, 2]], rtol=1e-13)
    numpy.testing.assert_allclose(out["dw"], numpy.take_along_axis(dy.T @ x, idx, axis=1)[[1, 5, 8]],
                                  rtol=1e-13)
    numpy.testing.assert_allclose(out["dbias"], dy.sum(axis=0), rtol=1e-13)
    numpy.testing.assert_allclose(out["y_sketch"], (x @ W.T + bias) @ sketch[1], rtol=1e-12)
    numpy.testing.assert_allclose(out["dx_sketch"], sketch[0] @ (dy @ W), rtol=1e-12)
