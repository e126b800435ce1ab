"""tools/bench_factored.py runs end to end on its tiny grid (CPU) and writes sane JSON rows.

Not a performance test: main() with the hidden --tiny grid (B=8, d=16, D=2000 and 4000) for
both losses; checks the fields, the theory column (D / 4d), the correctness check of each row
and the printed table."""
import importlib.util
import json
import math
import os
import sys

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "tools")
REQUIRED = ("D", "d", "B", "device", "naive_ms", "factored_ms", "speedup", "theory")


def _load():
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    spec = importlib.util.spec_from_file_location("bench_factored", os.path.join(TOOLS, "bench_factored.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("loss", ["squared", "spherical"])
def test_bench_factored_tiny(tmp_path, capsys, loss):
    bench = _load()
    path = tmp_path / "rows.json"
    assert bench.main(["--device", "cpu", "--tiny", "--loss", loss, "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(path.read_text())
    assert [(r["D"], r["d"], r["B"]) for r in rows] == [(2000, 16, 8), (4000, 16, 8)]
    for r in rows:
        for key in REQUIRED:
            assert key in r, (key, r)
        assert r["device"] == "cpu" and r["loss"] == loss and r["check_ok"] is True
        assert r["naive_ms"] > 0 and r["factored_ms"] > 0
        assert math.isclose(r["speedup"], r["naive_ms"] / r["factored_ms"], rel_tol=1e-9)
        assert math.isclose(r["theory"], r["D"] / (4 * r["d"]))
    assert "theory D/4d" in printed and printed.strip().splitlines()[-1].split()[0] == "4000"
