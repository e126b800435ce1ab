"""tools/repro_ptb_mlp.py --quick on a tiny corpus in PTB's file layout (CPU, float64).

The script's own model (context 5, embeddings 256, tanh 512, dropout 0.3, Adam) for the few
steps the tiny corpus gives: the row, the printed comparison, and the golden float64 perplexities.
"""
from toolrun import assert_golden, load_tool, run_tool

TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n"
# To update on purpose: ENGINE_UPDATE_GOLDEN=1 python -m pytest tests/tools -k golden -s prints
# the new dicts; paste them here.
GOLDEN = {
    "valid_perplexity": 5.423830572853188,
    "test_perplexity": 5.423830572853188,
}


def test_repro_ptb_mlp_tiny_golden(tmp_path, capsys):
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    for split, times in (("train", 40), ("valid", 5), ("test", 5)):
        (ptb / f"ptb.{split}.txt").write_text(TEXT * times)
    rows, printed = run_tool(load_tool("repro_ptb_mlp"), [
        "--ptb", str(ptb), "--device", "cpu", "--quick", "--dtype", "float64",
        "--work-dir", str(tmp_path), "--run-dir", str(tmp_path / "run")], tmp_path, capsys)
    (row,) = rows
    assert row["epochs"] == 1 and row["quick"] is True and row["device"] == "cpu"
    assert row["seconds_per_epoch"] > 0
    assert (tmp_path / "run" / "metrics.json").exists()
    assert "feed-forward NNLM (reference)" in printed
    assert_golden("GOLDEN", {k: row[k] for k in ("valid_perplexity", "test_perplexity")}, GOLDEN)
