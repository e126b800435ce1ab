"""Temporary files left in a run folder by a writer that was killed (`kill -9`, a power cut).

The run folder's writers (engine/checkpoint.py for checkpoint.h5, best.h5 and the shards of a
sharded checkpoint; engine/runlog.py for metrics.json; engine/config.py for config.toml) write
`.tmp-XXXXXXXX.<h5|json|toml>` beside the destination and rename it over the destination when
complete. A writer killed before the rename leaves that file behind for good; a run that
starts (or resumes) in the folder removes such files with `remove_stale_temps`.

A file is removed only when it
  - has exactly that name pattern (mkstemp's 8 random characters; nothing a user would name a
    file), and is a plain file;
  - is not locked: HDF5 holds an exclusive flock on a file it has open for writing, so a live
    checkpoint writer in another process (another rank of a sharded save, or a second run a
    user started on the same folder) is seen and skipped;
  - has not been modified for STALE_AFTER seconds: this covers the short moments in which a
    live writer holds no lock (between creating the name and HDF5 opening it, and between
    closing it and the rename) and writers whose file system or HDF5 build does no locking.
In a sharded run only rank 0 cleans, at start, before its first collective call: no rank of
the run can be writing a checkpoint then (every save starts with a broadcast from rank 0).
"""
from __future__ import annotations

import os
import re
import stat
import time

#: the names the run folder's writers give their temporary files (tempfile.mkstemp)
TEMP_NAME = re.compile(r"\.tmp-[a-z0-9_]{8}\.(h5|json|toml)")

#: seconds without a change after which an unlocked temporary file is taken as abandoned
STALE_AFTER = 5.0


def _locked(path):
    """True when another open file holds a lock on `path` (flock, as HDF5 takes it)."""
    try:
        import fcntl
    except ImportError:                    # no flock (Windows): rely on the age alone
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True                        # gone or unreadable: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:                        # the file system does no flock: the age decides
        return False
    finally:
        os.close(fd)                       # also drops the lock just taken
    return False


def stale_temps(folder, now=None):
    """Names of the abandoned temporary files in `folder` (see the module docstring)."""
    now = time.time() if now is None else now
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    found = []
    for name in names:
        if not TEMP_NAME.fullmatch(name):
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < STALE_AFTER or _locked(path):
            continue
        found.append(name)
    return found


def remove_stale_temps(folder, now=None):
    """Remove the abandoned temporary files in `folder`; returns the names removed."""
    removed = []
    for name in stale_temps(folder, now):
        try:
            os.remove(os.path.join(folder, name))
            removed.append(name)
        except OSError:                    # removed meanwhile, or not ours to remove
            pass
    return removed


__all__ = ["TEMP_NAME", "STALE_AFTER", "stale_temps", "remove_stale_temps"]
