"""tools/repro_meprop.py runs end to end on a synthetic IDX set (CPU, --tiny) and writes JSON.

Not a performance or accuracy-target test: checks that every setting (baseline, per-example,
unified, random) trains through the Engine, that the meProp settings really ran with meProp
(hidden-linear backward timed), and that the table prints."""
import json

from test_bench_meprop_quick import _load


def test_repro_meprop_tiny(tmp_path, capsys):
    repro = _load("repro_meprop")
    path = tmp_path / "rows.json"
    assert repro.main(["--device", "cpu", "--tiny", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(path.read_text())
    assert [r["setting"] for r in rows] == ["baseline", "per-example k=20", "unified k=20",
                                           "random k=20"]
    for r in rows:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["epochs"] == 1
        assert r["linear_backward_s_per_epoch"] > 0 and r["epoch_s"] > 0
        assert r["hidden"] == [32, 32] and r["device"] == "cpu"
    assert rows[0]["mode"] == "baseline" and rows[1]["k"] == 20
    assert "paper acc %" in printed
