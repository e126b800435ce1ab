"""tools/repro_xmc.py on a tiny synthetic data set (CPU, float64).

A few steps per configuration. Checks the rows, the fields, the baseline row, the computed
Amazon-670K memory table (FFI below dense, as in the paper's table; exact bytes), and the golden
float64 losses and metrics of each configuration.
"""
from engine.data.xmc_synthetic import write_synthetic_xmc
from toolrun import assert_golden, load_tool, run_tool

METRICS = ("p@1", "p@3", "p@5", "psp@5", "ndcg@5")
# To update on purpose: ENGINE_UPDATE_GOLDEN=1 python -m pytest tests/tools -k golden -s prints
# the new dicts; paste them here.
# per configuration: training and test loss, P@k, PSP@5, nDCG@5
GOLDEN = {
    "dense p@1": 0.03333333333333333,
    "dense p@3": 0.016666666666666666,
    "dense p@5": 0.03333333333333333,
    "dense psp@5": 0.09866187690439808,
    "dense ndcg@5": 0.046037550651272637,
    "dense train_loss": 24.94640824155674,
    "dense test_loss": 24.591870684186045,
    "dense model bytes": 41304,
    "ffi k=4 p@1": 0.05,
    "ffi k=4 p@3": 0.06666666666666667,
    "ffi k=4 p@5": 0.06666666666666667,
    "ffi k=4 psp@5": 0.18886756037595787,
    "ffi k=4 ndcg@5": 0.12013493507123449,
    "ffi k=4 train_loss": 26.032927597794398,
    "ffi k=4 test_loss": 25.74587671069234,
    "ffi k=4 model bytes": 34504,
    "ffi k=4 + 24 intermediate p@1": 0.0,
    "ffi k=4 + 24 intermediate p@3": 0.03333333333333333,
    "ffi k=4 + 24 intermediate p@5": 0.04666666666666666,
    "ffi k=4 + 24 intermediate psp@5": 0.15763351810821868,
    "ffi k=4 + 24 intermediate ndcg@5": 0.08099100993437135,
    "ffi k=4 + 24 intermediate train_loss": 24.59613416523012,
    "ffi k=4 + 24 intermediate test_loss": 24.40766833869714,
    "ffi k=4 + 24 intermediate model bytes": 44296,
    "most-frequent p@1": 0.31666666666666665,
    "most-frequent p@3": 0.25,
    "most-frequent p@5": 0.18000000000000002,
    "most-frequent psp@5": 0.40960638234506713,
    "most-frequent ndcg@5": 0.41888642220367456,
}
# the computed Amazon-670K training state, bytes
GOLDEN_AMAZON = {
    "dense": 8416539568,
    "ffi k=32": 611319600,
    "ffi k=32, 32k intermediate": 1031077680,
    "ffi k=32, 100k intermediate": 1892722992,
    "ffi k=64, 100k intermediate": 2321581232,
}


def test_repro_xmc_quick_golden(tmp_path, capsys):
    folder = tmp_path / "tiny"
    folder.mkdir()
    write_synthetic_xmc(folder / "tiny_train.txt", folder / "tiny_test.txt", 300, 60, 80, 25,
                        labels_per_point=2, features_per_point=8, seed=2)
    rows, printed = run_tool(load_tool("repro_xmc"), [
        "--data-dir", str(tmp_path), "--datasets", "tiny", "--quick", "--max-steps-per-epoch", "4",
        "--hidden", "16", "--intermediate", "24", "--fan-in", "4", "--device", "cpu",
        "--dtype", "float64"], tmp_path, capsys)
    tiny = [r for r in rows if r["dataset"] == "tiny"]
    assert [r["config"] for r in tiny] == ["dense", "ffi k=4", "ffi k=4 + 24 intermediate",
                                           "most-frequent"]
    for r in tiny:
        for k in METRICS:
            assert 0.0 <= r[k] <= 1.0
    for r in tiny[:3]:
        assert r["epochs"] == 1 and r["seconds_per_epoch"] > 0
        assert r["output_param_bytes"] > 0 and r["model_optimizer_bytes"] > 0
    assert tiny[1]["output_param_bytes"] < tiny[0]["output_param_bytes"]       # 4 of 16 inputs
    amazon = {r["config"]: r for r in rows if r["dataset"].startswith("amazon")}
    assert amazon["ffi k=32"]["total_bytes"] < amazon["dense"]["total_bytes"] / 10
    assert amazon["dense"]["output_weight_bytes"] == 670_091 * 768 * 4
    assert "Amazon-670K" in printed
    golden = {}
    for r in tiny:
        for k in METRICS + (("train_loss", "test_loss") if "test_loss" in r else ()):
            golden[f"{r['config']} {k}"] = r[k]
        if "output_param_bytes" in r:        # float64 parameters and Adam moments
            golden[f"{r['config']} model bytes"] = r["model_param_bytes"] + r["model_optimizer_bytes"]
    assert_golden("GOLDEN", golden, GOLDEN)
    assert_golden("GOLDEN_AMAZON", {c: r["total_bytes"] for c, r in amazon.items()}, GOLDEN_AMAZON)
