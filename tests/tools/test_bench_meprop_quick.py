"""tools/bench_meprop.py runs end to end on its tiny shape (CPU) and writes sane JSON rows.

Not a performance test: main() with the hidden --tiny shape (h=64, B=32, k=4 and 16) for the
unified and per-example modes; checks the fields, the correctness check of every row (meProp
gradients equal the masked dense reference) and the printed table."""
import importlib.util
import json
import math
import os
import sys

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "tools")
REQUIRED = ("h", "batch", "k", "mode", "device", "dense_backward_ms", "meprop_backward_ms",
            "dense_step_ms", "meprop_step_ms")


def _load(name):
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_meprop_tiny(tmp_path, capsys):
    bench = _load("bench_meprop")
    path = tmp_path / "rows.json"
    assert bench.main(["--device", "cpu", "--tiny", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(path.read_text())
    assert [(r["mode"], r["k"]) for r in rows] == [("unified", 4), ("unified", 16),
                                                   ("per-example", 4), ("per-example", 16)]
    for r in rows:
        for key in REQUIRED:
            assert key in r, (key, r)
        assert r["device"] == "cpu" and (r["h"], r["batch"]) == (64, 32)
        assert r["check_ok"] is True
        assert all(r[k] > 0 for k in REQUIRED[5:])
        assert math.isclose(r["backward_speedup"], r["dense_backward_ms"] / r["meprop_backward_ms"])
        assert r["paper_backward_ms"] is None          # only the paper's own shape has figures
    assert "bwd speedup" in printed and printed.strip().splitlines()[-1].split()[0] == "per-example"


def test_bench_meprop_paper_column():
    bench = _load("bench_meprop")
    assert bench.PAPER_MS[8] == 8.37 and bench.PAPER_MS[512] == 69.95
    assert round(bench.PAPER_DENSE_MS / bench.PAPER_MS[8], 1) == 36.8
