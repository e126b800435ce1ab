"""`engine train`'s flags come from the option declarations: every technique's options are
flags, a flag that does not apply is one line (exit 2), nonsense numbers are refused, resume
applies and logs what may change, and the help texts say what the commands do."""
import json
import os
import subprocess
import sys

import pytest

from engine.checkpoint import load_checkpoint
from engine.cli import main
from engine.data.xmc import prepare_xmc
from engine.data.xmc_synthetic import write_synthetic_xmc
from toy_lm import LM, prepare_toy_corpus


@pytest.fixture(scope="module")
def xmc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xmc")
    tr, te = str(tmp / "tr.txt"), str(tmp / "te.txt")
    write_synthetic_xmc(tr, te, 400, 80, 60, 30, labels_per_point=2, features_per_point=8, seed=2)
    out = tmp / "bibtex.h5"
    prepare_xmc(tr, te, str(out), valid_fraction=0.2)
    return str(out)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return prepare_toy_corpus(tmp_path_factory.mktemp("lm"))


def error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_flag_that_does_not_apply_is_one_line(xmc, corpus, capsys):
    assert main(["train", "--data", xmc, "--chunk-size", "7"]) == 2
    assert error_line(capsys) == ("engine train: error: --chunk-size applies to --output softmax, "
                                  "not to squared-hinge")
    assert main(["train", "--data", xmc, "--chunk-size", "7", "--cutoffs", "5", "--context", "9"]) == 2
    err = error_line(capsys)
    for part in ("--chunk-size applies to --output softmax", "--cutoffs applies to --output adaptive",
                 "--context applies to --model mlp-lm, not to mlp-classifier"):
        assert part in err
    assert main(["train", "--data", corpus, "--weights", "ffi", "--fan-in", "8"]) == 2
    assert "--weights applies to --output squared-hinge, bce, not to softmax" in error_line(capsys)
    assert main(["train", "--data", xmc, "--fan-in", "8"]) == 2
    assert error_line(capsys).endswith("--fan-in applies with --weights ffi, not dense")
    assert main(["train", "--data", corpus, "--momentum", "0.9"]) == 2
    assert error_line(capsys).endswith("--momentum applies to --optimizer sgd, not to adam")
    assert main(["train", "--data", corpus, "--output", "adaptive", "--cutoffs", "5",
                 "--head-coverage", "0.5"]) == 2
    assert error_line(capsys).endswith("--head-coverage applies with --cutoffs auto, not 5")
    assert main(["train", "--data", xmc, "--meprop-mode", "unified"]) == 2
    assert error_line(capsys).endswith("--meprop-mode applies with --meprop-k")
    assert main(["train", "--data", corpus, "--output", "factored-squared", "--zloss-a", "2"]) == 2
    assert error_line(capsys).endswith("--zloss-a applies with --loss zloss, not squared")
    assert main(["train", "--data", xmc, "--output", "softmax"]) == 2
    assert "--output softmax does not take several labels per example" in error_line(capsys)


def test_output_kwargs_keys_are_checked(xmc, capsys):
    assert main(["train", "--data", xmc, "--output-kwargs", '{"colour": 1}']) == 2
    err = error_line(capsys)
    assert "--output-kwargs: 'colour' is not an argument of the squared-hinge output" in err
    assert "fan_in" in err and "weights" in err
    assert main(["train", "--data", xmc, "--output-kwargs", "{nope"]) == 2
    assert "--output-kwargs: not valid JSON" in error_line(capsys)
    assert main(["train", "--data", xmc, "--output-kwargs", '{"fan_in": 4}', "--fan-in", "4",
                 "--weights", "ffi"]) == 2
    assert "'fan_in' is also given as --fan-in" in error_line(capsys)


def test_ffi_options_as_flags(xmc, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", xmc, "--hidden", "--intermediate", "16", "--weights", "ffi",
                 "--fan-in", "8", "--rewire-every", "5", "--ffi-method", "reference",
                 "--deterministic", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                 "--run-dir", str(run), "--no-progress", "--json"]) == 0
    assert "test_psp@1" in last_json(capsys)
    cfg = load_checkpoint(str(run / "checkpoint.h5"))["model_config"]["output_kwargs"]
    assert (cfg["weights"], cfg["fan_in"], cfg["rewire_every"], cfg["method"],
            cfg["deterministic"]) == ("ffi", 8, 5, "reference", True)


def test_factored_squared_trains_on_multilabel_data(xmc, tmp_path, capsys):
    assert main(["train", "--data", xmc, "--hidden", "16", "--output", "factored-squared",
                 "--output-lr", "0.01", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                 "--run-dir", str(tmp_path / "run"), "--no-progress", "--json"]) == 0
    result = last_json(capsys)
    assert result["steps"] == 10 and "test_loss" in result         # 320 points / 32


