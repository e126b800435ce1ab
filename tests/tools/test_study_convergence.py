"""tools/study_convergence.py on a tiny corpus: a --quick study of two runs (exact and adaptive
softmax) writes its JSON, table and plot; --step-times then adds interleaved step times and the
epochs-to-target speedup without training anything."""
from __future__ import annotations

import json

from engine.cli import main as engine_main
from toolrun import load_tool

TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n" * 40

EXPERIMENT = """
[study]
name = "tiny"
data = "c.h5"
description = "two outputs on a toy corpus"
paper = {softmax = 10.0}

[model]
context = 2
embed_dim = 8
hidden = [16]

[train]
batch_size = 16
max_epochs = 2
patience = 1
optimizer = "adam"
lr = 1e-2
seed = 0

[[run]]
name = "softmax"
output = "softmax"

[[run]]
name = "adaptive"
output = "adaptive"
output_kwargs = {cutoffs = [4]}
"""


def test_quick_study_then_interleaved_step_times(tmp_path, capsys):
    for name, text in [("train.txt", TEXT), ("valid.txt", TEXT[:200]), ("test.txt", TEXT[:300])]:
        (tmp_path / name).write_text(text)
    assert engine_main(["prepare", "text", str(tmp_path / "train.txt"),
                        "--valid", str(tmp_path / "valid.txt"), "--test", str(tmp_path / "test.txt"),
                        "--min-count", "1", "--output", str(tmp_path / "c.h5")]) == 0
    exp = tmp_path / "tiny.toml"
    exp.write_text(EXPERIMENT)
    out = tmp_path / "tiny.json"
    study = load_tool("study_convergence")
    common = [str(exp), "--data-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs"),
              "--device", "cpu", "--json", str(out)]
    assert study.main(common + ["--quick"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["softmax", "adaptive"]
    for r in rows:
        assert 1.0 < r["test_perplexity"] < 1e3 and "interleaved" not in r
    assert study.main(common + ["--step-times", "2"]) == 0
    rows = json.loads(out.read_text())["rows"]
    for r in rows:
        inter = r["interleaved"]
        assert inter["rounds"] == 2 and len(inter["step_ms_all"]) == 2
        assert inter["step_ms"] > 0 and 0 < inter["output_share"] < 1
        assert "--step-times 2" in inter["command"]
        assert inter["steps_per_epoch"] == 800 // 16      # 800 training tokens, batch 16
    reference = rows[0]
    assert reference["epochs_to_target"] is not None
    assert abs(reference["step_speedup_to_target"] - 1.0) < 1e-12   # the softmax against itself
    table = (tmp_path / "tiny.md").read_text()
    assert "step ms, interleaved" in table and table.count("\n| ") == 3


def test_factored_bias_enters_the_normalised_perplexity_and_runs_change_the_model(tmp_path):
    """A factored-squared run with an output bias and its own model (a run's `model` table):
    the normalised-output perplexity must use the bias (the factored layer keeps it as the last
    column of W, not as a parameter "b"), and equal the same sum written out densely."""
    import numpy
    from engine import Engine
    for name, text in [("train.txt", TEXT), ("valid.txt", TEXT[:200]), ("test.txt", TEXT[:300])]:
        (tmp_path / name).write_text(text)
    assert engine_main(["prepare", "text", str(tmp_path / "train.txt"),
                        "--valid", str(tmp_path / "valid.txt"), "--test", str(tmp_path / "test.txt"),
                        "--min-count", "1", "--output", str(tmp_path / "c.h5")]) == 0
    exp = EXPERIMENT.split("[[run]]")[0] + (
        '[[run]]\nname = "squared"\noutput = "factored-squared"\n'
        'output_kwargs = {lr_scale = 5.0, bias = true}\nmodel = {hidden = [12]}\n')
    (tmp_path / "b.toml").write_text(exp)
    study = load_tool("study_convergence")
    assert study.main([str(tmp_path / "b.toml"), "--data-dir", str(tmp_path), "--runs-dir",
                       str(tmp_path / "runs"), "--device", "cpu", "--json",
                       str(tmp_path / "b.json"), "--quick"]) == 0
    eng = Engine.from_checkpoint(str(tmp_path / "runs" / "tiny" / "squared" / "best.h5"),
                                 device="cpu", verbose=False)
    out = eng.model.output
    assert out.use_bias and out.in_features == 12
    b = study.output_bias(out, eng.backend)
    assert b is not None and float(numpy.abs(b).max()) > 0          # learnt, not the zero start
    W = out.dense_weight()
    data = str(tmp_path / "c.h5")
    total, count = 0.0, 0
    loader = eng.make_loader(data, "test", 64, shuffle=False)
    for x, y in loader.iter_from(0, 0):
        o = numpy.maximum(eng.model.hidden_forward(x, False) @ W.T + b, study.FLOOR)
        total -= float(numpy.log(o[numpy.arange(len(y)), y] / o.sum(axis=1)).sum())
        count += len(y)
    loader.close()
    numpy.testing.assert_allclose(study.normalised_output_perplexity(eng, data, "test"),
                                  numpy.exp(total / count), rtol=1e-6)


def test_runs_trained_apart_are_merged_and_other_settings_refused(tmp_path):
    """--only with separate --json files (runs trained in parallel), then --merge gathers them in
    the experiment's order; a result file from a different model is refused."""
    import pytest
    for name, text in [("train.txt", TEXT), ("valid.txt", TEXT[:200]), ("test.txt", TEXT[:300])]:
        (tmp_path / name).write_text(text)
    assert engine_main(["prepare", "text", str(tmp_path / "train.txt"),
                        "--valid", str(tmp_path / "valid.txt"), "--test", str(tmp_path / "test.txt"),
                        "--min-count", "1", "--output", str(tmp_path / "c.h5")]) == 0
    (tmp_path / "tiny.toml").write_text(EXPERIMENT)
    study = load_tool("study_convergence")
    common = [str(tmp_path / "tiny.toml"), "--data-dir", str(tmp_path), "--runs-dir",
              str(tmp_path / "runs"), "--device", "cpu", "--quick"]
    for name in ("adaptive", "softmax"):
        assert study.main(common + ["--only", name, "--json", str(tmp_path / f"{name}.json")]) == 0
    merged = tmp_path / "merged.json"
    assert study.main(common[:-1] + ["--json", str(merged), "--merge",
                                     str(tmp_path / "adaptive.json"),
                                     str(tmp_path / "softmax.json")]) == 0
    rows = json.loads(merged.read_text())["rows"]
    assert [r["name"] for r in rows] == ["softmax", "adaptive"]
    assert rows[1]["speedup_to_target"] is not None or rows[1]["seconds_to_target"] is None
    # A row from another study with the same settings takes this experiment's paper figure.
    foreign = json.loads((tmp_path / "softmax.json").read_text())
    foreign["study"] = {**foreign["study"], "name": "elsewhere"}
    foreign["rows"][0]["paper_test_perplexity"] = 99.0
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    assert study.main(common[:-1] + ["--json", str(merged), "--merge",
                                     str(tmp_path / "foreign.json")]) == 0
    (row,) = json.loads(merged.read_text())["rows"]
    assert (row["paper_test_perplexity"], row["from_study"]) == (10.0, "elsewhere")
    # Another epoch cap: a run that stopped on its own merges, one cut by its cap is refused.
    capped = json.loads((tmp_path / "softmax.json").read_text())
    capped["train"]["max_epochs"] = 7
    capped["rows"][0].update(stopped="patience", epochs=1)
    (tmp_path / "capped.json").write_text(json.dumps(capped))
    assert study.main(common[:-1] + ["--json", str(merged), "--merge",
                                     str(tmp_path / "capped.json")]) == 0
    capped["rows"][0]["stopped"] = "max_epochs"
    (tmp_path / "capped.json").write_text(json.dumps(capped))
    with pytest.raises(SystemExit, match="max_epochs"):
        study.main(common[:-1] + ["--json", str(merged), "--merge", str(tmp_path / "capped.json")])
    other = json.loads((tmp_path / "softmax.json").read_text())
    other["model"]["hidden"] = [99]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="differs"):
        study.main(common[:-1] + ["--json", str(merged), "--merge", str(tmp_path / "other.json")])


def test_outputs_without_likelihood_keep_a_per_epoch_validation_curve_across_a_resume(tmp_path):
    """A factored-squared run records the normalised-outputs perplexity of the validation split
    after every epoch (the value of the model at that epoch: the last one equals the checkpoint's)
    and a resumed run with a higher epoch cap keeps the earlier epochs' values."""
    import numpy
    from engine import Engine
    for name, text in [("train.txt", TEXT), ("valid.txt", TEXT[:200]), ("test.txt", TEXT[:300])]:
        (tmp_path / name).write_text(text)
    assert engine_main(["prepare", "text", str(tmp_path / "train.txt"),
                        "--valid", str(tmp_path / "valid.txt"), "--test", str(tmp_path / "test.txt"),
                        "--min-count", "1", "--output", str(tmp_path / "c.h5")]) == 0
    exp = EXPERIMENT.split("[[run]]")[0].replace("patience = 1", "patience = 5") + (
        '[[run]]\nname = "squared"\noutput = "factored-squared"\n'
        'output_kwargs = {lr_scale = 5.0}\n')
    study = load_tool("study_convergence")
    args = [str(tmp_path / "s.toml"), "--data-dir", str(tmp_path), "--runs-dir",
            str(tmp_path / "runs"), "--device", "cpu", "--json", str(tmp_path / "s.json")]
    (tmp_path / "s.toml").write_text(exp)
    assert study.main(args) == 0
    (row,) = json.loads((tmp_path / "s.json").read_text())["rows"]
    first = row["valid_perplexity_normalised"]
    assert len(first) == 2 and all(p is not None and p > 1 for p in first)
    eng = Engine.from_checkpoint(str(tmp_path / "runs" / "tiny" / "squared" / "checkpoint.h5"),
                                 device="cpu", verbose=False)
    numpy.testing.assert_allclose(study.normalised_output_perplexity(eng, str(tmp_path / "c.h5"),
                                                                     "valid"), first[-1], rtol=1e-9)
    (tmp_path / "s.toml").write_text(exp.replace("max_epochs = 2", "max_epochs = 3"))
    assert study.main(args) == 0
    (row,) = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert row["epochs"] == 3 and row["valid_perplexity_normalised"][:2] == first
    assert row["valid_perplexity_normalised"][2] is not None
