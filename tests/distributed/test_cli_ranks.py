"""`mpiexec -n N engine train` end to end (float64, CPU): the single-process run's metrics and
parameters, rank 0 alone printing and writing the run folder, sharded checkpoints that resume
bit-identically on the same number of ranks and to 1e-10 in one process, `engine checkpoint
merge` / `split` round trips, a merged checkpoint that evaluates as the sharded run did, and
the failures: a rank that raises or is killed ends the job within seconds with its error, ranks
started with different data and fewer labels than ranks are one line each (exit status 2).
"""
from __future__ import annotations

import json
import os

import numpy
import pytest

from dist_scenarios import XMC_SHAPE, write_files
from engine.checkpoint import load_checkpoint
from engine.cli import main
from engine.distributed.checkpoints import merge_checkpoint
from mpi_jobs import mpi_skip_reason, run_engine, run_mpmd, run_planted

pytestmark = pytest.mark.skipif(mpi_skip_reason() is not None, reason=str(mpi_skip_reason()))

TOL = 1e-10
#: A failed job must end well before this (measured: 2-4 s on the 2-core development machine).
FAIL_SECONDS = 30
TRAIN = ["--hidden", "16", "--batch-size", "13", "--max-steps-per-epoch", "8", "--lr", "0.01",
         "--dtype", "float64", "--device", "cpu", "--no-progress", "--json",
         "--checkpoint-every", "5"]


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def arrays(ck):
    """{"model/<key>" or "optimizer/<key>": array} of a load_checkpoint dict."""
    out = {f"model/{k}": numpy.asarray(v) for k, v in ck["model_state"].items()}
    out.update({f"optimizer/{k}": v for k, v in ck["optimizer_state"].items()
                if isinstance(v, numpy.ndarray)})
    return out


def assert_same_arrays(got, want, tol=None):
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].shape == value.shape, key
        if tol is None:
            assert got[key].dtype == value.dtype and got[key].tobytes() == value.tobytes(), \
                f"{key} differs"
        else:
            scale = max(1.0, float(numpy.abs(value).max())) if value.size else 1.0
            err = float(numpy.abs(got[key].astype(float) - value.astype(float)).max()) \
                if value.size else 0.0
            assert err <= tol * scale, f"{key}: max abs difference {err:.3g}"