@pytest.mark.parametrize("flags, message", [
    (["--max-steps-per-epoch", "-1"], "--max-steps-per-epoch must be >= 1, got -1"),
    (["--max-steps-per-epoch", "0"], "--max-steps-per-epoch must be >= 1, got 0"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 0"),
    (["--checkpoint-every", "-5"], "--checkpoint-every must be >= 1, got -5"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
    (["--epochs", "two"], "--epochs: expected an integer, got 'two'"),
])
def test_nonsense_numbers_are_refused(corpus, tmp_path, capsys, flags, message):
    assert main(["train", "--data", corpus, "--run-dir", str(tmp_path / "r"), *flags]) == 2
    assert error_line(capsys) == f"engine train: error: {message}"
    assert not (tmp_path / "r").exists()


def test_predict_and_evaluate_refuse_nonsense_numbers(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", corpus, *LM, "--epochs", "1", "--run-dir", str(run),
                 "--no-test"]) == 0
    capsys.readouterr()
    for top in ("-1", "0"):
        assert main(["predict", str(run / "checkpoint.h5"), "--data", corpus, "the", "--top", top]) == 2
        assert error_line(capsys) == f"engine predict: error: --top must be >= 1, got {top}"
    assert main(["evaluate", str(run / "checkpoint.h5"), "--data", corpus, "--batch-size", "0"]) == 2
    assert error_line(capsys) == "engine evaluate: error: --batch-size must be >= 1, got 0"


def test_resume_applies_and_logs_what_may_change_and_refuses_the_rest(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", corpus, *LM, "--epochs", "1", "--batch-size", "32",
                 "--run-dir", str(run), "--no-test"]) == 0
    ck = str(run / "checkpoint.h5")
    capsys.readouterr()
    assert main(["train", "--resume", ck, "--data", corpus, "--epochs", "3", "--lr", "5",
                 "--embed", "999", "--seed", "4"]) == 2
    err = error_line(capsys)
    assert err.startswith("engine train: error: --embed, --seed cannot change when resuming")
    assert "resumable: " in err and "--lr" in err and "--epochs" in err
    # flags equal to the checkpoint's are accepted (a run's own config.toml, for instance)
    assert main(["train", "--resume", ck, "--data", corpus, "--epochs", "2", "--lr", "0.01",
                 "--embed", "8", "--no-progress", "--no-test", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["epochs"] == 2 and result["steps"] == 50     # the checkpoint's batch size, 32
    for line in (f"[engine] resuming {ck} at epoch 2, step 25\n", "[engine] resume: --lr 0.001 -> 0.01\n",
                 "[engine] resume: --epochs 1 -> 2\n"):
        assert line in out and line in (run / "log.txt").read_text()
    state = load_checkpoint(ck)
    assert state["optimizer_config"]["lr"] == 0.01 and state["engine_state"]["batch_size"] == 32
    # without --data: the data the run's config.toml recorded
    assert main(["train", "--resume", ck, "--epochs", "3", "--no-progress", "--no-test",
                 "--json"]) == 0
    assert last_json(capsys)["steps"] == 75


def test_help_texts():
    from engine.cli import COMMANDS, build_parser
    top = build_parser().format_help()
    assert set(COMMANDS) == {"train", "evaluate", "predict", "prepare", "checkpoint", "bench"}
    for command in COMMANDS:
        assert f"    {command} " in top or f"    {command}\n" in top, command
    train = build_parser("train")._subparsers._group_actions[0].choices["train"].format_help()
    assert "train a language model or a classifier" in train
    for flag in ("--weights", "--fan-in", "--rewire-every", "--ffi-method", "--deterministic",
                 "--cutoffs", "--div-value", "--head-coverage", "--output-lr", "--check-every",
                 "--band", "--loss", "--chunk-size", "--meprop-k", "--config", "--lr", "--epochs"):
        assert flag in train, flag
    for group in ("data:", "model (", "--output adaptive:", "--output factored-*",
                  "--output squared-hinge, bce", "optimizer:", "training:"):
        assert group in train, group


def test_top_level_help_imports_no_numerics():
    code = ("import sys\nfrom engine.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print([m for m in ('numpy', 'numba', 'h5py', 'engine.engine', 'engine.backend') "
            "if m in sys.modules])")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": root}, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_argument_errors_are_one_line_and_come_before_the_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--chunksize", "4"])
    assert exit_.value.code == 2
    assert error_line(capsys) == ("engine train: error: unrecognized arguments: --chunksize 4 "
                                  "(did you mean --chunk-size?) (see engine train --help)")
    assert main(["train", "--activation", "sigmoid"]) == 2       # no --data: the default corpus
    assert error_line(capsys) == "engine train: error: --activation must be one of tanh, relu, got 'sigmoid'"
    assert not (tmp_path / "cache").exists()                     # ... was not prepared first
