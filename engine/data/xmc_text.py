"""Reader of the Extreme Classification Repository text format, in CSR chunks.

Format (plain text, or gzip-compressed: detected from the first bytes)::

    N F L                              header: points, features, labels
    l1,l2,... f:v f:v ...              one line per point, 0-based ids
     f:v f:v ...                       a point without labels starts with a space
    l1,l2                              a point without features has only its labels

Dimension letters: N points, F features, L labels, R points of one chunk.

`read_xmc_chunks(path)` yields `XMCChunk`s of at most `chunk_points` consecutive points as CSR
pieces (features: indptr (R+1,), indices int32, data float32; labels: indptr (R+1,), indices
int32), so a file of any size is converted with bounded memory. Within a point, feature ids are
sorted (values moved with them) and label ids sorted.

Every problem raises `DataError("<file>: line <n>: <what>")` (line numbers 1-based, the header
being line 1): a bad header, a malformed label list or `f:v` pair, an id outside [0, F) or
[0, L), a repeated feature or label id within a line, a value that is not finite in float32,
bytes that are not UTF-8 (or ASCII in a point line), a truncated or corrupt gzip stream, and
fewer or more point lines than the header announces (blank lines after the N-th point are
ignored; before it, a blank line is a point without labels and features). Ids are stored as
int32, so a header may announce at most 2^31 features and labels.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from typing import Iterator, Tuple

import numpy as np

from .errors import DataError

DEFAULT_CHUNK_POINTS = 1 << 16
MAX_ID = int(np.iinfo(np.int32).max)      # ids are stored as int32: F and L at most 2^31
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class XMCChunk:
    first_line: int          # line number of the chunk's first point
    x_indptr: np.ndarray     # (R+1,) int64, from 0
    x_indices: np.ndarray    # int32
    x_data: np.ndarray       # float32
    y_indptr: np.ndarray     # (R+1,) int64, from 0
    y_indices: np.ndarray    # int32

    @property
    def num_points(self) -> int:
        return int(self.x_indptr.shape[0] - 1)


def open_binary(path):
    """A binary stream over `path`, gunzipped when the file starts with the gzip magic bytes."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file (expected an Extreme Classification Repository "
                        f"text file)")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, expected an XMC text file")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror or e})") from None


def _lines(path, fh) -> Iterator[Tuple[int, str]]:
    """(line number, text without its line break) for every line of `fh`, each decoded on its
    own so that bad bytes are reported with their line; read errors (a truncated or corrupt
    gzip stream) become DataError."""
    lineno = 0
    try:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {lineno}: not UTF-8 text ({e.reason} at byte "
                                f"{e.start} of the line)") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: line {lineno + 1}: cannot read (truncated or corrupt "
                        f"file?): {e}") from None


def parse_header(line: str, path: str) -> Tuple[int, int, int]:
    expected = ("expected three integers 'num_points num_features num_labels' (num_points >= 0, "
                f"1 <= num_features, num_labels <= {MAX_ID + 1:,})")
    parts = line.split()
    try:
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
            raise ValueError
        n, f, l = (int(p) for p in parts)
    except ValueError:
        raise DataError(f"{path}: line 1: bad header {line.strip()[:80]!r}: {expected}") from None
    if f < 1 or l < 1 or f > MAX_ID + 1 or l > MAX_ID + 1:
        raise DataError(f"{path}: line 1: bad header {line.strip()[:80]!r}: {expected}")
    return n, f, l


def read_header(path) -> Tuple[int, int, int]:
    """(N, F, L) from the first line of `path`."""
    path = os.fspath(path)
    with open_binary(path) as fh:
        for _, line in _lines(path, fh):
            return parse_header(line, path)
    raise DataError(f"{path}: line 1: the file is empty (expected a header "
                    f"'num_points num_features num_labels')")


def count_point_lines(path) -> int:
    """The number of lines after the header (a fast pass over the bytes: the converter checks
    the header's N against it before sizing anything by N)."""
    path = os.fspath(path)
    lines, last = 0, b"\n"
    with open_binary(path) as fh:
        try:
            while True:
                block = fh.read(1 << 20)
                if not block:
                    break
                lines += block.count(b"\n")
                last = block[-1:]
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: cannot read (truncated or corrupt file?): {e}") from None
    lines += last != b"\n"                   # a last line without its line break
    return max(lines - 1, 0)


def _short(number: int) -> str:
    """An id for a message: a 4,000-digit one cut short."""
    text = str(number)
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"


