"""Helpers of the property-based tests of the data readers and converters
(tests/data/test_*_properties.py): byte-level mutations, the budget, and the two properties every
bad input must keep.

- `assert_clean_error(exc, path)`: the failure is a `DataError` whose message is one line naming
  the file (what `engine ...` prints before exiting with status 2), never another exception.
- `assert_no_debris(folder, allowed)`: a converter that failed (or succeeded) left no temporary
  `.tmp` file and nothing beyond the files `allowed`.

`mutations()` draws a list of edits of a byte string (truncate, flip a byte, insert an
adversarial token, delete a span) and `apply_mutations` applies them, so a test starts from a
valid file and breaks it in the ways real files break.

Budget: `BUDGET` runs each property on a fixed, derandomised set of examples (reproducible, no
`.hypothesis` folder written); `ENGINE_PROPERTY_EXAMPLES=2000` explores more when hunting bugs.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from engine.data.errors import DataError


def budget(examples: int = 60):
    """Hypothesis settings: `examples` (or $ENGINE_PROPERTY_EXAMPLES) examples, no deadline,
    derandomised, no example database."""
    hunting = "ENGINE_PROPERTY_EXAMPLES" in os.environ
    n = int(os.environ.get("ENGINE_PROPERTY_EXAMPLES", examples))
    return settings(max_examples=n, deadline=None, derandomize=not hunting, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


BUDGET = budget()

#: tokens that break parsers: signs, huge and non-finite numbers, bad UTF-8, NUL, separators,
#: line breaks, a BOM, non-ASCII digits, HDF5 and gzip magic
ADVERSARIAL = [b"-1", b"99999999999999999999999", b"nan", b"inf", b"1e39", b"-1e400", b"\xff",
               b"\xe9", b"\x00", b":", b",", b",,", b"\n", b"\r", b"\r\n", b" ", b"\t", b"1:2:3",
               "\u0663".encode(), b"_", b"0x1f", b"1e-50", b"-0", b"+1", b"\xef\xbb\xbf",
               b"<unk>", b"<eos>", b"\x89HDF\r\n\x1a\n", b"\x1f\x8b", "\u2028".encode(),
               b"\xc3\x28", b"\xed\xa0\x80"]


def mutations(max_edits: int = 3):
    """A list of edits: ("truncate", at), ("flip", at, byte), ("insert", at, token),
    ("delete", at, length); positions are fractions of the length, applied in order."""
    at = st.floats(0.0, 1.0, allow_nan=False)
    edit = st.one_of(
        st.tuples(st.just("truncate"), at),
        st.tuples(st.just("flip"), at, st.integers(0, 255)),
        st.tuples(st.just("insert"), at, st.sampled_from(ADVERSARIAL)),
        st.tuples(st.just("delete"), at, st.integers(1, 16)),
    )
    return st.lists(edit, min_size=1, max_size=max_edits)


def apply_mutations(data: bytes, edits) -> bytes:
    """`data` with `edits` (from `mutations`) applied."""
    out = bytearray(data)
    for e in edits:
        i = min(int(e[1] * len(out)), len(out))
        if e[0] == "truncate":
            del out[i:]
        elif e[0] == "flip" and out:
            out[min(i, len(out) - 1)] = e[2]
        elif e[0] == "insert":
            out[i:i] = e[2]
        elif e[0] == "delete":
            del out[i:i + e[2]]
    return bytes(out)


def assert_clean_error(exc: BaseException, path=None) -> None:
    """A DataError with a one-line message (naming `path` when given)."""
    assert isinstance(exc, DataError), f"{type(exc).__name__} instead of DataError: {exc!r}"
    message = str(exc)
    assert message and "\n" not in message, f"not one line: {message!r}"
    assert "Traceback" not in message
    if path is not None:
        assert os.path.basename(os.fspath(path)) in message, f"{path} not named: {message!r}"


def assert_no_debris(folder, allowed) -> None:
    """`folder` holds exactly the files `allowed` (names): no .tmp file, nothing half-written."""
    names = sorted(os.listdir(folder))
    assert names == sorted(allowed), f"left in {folder}: {sorted(set(names) - set(allowed))}"
