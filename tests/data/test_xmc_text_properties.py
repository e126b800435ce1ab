"""Property-based tests of the XMC text reader (engine/data/xmc_text.py) and of `prepare_xmc`
(engine/data/xmc.py) on random, truncated and adversarial files: a valid file reads back exactly;
any other file either converts into a file that validates or fails with a one-line DataError
naming it, leaving no output and no temporary file (and an older output untouched)."""
import gzip
import os
import tempfile

import numpy
from hypothesis import given
from hypothesis import strategies as st

from adversarial import BUDGET, apply_mutations, assert_clean_error, assert_no_debris, mutations
from engine.cli import main
from engine.data.errors import DataError
from engine.data.xmc import prepare_xmc, read_split
from engine.data.xmc_text import read_header, read_xmc_chunks

FINITE32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


#: field values that a reader must refuse (or read exactly): out of range, negative, huge,
#: beyond float32, not numbers, non-ASCII digits, underscores
BAD_IDS = ["-1", "99999999999999999999999", "1_0", "\u0663", "0x1", "", "1.5", "+1", "1e3"]
BAD_VALUES = ["1e39", "-3.5e38", "nan", "-inf", "infinity", "1e400", "", "1_0.5", "0x1p3", "1e-50"]


@st.composite
def xmc_files(draw, min_points=0, adversarial=False):
    """(text, header, points): a valid file; points are (labels set, {feature: value}).
    With `adversarial`, one id or value of the file is replaced by one of BAD_IDS or
    BAD_VALUES (the file may then be valid or not; `points` no longer describes it)."""
    F, L = draw(st.integers(1, 9)), draw(st.integers(1, 6))
    n = draw(st.integers(min_points, 7))
    points = []
    for _ in range(n):
        labels = draw(st.sets(st.integers(0, L - 1), max_size=L))
        feats = draw(st.dictionaries(st.integers(0, F - 1), FINITE32, max_size=F))
        points.append((labels, feats))
    rows = []                                    # per point: [label ids], [(feature, value)]
    for labels, feats in points:
        rows.append(([str(i) for i in draw(st.permutations(sorted(labels)))],
                     [[str(f), repr(v)] for f, v in draw(st.permutations(sorted(feats.items())))]))
    if adversarial:
        slots = [(r, "label", i) for r, (lab, _) in enumerate(rows) for i in range(len(lab))]
        slots += [(r, kind, i) for r, (_, pairs) in enumerate(rows) for i in range(len(pairs))
                  for kind in ("feature", "value")]
        if slots:
            r, kind, i = draw(st.sampled_from(slots))
            bad = draw(st.sampled_from(BAD_VALUES if kind == "value" else BAD_IDS))
            if kind == "label":
                rows[r][0][i] = bad
            else:
                rows[r][1][i][kind == "value"] = bad
    lines = [f"{n} {F} {L}"]
    for lab, pairs in rows:
        text = " ".join(f"{f}:{v}" for f, v in pairs)
        lines.append(",".join(lab) + (" " + text if text else "") if lab else " " + text)
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return end.join(lines) + end + draw(st.sampled_from(["", "\n", "\n\n"])), (n, F, L), points


def _write(folder, name, data: bytes, gz: bool) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(gzip.compress(data, mtime=0) if gz else data)
    return path


def _points(path):
    out = []
    for ch in read_xmc_chunks(path, chunk_points=3):
        for r in range(ch.num_points):
            xs = slice(ch.x_indptr[r], ch.x_indptr[r + 1])
            ys = slice(ch.y_indptr[r], ch.y_indptr[r + 1])
            out.append((set(ch.y_indices[ys].tolist()),
                        dict(zip(ch.x_indices[xs].tolist(), ch.x_data[xs].tolist()))))
            assert ch.x_indices[xs].tolist() == sorted(ch.x_indices[xs].tolist())
    return out


@BUDGET
@given(xmc_files(), st.booleans())
def test_valid_files_read_back_exactly(case, gz):
    text, header, points = case
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "t.txt", text.encode(), gz)
        assert read_header(path) == header
        got = _points(path)
    assert got == [(labels, {f: float(numpy.float32(v)) for f, v in feats.items()})
                   for labels, feats in points]


