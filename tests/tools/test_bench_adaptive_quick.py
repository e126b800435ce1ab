"""tools/bench_adaptive.py runs end to end on its tiny shape (CPU) and writes sane JSON rows.

Not a performance test: it runs main() with the hidden --tiny shape (D=500, d=32, B=64), with
PyTorch's layer when PyTorch is importable and without it otherwise, and checks the rows."""
import importlib.util
import json
import math
import os
import sys

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "tools")
REQUIRED = ("shape", "vocab", "d", "rows", "device", "method", "ms", "cutoffs", "loss")


def _load():
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    spec = importlib.util.spec_from_file_location("bench_adaptive", os.path.join(TOOLS, "bench_adaptive.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_importable():
    try:
        import torch  # noqa: F401,F811
        return True
    except Exception:
        return False


@pytest.mark.parametrize("use_torch", [True, False], ids=["with-torch-if-importable", "torch-missing"])
def test_bench_adaptive_tiny(tmp_path, capsys, monkeypatch, use_torch):
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "cache"))
    bench = _load()
    if not use_torch:
        monkeypatch.setitem(sys.modules, "torch", None)
    path = tmp_path / "rows.json"
    assert bench.main(["--device", "cpu", "--tiny", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(path.read_text())
    by = {r["method"]: r for r in rows}
    assert set(by) == set(bench.METHODS)
    for r in rows:
        for key in REQUIRED:
            assert key in r, (key, r)
        assert (r["shape"], r["vocab"], r["d"], r["rows"], r["device"]) == ("tiny", 500, 32, 64, "cpu")
    with_torch = use_torch and _torch_importable()
    for m in bench.METHODS:
        if m == "torch-adaptive" and not with_torch:
            assert by[m]["ms"] is None and by[m]["skipped"]
            continue
        assert math.isfinite(by[m]["ms"]) and by[m]["ms"] > 0
        assert abs(by[m]["loss"] - math.log(500)) < 3.0
    assert by["ours-adaptive"]["cutoffs"] == [50, 200]
    auto = by["ours-adaptive-auto"]
    assert auto["predicted_ms"] > 0 and all(0 < c < 500 for c in auto["cutoffs"])
    if with_torch:       # same weights, same data: the same first-step loss
        assert "MISMATCH" not in by["torch-adaptive"]["check"]
        assert abs(by["torch-adaptive"]["loss"] - by["ours-adaptive"]["loss"]) < 1e-4
    else:
        assert "NOTE: no PyTorch rows" in printed
    assert "ours-full" in printed.strip().splitlines()[-1]       # the table is printed last


def test_repro_adaptive_tiny_corpus(tmp_path, capsys, monkeypatch):
    """tools/repro_adaptive.py on a tiny corpus, 3 steps per method: rows and the printed table."""
    from engine.cli import main as cli_main
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "cache"))
    text = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n" * 30
    for name in ("train", "valid", "test"):
        (tmp_path / f"{name}.txt").write_text(text)
    corpus = tmp_path / "c.h5"
    assert cli_main(["prepare", "text", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt"),
                     "--test", str(tmp_path / "test.txt"), "--output", str(corpus)]) == 0
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    spec = importlib.util.spec_from_file_location("repro_adaptive", os.path.join(TOOLS, "repro_adaptive.py"))
    repro = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repro)
    out = tmp_path / "rows.json"
    assert repro.main(["--data", str(corpus), "--device", "cpu", "--epochs", "1",
                       "--max-steps-per-epoch", "3", "--batch-size", "16", "--cutoffs", "4",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["softmax", "adaptive", "adaptive-auto"]
    assert rows[0]["cutoffs"] is None and rows[1]["cutoffs"] == [4]
    for r in rows:
        assert math.isfinite(r["test_perplexity"]) and r["seconds_per_epoch"] > 0
        assert r["steps_per_epoch"] == 3
    printed = capsys.readouterr().out
    assert "Paper (Grave et al. 2017" in printed and printed.strip().splitlines()[-1].startswith("c.h5")