def _parse_line(line: str, lineno: int, path: str, F: int, L: int):
    """(label ids, feature ids, values) of one point line, validated."""
    where = f"{path}: line {lineno}"
    if not line.isascii() or "_" in line:    # int() and float() would take "1_0" and "٣"
        bad = next(c for c in line if not c.isascii() or c == "_")
        raise DataError(f"{where}: unexpected character {bad!r}: expected ASCII label ids "
                        f"and feature:value pairs")
    tokens = line.split()
    labels = []
    if tokens and not line[:1].isspace() and ":" not in tokens[0]:
        first = tokens.pop(0)
        try:
            labels = [int(t) for t in first.split(",")]
        except ValueError:
            raise DataError(f"{where}: malformed label list {first[:60]!r}: expected "
                            f"comma-separated integers") from None
        for lab in labels:
            if not 0 <= lab < L:
                raise DataError(f"{where}: label id {_short(lab)} out of range [0, {L})")
        if len(set(labels)) != len(labels):
            raise DataError(f"{where}: a label id is repeated in {first[:60]!r}")
    feats, vals = [], []
    for tok in tokens:
        fid, sep, val = tok.partition(":")
        try:
            if not sep:
                raise ValueError
            fi, v = int(fid), float(val)
        except ValueError:
            raise DataError(f"{where}: malformed pair {tok[:60]!r}: expected "
                            f"feature:value (integer:number)") from None
        if not 0 <= fi < F:
            raise DataError(f"{where}: feature id {_short(fi)} out of range [0, {F})")
        if not abs(v) <= FLOAT32_MAX:          # NaN, inf, or inf once stored as float32
            what = "a non-finite value" if not math.isfinite(v) else "a value beyond float32"
            raise DataError(f"{where}: feature {fi} has {what} {val[:40]!r} (expected a "
                            f"finite number, |v| <= {FLOAT32_MAX:.4g})")
        feats.append(fi)
        vals.append(v)
    if len(set(feats)) != len(feats):
        seen, dup = set(), None
        for fi in feats:
            if fi in seen:
                dup = fi
                break
            seen.add(fi)
        raise DataError(f"{where}: feature id {dup} appears twice")
    return labels, feats, vals


def _chunk(first_line, xi, xd, xl, yi, yl) -> XMCChunk:
    x_indptr = np.zeros(len(xl) + 1, dtype=np.int64)
    np.cumsum(xl, out=x_indptr[1:])
    y_indptr = np.zeros(len(yl) + 1, dtype=np.int64)
    np.cumsum(yl, out=y_indptr[1:])
    return XMCChunk(first_line, x_indptr, np.asarray(xi, dtype=np.int32),
                    np.asarray(xd, dtype=np.float32), y_indptr, np.asarray(yi, dtype=np.int32))


def read_xmc_chunks(path, chunk_points: int = DEFAULT_CHUNK_POINTS) -> Iterator[XMCChunk]:
    """Yield the points of `path` in CSR chunks (see the module docstring); validates as it goes.
    The header is available beforehand through `read_header`."""
    path = os.fspath(path)
    with open_binary(path) as fh:
        lines = _lines(path, fh)
        header = next(lines, None)
        if header is None:
            raise DataError(f"{path}: line 1: the file is empty (expected a header "
                            f"'num_points num_features num_labels')")
        N, F, L = parse_header(header[1], path)
        xi, xd, xl, yi, yl = [], [], [], [], []
        count, first, lineno = 0, 2, 1
        for lineno, line in lines:
            if count >= N:
                if line.strip():
                    raise DataError(f"{path}: line {lineno}: more point lines than the "
                                    f"header's {N}")
                continue
            # (a blank line here is a point without labels and features)
            labels, feats, vals = _parse_line(line, lineno, path, F, L)
            if feats:
                order = np.argsort(feats, kind="stable")
                feats = [feats[i] for i in order]
                vals = [vals[i] for i in order]
            labels.sort()
            xi.extend(feats)
            xd.extend(vals)
            xl.append(len(feats))
            yi.extend(labels)
            yl.append(len(labels))
            count += 1
            if len(xl) >= chunk_points:
                yield _chunk(first, xi, xd, xl, yi, yl)
                xi, xd, xl, yi, yl = [], [], [], [], []
                first = lineno + 1
        if count < N:
            raise DataError(f"{path}: line {lineno + 1}: the file ends after {count} point "
                            f"lines but the header announces {N}")
        if xl:
            yield _chunk(first, xi, xd, xl, yi, yl)
