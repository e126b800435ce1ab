"""Modes of the files a run writes: those of any file the user creates, 0666 & ~umask.

Atomic writes go through tempfile.mkstemp, whose file is 0600 whatever the umask; the mode
survives the rename, so checkpoints and metrics would be unreadable to the user's group. Each
writer calls `follow_umask(fd)` on its temporary file before writing.
"""
from __future__ import annotations

import os


def umask_mode() -> int:
    """0666 & ~umask: the mode open() gives a new file (the umask is read by setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def follow_umask(fd: int) -> None:
    """Give the open file `fd` the mode a newly created file gets (no-op without fchmod)."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, umask_mode())


__all__ = ["umask_mode", "follow_umask"]
