"""tools/study_bce.py on a tiny synthetic multi-label set (CPU, float64): the rows and the table
it writes, a rerun that skips what is done, the bad-input exits, and, with PyTorch installed,
the control that makes the study's comparisons mean something: PyTorch started from the
engine's initial parameters with dense Adam takes the engine's steps (dense Adam too)."""
import json

import pytest

from engine.data.xmc import prepare_xmc
from engine.data.xmc_synthetic import write_synthetic_xmc
from toolrun import load_tool, torch_importable

EXPERIMENT = """
[study]
name = "tiny"
description = "tiny"
[train]
hidden = 8
batch_size = 32
lr = 1e-2
epochs = 2
seed = 0
dtype = "float64"
eval_batch = 50
[defaults]
kind = "engine"
loss = "bce"
init = "engine"
bias = "zero"
adam = "lazy"
normalise = "sum"
[[dataset]]
name = "syn"
file = "syn.h5"
max_train = 200
[[run]]
name = "hinge"
loss = "squared-hinge"
[[run]]
name = "bce-zero"
[[run]]
name = "bce-prior"
bias = "prior"
[[run]]
name = "bce-dense-adam"
adam = "dense"
[[run]]
name = "bce-mean"
normalise = "mean"
"""
TORCH_RUN = """
[[run]]
name = "torch-engine-init"
kind = "torch"
"""


@pytest.fixture
def data_dir(tmp_path):
    write_synthetic_xmc(tmp_path / "tr.txt", tmp_path / "te.txt", 240, 60, num_features=50,
                        num_labels=40, labels_per_point=3, features_per_point=10, seed=1)
    prepare_xmc(str(tmp_path / "tr.txt"), str(tmp_path / "te.txt"), str(tmp_path / "syn.h5"),
                valid_fraction=0.0)
    return tmp_path


def test_study_rows_table_and_rerun(data_dir, capsys):
    tool = load_tool("study_bce")
    with_torch = torch_importable()
    (data_dir / "exp.toml").write_text(EXPERIMENT + (TORCH_RUN if with_torch else ""))
    out = data_dir / "res.json"
    argv = [str(data_dir / "exp.toml"), "--data-dir", str(data_dir), "--json", str(out)]
    assert tool.main(argv) == 0
    result = json.loads(out.read_text())
    rows = {r["run"]: r for r in result["rows"]}
    assert set(rows) == {"hinge", "bce-zero", "bce-prior", "bce-dense-adam", "bce-mean"} | (
        {"torch-engine-init"} if with_torch else set())
    for r in rows.values():
        assert r["command"].startswith("python tools/study_bce.py ") and len(r["history"]) == 2
        for h in r["history"]:
            assert 0 <= h["p@1"] <= 1 and h["train_loss"] > 0
    assert result["datasets"]["syn"]["train"] == 200 and result["datasets"]["syn"]["test"] == 60
    # the prior bias starts below zero; the zero-bias run's biases only begin to move
    assert rows["bce-prior"]["history"][0]["mean_output_bias"] < -1.0
    assert rows["bce-zero"]["history"][0]["mean_output_bias"] > -1.0
    table = (data_dir / "res.md").read_text()
    assert "| bce-prior |" in table and "| most-frequent |" in table
    if with_torch:       # same start, dense Adam on both sides: the same training, float64
        a, b = rows["torch-engine-init"]["history"], rows["bce-dense-adam"]["history"]
        for ha, hb in zip(a, b):
            assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-9)
            assert ha["p@1"] == hb["p@1"] and ha["p@5"] == hb["p@5"]
    before = out.read_text()
    assert tool.main(argv) == 0                 # everything done: nothing rerun
    assert out.read_text() == before


def test_bad_inputs_exit_2_with_one_line(data_dir, capsys):
    tool = load_tool("study_bce")
    bad = data_dir / "bad.toml"
    bad.write_text(EXPERIMENT.replace('adam = "lazy"', 'adam = "slow"'))
    with pytest.raises(SystemExit) as exc:
        tool.main([str(bad), "--data-dir", str(data_dir), "--json", str(data_dir / "r.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "adam must be one of lazy, dense" in err
    (data_dir / "exp.toml").write_text(EXPERIMENT)
    with pytest.raises(SystemExit) as exc:
        tool.main([str(data_dir / "exp.toml"), "--data-dir", str(data_dir / "nowhere"),
                   "--json", str(data_dir / "r.json")])
    assert exc.value.code == 2 and "not found" in capsys.readouterr().err
    assert not (data_dir / "r.json").exists()
