"""`engine train` against what it reads and writes: an output that does not fit the data, a
run folder or working directory that cannot be written, a full disk during a checkpoint,
temporary files left by a killed writer, and runs that fail before their first step. Each
failure is one line with exit status 2, keeps what was saved and leaves no debris."""
import builtins
import errno
import io
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy
import pytest

from engine.checkpoint import load_checkpoint
from engine.cli import main
from engine.data.mnist import STEMS, write_idx
from engine.data.xmc import prepare_xmc
from engine.data.xmc_synthetic import write_synthetic_xmc
from engine.engine import Engine
from toy_lm import LM as BASE_LM, prepare_toy_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM = BASE_LM + ["--batch-size", "32"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """25 training batches of 32 n-grams."""
    return prepare_toy_corpus(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def xmc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xmc")
    tr, te = str(tmp / "tr.txt"), str(tmp / "te.txt")
    write_synthetic_xmc(tr, te, 200, 40, 40, 20, labels_per_point=2, features_per_point=6, seed=2)
    out = tmp / "x.h5"
    prepare_xmc(tr, te, str(out), valid_fraction=0.2)
    return str(out)


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """A dense single-label classification file (tiny MNIST-shaped IDX files, prepared)."""
    tmp = tmp_path_factory.mktemp("idx")
    rng = numpy.random.default_rng(0)
    for split, n in (("train", 60), ("test", 20)):
        write_idx(tmp / STEMS[f"{split}_images"], (rng.random((n, 28, 28)) * 255).astype(numpy.uint8))
        write_idx(tmp / STEMS[f"{split}_labels"], rng.integers(0, 10, n).astype(numpy.uint8))
    out = tmp / "m.h5"
    assert main(["prepare", "mnist", str(tmp), "--valid-size", "10", "--output", str(out)]) == 0
    return str(out)


def error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def temps(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(".tmp-"))


# ------------------------------------------------------------------ outputs and the data
@pytest.mark.parametrize("data, flags, message", [
    ("xmc", ["--output", "softmax"],
     "--output softmax does not take several labels per example (multi-label), which {path} has"),
    ("xmc", ["--output", "adaptive"], "--output adaptive does not take several labels"),
    ("classes", ["--output", "adaptive"],
     "{path}: --cutoffs auto sizes the clusters from a language-model corpus's word counts, "
     "which this file has not; give the cutoffs"),
    ("corpus", ["--weights", "ffi", "--fan-in", "8"],
     "--weights applies to --output squared-hinge, bce, not to softmax"),
    ("corpus", ["--intermediate", "8"], "--intermediate applies to --model mlp-classifier"),
    ("classes", ["--model", "mlp-lm"], "--model mlp-lm trains on"),
    ("corpus", ["--output", "squared-hinge", "--output-kwargs", '{"colour": 1}'],
     "--output-kwargs: 'colour' is not an argument of the squared-hinge output (its keys: "),
])
def test_an_output_that_does_not_fit_the_data_is_one_line(data, flags, message, request, tmp_path,
                                                          capsys, monkeypatch):
    path = request.getfixturevalue(data)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", path, "--device", "cpu", "--no-progress", *flags]) == 2
    err = error_line(capsys)
    assert err.startswith("engine train: error: ") and message.format(path=path) in err, err
    assert os.listdir(tmp_path) == []                     # no runs/ folder


# ---------------------------------------------------------------- folders not writable
@pytest.fixture
def read_only(monkeypatch):
    """read_only(folder): nothing can be created in `folder`. As a normal user its mode is
    0555; root ignores modes, so there the calls that create a file or a folder fail in it
    with EACCES, as they would (os.mkdir, os.open with a write flag, open() to write,
    os.replace into it). Returns the strerror the message must carry."""
    made = []

    def make(folder):
        folder = os.path.abspath(folder)
        made.append(folder)
        if os.geteuid() != 0:
            os.chmod(folder, 0o555)
            return "Permission denied"

        def blocked(path):
            path = os.path.abspath(os.fspath(path))
            return path == folder or os.path.dirname(path) == folder

        def deny(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

        real_mkdir, real_open, real_replace = os.mkdir, os.open, os.replace
        real_builtin_open = builtins.open
        writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | getattr(os, "O_TMPFILE", 0)

        def mkdir(path, *a, **k):
            if blocked(path):
                deny(path)
            return real_mkdir(path, *a, **k)

        def os_open(path, flags, *a, **k):
            if flags & writing and blocked(path):
                deny(path)
            return real_open(path, flags, *a, **k)

        def replace(src, dst, *a, **k):
            if blocked(dst):
                deny(dst)
            return real_replace(src, dst, *a, **k)

        def open_(file, mode="r", *a, **k):
            if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") \
                    and blocked(file):
                deny(file)
            return real_builtin_open(file, mode, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(io, "open", open_)
        return "Permission denied"

    yield make
    for folder in made:
        if os.geteuid() != 0:
            os.chmod(folder, 0o755)


def test_a_read_only_run_folder_is_one_line(corpus, tmp_path, capsys, read_only):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "notes.txt").write_text("mine")
    reason = read_only(ro)
    assert main(["train", "--data", corpus, *LM, "--run-dir", str(ro)]) == 2
    assert error_line(capsys) == (f"engine train: error: the run folder {ro} is not writable "
                                  f"({reason}); choose another with --run-dir")
    assert main(["train", "--data", corpus, *LM, "--run-dir", str(ro / "run")]) == 2
    assert error_line(capsys) == (f"engine train: error: cannot create the run folder "
                                  f"{ro / 'run'}: {ro} is not writable ({reason}); choose one "
                                  f"with --run-dir")
    assert sorted(os.listdir(ro)) == ["notes.txt"]


def test_a_read_only_working_directory_is_one_line(corpus, tmp_path, capsys, read_only,
                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    reason = read_only(tmp_path)
    assert main(["train", "--data", corpus, *LM]) == 2            # the default runs/<time>
    err = error_line(capsys)
    assert err.startswith("engine train: error: cannot create the run folder runs")
    assert err.endswith(f": {tmp_path} is not writable ({reason}); choose one with --run-dir")
    assert os.listdir(tmp_path) == []


def test_resuming_in_a_read_only_run_folder_is_one_line(corpus, tmp_path, capsys, read_only):
    run = tmp_path / "run"
    assert main(["train", "--data", corpus, *LM, "--epochs", "1", "--run-dir", str(run),
                 "--no-test"]) == 0
    capsys.readouterr()
    before = {n: (run / n).read_bytes() for n in os.listdir(run)}
    reason = read_only(run)
    assert main(["train", "--resume", str(run / "checkpoint.h5"), "--data", corpus,
                 "--epochs", "2", "--no-progress"]) == 2
    assert error_line(capsys) == (f"engine train: error: the run folder {run} is not writable "
                                  f"({reason}); choose another with --run-dir")
    assert {n: (run / n).read_bytes() for n in os.listdir(run)} == before


def test_a_run_folder_that_is_a_file_is_one_line(corpus, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["train", "--data", corpus, *LM, "--run-dir", str(tmp_path / "f" / "run")]) == 2
    assert error_line(capsys) == (f"engine train: error: cannot create the run folder "
                                  f"{tmp_path / 'f' / 'run'}: {tmp_path / 'f'} is a file")


# ------------------------------------------------------------------ a full disk
def fail_in_save(monkeypatch, save_number, action):
    """Run `action` at the third dataset written by the `save_number`-th checkpoint save
    (midway through the file: its temporary file exists and holds part of the model)."""
    saves, created = [], [0]
    real_save, real_create = Engine.save_checkpoint, h5py.Group.create_dataset

    def save(self, path):
        saves.append(path)
        return real_save(self, path)

    def create(self, name, *args, **kwargs):
        if len(saves) == save_number:
            created[0] += 1
            if created[0] == 3:
                action()
        return real_create(self, name, *args, **kwargs)

    monkeypatch.setattr(Engine, "save_checkpoint", save)
    monkeypatch.setattr(h5py.Group, "create_dataset", create)


def disk_full():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_one(corpus, tmp_path, capsys,
                                                               monkeypatch):
    run = tmp_path / "run"

    def full():
        assert temps(run), "the write is midway: its temporary file exists"
        disk_full()

    fail_in_save(monkeypatch, 2, full)
    assert main(["train", "--data", corpus, *LM, "--epochs", "1", "--checkpoint-every", "5",
                 "--run-dir", str(run), "--no-test"]) == 2
    ck = run / "checkpoint.h5"
    assert error_line(capsys) == (
        f"engine train: error: {ck}: could not write the checkpoint (No space left on device); "
        f"its temporary file was removed; the previous checkpoint {ck} (step 5, batch 5 of "
        f"epoch 1) is kept")
    assert load_checkpoint(str(ck))["engine_state"]["step"] == 5
    assert temps(run) == []
    monkeypatch.undo()                       # the disk has room again: resume from step 5
    assert main(["train", "--resume", str(ck), "--data", corpus, "--epochs", "1",
                 "--no-progress", "--no-test"]) == 0
    assert load_checkpoint(str(ck))["engine_state"]["step"] == 25


def test_a_full_disk_for_the_first_checkpoint(corpus, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    fail_in_save(monkeypatch, 1, disk_full)
    assert main(["train", "--data", corpus, *LM, "--epochs", "1", "--checkpoint-every", "5",
                 "--run-dir", str(run), "--no-test"]) == 2
    assert error_line(capsys) == (f"engine train: error: {run / 'checkpoint.h5'}: could not "
                                  f"write the checkpoint (No space left on device); its "
                                  f"temporary file was removed")
    assert not (run / "checkpoint.h5").exists() and temps(run) == []


# ------------------------------------------------------------------ debris
def test_temporary_files_of_a_killed_writer_are_removed_at_resume(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", corpus, *LM, "--epochs", "1", "--checkpoint-every", "5",
            "--run-dir", str(run), "--no-test"]
    script = textwrap.dedent(f"""
        import os, signal, sys
        import h5py
        from engine.engine import Engine
        from engine.cli import main
        saves, real_save, real_create = [], Engine.save_checkpoint, h5py.Group.create_dataset
        def save(self, path):
            saves.append(path)
            return real_save(self, path)
        def create(self, *args, **kwargs):
            if len(saves) == 2:                 # kill -9 midway through the second checkpoint
                os.kill(os.getpid(), signal.SIGKILL)
            return real_create(self, *args, **kwargs)
        Engine.save_checkpoint, h5py.Group.create_dataset = save, create
        sys.exit(main({args!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = temps(run)
    assert len(left) == 1 and left[0].endswith(".h5")              # the debris of the issue
    ck = run / "checkpoint.h5"
    assert load_checkpoint(str(ck))["engine_state"]["step"] == 5
    # another run's live writer (HDF5 holds a lock while writing) and a file of the user's
    live = h5py.File(run / ".tmp-livewrit.h5", "w")
    (run / ".tmp-notes.txt").write_text("mine")
    old = os.stat(run / left[0]).st_mtime - 60                     # killed a minute ago
    for name in (left[0], ".tmp-livewrit.h5"):
        os.utime(run / name, (old, old))
    try:
        assert main(["train", "--resume", str(ck), "--data", corpus, "--epochs", "1",
                     "--no-progress", "--no-test"]) == 0
    finally:
        live.close()
    out = capsys.readouterr().out
    assert f"[engine] removed 1 temporary file(s) left by an interrupted write: {left[0]}" in out
    assert temps(run) == [".tmp-livewrit.h5", ".tmp-notes.txt"]
    assert load_checkpoint(str(ck))["engine_state"]["step"] == 25


@pytest.mark.parametrize("error", [ValueError("bad data in the first batch"), KeyboardInterrupt()])
def test_a_run_that_fails_before_its_first_step_leaves_no_run_folder(corpus, tmp_path, capsys,
                                                                      monkeypatch, error):
    monkeypatch.chdir(tmp_path)

    def first_step(self, x, y, check_finite=True):
        raise error

    monkeypatch.setattr(Engine, "train_step", first_step)
    if isinstance(error, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            main(["train", "--data", corpus, *LM])
    else:
        assert main(["train", "--data", corpus, *LM]) == 2
        assert error_line(capsys) == "engine train: error: bad data in the first batch"
    assert os.listdir(tmp_path) == []          # neither runs/<time>/ nor runs/
    # a folder given with --run-dir that existed is kept, with what it held
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    try:
        main(["train", "--data", corpus, *LM, "--run-dir", str(mine)])
    except KeyboardInterrupt:
        pass
    assert (mine / "notes.txt").read_text() == "mine"      # never removed


def test_refused_runs_leave_no_run_folder(corpus, tmp_path, capsys, monkeypatch):
    """Bad flags, a vocabulary that differs from the checkpoint's and a missing file are
    refused before any folder is made."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", corpus, *LM, "--batch-size", "0"]) == 2
    assert main(["train", "--data", str(tmp_path / "nope.h5"), *LM]) == 2
    assert main(["train", "--data", corpus, *LM, "--epochs", "1", "--run-dir", "first",
                 "--no-test"]) == 0
    other = tmp_path / "other.txt"
    other.write_text("completely different words here\n" * 30)
    assert main(["prepare", "text", str(other), "--output", str(tmp_path / "other.h5")]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "first/checkpoint.h5", "--data", str(tmp_path / "other.h5"),
                 "--epochs", "2", "--run-dir", "second"]) == 2
    assert "vocabulary" in error_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["first", "other.h5", "other.txt"]
