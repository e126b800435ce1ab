"""The data layer's error type.

Every bad-input error raised by `engine.data` (a missing or corrupt file, a wrong format
version, a token id out of range, text that is not UTF-8, an empty corpus, ...) is a
`DataError`. Its message names the file, the line/field/position where relevant, and what was
expected, so a user can fix the input without reading the code.
"""
from __future__ import annotations


class DataError(Exception):
    """Bad input to the data layer: the message says which file, where, and what was expected."""



#: what h5py and NumPy raise on a damaged file (a truncated B-tree, a corrupt chunk, a
#: dataset of the wrong type read as another): turned into one DataError line by `corrupt_file`
READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError)


class corrupt_file:
    """Context manager: a READ_ERRORS exception inside becomes `DataError("<path>: <what>
    (truncated or corrupt?): <Type>: <message>")`; a DataError passes through."""

    def __init__(self, path, what: str = "unreadable file"):
        self.path, self.what = path, what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None or issubclass(kind, DataError) or not issubclass(kind, READ_ERRORS):
            return False
        message = " ".join(str(exc).split())        # one line, whatever h5py says
        raise DataError(f"{self.path}: {self.what} (truncated or corrupt?): "
                        f"{kind.__name__}: {message}") from exc
