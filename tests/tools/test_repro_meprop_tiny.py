"""tools/repro_meprop.py on a synthetic IDX set (CPU, --tiny, float64).

Checks that every setting (baseline, per-example, unified, random) trains through the Engine,
that the meProp settings really ran with meProp (hidden-linear backward timed), that the table
prints, and the golden float64 training loss and accuracies after 5 steps of each setting:
a change of initialisation, data order, the meProp selection or the random-k stream moves them.
"""
from toolrun import assert_golden, load_tool, run_tool

# To update on purpose: ENGINE_UPDATE_GOLDEN=1 python -m pytest tests/tools -k golden -s prints
# the new dicts; paste them here.
# per setting: the epoch's mean training loss, test and best valid accuracy
GOLDEN = {
    "baseline train_loss": 2.2352495702189077,
    "baseline test_accuracy": 0.46,
    "baseline best_valid_accuracy": 0.54,
    "per-example k=20 train_loss": 2.2353049402532092,
    "per-example k=20 test_accuracy": 0.48,
    "per-example k=20 best_valid_accuracy": 0.54,
    "unified k=20 train_loss": 2.246161184366695,
    "unified k=20 test_accuracy": 0.42,
    "unified k=20 best_valid_accuracy": 0.46,
    "random k=20 train_loss": 2.2375498752240977,
    "random k=20 test_accuracy": 0.42,
    "random k=20 best_valid_accuracy": 0.46,
}


def test_repro_meprop_tiny_golden(tmp_path, capsys):
    repro = load_tool("repro_meprop")
    rows, printed = run_tool(repro, ["--device", "cpu", "--tiny", "--dtype", "float64"], tmp_path,
                             capsys)
    assert [r["setting"] for r in rows] == ["baseline", "per-example k=20", "unified k=20",
                                           "random k=20"]
    for r in rows:
        assert r["epochs"] == 1 and r["hidden"] == [32, 32] and r["device"] == "cpu"
        assert r["linear_backward_s_per_epoch"] > 0 and r["epoch_s"] > 0
    assert rows[0]["mode"] == "baseline" and rows[1]["k"] == 20
    assert "paper acc %" in printed
    golden = {}
    for r in rows:
        h = r["history"][-1]
        golden[f"{r['setting']} train_loss"] = h["train_loss"]
        golden[f"{r['setting']} test_accuracy"] = r["test_accuracy"]
        golden[f"{r['setting']} best_valid_accuracy"] = r["best_valid_accuracy"]
    assert_golden("GOLDEN", golden, GOLDEN)