def _check_converted(out, F, L):
    """An output that was written reads back, every id in range, every value finite."""
    for split in ("train", "valid", "test"):
        try:
            x, y_indptr, y_indices = read_split(out, split)
        except DataError:
            continue                       # the split is absent (no valid points)
        assert x.shape[1] == F and numpy.isfinite(x.data).all()
        assert ((y_indices >= 0) & (y_indices < L)).all()
        assert y_indptr[-1] == y_indices.shape[0]


def _convert_or_fail_cleanly(tmp, path, existing):
    """prepare_xmc(path, path): a valid output, or a clean error, no output, no debris."""
    out = os.path.join(tmp, "out.h5")
    before = None
    if existing:                            # an older output must survive a failure
        with open(out, "wb") as f:
            f.write(b"older output")
        before = b"older output"
    try:
        list(read_xmc_chunks(path))
    except Exception as e:                  # noqa: BLE001 (the property: only DataError)
        assert_clean_error(e, path)
    try:
        prepare_xmc(path, path, out, valid_fraction=0.3)
    except Exception as e:                  # noqa: BLE001
        assert_clean_error(e, path)
        if before is None:
            assert not os.path.exists(out)
        else:
            assert open(out, "rb").read() == before
    else:
        _check_converted(out, *read_header(path)[1:])
    assert_no_debris(tmp, [os.path.basename(path)] + (["out.h5"] if os.path.exists(out) else []))


@BUDGET
@given(xmc_files(min_points=1), st.booleans(), mutations(), st.booleans())
def test_mutated_files_convert_or_fail_cleanly(case, gz, edits, existing):
    """Truncated, flipped, spliced files (plain or gzipped before the damage)."""
    text, _, _ = case
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "tr.txt", apply_mutations(text.encode(), edits), gz)
        _convert_or_fail_cleanly(tmp, path, existing)


@BUDGET
@given(xmc_files(min_points=1, adversarial=True), st.booleans(), st.booleans())
def test_adversarial_fields_convert_or_fail_cleanly(case, gz, existing):
    """Ids and values out of range, huge, non-finite, beyond float32 or not numbers."""
    text, _, _ = case
    with tempfile.TemporaryDirectory() as tmp:
        _convert_or_fail_cleanly(tmp, _write(tmp, "tr.txt", text.encode(), gz), existing)


@BUDGET
@given(xmc_files(min_points=2), mutations(max_edits=2))
def test_damaged_gzip_streams_fail_cleanly(case, edits):
    """A gzip stream damaged after compression: truncated, a byte changed in the header, the
    deflate data or the CRC (zlib and gzip raise several kinds of error)."""
    text, _, _ = case
    with tempfile.TemporaryDirectory() as tmp:
        data = apply_mutations(gzip.compress(text.encode() * 20, mtime=0), edits)
        _convert_or_fail_cleanly(tmp, _write(tmp, "tr.txt", data, False), False)


@BUDGET
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_fail_cleanly(data, gz):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "r.txt", data, gz)
        out = os.path.join(tmp, "out.h5")
        try:
            prepare_xmc(path, path, out)
        except Exception as e:              # noqa: BLE001
            assert_clean_error(e, path)
        assert_no_debris(tmp, ["r.txt"] + (["out.h5"] if os.path.exists(out) else []))


@BUDGET
@given(st.integers(0, 10 ** 30), st.integers(-5, 10 ** 30), st.integers(-5, 10 ** 30))
def test_huge_or_negative_header_counts_fail_before_allocating(n, f, l):
    """A header's counts size arrays only after they are checked: N against the lines there
    are, F and L against int32 ids (never a MemoryError or a long allocation)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "h.txt", f"{n} {f} {l}\n0 0:1\n".encode(), False)
        out = os.path.join(tmp, "out.h5")
        try:
            prepare_xmc(path, path, out)
        except Exception as e:              # noqa: BLE001
            assert_clean_error(e, path)
        else:
            assert n == 1 and 1 <= f <= 2 ** 31 and 1 <= l <= 2 ** 31
            _check_converted(out, f, l)


def test_cli_exit_2_one_line(tmp_path, capsys):
    """What the command line makes of such a file: one line on stderr, exit status 2."""
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(gzip.compress(b"2 5 4\n0 0:1\n1 1:2\n")[:-12])      # truncated stream
    out = tmp_path / "o.h5"
    assert main(["prepare", "xmc", str(bad), str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.txt.gz" in err and "truncated or corrupt" in err
    assert sorted(os.listdir(tmp_path)) == ["bad.txt.gz"]