def assert_close(got, want, what):
    assert abs(got - want) <= TOL * max(1.0, abs(want)), f"{what}: {got} vs {want}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The runs every test reads: one process, 2 ranks for 2 epochs, 2 ranks for 1 epoch then
    resumed for the second on 2 ranks and (from the same checkpoint, copied) in one process."""
    import shutil
    tmp = tmp_path_factory.mktemp("cli")
    data = write_files(str(tmp / "data"))
    xmc = os.path.join(data, "xmc.h5")
    out = {"dir": tmp, "xmc": xmc, "data": data}
    single = str(tmp / "single")
    from engine.runlog import RunLog
    plot, RunLog.plot = RunLog.plot, lambda *a: None          # no test reads its plot
    try:
        assert main(["train", "--data", xmc, "--epochs", "2", "--run-dir", single] + TRAIN) == 0
    finally:
        RunLog.plot = plot
    out["single"] = single
    for name, n, epochs in (("two", 2, 2), ("half", 2, 1)):
        run_dir = str(tmp / name)
        proc = run_engine(n, "train", "--data", xmc, "--epochs", epochs, "--run-dir", run_dir,
                          *TRAIN, plots=name == "two")
        assert proc.returncode == 0, proc.stderr[-4000:]
        out[name], out[name + "_proc"] = run_dir, proc
    shutil.copytree(out["half"], str(tmp / "half1"))
    proc = run_engine(2, "train", "--resume", str(tmp / "half" / "checkpoint.h5"), "--epochs",
                      "2", *TRAIN, plots=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out["half_resumed"] = proc
    out["half1"] = str(tmp / "half1")                 # continued in one process (merged)
    plot, RunLog.plot = RunLog.plot, lambda *a: None
    try:
        assert main(["train", "--resume", str(tmp / "half1" / "checkpoint.h5"), "--epochs", "2"]
                    + TRAIN) == 0
    finally:
        RunLog.plot = plot
    return out


def test_two_ranks_give_the_single_process_run(runs):
    single = json.load(open(os.path.join(runs["single"], "metrics.json")))
    two = json.load(open(os.path.join(runs["two"], "metrics.json")))
    assert len(single["history"]) == len(two["history"]) == 2
    for a, b in zip(single["history"], two["history"]):
        for key, value in a.items():
            if isinstance(value, float) and key not in ("seconds", "examples_per_second"):
                assert_close(b[key], value, key)
    assert [s for s, _ in two["steps"]] == [s for s, _ in single["steps"]]
    for (_, got), (_, want) in zip(two["steps"], single["steps"]):
        assert_close(got, want, "step loss")
    result = json_lines(runs["two_proc"].stdout)[-1]
    assert result["steps"] == 16 and result["epochs"] == 2
    merged = merge_checkpoint(os.path.join(runs["two"], "checkpoint.h5"))
    reference = load_checkpoint(os.path.join(runs["single"], "checkpoint.h5"))
    assert_same_arrays(arrays(merged), arrays(reference), tol=TOL)


def test_rank_zero_alone_prints_and_writes(runs):
    proc = runs["two_proc"]
    assert len(json_lines(proc.stdout)) == 1
    assert proc.stdout.count("[engine] epoch ") == 2
    assert proc.stdout.count("[engine] device") <= 2          # the backend's line, the run's line
    assert "[engine] 2 ranks (MPIComm)" in proc.stdout
    names = set(os.listdir(runs["two"]))
    assert {"log.txt", "metrics.json", "config.toml", "plot.png", "checkpoint.h5",
            "best.h5"} <= names
    shards = sorted(n for n in names if n.startswith("checkpoint.") and "-of-" in n)
    assert len(shards) == 2 and shards[0].endswith("rank0-of-2.h5")
    log = open(os.path.join(runs["two"], "log.txt")).read()
    assert log.count("[engine] epoch 2,") == 1
    manifest = load_checkpoint(os.path.join(runs["two"], "checkpoint.h5"))
    assert manifest["shard"]["role"] == "manifest" and manifest["shard"]["size"] == 2
    assert manifest["model_state"] == {}
    labels = XMC_SHAPE[3]
    assert manifest["shard"]["label_ranges"] == [[0, labels // 2], [labels // 2, labels]]


def test_resume_on_the_same_ranks_is_bit_identical(runs):
    assert "resuming" in runs["half_resumed"].stdout
    for r in range(2):
        got = load_checkpoint(_shard(runs["half"], r, 2))
        want = load_checkpoint(_shard(runs["two"], r, 2))
        assert_same_arrays(arrays(got), arrays(want))
        for key in ("step", "epoch", "batch_in_epoch", "epoch_loss_sum", "epoch_examples"):
            assert got["engine_state"][key] == want["engine_state"][key], key
    got = json.load(open(os.path.join(runs["half"], "metrics.json")))["history"]
    want = json.load(open(os.path.join(runs["two"], "metrics.json")))["history"]
    assert [h["train_loss"] for h in got] == [h["train_loss"] for h in want]


def test_a_sharded_run_continues_in_one_process(runs):
    got = load_checkpoint(os.path.join(runs["half1"], "checkpoint.h5"))
    assert got["shard"] is None                  # one process writes one file
    want = merge_checkpoint(os.path.join(runs["two"], "checkpoint.h5"))
    assert_same_arrays(arrays(got), arrays(want), tol=TOL)
    assert got["engine_state"]["step"] == want["engine_state"]["step"] == 16


def _shard(run_dir, rank, size):
    names = [n for n in os.listdir(run_dir)
             if n.startswith("checkpoint.") and n.endswith(f".rank{rank}-of-{size}.h5")]
    assert len(names) == 1, names
    return os.path.join(run_dir, names[0])


def test_merge_and_split_round_trip(runs, tmp_path, capsys):
    single = str(tmp_path / "single.h5")
    assert main(["checkpoint", "merge", runs["two"], "--output", single]) == 0
    merged = load_checkpoint(single)
    assert merged["shard"] is None
    assert main(["checkpoint", "split", single, "--ranks", "2", "--output",
                 str(tmp_path / "two")]) == 0
    for r in range(2):           # the shards the run wrote, array for array
        assert_same_arrays(arrays(load_checkpoint(_shard(str(tmp_path / "two"), r, 2))),
                           arrays(load_checkpoint(_shard(runs["two"], r, 2))))
    assert main(["checkpoint", "split", str(tmp_path / "two" / "checkpoint.h5"), "--ranks",
                 "3", "--output", str(tmp_path / "three")]) == 0
    again = str(tmp_path / "again.h5")
    assert main(["checkpoint", "merge", str(tmp_path / "three" / "checkpoint.h5"),
                 "--output", again]) == 0
    assert_same_arrays(arrays(load_checkpoint(again)), arrays(merged))
    assert "3 rank(s)" in capsys.readouterr().out


def test_merged_checkpoint_evaluates_as_the_sharded_run(runs, tmp_path, capsys):
    single = str(tmp_path / "single.h5")
    assert main(["checkpoint", "merge", str(os.path.join(runs["two"], "checkpoint.h5")),
                 "--output", single]) == 0
    want = json_lines(runs["two_proc"].stdout)[-1]
    for path in (single, os.path.join(runs["two"], "checkpoint.h5")):   # a manifest: merged
        capsys.readouterr()
        assert main(["evaluate", path, "--data", runs["xmc"], "--split", "test",
                     "--batch-size", "13", "--device", "cpu", "--json"]) == 0
        got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        for key in ("loss", "p@1", "p@5", "ndcg@3", "psp@5"):
            assert_close(got[key], want[f"test_{key}"], key)


def test_a_rank_that_raises_ends_the_job(runs, tmp_path):
    proc = run_planted(2, "raise", 1, 3, "train", "--data", runs["xmc"], "--epochs", "1",
                       "--run-dir", str(tmp_path / "r"), *TRAIN, timeout=FAIL_SECONDS)
    assert proc.returncode != 0
    assert "[rank 1/2] RuntimeError: planted failure on rank 1 at step 4" in proc.stderr
    assert proc.seconds < FAIL_SECONDS


def test_a_killed_rank_ends_the_job(runs, tmp_path):
    proc = run_planted(2, "kill", 0, 3, "train", "--data", runs["xmc"], "--epochs", "1",
                       "--run-dir", str(tmp_path / "r"), *TRAIN, timeout=FAIL_SECONDS)
    assert proc.returncode != 0
    assert proc.seconds < FAIL_SECONDS


def test_a_full_disk_on_one_rank_keeps_the_previous_checkpoint(tmp_path):
    """Rank 1's shard of the second checkpoint (step 8) fails midway: every rank stops, the
    manifest and shards of step 5 stay whole, no temporary file is left."""
    xmc = os.path.join(write_files(str(tmp_path / "data")), "xmc.h5")
    run = tmp_path / "r"
    proc = run_planted(2, "full-disk", 1, 5, "train", "--data", xmc, "--epochs", "1",
                       "--run-dir", str(run), "--no-test", *TRAIN, timeout=FAIL_SECONDS)
    assert proc.returncode == 2, proc.stderr[-3000:]
    ck = run / "checkpoint.h5"
    errors = [line for line in proc.stderr.splitlines() if "engine train" in line]
    assert errors and all(line.endswith(f"; the previous checkpoint {ck} (step 5, batch 5 of "
                                        f"epoch 1) is kept") for line in errors), proc.stderr
    assert "rank(s) [1] could not write the checkpoint" in errors[0]
    assert "No space left on device" in errors[0] and "Traceback" not in proc.stderr
    assert merge_checkpoint(str(ck))["engine_state"]["step"] == 5
    assert not [n for n in os.listdir(run) if n.startswith(".tmp-")]
    assert len([n for n in os.listdir(run) if ".rank" in n]) == 2        # step 5's shards


def test_ranks_started_with_different_data_are_one_line(runs, tmp_path):
    from engine.data.xmc import prepare_xmc
    from engine.data.xmc_synthetic import write_synthetic_xmc
    tr, te, other = (str(tmp_path / n) for n in ("tr.txt", "te.txt", "other.h5"))
    n_train, n_test, features, labels = XMC_SHAPE
    write_synthetic_xmc(tr, te, n_train, n_test, features, labels, labels_per_point=2,
                        features_per_point=6, seed=99)       # same shape, other points
    prepare_xmc(tr, te, other, valid_fraction=0.1)
    args = ["train", "--epochs", "1", "--run-dir", str(tmp_path / "r")] + TRAIN
    proc = run_mpmd(args + ["--data", runs["xmc"]], args + ["--data", other],
                    timeout=FAIL_SECONDS)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("engine train")]
    assert len(errors) == 1 and errors[0].startswith(   # the label counts differ: the models too
        "engine train: error: ranks were started with different configurations or data"), \
        proc.stderr[-3000:]
    assert "rank(s) [1] differ from rank 0" in errors[0]
    assert "Traceback" not in proc.stderr


def test_fewer_labels_than_ranks_is_one_line(runs, tmp_path):
    from engine.data.classification import write_classification
    two = str(tmp_path / "two_classes.h5")
    rng = numpy.random.default_rng(0)
    write_classification(two, {"train": (rng.standard_normal((20, 3)), rng.integers(0, 2, 20))},
                         2)
    proc = run_engine(3, "train", "--data", two, "--epochs", "1", "--no-test", *TRAIN,
                      timeout=FAIL_SECONDS, plots=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == ["engine train: error: softmax: 2 labels cannot be sharded over 3 ranks "
                      "(every rank needs at least one label; use fewer ranks)"], proc.stderr
