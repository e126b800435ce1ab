"""tools/repro_xmc.py runs end to end on a tiny synthetic data set (CPU) and writes its rows.

Not a result: a few steps per configuration; checks the rows, the fields, the baseline row and
the computed Amazon-670K memory table (FFI below dense, as the paper's table)."""
import importlib.util
import json
import math
import os

from engine.data.xmc_synthetic import write_synthetic_xmc

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "tools")


def _load():
    spec = importlib.util.spec_from_file_location("repro_xmc", os.path.join(TOOLS, "repro_xmc.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repro_xmc_quick(tmp_path, capsys):
    folder = tmp_path / "tiny"
    folder.mkdir()
    write_synthetic_xmc(folder / "tiny_train.txt", folder / "tiny_test.txt", 300, 60, 80, 25,
                        labels_per_point=2, features_per_point=8, seed=2)
    path = tmp_path / "rows.json"
    assert _load().main(["--data-dir", str(tmp_path), "--datasets", "tiny", "--quick",
                         "--max-steps-per-epoch", "4", "--hidden", "16", "--intermediate", "24",
                         "--fan-in", "4", "--device", "cpu", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    tiny = [r for r in rows if r["dataset"] == "tiny"]
    assert [r["config"] for r in tiny] == ["dense", "ffi k=4", "ffi k=4 + 24 intermediate",
                                           "most-frequent"]
    for r in tiny:
        for k in ("p@1", "p@3", "p@5", "psp@5"):
            assert 0.0 <= r[k] <= 1.0
    for r in tiny[:3]:
        assert r["epochs"] == 1 and r["seconds_per_epoch"] > 0 and math.isfinite(r["test_loss"])
        assert r["output_param_bytes"] > 0 and r["model_optimizer_bytes"] > 0
    assert tiny[1]["output_param_bytes"] < tiny[0]["output_param_bytes"]       # 4 of 16 inputs
    amazon = {r["config"]: r for r in rows if r["dataset"].startswith("amazon")}
    assert amazon["ffi k=32"]["total_bytes"] < amazon["dense"]["total_bytes"] / 10
    assert amazon["dense"]["output_weight_bytes"] == 670_091 * 768 * 4
    assert "Amazon-670K" in capsys.readouterr().out
