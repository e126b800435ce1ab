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
[0, L), a repeated feature or label id within a line, a non-finite value, and fewer or more
point lines than the header announces (blank lines after the N-th point are ignored; before it,
a blank line is a point without labels and features).
"""
from __future__ import annotations

import gzip
import io
import math
import os
from dataclasses import dataclass
from typing import Iterator, Tuple

import numpy as np

from .errors import DataError

DEFAULT_CHUNK_POINTS = 1 << 16


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


def open_text(path):
    """A text stream over `path`, gunzipped when the file starts with the gzip magic bytes."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file (expected an Extreme Classification Repository "
                        f"text file)")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, expected an XMC text file")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    raw = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline=None)


def parse_header(line: str, path: str) -> Tuple[int, int, int]:
    parts = line.split()
    if len(parts) != 3:
        raise DataError(f"{path}: line 1: bad header {line.strip()[:80]!r}: expected three integers "
                        f"'num_points num_features num_labels'")
    try:
        n, f, l = (int(p) for p in parts)
    except ValueError:
        raise DataError(f"{path}: line 1: bad header {line.strip()[:80]!r}: expected three "
                        f"integers 'num_points num_features num_labels'") from None
    if n < 0 or f < 1 or l < 1:
        raise DataError(f"{path}: line 1: bad header {line.strip()!r}: expected num_points >= 0, "
                        f"num_features >= 1, num_labels >= 1")
    return n, f, l


def read_header(path) -> Tuple[int, int, int]:
    """(N, F, L) from the first line of `path`."""
    path = os.fspath(path)
    try:
        with open_text(path) as fh:
            return parse_header(fh.readline(), path)
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise DataError(f"{path}: line 1: cannot read the header: {e}") from e


def _parse_line(line: str, lineno: int, path: str, F: int, L: int):
    """(label ids, feature ids, values) of one point line, validated."""
    where = f"{path}: line {lineno}"
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
                raise DataError(f"{where}: label id {lab} out of range [0, {L})")
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
            raise DataError(f"{where}: feature id {fi} out of range [0, {F})")
        if not math.isfinite(v):
            raise DataError(f"{where}: feature {fi} has a non-finite value {val!r}")
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
    try:
        with open_text(path) as fh:
            header = fh.readline()
            if not header:
                raise DataError(f"{path}: line 1: the file is empty (expected a header "
                                f"'num_points num_features num_labels')")
            N, F, L = parse_header(header, path)
            xi, xd, xl, yi, yl = [], [], [], [], []
            count, first, lineno = 0, 2, 1
            for lineno, line in enumerate(fh, start=2):
                line = line.rstrip("\r\n")
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
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text near byte {e.start}: {e.reason}") from e
    except (OSError, EOFError) as e:       # gzip truncated or corrupt
        raise DataError(f"{path}: cannot read (truncated or corrupt file?): {e}") from e
