"""The data layer's error type.

Every bad-input error raised by `engine.data` (a missing or corrupt file, a wrong format
version, a token id out of range, text that is not UTF-8, an empty corpus, ...) is a
`DataError`. Its message names the file, the line/field/position where relevant, and what was
expected, so a user can fix the input without reading the code.
"""
from __future__ import annotations


class DataError(Exception):
    """Bad input to the data layer: the message says which file, where, and what was expected."""

