"""tools/bench_distributed.py on its hidden --tiny language-model shape (611 words, d 16, B 13),
CPU, N = 1 and 2 (mpiexec; the squared hinge's formula is the softmax's without its per-row
sums, and runs in the README's command). Not a performance test: every row's first step passed its check
(N = 1 against the float64 reference, N = 2 against N = 1), the bytes counted per step equal the
formula, the ranks split the labels and rows, and the JSON rows carry the promised fields."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from mpi_jobs import REPO, mpi_skip_reason

pytestmark = pytest.mark.skipif(mpi_skip_reason() is not None, reason=str(mpi_skip_reason()))

FIELDS = ("ranks", "output", "labels", "d", "batch", "device", "ms", "comm_bytes",
          "peak_bytes_per_rank", "comm_formula", "goal", "model_ms", "check", "check_error")


def load_bench():
    """tools/bench_distributed.py as a module (tools/ on sys.path for its helper modules)."""
    tools = os.path.join(REPO, "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    spec = importlib.util.spec_from_file_location("bench_distributed",
                                                  os.path.join(tools, "bench_distributed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_rows(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "rows.json"
    assert bench.main(["--device", "cpu", "--tiny", "--outputs", "lm", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["output"], r["ranks"]) for r in rows] == [("softmax", 1), ("softmax", 2)]
    for r in rows:
        for key in FIELDS:
            assert key in r, (key, r)
        assert r["check"] == "ok" and r["check_error"] < 1e-5, r
        assert r["device"] == "cpu" and r["ms"] > 0 and r["peak_bytes_per_rank"] > 0
        assert r["comm_bytes"] == r["comm_formula"], r["comm_ops"]
        assert sum(r["labels_per_rank"]) == r["labels"] and sum(r["rows_per_rank"]) == r["batch"]
    two = [r for r in rows if r["ranks"] == 2]
    assert all(r["labels_per_rank"] == [r["labels"] // 2, r["labels"] - r["labels"] // 2]
               for r in two)
    assert all(r["comm_bytes"] > 2 * r["batch"] * r["d"] * 4 for r in two)
    assert "Output layer over N ranks" in capsys.readouterr().out
