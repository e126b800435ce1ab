"""tools/bench_ffi.py runs end to end on its tiny shape (CPU) and writes sane JSON rows.

Not a performance test: main() with the hidden --tiny shape (L=3000, I=256, k=8, B=8); checks
the row fields, the bandwidth-floor arithmetic, and the paper memory table (its computed total
is the sum of its components and matches the layer's own memory report)."""
import importlib.util
import json
import math
import os
import sys

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "tools")
REQUIRED = ("labels", "input", "k", "batch", "device", "method", "ms", "peak_bytes")


def _load():
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    spec = importlib.util.spec_from_file_location("bench_ffi", os.path.join(TOOLS, "bench_ffi.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_ffi_tiny(tmp_path, capsys):
    bench = _load()
    path = tmp_path / "rows.json"
    assert bench.main(["--device", "cpu", "--tiny", "--bandwidth", "1e10", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(path.read_text())
    timing = [r for r in rows if "method" in r]
    memory = [r for r in rows if r.get("table") == "paper-memory"]
    assert [r["method"] for r in timing] == ["ffi-kernel", "dense"]
    for r in timing:
        for key in REQUIRED:
            assert key in r, (key, r)
        assert (r["labels"], r["input"], r["k"], r["batch"], r["device"]) == (3000, 256, 8, 8, "cpu")
        assert r["ms"] > 0 and r["peak_bytes"] > 0 and r["peak_kind"] == "measured"
    ffi = timing[0]
    floor = bench.floor_bytes(3000, 256, 8, 8) / 1e10 * 1e3
    assert math.isclose(ffi["floor_ms"], floor) and math.isclose(ffi["floor_ratio"], ffi["ms"] / floor)
    # resident weights + indices + bias + x + dy at least
    assert ffi["peak_bytes"] >= 3000 * 8 * 8 + 3000 * 4 + 8 * 256 * 4 + 8 * 3000 * 4
    comps = {r["component"]: r["ours_gib"] for r in memory}
    parts = [v for name, v in comps.items()
             if not name.startswith(("total", "measured", "memory example"))]
    assert math.isclose(comps["total (all at once: an upper bound)"], sum(parts), rel_tol=1e-9)
    assert comps["measured peak, 2 training steps (cpu, tracemalloc)"] > 0
    assert "paper vs ours" in printed and printed.strip().splitlines()[-1].split()[-1] == "measured"


def test_floor_bytes_formula():
    bench = _load()
    L, I, k, B, s = 670_091, 32_768, 32, 32, 4
    expected = (2 * L * k * (s + 4) + L * s + 2 * B * I * s + B * L * s     # reads
                + B * L * s + L * k * s + L * s + B * I * s)                # writes
    assert bench.floor_bytes(L, I, k, B) == expected
