"""tools/study_factored_xmc.py on a tiny synthetic data set (CPU): the training rows carry
P@k / PSP@5 for every method and the most-frequent-labels floor; the output-step rows carry
interleaved timings, a positive floor and memory, where the measured held bytes equal the
computed weights (+ bias) and optimizer moments exactly (the factored layer: no gradient, no
moments)."""
from toolrun import load_tool, run_tool

TOML = """
[study]
name = "tiny"
description = "tiny"
seed = 0
timing_repeats = 2
timing_warmup = 1
[model]
hidden = [16]
activation = "relu"
optimizer = "adam"
lr = 1e-3
[[dataset]]
name = "tiny-synthetic"
synthetic = {num_train = 300, num_test = 60, num_features = 200, num_labels = 400, labels_per_point = 3.0, features_per_point = 10.0}
epochs = 1
batch_size = 32
[[method]]
name = "squared-hinge"
output = "squared-hinge"
[[method]]
name = "bce"
output = "bce"
[[method]]
name = "ffi"
output = "squared-hinge"
output_kwargs = {weights = "ffi", fan_in = 4}
[[method]]
name = "factored-squared"
output = "factored-squared"
output_kwargs = {lr = 0.05}
"""


def test_study_tiny(tmp_path, capsys):
    exp = tmp_path / "tiny.toml"
    exp.write_text(TOML)
    study = load_tool("study_factored_xmc")
    rows, out = run_tool(study, [str(exp), "--work-dir", str(tmp_path / "work"), "--quick", "--md",
                                 str(tmp_path / "t.md")], tmp_path, capsys)
    (result,) = rows
    assert "study_factored_xmc.py" in result["command"]
    names = ["squared-hinge", "bce", "ffi", "factored-squared"]
    trained = {r["method"]: r for r in result["training"]}
    assert set(trained) == set(names) | {"most-frequent"}
    for name in names:
        assert "error" not in trained[name], trained[name]
        assert {"p@1", "p@3", "p@5", "psp@5", "seconds_per_epoch"} <= set(trained[name])
    steps = {r["method"]: r for r in result["output_steps"]}
    assert set(steps) == set(names)
    for name, r in steps.items():
        assert len(r["step_ms_all"]) == 2 and r["step_ms"] > 0 and r["floor_ms"] > 0
        assert r["measured_step_peak_bytes"] > 0
        c = r["computed"]
        assert r["measured_held_bytes"] == (c["weights"] + c.get("bias", 0) + c["optimizer"]
                                            + c.get("indices", 0)), (name, r)
    assert steps["factored-squared"]["computed"]["optimizer"] == 0
    assert steps["bce"]["shares_weights_with"] == "squared-hinge"
    assert "| tiny-synthetic | factored-squared |" in (tmp_path / "t.md").read_text()
