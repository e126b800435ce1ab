"""tools/repro_vincent.py on a tiny prepared corpus (CPU, float64).

1 epoch of 5 steps of a tiny model per output. Checks the fields, that the spherical and softmax
perplexities are exact (`perplexity_kind`), that the squared row's normalised perplexity is
reported, the factored monitors, and the golden float64 training loss and test perplexity of
each output.
"""
import math

from engine.cli import main as engine_main
from toolrun import assert_golden, load_tool, run_tool

TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n" * 30
# To update on purpose: ENGINE_UPDATE_GOLDEN=1 python -m pytest tests/tools -k golden -s prints
# the new dicts; paste them here.
# per output: the epoch's mean training loss and the test perplexity
GOLDEN = {
    "factored-spherical train_loss": 2.228161767920281,
    "factored-spherical test_perplexity": 6.900494763705259,
    "factored-squared train_loss": 0.9995801711868395,
    "factored-squared test_perplexity": 3.530658763074302,
    "softmax train_loss": 2.4193961067036702,
    "softmax test_perplexity": 11.173188278006396,
}


def test_repro_vincent_tiny_golden(tmp_path, capsys):
    for name, text in [("train.txt", TEXT), ("valid.txt", TEXT[:200]), ("test.txt", TEXT[:300])]:
        (tmp_path / name).write_text(text)
    corpus = tmp_path / "c.h5"
    assert engine_main(["prepare", "text", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "valid.txt"),
                        "--test", str(tmp_path / "test.txt"), "--output", str(corpus)]) == 0
    rows, printed = run_tool(load_tool("repro_vincent"), [
        "--data", str(corpus), "--epochs", "1", "--max-steps-per-epoch", "5", "--context", "2",
        "--embed", "8", "--hidden", "16", "--batch-size", "16", "--device", "cpu",
        "--dtype", "float64"], tmp_path, capsys)
    assert [r["output"] for r in rows] == ["factored-spherical", "factored-squared", "softmax"]
    for r in rows:
        assert 1.0 < r["test_perplexity"] and math.isfinite(r["train_loss"])
        assert r["seconds_per_epoch"] > 0 and r["epochs"] == 1
    kinds = {r["output"]: r["perplexity_kind"] for r in rows}
    assert kinds == {"factored-spherical": "exact", "factored-squared": "normalised-outputs",
                     "softmax": "exact"}
    assert rows[0]["monitors"]["q_rel_err"] < 1e-10          # float64: Q = W^T W kept exactly
    assert rows[0]["numerical_events"] == 0
    assert "test ppl" in printed
    golden = {}
    for r in rows:
        golden[f"{r['output']} train_loss"] = r["train_loss"]
        golden[f"{r['output']} test_perplexity"] = r["test_perplexity"]
    assert_golden("GOLDEN", golden, GOLDEN)
