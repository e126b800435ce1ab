"""engine/stale_files.py: which temporary files in a run folder count as abandoned. Only the
writers' own names, unlocked, and unchanged for STALE_AFTER seconds; and those names are the
ones the run folder's writers really use."""
import os
import time

import h5py
import numpy
import pytest

from engine import checkpoint, config, runlog
from engine.stale_files import STALE_AFTER, TEMP_NAME, remove_stale_temps, stale_temps


def touch(path, age):
    path.write_bytes(b"partial")
    t = time.time() - age
    os.utime(path, (t, t))


def test_only_old_unlocked_files_with_the_writers_names(tmp_path):
    old = STALE_AFTER + 60
    touch(tmp_path / ".tmp-ab12cd_9.h5", old)          # abandoned: removed
    touch(tmp_path / ".tmp-ab12cd_8.json", old)        # abandoned metrics.json: removed
    touch(tmp_path / ".tmp-ab12cd_7.toml", old)        # abandoned config.toml: removed
    touch(tmp_path / ".tmp-fresh123.h5", 0)            # being written a moment ago: kept
    touch(tmp_path / ".tmp-notes.txt", old)            # not our name: kept
    touch(tmp_path / ".tmp-longer_name.h5", old)       # not mkstemp's 8 characters: kept
    touch(tmp_path / "checkpoint.h5", old)
    (tmp_path / ".tmp-folder12.h5").mkdir()            # not a plain file: kept
    live = h5py.File(tmp_path / ".tmp-livewrit.h5", "w")   # HDF5 locks it while writing
    live.create_dataset("x", data=numpy.zeros(3))
    t = time.time() - old
    os.utime(tmp_path / ".tmp-livewrit.h5", (t, t))
    try:
        assert stale_temps(tmp_path) == [".tmp-ab12cd_7.toml", ".tmp-ab12cd_8.json",
                                         ".tmp-ab12cd_9.h5"]
        assert remove_stale_temps(tmp_path) == [".tmp-ab12cd_7.toml", ".tmp-ab12cd_8.json",
                                                ".tmp-ab12cd_9.h5"]
    finally:
        live.close()
    assert sorted(os.listdir(tmp_path)) == [".tmp-folder12.h5", ".tmp-fresh123.h5",
                                            ".tmp-livewrit.h5", ".tmp-longer_name.h5",
                                            ".tmp-notes.txt", "checkpoint.h5"]
    # once its writer is gone (the lock released) and the file unchanged, it is abandoned
    os.utime(tmp_path / ".tmp-livewrit.h5", (t, t))
    assert stale_temps(tmp_path) == [".tmp-livewrit.h5"]
    assert stale_temps(tmp_path / "missing") == []


def test_the_pattern_matches_the_run_folder_writers_temporary_names(tmp_path, monkeypatch):
    """Every writer of a run folder renames a temporary file whose name TEMP_NAME matches;
    a writer that changes its naming must change the pattern too."""
    seen, real_replace = [], os.replace

    def replace(src, dst, *args, **kwargs):
        seen.append(os.path.basename(src))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    checkpoint.save_checkpoint(tmp_path / "checkpoint.h5", "k", {}, {"w": numpy.zeros(2)}, "adam",
                               {}, {}, {"step": 0})
    runlog.write_json_atomic(tmp_path / "metrics.json", {"history": []})
    config.write_config(tmp_path / "config.toml", {"training": {"epochs": 1}})
    assert len(seen) == 3
    for name in seen:
        assert TEMP_NAME.fullmatch(name), name


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_lock_held_by_another_process_counts_as_live(tmp_path):
    path = tmp_path / ".tmp-otherpro.h5"
    touch(path, STALE_AFTER + 60)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # the child: a writer holding the file
        import fcntl
        fd = os.open(path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(write, b"x")
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(read, 1) == b"x"
        assert stale_temps(tmp_path) == []
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert stale_temps(tmp_path) == [".tmp-otherpro.h5"]
