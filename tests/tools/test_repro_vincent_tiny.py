"""tools/repro_vincent.py runs end to end on a tiny prepared corpus (CPU) and writes its rows.

Not a result: 1 epoch of 5 steps of a tiny model per output; checks the fields, that the
spherical and softmax perplexities are exact (`perplexity_kind`), the squared row's normalised
perplexity is finite, and the factored monitors are reported."""
import importlib.util
import json
import math
import os

from engine.cli import main as engine_main

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "tools")
TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n" * 30


def _load():
    spec = importlib.util.spec_from_file_location("repro_vincent", os.path.join(TOOLS, "repro_vincent.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repro_vincent_tiny(tmp_path, capsys):
    for name, text in [("train.txt", TEXT), ("valid.txt", TEXT[:200]), ("test.txt", TEXT[:300])]:
        (tmp_path / name).write_text(text)
    corpus = tmp_path / "c.h5"
    assert engine_main(["prepare", "text", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt"),
                        "--test", str(tmp_path / "test.txt"), "--output", str(corpus)]) == 0
    path = tmp_path / "rows.json"
    repro = _load()
    assert repro.main(["--data", str(corpus), "--epochs", "1", "--max-steps-per-epoch", "5",
                       "--context", "2", "--embed", "8", "--hidden", "16", "--batch-size", "16",
                       "--device", "cpu", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert [r["output"] for r in rows] == ["factored-spherical", "factored-squared", "softmax"]
    for r in rows:
        assert math.isfinite(r["test_perplexity"]) and r["test_perplexity"] > 1
        assert r["seconds_per_epoch"] > 0 and r["epochs"] == 1
    kinds = {r["output"]: r["perplexity_kind"] for r in rows}
    assert kinds == {"factored-spherical": "exact", "factored-squared": "normalised-outputs",
                     "softmax": "exact"}
    assert rows[0]["monitors"]["q_rel_err"] < 1e-3
    assert "test ppl" in capsys.readouterr().out
