"""`engine prepare xmc | xmc-synthetic` and `engine train` on the result: the --json line carries
test P@k, nDCG@k and PSP@k, with a dense output and (when present) a fixed fan-in output."""
import json

import pytest

from baselines import most_frequent_label_p_at_1
from engine.cli import main
from engine.data.xmc import describe
from engine.data.xmc_synthetic import write_synthetic_xmc


def last_json(capsys):
    lines = [l for l in capsys.readouterr().out.strip().splitlines() if l.strip()]
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xmc")
    tr, te = str(tmp / "tr.txt"), str(tmp / "te.txt.gz")
    write_synthetic_xmc(tr, te, 1500, 300, 300, 40, labels_per_point=2, features_per_point=12,
                        seed=1)
    out = tmp / "d.h5"
    assert main(["prepare", "xmc", tr, te, "--output", str(out), "--valid-fraction", "0.2"]) == 0
    return out


def train(dataset, tmp_path, capsys, *extra):
    assert main(["train", "--data", str(dataset), "--hidden", "--intermediate", "32",
                 "--epochs", "2", "--batch-size", "32", "--lr", "1e-2", "--device", "cpu",
                 "--run-dir", str(tmp_path / "run"), "--no-progress", "--json", *extra]) == 0
    return last_json(capsys)


def test_prepare_and_train_dense(dataset, tmp_path, capsys):
    info = describe(dataset)
    assert info.splits == {"train": 1200, "valid": 300, "test": 300}
    result = train(dataset, tmp_path, capsys)
    for key in ("test_p@1", "test_p@3", "test_p@5", "test_ndcg@5", "test_psp@1", "valid_p@1"):
        assert key in result, key
    # a learnable problem: far above the P@1 of predicting the most frequent label everywhere
    # (0.32 here; measured 0.89)
    baseline = most_frequent_label_p_at_1(dataset)
    assert 0.2 < baseline < 0.5
    assert result["test_p@1"] > baseline + 0.35, (result, baseline)


def test_train_ffi_output(dataset, tmp_path, capsys):
    result = train(dataset, tmp_path, capsys, "--output", "squared-hinge", "--output-kwargs",
                   '{"weights": "ffi", "fan_in": 8, "rewire_every": 20}')
    baseline = most_frequent_label_p_at_1(dataset)          # 0.32; measured 0.84
    assert result["test_p@1"] > baseline + 0.35, (result, baseline)


def test_prepare_synthetic_and_errors(tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert main(["prepare", "xmc-synthetic", "--train-points", "200", "--test-points", "20",
                 "--features", "50", "--labels", "30", "--output", str(out)]) == 0
    assert describe(out).splits["test"] == 20
    bad = tmp_path / "bad.txt"
    bad.write_text("1 5 5\n0 1;1\n")
    assert main(["prepare", "xmc", str(bad), str(bad), "--output", str(tmp_path / "b.h5")]) == 2
    err = capsys.readouterr().err
    assert "bad.txt: line 2: malformed pair" in err


def test_prepare_prints_one_summary_line(tmp_path, capsys):
    """Not a Python dict: the file, its kind and sizes, examples per split, time, source."""
    tr, te = str(tmp_path / "tr.txt"), str(tmp_path / "te.txt")
    write_synthetic_xmc(tr, te, 100, 20, 30, 12, labels_per_point=2, features_per_point=4, seed=1)
    out = tmp_path / "d.h5"
    assert main(["prepare", "xmc", tr, te, "--output", str(out), "--valid-fraction", "0.2"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "{" not in printed[0], printed
    assert printed[0].startswith(f"[engine] {out}: multi-label, sparse, 30 features, 12 labels; "
                                 f"train 80, valid 20, test 20 examples; ")
    assert printed[0].endswith("source: tr.txt + te.txt")
