"""tools/bench_softmax.py runs end to end on a tiny grid (CPU) and writes sane JSON rows.

Not a performance test (those live in tools/): it runs the script's main() with the hidden
--tiny grid (B=8, d=16, D=100), with PyTorch rows when PyTorch is importable and without them
otherwise, and checks the fields and values of the JSON rows and the printed table.
"""
import importlib.util
import json
import math
import os
import sys

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "tools")
REQUIRED = ("B", "D", "d", "device", "method", "ms", "peak_bytes", "resident_bytes", "floor_ms",
            "chunk_size")


def _load_bench():
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    spec = importlib.util.spec_from_file_location("bench_softmax", os.path.join(TOOLS, "bench_softmax.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_importable():
    try:
        import torch  # noqa: F401
        return True
    except Exception:
        return False


@pytest.mark.parametrize("use_torch", [True, False], ids=["with-torch-if-importable", "torch-missing"])
def test_bench_softmax_tiny(tmp_path, capsys, monkeypatch, use_torch):
    bench = _load_bench()
    if not use_torch:
        monkeypatch.setitem(sys.modules, "torch", None)      # `import torch` raises ImportError
    path = tmp_path / "rows.json"
    argv = ["--device", "cpu", "--tiny", "--json", str(path)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    rows = json.loads(path.read_text())
    expected = ["ours", "ours-chunked-unfused", "ours-chunked"]
    if use_torch and _torch_importable():
        expected = ["torch"] + expected
    else:
        assert "NOTE: no PyTorch rows" in printed
    assert [r["method"] for r in rows] == expected
    for r in rows:
        for key in REQUIRED:
            assert key in r, (key, r)
        assert (r["B"], r["D"], r["d"], r["device"]) == (8, 100, 16, "cpu")
        assert r["skipped"] is None
        assert r["check_ok"] is True, r["check"]
        assert math.isfinite(r["ms"]) and r["ms"] > 0
        assert isinstance(r["peak_bytes"], int) and r["peak_bytes"] >= 0
        assert r["resident_bytes"] >= 100 * 16 * 4          # at least W
        assert 0 < r["floor_ms"] < r["ms"] * 10
        assert abs(r["loss"] - math.log(100)) < 1.0          # near-uniform start
        if r["method"].startswith("ours-chunked"):
            assert 1 <= r["chunk_size"] < 100
            assert r["flops"] == 8 * 8 * 100 * 16
        else:
            assert r["chunk_size"] is None
            assert r["flops"] == 6 * 8 * 100 * 16
    by = {r["method"]: r for r in rows}
    # the fused chunked step keeps no gradient between steps: less resident than the unfused one
    assert by["ours-chunked"]["resident_bytes"] < by["ours-chunked-unfused"]["resident_bytes"]
    # the table is the last thing printed and names every method
    tail = printed.strip().splitlines()
    assert tail[-1].split()[3] == expected[-1]
    for method in expected:
        assert any(line.split()[3:4] == [method] for line in tail[-len(expected):])


def test_default_chunk_rule():
    bench = _load_bench()
    assert bench.default_chunk(4096, 793471) == 4096          # 4096 x 4096 x 4 B = 64 MiB
    assert bench.default_chunk(256, 793471) == 65536           # capped
    assert bench.default_chunk(256, 10000) == 2500             # covers D: D / 4
    assert bench.default_chunk(8, 100) == 25
