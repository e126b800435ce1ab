"""engine/runlog.py's run folder: made with its missing parents, checked writable (one line
naming the folder at fault), and undone by `discard` only where this run made it."""
import os

import pytest

from engine.runlog import RunFolderError, RunLog, make_run_folder


def test_make_run_folder_returns_what_it_created(tmp_path):
    assert make_run_folder(tmp_path / "a" / "b") == [str(tmp_path / "a" / "b"), str(tmp_path / "a")]
    assert make_run_folder(tmp_path / "a" / "b") == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        make_run_folder(tmp_path / "file" / "run")


def test_discard_removes_only_what_this_run_made(tmp_path):
    log = RunLog(str(tmp_path / "runs" / "r1"), config={"training": {"epochs": 1}})
    log.write_config()
    log.line("[engine] starting")
    log.discard()
    assert os.listdir(tmp_path) == []                  # runs/r1 and runs/ were this run's
    (tmp_path / "runs").mkdir()
    log = RunLog(str(tmp_path / "runs" / "r2"))
    log.line("[engine] starting")
    (tmp_path / "runs" / "r2" / "other.txt").write_text("not the run's")
    log.discard()
    assert os.listdir(tmp_path / "runs" / "r2") == ["other.txt"]     # never a folder with content
    log = RunLog(str(tmp_path / "runs" / "r2"))        # existed before this run: left alone
    log.line("[engine] again")
    log.discard()
    assert sorted(os.listdir(tmp_path / "runs" / "r2")) == ["log.txt", "other.txt"]
