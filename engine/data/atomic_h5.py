"""Atomic HDF5 writing: a file appears at its path complete, or not at all.

    with AtomicH5Writer(path) as w:      # writes into a temporary file beside `path`
        w.file.create_dataset(...)       # w.file: the open h5py.File
        w.commit()                       # close, fsync, os.replace onto `path`, fsync the folder

Leaving the `with` block by an exception (or without `commit`) removes the temporary file, and
a file already at `path` is left untouched. Every `engine prepare` writer (LM corpus, dense
classification, XMC) builds on this, so "nothing already saved is lost or half-overwritten"
holds in one place.
"""
from __future__ import annotations

import os
import secrets

import h5py

from .errors import DataError


def fsync_folder(folder: str) -> None:
    """Make a rename durable (best effort: not every platform opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicH5Writer:
    def __init__(self, path):
        self.path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise DataError(f"{self.path}: cannot write: no such folder {folder}")
        # Not mkstemp: its 0600 mode would survive the rename; O_EXCL with 0666 & ~umask.
        while True:
            self.tmp_path = os.path.join(
                folder, f".{os.path.basename(self.path)}.{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise DataError(f"{self.path}: cannot write in {folder}: {e}") from e
        os.close(fd)
        try:
            self.file = h5py.File(self.tmp_path, "w")
        except BaseException:
            self._remove_tmp()
            raise
        self.done = False

    def commit(self) -> str:
        """Close the file, make it durable and move it onto the target path; returns the path."""
        self.file.close()
        with open(self.tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp_path, self.path)
        fsync_folder(os.path.dirname(os.path.abspath(self.path)))
        self.done = True
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (a no-op after `commit`)."""
        if self.done:
            return
        try:
            self.file.close()
        except Exception:
            pass
        self._remove_tmp()
        self.done = True

    def _remove_tmp(self):
        try:
            os.remove(self.tmp_path)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.abort()
        return False
